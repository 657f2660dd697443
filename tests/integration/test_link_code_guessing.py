"""Guessing link codes from many accounts (issue 14; the bound is in docs/store.md, "Identity").

Both tests run the same attack at the same size: 300 attacker accounts each send the 10 wrong
codes the per-account limit allows, against 5,000 live codes of 5,000 other users.
"""

from __future__ import annotations

import secrets
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pytest
from store_support import T0, count, store_fixture  # noqa: F401 (fixture)

from store import LinkCodeInvalid, LinkCodeLocked, Store
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
