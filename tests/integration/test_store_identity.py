"""Identity linking: 12-character single-use codes, atomic person merges, lock-out after
guessing."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import json
import re
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from store_support import T0, count, store_fixture  # noqa: F401 (fixture)

from store import (
    AsyncStore,
    InvalidInput,
    LinkCodeExpired,
    LinkCodeInvalid,
    LinkCodeLocked,
    LinkCodeOutdated,
    NotFound,
    Store,
    StoreError,
    Unlinked,
    close_database,
    init_database,
    unlink,
    validate,
)


def users(store: Store, *names: str) -> list[Any]:
    return [store.get_or_create_user("telegram", name, now=T0).user_id for name in names]


def test_code_links_two_users_under_one_person(store: Store) -> None:
    owner, other = users(store, "owner", "other")
    code = store.create_link_code(owner, now=T0)
    assert re.fullmatch(r"[0-9A-HJKMNP-TV-Z]{4}(-[0-9A-HJKMNP-TV-Z]{4}){2}", code.code)
    assert code.expires_at == T0 + timedelta(minutes=10)
    linked = store.redeem_link_code(other, code.code, now=T0 + timedelta(minutes=9))
    assert linked.owner_id == owner
    assert {u.user_id for u in store.get_linked_users(owner)} == {owner, other}
    assert {u.person_id for u in store.get_linked_users(other)} == {linked.person_id}
    turn = store.begin_turn("telegram", "other", now=T0)
    assert turn.user.person_id == linked.person_id


def test_unlinked_user_is_its_only_linked_user(store: Store) -> None:
    (alone,) = users(store, "alone")
    assert [u.user_id for u in store.get_linked_users(alone)] == [alone]


def test_code_is_single_use_and_expires(store: Store) -> None:
    owner, a, b = users(store, "owner", "a", "b")
    code = store.create_link_code(owner, now=T0).code
    store.redeem_link_code(a, code, now=T0)
    with pytest.raises(LinkCodeInvalid):
        store.redeem_link_code(b, code, now=T0)
    late = store.create_link_code(owner, now=T0).code
    with pytest.raises(LinkCodeExpired):
        store.redeem_link_code(b, late, now=T0 + timedelta(minutes=10))


def test_own_code_is_refused(store: Store) -> None:
    (owner,) = users(store, "owner")
    code = store.create_link_code(owner, now=T0).code
    with pytest.raises(LinkCodeInvalid, match="your own"):
        store.redeem_link_code(owner, code, now=T0)


def key_of(code: str) -> str:
    """What link_codes.code holds for a code of this release (sk_link_code_key)."""
    canonical = code.replace("-", "")
    return "h:" + hashlib.sha256(canonical.encode()).hexdigest()


def test_only_the_hash_of_a_code_is_stored(
    store: Store, conn: psycopg.Connection[Any], database_url: str
) -> None:
    owner, other = users(store, "owner", "other")
    code = store.create_link_code(owner, now=T0).code
    stored = [row[0] for row in conn.execute("SELECT code FROM link_codes")]
    assert stored == [key_of(code)]
    dump = conn.execute("SELECT string_agg(l::text, ' ') FROM link_codes l").fetchone()
    assert dump is not None and code.replace("-", "") not in dump[0]
    # Who read the table cannot redeem with what it found: not typed into a bot...
    with pytest.raises(InvalidInput):
        store.redeem_link_code(other, stored[0], now=T0)
    # ...nor passed to the function itself (it is an unknown code, and counted as a failure).
    with psycopg.connect(database_url, autocommit=True) as direct:
        row = direct.execute(
            "SELECT outcome FROM sk_redeem_link_code(%s, %s, %s, 10, '10 min', '15 min')",
            (other, stored[0], T0),
        ).fetchone()
    assert row == ("invalid",)
    assert store.redeem_link_code(other, code, now=T0).owner_id == owner


def test_the_store_sends_the_key_the_database_computes(
    store: Store, conn: psycopg.Connection[Any]
) -> None:
    # The store hashes a code itself (the code never reaches the server's logs); the database
    # must agree, or codes made by this release and redeemed through sk_redeem_link_code
    # (release 0.1.0's call, which hashes in SQL) would not meet.
    owner, other = users(store, "owner", "other")
    code = store.create_link_code(owner, now=T0).code
    canonical = validate.link_code(code)
    row = conn.execute("SELECT sk_link_code_key(%s)", (canonical,)).fetchone()
    assert row == (validate.link_code_key(canonical),) == (key_of(code),)
    linked = conn.execute(
        "SELECT outcome, owner_id FROM sk_redeem_link_code(%s, %s, %s, 10, '10 min', '15 min')",
        (other, canonical, T0),
    ).fetchone()
    assert linked == ("linked", owner)


def test_an_export_holds_no_usable_code(store: Store, conn: psycopg.Connection[Any]) -> None:
    owner, old_owner = users(store, "owner", "old-owner")
    code = store.create_link_code(owner, now=T0).code
    # A live code of release 0.1.0, stored as typed (six digits).
    conn.execute(
        "INSERT INTO link_codes (code, user_id, created_at, expires_at) VALUES (%s, %s, %s, %s)",
        ("123456", old_owner, T0, T0 + timedelta(minutes=10)),
    )
    for user, plain, key in (
        (owner, code.replace("-", ""), key_of(code)),
        (old_owner, "123456", "h:" + hashlib.sha256(b"123456").hexdigest()),
    ):
        out = io.StringIO()
        store.export_user(user, out)
        assert plain not in out.getvalue()
        assert [c["code"] for c in json.loads(out.getvalue())["tables"]["link_codes"]] == [key]


def test_new_code_retires_the_previous_one(store: Store) -> None:
    owner, other = users(store, "owner", "other")
    first = store.create_link_code(owner, now=T0).code
    second = store.create_link_code(owner, now=T0 + timedelta(seconds=1)).code
    assert first != second
    with pytest.raises(LinkCodeExpired):
        store.redeem_link_code(other, first, now=T0 + timedelta(seconds=2))
    store.redeem_link_code(other, second, now=T0 + timedelta(seconds=2))


def test_persons_merge_atomically(store: Store, conn: psycopg.Connection[Any]) -> None:
    a, b, c, d = users(store, "a", "b", "c", "d")
    ab = store.redeem_link_code(b, store.create_link_code(a, now=T0).code, now=T0)
    cd = store.redeem_link_code(d, store.create_link_code(c, now=T0).code, now=T0)
    assert ab.person_id != cd.person_id
    merged = store.redeem_link_code(c, store.create_link_code(b, now=T0).code, now=T0)
    assert merged.person_id == ab.person_id  # the code owner's person absorbs the other
    assert {u.user_id for u in store.get_linked_users(d)} == {a, b, c, d}
    assert count(conn, "users", f"person_id = '{ab.person_id}'") == 4
    assert count(conn, "persons") == 2  # the emptied person stays: no deletes online


def test_too_many_wrong_codes_lock_out_even_the_right_one(store: Store) -> None:
    owner, guesser = users(store, "owner", "guesser")
    right = store.create_link_code(owner, now=T0).code
    wrong = "0000-0000-0000"
    for i in range(10):
        with pytest.raises(LinkCodeInvalid):
            store.redeem_link_code(guesser, wrong, now=T0 + timedelta(seconds=i))
    with pytest.raises(LinkCodeLocked) as caught:
        store.redeem_link_code(guesser, right, now=T0 + timedelta(seconds=30))
    assert caught.value.locked_until == T0 + timedelta(seconds=9, minutes=15)
    after = caught.value.locked_until + timedelta(seconds=1)
    fresh = store.create_link_code(owner, now=after).code
    store.redeem_link_code(guesser, fresh, now=after)


def test_wrong_codes_spread_over_time_do_not_lock(store: Store) -> None:
    owner, guesser = users(store, "owner", "guesser")
    for i in range(15):  # one every two minutes: never ten within ten minutes
        with pytest.raises(LinkCodeInvalid):
            store.redeem_link_code(guesser, "ZZZZ-ZZZZ-ZZZZ", now=T0 + timedelta(minutes=2 * i))
    later = T0 + timedelta(minutes=31)
    store.redeem_link_code(guesser, store.create_link_code(owner, now=later).code, now=later)


def test_a_code_is_accepted_as_people_type_it(store: Store) -> None:
    owner, other = users(store, "owner", "other")
    code = store.create_link_code(owner, now=T0).code  # e.g. 7KQ2-M9XD-4HTR
    typed = f"  {code.lower().replace('-', ' ').replace('0', 'o').replace('1', 'l')} "
    assert store.redeem_link_code(other, typed, now=T0).owner_id == owner


def test_a_six_digit_code_of_the_previous_release_is_refused_clearly(
    store: Store, conn: psycopg.Connection[Any]
) -> None:
    owner, other = users(store, "owner", "other")
    # The 0.1.0 store wrote six-digit codes; one may still be live after the upgrade.
    conn.execute(
        "INSERT INTO link_codes (code, user_id, created_at, expires_at)"
        " VALUES ('123456', %s, %s, %s)",
        (owner, T0, T0 + timedelta(minutes=10)),
    )
    with pytest.raises(LinkCodeOutdated, match="ask for a new code") as caught:
        store.redeem_link_code(other, "123 456", now=T0)
    assert isinstance(caught.value, LinkCodeInvalid)  # handlers of LinkCodeInvalid still catch it
    assert count(conn, "link_codes", "used_at IS NOT NULL") == 0
    assert count(conn, "link_code_failures") == 0  # refused before the database: not a guess


@pytest.mark.parametrize("typed", ["7KQ2-M9XD-4HT", "7KQ2-M9XD-4HTRX", "7KQ2-M9XD-4HTU", "12a456"])
def test_malformed_codes_are_invalid_input(store: Store, typed: str) -> None:
    (user,) = users(store, "user")
    with pytest.raises(InvalidInput, match="12 letters and digits"):
        store.redeem_link_code(user, typed, now=T0)


def test_a_success_does_not_earn_an_attacker_more_guesses(store: Store) -> None:
    """Redeeming a code of one's own second account used to reset the failure count: with it,
    any number of guesses per account."""
    attacker, second = users(store, "attacker", "second")
    for i in range(9):
        with pytest.raises(LinkCodeInvalid):
            store.redeem_link_code(attacker, "0000-0000-0000", now=T0 + timedelta(seconds=i))
    store.redeem_link_code(attacker, store.create_link_code(second, now=T0).code, now=T0)
    with pytest.raises(LinkCodeInvalid):
        store.redeem_link_code(attacker, "0000-0000-0000", now=T0 + timedelta(seconds=20))
    with pytest.raises(LinkCodeLocked):
        store.redeem_link_code(attacker, "0000-0000-0000", now=T0 + timedelta(seconds=21))


def test_unlink_leaves_the_person_and_the_last_user_takes_it_along(
    store: Store, conn: psycopg.Connection[Any]
) -> None:
    a, b, c = users(store, "a", "b", "c")
    person = store.redeem_link_code(b, store.create_link_code(a, now=T0).code, now=T0).person_id
    store.redeem_link_code(c, store.create_link_code(a, now=T0).code, now=T0)

    left = store.unlink(b, now=T0 + timedelta(minutes=1))
    assert (left.user_id, left.person_id, left.person_deleted) == (b, person, False)
    assert [u.user_id for u in store.get_linked_users(b)] == [b]
    assert {u.user_id for u in store.get_linked_users(a)} == {a, c}
    assert store.unlink(c).person_deleted is False
    last = store.unlink(a)
    assert (last.person_id, last.person_deleted) == (person, True)
    assert count(conn, "persons") == 0
    # Linked to nobody: nothing to leave.
    alone = store.unlink(a)
    assert (alone.person_id, alone.person_deleted) == (None, False)
    # Unlinked users link again as anyone does.
    relinked = store.redeem_link_code(b, store.create_link_code(a, now=T0).code, now=T0)
    assert {u.user_id for u in store.get_linked_users(a)} == {a, b} and relinked.person_id


def test_unlink_of_an_unknown_or_malformed_user(store: Store) -> None:
    with pytest.raises(NotFound):
        store.unlink(uuid.uuid4())
    with pytest.raises(InvalidInput, match="user_id"):
        store.unlink("nobody")


def test_unlink_from_the_async_store_and_the_default_store(store: Store, database_url: str) -> None:
    a, b = users(store, "a", "b")
    store.redeem_link_code(b, store.create_link_code(a, now=T0).code, now=T0)

    async def leave() -> Unlinked:
        async with AsyncStore(database_url) as astore:
            return await astore.unlink(a)

    assert asyncio.run(leave()).person_deleted is False
    init_database(database_url)
    try:
        assert unlink(b).person_deleted is True
    finally:
        close_database()


def test_link_errors_share_the_store_base_class() -> None:
    for error in (LinkCodeInvalid, LinkCodeExpired, LinkCodeLocked, LinkCodeOutdated):
        assert issubclass(error, StoreError)


def strings_in(value: Any, depth: int = 0) -> Iterator[str]:
    """Every string a frame's local holds, looking into containers and dataclasses."""
    if depth > 4:
        return
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in [*value.keys(), *value.values()]:
            yield from strings_in(item, depth + 1)
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            yield from strings_in(item, depth + 1)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            yield from strings_in(getattr(value, f.name), depth + 1)


def traceback_locals(exc: BaseException | None) -> Iterator[tuple[str, str, Any]]:
    """(function, name, value) of every local of every frame of the exception's traceback, and
    of the exceptions it was raised from."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        tb = exc.__traceback__
        while tb is not None:
            for name, value in tb.tb_frame.f_locals.items():
                yield tb.tb_frame.f_code.co_name, name, value
            tb = tb.tb_next
        exc = exc.__cause__ or exc.__context__


def test_a_failed_creation_leaves_the_code_in_no_frame_of_the_traceback(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    """A real failure: the statement times out on a table another session holds locked."""
    with Store(database_url, max_size=1, statement_timeout_ms=300) as timed:
        user = timed.get_or_create_user("telegram", "owner", now=T0).user_id
        with psycopg.connect(database_url) as holder:
            holder.execute("LOCK TABLE link_codes IN ACCESS EXCLUSIVE MODE")
            with pytest.raises(StoreError) as caught:
                timed.create_link_code(user, now=T0)
            holder.rollback()
    frames = list(traceback_locals(caught.value))
    assert "_draw_link_code" in {function for function, _, _ in frames}  # the creator's frame
    sent = [v for _, name, v in frames if name == "key" and isinstance(v, str)]
    assert sent and all(v.startswith("h:") for v in sent)  # only the key went out
    for function, name, value in frames:
        for text in strings_in(value):
            try:
                canonical = validate.link_code(text)
            except StoreError:  # not a code at all
                continue
            leaked = validate.link_code_key(canonical) in sent
            assert not leaked, f"the live code is in {function}'s local {name!r}"
