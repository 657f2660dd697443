"""Guessing link codes from many accounts (issue 14; the bound is in docs/store.md, "Identity").

Both tests run the same attack at the same size: 300 attacker accounts each send the 10 wrong
codes the per-account limit allows, against 5,000 live codes of 5,000 other users.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pytest
from store_support import T0, count, store_fixture  # noqa: F401 (fixture)

from sessionkeeper.jobs import link_code_expiry
from store import LinkCodeInvalid, LinkCodeLocked, Store, StoreConfig
from store.queries import parse
from store.validate import LINK_CODE_ALPHABET, LINK_CODE_LENGTH, display_link_code

ATTACKERS = 300
GUESSES_PER_ATTACKER = 10  # the default link_max_failures: the 11th attempt is locked out
LIVE_CODES = 5_000

# The statements of the previous release, as its bots still send them.
RELEASE_0_1_0 = parse(
    (Path(__file__).parent.parent / "fixtures" / "release-0.1.0" / "store_queries.sql").read_text()
)

pytestmark = pytest.mark.slow


def new_users(conn: psycopg.Connection[Any], prefix: str, n: int) -> list[UUID]:
    rows = conn.execute(
        "INSERT INTO users (channel, channel_user_id, authenticated, created_at, updated_at)"
        " SELECT 'telegram', %s || g, true, %s, %s FROM generate_series(1, %s) g"
        " RETURNING user_id",
        (prefix, T0, T0, n),
    ).fetchall()
    return [row[0] for row in rows]


def random_code() -> str:
    return display_link_code(
        "".join(secrets.choice(LINK_CODE_ALPHABET) for _ in range(LINK_CODE_LENGTH))
    )


def test_many_accounts_guessing_many_live_codes_take_over_nobody(
    store: Store, conn: psycopg.Connection[Any]
) -> None:
    """300 accounts x 10 guesses = 3,000 guesses against 5,000 live codes.

    Today's six-digit design: a guess hits some live code with probability 5,000 / 10^6 =
    1/200, so the attack takes over 3,000 / 200 = 15 identities on average and none with
    probability (1 - 1/200)^3000 = e^-15 = 3e-7 (the next test shows it). With 12 symbols of
    base32 (32^12 = 1.15e18 codes): P(any) <= 3,000 x 5,000 / 1.15e18 = 1.3e-11.
    """
    owners = new_users(conn, "owner", LIVE_CODES)
    attackers = new_users(conn, "attacker", ATTACKERS)
    codes = {owner: store.create_link_code(owner, now=T0).code for owner in owners}
    during = T0 + timedelta(minutes=1)
    for attacker in attackers:
        for _ in range(GUESSES_PER_ATTACKER):
            with pytest.raises(LinkCodeInvalid):
                store.redeem_link_code(attacker, random_code(), now=during)
        # The limit is reached: even a right code is refused now.
        with pytest.raises(LinkCodeLocked):
            store.redeem_link_code(attacker, codes[owners[0]], now=during)
    assert count(conn, "users", "person_id IS NOT NULL") == 0
    assert count(conn, "link_codes", "used_at IS NOT NULL") == 0

    # Nobody else is locked out by the attack, while it runs or after it.
    (friend, later_friend) = new_users(conn, "friend", 2)
    linked = store.redeem_link_code(friend, codes[owners[1]], now=during)
    assert linked.owner_id == owners[1]
    after = T0 + timedelta(minutes=9)
    assert store.redeem_link_code(later_friend, codes[owners[2]], now=after).owner_id == owners[2]
    assert count(conn, "users", "person_id IS NOT NULL") == 4


def test_the_same_attack_takes_over_six_digit_codes_of_the_previous_release(
    conn: psycopg.Connection[Any],
) -> None:
    """The witness that the attack above can succeed: the same sizes against six-digit codes,
    through the statements bots of 0.1.0 send (they keep working after the upgrade until they
    are replaced). Expected takeovers: 15; P(none) = e^-15 = 3e-7."""
    owners = new_users(conn, "owner", LIVE_CODES)
    attackers = new_users(conn, "attacker", ATTACKERS)
    params = {"now": T0, "ttl": timedelta(minutes=10)}
    with conn.cursor() as cursor:
        cursor.executemany(
            RELEASE_0_1_0["create_link_code"],
            [
                {**params, "user_id": owner, "code": f"{secrets.randbelow(10**6):06d}"}
                for owner in owners
            ],
        )
        guesses = [
            {
                "user_id": attacker,
                "code": f"{secrets.randbelow(10**6):06d}",
                "now": T0 + timedelta(minutes=1),
                "max_failures": 10,
                "failure_window": timedelta(minutes=10),
                "lockout": timedelta(minutes=15),
            }
            for attacker in attackers
            for _ in range(GUESSES_PER_ATTACKER)
        ]
        cursor.executemany(RELEASE_0_1_0["redeem_link_code"], guesses, returning=True)
        outcomes: list[str] = []
        while True:
            outcomes.extend(row[0] for row in cursor.fetchall())
            if not cursor.nextset():
                break
    assert len(outcomes) == ATTACKERS * GUESSES_PER_ATTACKER
    assert outcomes.count("linked") >= 1
    assert count(conn, "link_codes", "used_at IS NOT NULL") == outcomes.count("linked")


# -- pacing: no 24 hours hold more than link_max_daily_failures guesses of one account ---------

DAY = timedelta(days=1)
DEFAULTS = StoreConfig()


def paced_guesses(store: Store, attacker: UUID, gap: Callable[[int], timedelta]) -> list[Any]:
    """Guess for three days: after the n-th accepted guess wait ``gap(n)``; when locked out,
    guess again the moment the lock-out ends. The times of the guesses that were tested."""
    tested: list[Any] = []
    now = T0
    while now < T0 + 3 * DAY:
        try:
            store.redeem_link_code(attacker, random_code(), now=now)
        except LinkCodeLocked as locked:
            assert locked.locked_until > now
            now = locked.locked_until
            continue
        except LinkCodeInvalid:
            tested.append(now)
            now += gap(len(tested))
    return tested


def most_in_a_day(times: list[Any]) -> int:
    return max(sum(1 for t in times if start <= t < start + DAY) for start in times)


# Each paces just under one threshold (defaults: 10 failures per 10-minute window lock out for
# 15 minutes; 50 failures within 24 hours lock out until the oldest is a day old).
STRATEGIES: dict[str, Callable[[int], timedelta]] = {
    # 9 per window, the next window opened the moment the last one ends: the old slip, 1,296
    # guesses a day without the daily cap.
    "under the window": lambda n: (
        timedelta(seconds=1) if n % 9 else DEFAULTS.link_failure_window - timedelta(seconds=8)
    ),
    # 10 at once, then the lock-out, again and again.
    "at the lock-out": lambda n: timedelta(seconds=1),
    # One every 28.8 minutes: 50 a day, evenly, never two within a window.
    "under the day": lambda n: DAY / DEFAULTS.link_max_daily_failures,
}


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_no_pacing_tests_more_codes_a_day_than_the_daily_cap(
    store: Store, conn: psycopg.Connection[Any], strategy: str
) -> None:
    (attacker,) = new_users(conn, f"pacer-{strategy}", 1)
    tested = paced_guesses(store, attacker, STRATEGIES[strategy])
    assert most_in_a_day(tested) <= DEFAULTS.link_max_daily_failures
    # The cap is what binds: each strategy does reach it within some 24 hours.
    assert most_in_a_day(tested) == DEFAULTS.link_max_daily_failures
    assert len(tested) <= 3 * DEFAULTS.link_max_daily_failures


def test_the_documented_bound_follows_from_the_limits() -> None:
    """docs/security.md: P(any takeover in a day) <= A x (D + 1) x L / 32^12."""
    accounts, live = 10_000, 10_000
    per_account = DEFAULTS.link_max_daily_failures + 1  # the day's failures and one hit
    bound = accounts * per_account * live / 32**LINK_CODE_LENGTH
    assert bound <= 1e-6
    text = (Path(__file__).parents[2] / "docs" / "security.md").read_text()
    mantissa, exponent = f"{bound:.1e}".split("e")
    assert f"{mantissa} \u00d7 10^{int(exponent)}" in text  # 4.4 (times) 10^-9


# -- erasure keeps the lock-out -----------------------------------------------------------------


def test_erasure_does_not_reset_a_lock_out_nor_keep_the_users_id(
    store: Store, conn: psycopg.Connection[Any]
) -> None:
    owner = store.get_or_create_user("telegram", "owner", now=T0).user_id
    guesser = store.get_or_create_user("telegram", "guesser", now=T0).user_id
    for i in range(DEFAULTS.link_max_failures):
        with pytest.raises(LinkCodeInvalid):
            store.redeem_link_code(guesser, random_code(), now=T0 + timedelta(seconds=i))
    right = store.create_link_code(owner, now=T0).code
    with pytest.raises(LinkCodeLocked) as before:
        store.redeem_link_code(guesser, right, now=T0 + timedelta(minutes=1))

    store.forget_user(guesser)
    kept = conn.execute("SELECT e::text FROM link_code_erased_failures e").fetchall()
    assert len(kept) == 1 and str(guesser) not in kept[0][0]
    # Back under the same id (a keyed hash of the channel identity), still locked out.
    again = store.get_or_create_user("telegram", "guesser", now=T0 + timedelta(minutes=2))
    assert again.user_id == guesser
    with pytest.raises(LinkCodeLocked) as after:
        store.redeem_link_code(guesser, right, now=T0 + timedelta(minutes=2))
    assert after.value.locked_until == before.value.locked_until
    assert count(conn, "link_code_erased_failures") == 0  # the record is the account's again

    # Erased again: link_code_expiry drops the record once its day and lock-out are over.
    store.forget_user(guesser)
    settings = link_code_expiry.Settings()
    assert link_code_expiry.run(conn, settings, T0 + timedelta(hours=1)).details["lockouts"] == 0
    later = T0 + DAY + timedelta(hours=1)
    assert link_code_expiry.run(conn, settings, later).details["lockouts"] == 1
    assert count(conn, "link_code_erased_failures") == 0
