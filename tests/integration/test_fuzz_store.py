"""Every public store call, sync and async, against PostgreSQL with generated input.

The property, per call: it either returns what it promised, or raises ``InvalidInput`` (or
another documented ``StoreError``) and changes nothing in the database: the count and
contents of every table are compared before and after. And accepting a value is a promise
that everything downstream can handle it: after every accepted call the user's history reads
back, the user's next turn works (by the database's clock, and again after the idle timeout
opened a new session), every daemon job succeeds on the same database, and erasure works.

One database per test function (not per example: creating one costs more than the calls);
each example arranges a fresh user and erases it at the end. Examples are derandomized (see
tests/conftest.py), so a failure reproduces; the regression tests at the end pin each bug the
fuzzer found.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext, suppress
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest
from fuzz_strategies import (
    US,
    Known,
    aware_times,
    call_arguments,
    examples,
    random_known,
    token_counts,
)
from hypothesis import given
from hypothesis import strategies as st
from psycopg import sql

from sessionkeeper.jobs import partition_maintenance
from sessionkeeper.jobs.registry import JOBS
from sessionkeeper.jobs.runner import run_job
from store import (
    ANONYMOUS_USER_ID,
    Appended,
    AsyncStore,
    Exported,
    Forgotten,
    InvalidInput,
    LinkCode,
    LinkCodeError,
    Linked,
    Message,
    NotFound,
    PartitionMissing,
    ProactiveUser,
    RateDecision,
    Session,
    Store,
    StoreError,
    Turn,
    Unlinked,
    User,
    validate,
)

Conn = psycopg.Connection[tuple[Any, ...]]
Snapshot = dict[str, tuple[int, str]]
# A store call over a database costs milliseconds and each accepted one runs every job: fewer
# examples than the unit properties, still derandomized.
DB_EXAMPLES = examples(0.5)
SHELLS = ("sync", "async")
_serial = itertools.count()


# -- the harness -------------------------------------------------------------------------------


@dataclass
class Fuzz:
    """Both shells on one database, and a connection to look at its rows."""

    url: str
    sync: Store
    async_: AsyncStore
    loop: asyncio.AbstractEventLoop
    conn: Conn

    def call(self, shell: str, name: str, *args: Any, **kwargs: Any) -> Any:
        if shell == "sync":
            return getattr(self.sync, name)(*args, **kwargs)
        return self.loop.run_until_complete(getattr(self.async_, name)(*args, **kwargs))

    def connect(self) -> AbstractContextManager[Conn]:
        """For the job runner: the test's connection, left open."""
        return nullcontext(self.conn)


@pytest.fixture
def fuzz(database_url: str) -> Iterator[Fuzz]:
    loop = asyncio.new_event_loop()
    async_store = AsyncStore(database_url, max_size=2)
    loop.run_until_complete(async_store.open())
    try:
        with (
            Store(database_url, max_size=2) as sync_store,
            psycopg.connect(database_url, autocommit=True) as conn,
        ):
            yield Fuzz(database_url, sync_store, async_store, loop, conn)
    finally:
        loop.run_until_complete(async_store.close())
        loop.close()


def snapshot(conn: Conn) -> Snapshot:
    """Row count and a digest of the contents of every table, in one round trip."""
    tables = [
        row[0]
        for row in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() ORDER BY 1"
        )
    ]
    per_table = sql.SQL(
        "SELECT {name}, count(*), md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), ''))"
        " FROM {table} t"
    )
    query = sql.SQL(" UNION ALL ").join(
        per_table.format(name=sql.Literal(table), table=sql.Identifier(table)) for table in tables
    )
    return {name: (int(n), str(digest)) for name, n, digest in conn.execute(query)}


def changed(before: Snapshot, after: Snapshot) -> set[str]:
    return {
        table for table in before.keys() | after.keys() if before.get(table) != after.get(table)
    }


@dataclass(frozen=True)
class Refused:
    error: StoreError


def attempt(
    fuzz: Fuzz, shell: str, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """The call's result, or ``Refused`` after a documented refusal that changed nothing (a
    wrong link code is counted against the redeeming user: only that table may change). Any
    other exception fails the test."""
    before = snapshot(fuzz.conn)
    try:
        return fuzz.call(shell, name, *args, **kwargs)
    except (InvalidInput, NotFound, PartitionMissing) as refused:
        assert str(refused)
        assert changed(before, snapshot(fuzz.conn)) == set(), f"{name} refused but wrote"
        return Refused(refused)
    except LinkCodeError as refused:
        assert name == "redeem_link_code"
        assert changed(before, snapshot(fuzz.conn)) <= {"link_code_failures"}
        return Refused(refused)


@dataclass
class Example:
    known: Known
    others: tuple[UUID, ...]  # the link code's owner, the person's other user


def cover(fuzz: Fuzz, at: datetime) -> None:
    """Time partitions for ``at``, as partition_maintenance running then would have made them:
    no DEFAULT partition takes a row of a time none covers (revision 0022), and the jobs that
    downstream() runs late drop those of earlier days."""
    partition_maintenance.run(fuzz.conn, partition_maintenance.Settings(ahead=1), at)


def arrange(fuzz: Fuzz) -> Example:
    cover(fuzz, datetime.now(UTC))
    """A fresh user with a session, a message, usage, a proactive chat and a person of two
    users; another user holding a live link code."""
    n = next(_serial)
    store = fuzz.sync
    user = store.get_or_create_user("telegram", f"fuzz-{n}")
    owner = store.get_or_create_user("whatsapp", f"fuzz-owner-{n}")
    partner = store.get_or_create_user("whatsapp", f"fuzz-partner-{n}")
    store.redeem_link_code(user.user_id, store.create_link_code(partner.user_id).code)
    code = store.create_link_code(owner.user_id).code
    turn = store.begin_turn("telegram", f"fuzz-{n}")
    store.finish_turn(turn, "arranged question", "arranged answer", input_tokens=3)
    store.register_proactive_user(f"chat-{n}", user.user_id)
    person = store.get_linked_users(user.user_id)[0].person_id
    assert turn.session_id is not None and person is not None
    known = Known("telegram", f"fuzz-{n}", user.user_id, turn.session_id, person, code, turn)
    return Example(known, (owner.user_id, partner.user_id))


# -- what each call promised -------------------------------------------------------------------


def user_ids_of(result: Any) -> set[UUID]:
    """Users an accepted call created or touched, for the downstream checks."""
    if isinstance(result, Turn):
        return {result.user.user_id}
    if isinstance(result, User):
        return {result.user_id}
    if isinstance(result, Session | Appended | ProactiveUser):
        return {result.user_id}
    if isinstance(result, list):
        return {item.user_id for item in result if isinstance(item, User | ProactiveUser)}
    return set()


def check_promise(fuzz: Fuzz, name: str, args: tuple[Any, ...], result: Any) -> None:
    """The result has the promised shape, and what it reports is in the database."""
    promised: dict[str, type | tuple[type, ...]] = {
        "begin_turn": Turn,
        "finish_turn": Appended,
        "get_or_create_user": User,
        "find_user": User,
        "get_or_create_session": Session,
        "append_messages": Appended,
        "trim_session_history": int,
        "clear_session_history": int,
        "get_history": list,
        "check_rate_limit": RateDecision,
        "track_usage": UUID,
        "register_proactive_user": ProactiveUser,
        "load_users_from_db": list,
        "create_link_code": LinkCode,
        "redeem_link_code": Linked,
        "get_linked_users": list,
        "forget_user": Forgotten,
        "forget_person": Forgotten,
        "forget_channel_user": Forgotten,
        "unlink": Unlinked,
        "export_user": Exported,
        "export_person": Exported,
    }
    assert isinstance(result, promised[name]), f"{name} returned {type(result).__name__}"
    if isinstance(result, Turn):
        assert result.user.channel == args[0]
        assert result.user.channel_user_id == validate.identifier(args[1], "id")
        assert (result.session_id is not None) == result.allowed
        assert all(isinstance(m, Message) for m in result.history)
    elif isinstance(result, Appended):
        stored = fuzz.conn.execute(
            "SELECT count(*) FROM session_messages WHERE session_id = %s AND seq >= %s",
            (result.session_id, result.next_seq - result.appended),
        ).fetchone()
        assert stored is not None and stored[0] == result.appended > 0
    elif name == "find_user":
        assert isinstance(result, User)
        assert (result.channel, result.channel_user_id) == (
            args[0],
            validate.identifier(args[1], "id"),
        )
    elif name == "get_history":
        assert isinstance(result, list)
        seqs = [message.seq for message in result]
        assert seqs == sorted(seqs)
    elif name == "track_usage":
        row = fuzz.conn.execute(
            "SELECT input_tokens, output_tokens, cached_tokens FROM usage_stats WHERE stat_id = %s",
            (result,),
        ).fetchone()
        assert row == tuple(args[2:5])
    elif isinstance(result, LinkCode):
        assert validate.link_code(result.code) == result.code.replace("-", "")
    elif isinstance(result, Unlinked):
        row = fuzz.conn.execute(
            "SELECT person_id FROM users WHERE user_id = %s", (result.user_id,)
        ).fetchone()
        assert row == (None,)
    elif isinstance(result, Exported):
        document = json.loads(args[1].getvalue())
        assert isinstance(document, dict) and sum(result.rows.values()) >= 1
    elif isinstance(result, Forgotten):
        assert result.deleted.get("users", 0) >= 1


# -- what must still work after an accepted call -----------------------------------------------


def downstream(fuzz: Fuzz, users: set[UUID]) -> None:
    """Reads, later turns, every job and erasure, for every user the call touched."""
    store = fuzz.sync
    latest = datetime.now(UTC)
    for user_id in users:
        row = fuzz.conn.execute(
            "SELECT channel, channel_user_id FROM users WHERE user_id = %s", (user_id,)
        ).fetchone()
        if row is None:  # erased by the call itself
            continue
        channel, sender = row
        for (session_id,) in fuzz.conn.execute(
            "SELECT session_id FROM sessions WHERE user_id = %s", (user_id,)
        ).fetchall():
            store.get_history(session_id, 100_000)
        store.get_or_create_session(user_id)
        store.check_rate_limit(user_id)
        store.get_linked_users(user_id)
        turn = store.begin_turn(channel, sender)
        if turn.allowed:
            store.finish_turn(turn, "a later question", "a later answer", input_tokens=1)
        # After the idle timeout: a new session, which carries pairs of the old one over.
        idle_row = fuzz.conn.execute(
            "SELECT max(last_active) FROM sessions WHERE user_id = %s", (user_id,)
        ).fetchone()
        assert idle_row is not None
        last_active = idle_row[0] or datetime.now(UTC)
        later = max(last_active, datetime.now(UTC)) + store.config.idle_timeout + timedelta(1)
        if later < validate.LATEST:
            cover(fuzz, later)
            turn = store.begin_turn(channel, sender, now=later)
            assert turn.allowed and turn.session_created
            store.finish_turn(turn, "after a pause", "welcome back", now=later)
            latest = max(latest, later)
    store.load_users_from_db()
    # Every job, late enough that the session archival moves what the call wrote.
    jobs_now = min(latest + timedelta(days=31), datetime(9999, 1, 1, tzinfo=UTC))
    for name, spec in JOBS.items():
        report = run_job(fuzz.connect, name, spec.settings(), replica_id="fuzz", now=jobs_now)
        assert report.outcome == "success", report.error
    for user_id in users:
        with suppress(NotFound):  # erased already: by the call itself
            store.forget_user(user_id)
    rollup = fuzz.conn.execute("SELECT count(*) FROM usage_stats WHERE NOT rolled_up").fetchone()
    assert rollup == (0,)


def erase(fuzz: Fuzz, example: Example) -> None:
    for user_id in (example.known.user_id, *example.others):
        with suppress(NotFound):
            fuzz.sync.forget_user(user_id)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(call_arguments(random_known())))
@DB_EXAMPLES
@given(shell=st.sampled_from(SHELLS), data=st.data())
def test_every_call_keeps_its_promise_or_refuses_cleanly(
    fuzz: Fuzz, name: str, shell: str, data: st.DataObject
) -> None:
    example = arrange(fuzz)
    args, kwargs = data.draw(call_arguments(example.known)[name], label=f"{shell} {name}")
    result = attempt(fuzz, shell, name, args, kwargs)
    if not isinstance(result, Refused):
        check_promise(fuzz, name, args, result)
        # A bot does the same thing again (two token counts add up in the daily totals).
        attempt(fuzz, shell, name, args, kwargs)
        downstream(fuzz, user_ids_of(result) | {example.known.user_id})
    erase(fuzz, example)


# -- one kind of value at a time, every other argument valid -----------------------------------

TimeUse = Callable[[Known, datetime], tuple[str, tuple[Any, ...], dict[str, Any]]]
TIME_USES: dict[str, TimeUse] = {
    "begin_turn now": lambda k, t: ("begin_turn", (k.channel, k.channel_user_id), {"now": t}),
    "finish_turn now": lambda k, t: ("finish_turn", (k.turn, "q", "a"), {"now": t}),
    "finish_turn message time": lambda k, t: (
        "finish_turn",
        (k.session_id, {"role": "user", "content": "q", "timestamp": t}, "a"),
        {},
    ),
    "append_messages message time": lambda k, t: (
        "append_messages",
        (k.session_id, [{"role": "tool", "content": "x", "timestamp": t.isoformat()}]),
        {},
    ),
    "append_messages now": lambda k, t: (
        "append_messages",
        (k.session_id, [{"role": "system", "content": "x"}]),
        {"now": t},
    ),
    "get_or_create_user now": lambda k, t: (
        "get_or_create_user",
        (k.channel, k.channel_user_id),
        {"now": t},
    ),
    "get_or_create_session now": lambda k, t: ("get_or_create_session", (k.user_id,), {"now": t}),
    "check_rate_limit now": lambda k, t: ("check_rate_limit", (k.user_id,), {"now": t}),
    "track_usage now": lambda k, t: ("track_usage", (k.user_id, k.channel, 1, 2, 3), {"now": t}),
    "register_proactive_user now": lambda k, t: (
        "register_proactive_user",
        ("chat", k.user_id),
        {"now": t},
    ),
    "create_link_code now": lambda k, t: ("create_link_code", (k.user_id,), {"now": t}),
    "redeem_link_code now": lambda k, t: ("redeem_link_code", (k.user_id, k.code), {"now": t}),
}


@pytest.mark.slow
@DB_EXAMPLES
@given(
    shell=st.sampled_from(SHELLS),
    use=st.sampled_from(sorted(TIME_USES)),
    when=aware_times,
)
def test_every_accepted_time_is_read_back_by_everything_later(
    fuzz: Fuzz, shell: str, use: str, when: datetime
) -> None:
    example = arrange(fuzz)
    name, args, kwargs = TIME_USES[use](example.known, when)
    if validate.EARLIEST <= when < validate.LATEST:
        cover(fuzz, when)
    result = attempt(fuzz, shell, name, args, kwargs)
    in_range = validate.EARLIEST <= when < validate.LATEST
    if isinstance(result, Refused):
        assert isinstance(result.error, InvalidInput) != in_range
    else:
        assert in_range
        check_promise(fuzz, name, args, result)
        attempt(fuzz, shell, name, args, kwargs)
        downstream(fuzz, user_ids_of(result) | {example.known.user_id})
    erase(fuzz, example)


@pytest.mark.slow
@DB_EXAMPLES
@given(
    shell=st.sampled_from(SHELLS),
    via_turn=st.booleans(),
    counts=st.tuples(token_counts, token_counts, token_counts),
)
def test_every_accepted_token_count_is_rolled_up_and_erased(
    fuzz: Fuzz, shell: str, via_turn: bool, counts: tuple[Any, Any, Any]
) -> None:
    example = arrange(fuzz)
    k = example.known
    args: tuple[Any, ...]
    if via_turn:
        tokens = dict(zip(("input_tokens", "output_tokens", "cached_tokens"), counts, strict=True))
        name, args, kwargs = "finish_turn", (k.turn, "q", "a"), tokens
    else:
        name, args, kwargs = "track_usage", (k.user_id, k.channel, *counts), {}
    results = [attempt(fuzz, shell, name, args, kwargs) for _ in range(3)]
    if not isinstance(results[0], Refused):
        assert not any(isinstance(result, Refused) for result in results)
        downstream(fuzz, {k.user_id})
    erase(fuzz, example)


# -- regressions: each bug the fuzzer found, pinned --------------------------------------------

BC = datetime(1, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=1)))  # 0001-12-31 BC in UTC
AFTER_10K = datetime(9999, 12, 31, 23, 55, tzinfo=UTC)  # + a 10-minute link code: year 10000


@pytest.mark.parametrize("stamp", [BC, BC.isoformat(), AFTER_10K], ids=["BC", "BC-iso", "10K"])
def test_a_message_time_python_cannot_read_back_is_refused(
    fuzz: Fuzz, stamp: datetime | str
) -> None:
    # Was: stored, then every later begin_turn of the user failed with psycopg's DataError
    # ("timestamp too small"), also after the idle timeout, which carried the message over.
    example = arrange(fuzz)
    k = example.known
    before = snapshot(fuzz.conn)
    message = {"role": "user", "content": "x", "timestamp": stamp}
    with pytest.raises(InvalidInput, match="between 1970-01-01 and 9000-01-01"):
        fuzz.sync.append_messages(k.session_id, [message])
    with pytest.raises(InvalidInput, match="between 1970-01-01 and 9000-01-01"):
        fuzz.sync.finish_turn(k.turn, message, "a")
    assert snapshot(fuzz.conn) == before
    downstream(fuzz, {k.user_id})
    erase(fuzz, example)


@pytest.mark.parametrize("shell", SHELLS)
def test_a_clock_python_cannot_read_back_is_refused_before_anything_commits(
    fuzz: Fuzz, shell: str
) -> None:
    # Was: the link code (expiring in year 10000) and begin_turn's user and rate-limit rows
    # (for a time in 1 BC) committed, then reading the returned row raised a raw DataError.
    example = arrange(fuzz)
    k = example.known
    before = snapshot(fuzz.conn)
    for name, args, now in (
        ("create_link_code", (k.user_id,), AFTER_10K),
        ("begin_turn", ("telegram", "a new user"), BC),
        ("check_rate_limit", (k.user_id,), datetime.max.replace(tzinfo=UTC)),
    ):
        with pytest.raises(InvalidInput, match="now must lie between"):
            fuzz.call(shell, name, *args, now=now)
    assert snapshot(fuzz.conn) == before
    erase(fuzz, example)


def test_the_accepted_time_range_is_exact_to_the_microsecond(fuzz: Fuzz) -> None:
    example = arrange(fuzz)
    k = example.known
    tokyo = timezone(timedelta(hours=9))
    for inside in (
        validate.EARLIEST,
        validate.LATEST - US,
        (validate.LATEST - US).astimezone(tokyo),
    ):
        cover(fuzz, inside)
        code = fuzz.sync.create_link_code(k.user_id, now=inside)
        assert code.expires_at == inside + fuzz.sync.config.link_code_ttl
        turn = fuzz.sync.begin_turn(k.channel, k.channel_user_id, now=inside)
        assert turn.session_id is not None
        stamp = {"role": "user", "content": "edge", "timestamp": inside}
        fuzz.sync.finish_turn(turn, stamp, "ok", now=inside)
        assert turn.started_at == inside and turn.started_at.utcoffset() == timedelta(0)
        assert fuzz.sync.get_history(turn.session_id, 1)[0].timestamp == inside
    for outside in (
        validate.EARLIEST - US,
        validate.LATEST,
        validate.EARLIEST.astimezone(tokyo) - US,
    ):
        with pytest.raises(InvalidInput):
            fuzz.sync.begin_turn(k.channel, k.channel_user_id, now=outside)
    downstream(fuzz, {k.user_id})
    erase(fuzz, example)


def test_integers_too_long_to_print_are_refused(fuzz: Fuzz) -> None:
    # Was: a raw ValueError from str()/repr() ("Exceeds the limit (4300 digits)").
    example = arrange(fuzz)
    huge = 10**5000
    before = snapshot(fuzz.conn)
    for call in (
        lambda: fuzz.sync.get_or_create_user("telegram", huge),
        lambda: fuzz.sync.register_proactive_user(huge, example.known.user_id),
        lambda: fuzz.sync.get_history(huge),  # type: ignore[arg-type]
        lambda: fuzz.sync.forget_person(huge),  # type: ignore[arg-type]
    ):
        with pytest.raises(InvalidInput):
            call()
    assert fuzz.sync.get_or_create_user("telegram", 10**256 - 1).channel_user_id == "9" * 256
    assert snapshot(fuzz.conn) != before
    erase(fuzz, example)
    fuzz.sync.forget_user(fuzz.sync.get_or_create_user("telegram", 10**256 - 1).user_id)


def test_a_hand_built_turn_is_checked_like_any_argument(fuzz: Fuzz) -> None:
    example = arrange(fuzz)
    forged = replace(example.known.turn, session_id="not a session")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match=r"turn\.session_id"):
        fuzz.sync.finish_turn(forged, "q", "a")
    erase(fuzz, example)


def test_an_endless_message_iterable_is_refused_without_reading_it_all(fuzz: Fuzz) -> None:
    endless = ({"role": "user", "content": "again"} for _ in itertools.count())
    with pytest.raises(InvalidInput, match="1 to 1000 entries"):
        fuzz.sync.append_messages(uuid4(), endless)


def test_token_counts_are_capped_per_call(fuzz: Fuzz) -> None:
    # Was: up to 2**62 a call; two such rows overflow the day's bigint total.
    example = arrange(fuzz)
    k = example.known
    fuzz.sync.track_usage(k.user_id, k.channel, validate.MAX_TOKENS, validate.MAX_TOKENS)
    for too_many in (validate.MAX_TOKENS + 1, 2**62, 2**63):
        with pytest.raises(InvalidInput, match="input_tokens must be between 0 and 2147483647"):
            fuzz.sync.track_usage(k.user_id, k.channel, too_many)
        with pytest.raises(InvalidInput, match="cached_tokens"):
            fuzz.sync.finish_turn(k.turn, "q", "a", cached_tokens=too_many)
    downstream(fuzz, {k.user_id})
    erase(fuzz, example)


def test_usage_totals_saturate_instead_of_failing_for_every_user(fuzz: Fuzz) -> None:
    # Release 0.1.0 bots (still running during an upgrade) accept up to 2**62 tokens a call:
    # two such rows overflowed usage_daily's bigint, and the failing batch was retried on every
    # run, so nobody's usage was rolled up any more; erasing such a user failed too.
    example = arrange(fuzz)
    k = example.known
    pending = fuzz.sync.get_or_create_user("telegram", "erased before the rollup").user_id
    bystander = fuzz.sync.get_or_create_user("whatsapp", "bystander").user_id
    fuzz.sync.track_usage(bystander, "whatsapp", 5)
    for user in (k.user_id, pending) * 3:
        fuzz.conn.execute(
            "INSERT INTO usage_stats (user_id, channel, input_tokens, output_tokens, created_at)"
            " VALUES (%s, 'telegram', 2^62, 7, '2026-03-02')",
            (user,),
        )
    fuzz.sync.forget_user(pending)  # its pending rows are folded into the anonymous totals

    def rollup() -> None:
        job = JOBS["usage_rollup"]
        report = run_job(fuzz.connect, job.name, job.settings(), replica_id="fuzz")
        assert report.outcome == "success", report.error

    rollup()
    rollup()  # nothing left: a failing batch would have stayed pending
    totals = dict(
        (user, (tokens_in, tokens_out))
        for user, tokens_in, tokens_out in fuzz.conn.execute(
            "SELECT user_id, sum(input_tokens), sum(output_tokens) FROM usage_daily"
            " WHERE user_id IN (%s, %s) AND day = '2026-03-02' GROUP BY 1",
            (k.user_id, ANONYMOUS_USER_ID),
        )
    )
    assert totals == {k.user_id: (2**63 - 1, 21), ANONYMOUS_USER_ID: (2**63 - 1, 21)}
    bystander_total = fuzz.conn.execute(
        "SELECT sum(input_tokens) FROM usage_daily WHERE user_id = %s", (bystander,)
    ).fetchone()
    assert bystander_total == (5,)
    erase(fuzz, example)  # merged into the anonymous totals, which stay at the maximum
    anonymous = fuzz.conn.execute(
        "SELECT input_tokens, output_tokens FROM usage_daily"
        " WHERE user_id = %s AND day = '2026-03-02' AND channel = 'telegram'",
        (ANONYMOUS_USER_ID,),
    ).fetchone()
    assert anonymous == (2**63 - 1, 42)
    fuzz.sync.forget_user(bystander)
