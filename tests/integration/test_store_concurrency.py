"""Races, run for real: many threads or asyncio tasks against one PostgreSQL database.

Each test lines its workers up on a barrier (or gathers tasks) so the calls overlap; the
assertions hold for every interleaving, so a race the store did not close fails them.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from functools import partial
from typing import Any, TypeVar

import psycopg
import pytest
from store_support import T0, count, store_fixture  # noqa: F401 (fixture)
from test_store_failover import wait_until_waiting_on_locks

from store import (
    AsyncStore,
    Forgotten,
    LinkCodeInvalid,
    LinkCodeLocked,
    Linked,
    NotFound,
    Store,
    Unlinked,
)

T = TypeVar("T")


def in_threads(workers: int, call: Callable[[int], T]) -> list[T]:
    """``call(i)`` for i in range(workers), each in its own thread, released together."""
    barrier = threading.Barrier(workers)

    def run(i: int) -> T:
        barrier.wait()
        return call(i)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(run, range(workers)))


def outcome_of_nth(calls: list[Callable[[], T]], i: int) -> T | Exception:
    """What ``calls[i]()`` returned, or the error it raised."""
    try:
        return calls[i]()
    except Exception as exc:
        return exc


def test_sixteen_concurrent_first_messages_make_one_user_and_one_session(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    with Store(database_url, max_size=16, rate_per_minute=100) as store:
        turns = in_threads(16, lambda _: store.begin_turn("telegram", "first", now=T0))
    assert count(conn, "users") == 1 and count(conn, "sessions") == 1
    assert len({t.user.user_id for t in turns}) == 1
    assert len({t.session_id for t in turns}) == 1
    assert sum(t.user.created for t in turns) == 1
    assert sum(t.session_created for t in turns) == 1


def test_eighty_concurrent_appends_store_eighty_messages(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    with Store(database_url, max_size=16) as store:
        user = store.get_or_create_user("telegram", "appender")
        session = store.get_or_create_session(user.user_id).session_id
        in_threads(
            80,
            lambda i: store.append_messages(session, [{"role": "user", "content": f"m{i}"}]),
        )
    rows = conn.execute("SELECT seq, content FROM session_messages ORDER BY seq").fetchall()
    assert [seq for seq, _ in rows] == list(range(80))
    assert {content for _, content in rows} == {f"m{i}" for i in range(80)}
    assert conn.execute("SELECT next_seq FROM sessions").fetchone() == (80,)


def test_eighty_concurrent_async_turn_finishes_lose_nothing(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    async def scenario() -> None:
        async with AsyncStore(database_url, max_size=10, rate_per_minute=None) as store:
            turn = await store.begin_turn("whatsapp", "async", now=T0)
            await asyncio.gather(
                *(
                    store.finish_turn(turn, f"q{i}", f"a{i}", max_pairs=1000, output_tokens=1)
                    for i in range(40)
                )
            )

    asyncio.run(scenario())
    assert count(conn, "session_messages") == 80
    assert count(conn, "usage_stats") == 40
    # Each turn's question and answer are adjacent: a finish is one atomic append.
    rows = conn.execute("SELECT content FROM session_messages ORDER BY seq").fetchall()
    pairs = [(rows[i][0], rows[i + 1][0]) for i in range(0, 80, 2)]
    assert all(q[1:] == a[1:] and q[0] == "q" and a[0] == "a" for q, a in pairs)


def test_forty_concurrent_rate_checks_admit_exactly_the_limit(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    with Store(database_url, max_size=16, rate_per_minute=15, rate_per_hour=25) as store:
        user = store.get_or_create_user("telegram", "burst").user_id
        decisions = in_threads(40, lambda _: store.check_rate_limit(user, now=T0))
    assert sum(d.allowed for d in decisions) == 15
    # Refused requests counted against no window: the hour saw exactly the admitted ones.
    counts = dict(conn.execute("SELECT window_seconds, request_count FROM rate_limits").fetchall())
    assert counts == {60: 15, 3600: 15}


def test_twenty_users_racing_for_one_code_redeem_it_once(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    async def scenario() -> list[object]:
        async with AsyncStore(database_url, max_size=10) as store:
            owner = await store.get_or_create_user("telegram", "owner")
            code = await store.create_link_code(owner.user_id, now=T0)
            racers = [await store.get_or_create_user("whatsapp", f"r{i}") for i in range(20)]
            return await asyncio.gather(
                *(store.redeem_link_code(r.user_id, code.code, now=T0) for r in racers),
                return_exceptions=True,
            )

    outcomes = asyncio.run(scenario())
    assert sum(isinstance(o, Linked) for o in outcomes) == 1
    assert sum(isinstance(o, LinkCodeInvalid) for o in outcomes) == 19
    assert count(conn, "users", "person_id IS NOT NULL") == 2
    assert count(conn, "link_codes", "used_at IS NOT NULL") == 1


def test_thirty_concurrent_guesses_of_one_account_evaluate_only_its_ten(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    # An account's attempts are counted one at a time: concurrency buys no extra guesses.
    async def scenario() -> list[object]:
        async with AsyncStore(database_url, max_size=10) as store:
            guesser = await store.get_or_create_user("whatsapp", "guesser")
            return await asyncio.gather(
                *(
                    store.redeem_link_code(guesser.user_id, f"0000-0000-{i:04d}", now=T0)
                    for i in range(30)
                ),
                return_exceptions=True,
            )

    outcomes = asyncio.run(scenario())
    assert sum(type(o) is LinkCodeInvalid for o in outcomes) == 10
    assert sum(isinstance(o, LinkCodeLocked) for o in outcomes) == 20


def test_a_chain_of_concurrent_merges_ends_in_one_person(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    # user i+1 redeems user i's code, all at once: overlapping persons merge one at a time
    # (each waits for the other's person lock, then sees where its users are now).
    async def scenario() -> list[object]:
        async with AsyncStore(database_url, max_size=10) as store:
            people = [await store.get_or_create_user("telegram", f"p{i}") for i in range(20)]
            codes = [await store.create_link_code(p.user_id, now=T0) for p in people]
            return await asyncio.gather(
                *(
                    store.redeem_link_code(people[i + 1].user_id, codes[i].code, now=T0)
                    for i in range(19)
                )
            )

    outcomes = asyncio.run(scenario())
    assert all(isinstance(o, Linked) for o in outcomes)
    persons = conn.execute("SELECT DISTINCT person_id FROM users").fetchall()
    assert len(persons) == 1 and persons[0][0] is not None


def test_concurrent_merges_and_unlinks_leave_no_user_in_a_deleted_person(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    async def scenario() -> list[object]:
        async with AsyncStore(database_url, max_size=10) as store:
            people = [await store.get_or_create_user("telegram", f"p{i}") for i in range(12)]
            codes = [await store.create_link_code(p.user_id, now=T0) for p in people]
            # Pairs (0,1), (2,3), ... first; then chain the pairs while their users leave.
            for i in range(0, 12, 2):
                await store.redeem_link_code(people[i + 1].user_id, codes[i].code, now=T0)
            later = T0 + timedelta(seconds=1)
            codes = [await store.create_link_code(p.user_id, now=later) for p in people]
            return await asyncio.gather(
                *(
                    store.redeem_link_code(people[i + 1].user_id, codes[i].code, now=later)
                    for i in range(1, 11, 2)
                ),
                *(store.unlink(people[i].user_id, now=later) for i in range(0, 12, 4)),
            )

    outcomes = asyncio.run(scenario())
    assert all(isinstance(o, Linked | Unlinked) for o in outcomes)
    assert (
        count(
            conn,
            "users u",
            "u.person_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM"
            " persons p WHERE p.person_id = u.person_id)",
        )
        == 0
    )
    # A person without users exists only when a merge emptied it (merges keep them).
    assert count(conn, "users", "person_id IS NULL") <= 3


def test_redemptions_of_unrelated_people_do_not_wait_for_each_other(
    store: Store, database_url: str
) -> None:
    a, b, c, d = (store.get_or_create_user("telegram", n, now=T0).user_id for n in "abcd")
    code_ab = store.create_link_code(a, now=T0).code
    code_cd = store.create_link_code(c, now=T0).code
    with psycopg.connect(database_url) as held:  # a transaction left open mid-redemption
        held.execute(
            "SELECT * FROM sk_redeem_link_code(%s, %s, %s, 10, '10 min', '15 min')",
            (b, code_ab.replace("-", ""), T0),
        )
        with Store(database_url, statement_timeout_ms=2000) as other:
            assert other.redeem_link_code(d, code_cd, now=T0).owner_id == c
        held.rollback()


@pytest.mark.slow
def test_concurrent_redemptions_unlinks_and_erasures_never_deadlock_nor_orphan(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    # Owners o0..o7 linked in pairs (four persons); fresh redeemers r0..r7 redeem the owners'
    # codes while owners leave their persons, owners and a redeemer are forgotten, and a whole
    # person is forgotten, all at once over the same persons. The three take their locks in
    # one order: nothing deadlocks, and every call either happens wholly before or after the
    # others it overlaps. Redeemers have no person of their own, so no merge empties a person:
    # a person without users here is one that an erasure or unlink left behind.
    rounds = 8
    erased: list[object] = []
    with Store(database_url, max_size=16) as store:
        for n in range(rounds):
            owners = [store.get_or_create_user("telegram", f"o{n}-{i}").user_id for i in range(8)]
            redeemers = [
                store.get_or_create_user("whatsapp", f"r{n}-{i}").user_id for i in range(8)
            ]
            pairs = [
                store.redeem_link_code(owners[i + 1], store.create_link_code(owners[i]).code)
                for i in range(0, 8, 2)
            ]
            codes = [store.create_link_code(o).code for o in owners]
            erased += [owners[1], owners[4], redeemers[2]]
            calls: list[Callable[[], object]] = [
                *(partial(store.redeem_link_code, redeemers[i], codes[i]) for i in range(8)),
                partial(store.forget_user, owners[1]),
                partial(store.forget_user, owners[4]),
                partial(store.forget_user, redeemers[2]),
                partial(store.forget_person, pairs[3].person_id),  # o6 and o7
                partial(store.unlink, owners[0]),
                partial(store.unlink, owners[5]),
                partial(store.unlink, owners[6]),
                partial(store.unlink, redeemers[3]),
            ]

            outcomes = in_threads(len(calls), partial(outcome_of_nth, calls))
            # A call that lost a race finds its user or code gone; nothing else goes wrong.
            unexpected = [
                o
                for o in outcomes
                if not isinstance(o, Linked | Unlinked | Forgotten | NotFound | LinkCodeInvalid)
            ]
            assert unexpected == []
    assert (
        count(
            conn,
            "users u",
            "u.person_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM"
            " persons p WHERE p.person_id = u.person_id)",
        )
        == 0
    )
    orphans = "NOT EXISTS (SELECT 1 FROM users u WHERE u.person_id = p.person_id)"
    assert count(conn, "persons p", orphans) == 0
    # No code names a user that is gone (a redemption by a forgotten user ran before it).
    assert (
        count(
            conn,
            "link_codes c",
            "NOT EXISTS (SELECT 1 FROM users u WHERE"
            " u.user_id = c.used_by) AND c.used_by IS NOT NULL",
        )
        == 0
    )
    # What could not have happened otherwise did: the erased are gone, the others linked.
    gone = conn.execute("SELECT count(*) FROM users WHERE user_id = ANY(%s)", (erased,))
    assert gone.fetchone() == (0,)
    assert count(conn, "users", "channel = 'whatsapp' AND person_id IS NOT NULL") > 0


def test_a_person_erased_while_a_merge_brings_a_user_erases_the_newcomer_too(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    # The erasure read the person's users, then waited for the person's lock held by a merge
    # that adds one more: under the lock it reads them again and erases all three.
    with Store(database_url) as store:
        a, b, c = (store.get_or_create_user("telegram", n, now=T0).user_id for n in "abc")
        person = store.redeem_link_code(b, store.create_link_code(a, now=T0).code, now=T0)
        with psycopg.connect(database_url) as merge:  # mid-merge: the person's lock is held
            merge.execute(
                "SELECT pg_advisory_xact_lock(1936420965, hashtext(%s::text))",
                (person.person_id,),
            )
            with ThreadPoolExecutor(max_workers=1) as pool:
                erasure = pool.submit(store.forget_person, person.person_id)
                wait_until_waiting_on_locks(conn, 1)
                merge.execute(
                    "UPDATE users SET person_id = %s WHERE user_id = %s", (person.person_id, c)
                )
                merge.commit()
                forgotten = erasure.result(timeout=30)
    assert forgotten.deleted["users"] == 3 and forgotten.deleted["persons"] == 1
    assert count(conn, "users") == 0 and count(conn, "persons") == 0
