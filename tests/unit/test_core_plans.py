"""The plans of ``store/core.py`` driven with canned rows: what each sends, how each decodes
what comes back, and the input that never reaches a statement."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from uuid import UUID, uuid4

import pytest
from psycopg.adapt import PyFormat, Transformer
from psycopg.postgres import types as pg_types

import store
from store import core, erasure
from store.client import Operations
from store.config import StoreConfig

from .in_memory import InMemoryDatabase, Rows, one

T0 = datetime(2026, 3, 2, 12, 0, 30, tzinfo=UTC)
USER, PERSON, SESSION = uuid4(), uuid4(), uuid4()


def turn_row(**changes: Any) -> Rows:
    """What sk_begin_turn returns for an admitted turn with two messages of history."""
    row = {
        "user_id": USER,
        "person_id": PERSON,
        "display_name": "Ann",
        "user_created": False,
        "now": T0,
        "allowed": True,
        "retry_at": None,
        "refused_window": None,
        "notify": False,
        "session_id": SESSION,
        "session_created": False,
        "history_seqs": [4, 5],
        "history_roles": ["user", "assistant"],
        "history_contents": ["hi", "hello"],
        "history_created": [T0 - timedelta(minutes=2), T0 - timedelta(minutes=1)],
        "history_extras": [None, {"tool_calls": [{"name": "f", "args": {}, "id": "c1"}]}],
        "history_speakers": None,  # named only in a shared group conversation
    }
    return one(**{**row, **changes})


def user_row(*, person_id: UUID | None, created: bool) -> Rows:
    """A user row as the statements that return users give it (Telegram user "1")."""
    return one(
        user_id=USER,
        channel="telegram",
        channel_user_id="1",
        display_name=None,
        person_id=person_id,
        user_created=created,
    )


def appended_row(**changes: Any) -> Rows:
    row = {"session_id": SESSION, "user_id": USER, "appended": 2, "trimmed": 0, "next_seq": 8}
    return one(**{**row, **changes})


# -- begin_turn --------------------------------------------------------------------------------


def test_begin_turn_decodes_an_admitted_turn_with_its_history(config: StoreConfig) -> None:
    db = InMemoryDatabase(begin_turn=[turn_row()])
    turn = db.call(core.begin_turn, config, "telegram", 42, display_name="Ann", now=T0)
    assert turn.allowed and turn.rate == store.RateDecision(True, None, None)
    assert turn.user == store.User(USER, "telegram", "42", PERSON, "Ann", created=False)
    assert (turn.session_id, turn.session_created, turn.started_at) == (SESSION, False, T0)
    call = {"tool_calls": [{"name": "f", "args": {}, "id": "c1"}]}
    assert turn.history == [
        store.Message("user", "hi", T0 - timedelta(minutes=2), seq=4),
        store.Message("assistant", "hello", T0 - timedelta(minutes=1), seq=5, extra=call),
    ]
    # The tool calls go with the message, in OpenAI's shape (LangChain's were stored).
    function = {"name": "f", "arguments": "{}"}
    assert [m.as_prompt() for m in turn.history] == [
        {"role": "user", "content": "hi"},
        {
            "role": "assistant",
            "content": "hello",
            "tool_calls": [{"id": "c1", "type": "function", "function": function}],
        },
    ]


def test_begin_turn_sends_the_settings_with_the_validated_input(config: StoreConfig) -> None:
    config = replace(config, rate_per_minute=5, rate_per_day=100, durable_rate_limits=True)
    db = InMemoryDatabase(begin_turn=[turn_row()])
    db.call(core.begin_turn, config, "telegram", 42, history_pairs=3)
    assert db.sent[0].params == {
        "channel": "telegram",
        "channel_user_id": "42",  # Telegram's integer ids are stored as text
        "display_name": None,
        "chat_id": None,  # the private chat
        "shared": False,
        "continuity": False,
        "now": None,  # the database clock decides
        "idle": timedelta(minutes=30),
        "carry_pairs": 2,
        "history_pairs": 3,
        "windows": [60, 86400],
        "caps": [5, 100],
        "durable": True,
    }


def test_begin_turn_history_defaults_to_the_configured_pairs(config: StoreConfig) -> None:
    db = InMemoryDatabase(begin_turn=[turn_row()])
    db.call(core.begin_turn, replace(config, history_pairs=7), "telegram", "a")
    assert db.sent[0].params["history_pairs"] == 7


def test_a_refused_turn_has_no_session_and_says_when_to_retry(config: StoreConfig) -> None:
    retry_at = T0 + timedelta(seconds=30)
    refused = turn_row(
        allowed=False,
        retry_at=retry_at,
        refused_window=60,
        session_id=None,
        session_created=None,
        history_seqs=None,
        history_roles=None,
        history_contents=None,
        history_created=None,
        history_extras=None,
    )
    turn = InMemoryDatabase(begin_turn=[refused]).call(core.begin_turn, config, "telegram", "a")
    assert not turn.allowed and not turn.rate
    assert (turn.rate.retry_at, turn.rate.refused_window) == (retry_at, 60)
    assert turn.session_id is None and turn.session_created is False and turn.history == []
    with pytest.raises(store.RateLimited) as raised:
        turn.rate.raise_if_refused()
    assert raised.value.retry_at == retry_at and raised.value.window_seconds == 60


def test_a_new_session_without_history_decodes_to_an_empty_list(config: StoreConfig) -> None:
    empty = turn_row(
        session_created=True,
        history_seqs=[],
        history_roles=[],
        history_contents=[],
        history_created=[],
        history_extras=[],
        user_created=True,
    )
    turn = InMemoryDatabase(begin_turn=[empty]).call(core.begin_turn, config, "telegram", "a")
    assert turn.session_created and turn.user.created and turn.history == []


# -- finish_turn and append_messages -----------------------------------------------------------


def admitted_turn(config: StoreConfig) -> store.Turn:
    return InMemoryDatabase(begin_turn=[turn_row()]).call(core.begin_turn, config, "tg", "a")


def test_finish_turn_sends_both_messages_trim_and_usage(config: StoreConfig) -> None:
    turn = admitted_turn(config)
    db = InMemoryDatabase(append_messages=[appended_row(trimmed=2)])
    appended = db.call(
        core.finish_turn, config, turn, "question", "answer", input_tokens=10, output_tokens=3
    )
    assert appended == store.Appended(SESSION, USER, appended=2, trimmed=2, next_seq=8)
    assert db.names() == ["append_messages"]
    params = dict(db.sent[0].params)
    assert isinstance(params.pop("turn_id"), UUID)  # the request's idempotency key
    assert params == {
        "session_id": SESSION,
        "user_id": USER,  # the Turn's user: every part of the statement names it (Citus)
        "roles": ["user", "assistant"],
        "contents": ["question", "answer"],
        # the user's message is dated when the turn began; the reply when it is stored
        "created": [turn.started_at, None],
        "extras": ["", ""],  # none
        "now": None,
        "keep": 2 * config.history_pairs,
        "track_usage": True,
        "input_tokens": 10,
        "output_tokens": 3,
        "cached_tokens": 0,
    }


def test_finish_turn_keys_a_request_by_its_turn_and_arguments(config: StoreConfig) -> None:
    turn, other_turn = admitted_turn(config), admitted_turn(config)
    db = InMemoryDatabase(
        append_messages=[appended_row()] * 5, append_messages_by_session=[appended_row()]
    )
    calls = [
        (turn, "q", "a", 1),
        (turn, "q", "a", 1),  # the same call again (a retry): the same key
        (turn, "q2", "a", 1),  # other messages with the same Turn: another request
        (turn, "q", "a", 2),  # other usage
        (other_turn, "q", "a", 1),
    ]
    for t, question, answer, tokens in calls:
        db.call(core.finish_turn, config, t, question, answer, input_tokens=tokens)
    keys = [step.params["turn_id"] for step in db.sent]
    assert keys[0] == keys[1] and len(set(keys)) == 4
    # append_messages has no key: nothing to retry by.
    db.call(core.append_messages, config, SESSION, [{"role": "user", "content": "x"}])
    assert db.sent[-1].params["turn_id"] is None


def test_finish_turn_keeps_max_pairs_when_given(config: StoreConfig) -> None:
    db = InMemoryDatabase(append_messages=[appended_row()])
    db.call(core.finish_turn, config, admitted_turn(config), "q", "a", max_pairs=3, now=T0)
    assert db.sent[0].params["keep"] == 6 and db.sent[0].params["now"] == T0


def test_finish_turn_takes_a_session_id_and_message_mappings(config: StoreConfig) -> None:
    db = InMemoryDatabase(append_messages_by_session=[appended_row()])
    asked = "2026-03-02T11:00:00+01:00"
    db.call(
        core.finish_turn,
        config,
        str(SESSION),
        {"role": "user", "content": "q", "timestamp": asked},
        {"role": "tool", "content": "{}"},
    )
    # Without a Turn, the user is read from the session (a statement Citus would not route).
    assert db.names() == ["append_messages_by_session"]
    params = db.sent[0].params
    assert "user_id" not in params
    assert params["session_id"] == SESSION and params["roles"] == ["user", "tool"]
    assert params["created"] == [
        datetime(2026, 3, 2, 11, tzinfo=timezone(timedelta(hours=1))),
        None,
    ]


def test_the_message_arrays_are_sent_in_binary(config: StoreConfig) -> None:
    # append_messages reads them through %(name)b placeholders: psycopg must find a binary
    # dumper for each (a tuple, say, has none) with the array type the statement casts to.
    db = InMemoryDatabase(append_messages=[appended_row()])
    db.call(core.finish_turn, config, admitted_turn(config), "q", "a")
    step = db.sent[0]
    transformer = Transformer()
    arrays = (
        ("roles", "text"),
        ("contents", "text"),
        ("created", "timestamptz"),
        ("extras", "text"),
    )
    for name, array_type in arrays:
        assert f"%({name})b::{array_type}[]" in step.sql
        dumper = transformer.get_dumper(step.params[name], PyFormat.BINARY)
        assert dumper.oid == pg_types[array_type].array_oid


def test_append_messages_neither_trims_nor_records_usage(config: StoreConfig) -> None:
    db = InMemoryDatabase(append_messages_by_session=[appended_row(appended=1)])
    message = store.Message("system", "be brief", T0)
    db.call(core.append_messages, config, SESSION, [message])
    params = db.sent[0].params
    assert params["keep"] is None and params["track_usage"] is False
    assert (params["input_tokens"], params["output_tokens"], params["cached_tokens"]) == (0, 0, 0)
    assert (params["roles"], params["contents"], params["created"]) == (
        ["system"],
        ["be brief"],
        [T0],
    )


def test_appending_to_a_missing_session_is_not_found(config: StoreConfig) -> None:
    db = InMemoryDatabase(append_messages_by_session=[[]])
    with pytest.raises(store.NotFound, match=f"session {SESSION} does not exist"):
        db.call(core.finish_turn, config, SESSION, "q", "a")
    turn = admitted_turn(config)
    db = InMemoryDatabase(append_messages=[[]])
    with pytest.raises(store.NotFound, match=f"does not exist for user {turn.user.user_id}"):
        db.call(core.finish_turn, config, turn, "q", "a")


# -- every operation ---------------------------------------------------------------------------

CANNED: dict[str, Rows] = {
    "begin_turn": turn_row(),
    "append_messages": appended_row(),
    "append_messages_by_session": appended_row(),
    "trim_session_history": one(session_id=SESSION, trimmed=4),
    "get_history": turn_row(),
    "get_or_create_user": user_row(person_id=None, created=True),
    "get_or_create_session": one(session_id=SESSION, session_created=True),
    "check_rate_limit": one(allowed=True, retry_at=None, refused_window=None, notify=False),
    "track_usage": one(stat_id=str(SESSION)),
    "register_proactive_user": one(user_id=USER, chat_id="chat-1"),
    "load_users_from_db": [{"user_id": USER, "chat_id": "1"}, {"user_id": PERSON, "chat_id": "2"}],
    "create_link_code": one(expires_at=T0),
    "redeem_link_code": one(outcome="linked", person_id=PERSON, owner_id=USER, locked_until=None),
    "unlink": one(person_id=PERSON, person_deleted=True),
    "get_linked_users": user_row(person_id=PERSON, created=False),
    "find_user": user_row(person_id=PERSON, created=False),
    "forget": [
        {"table_name": "users", "action": "deleted", "row_count": 1},
        {"table_name": "usage_daily", "action": "anonymised", "row_count": 3},
    ],
}

CALLS: dict[str, tuple[Callable[..., core.Plan[Any]], tuple[Any, ...], str, object]] = {
    # operation: (plan function, arguments after the config, statement, expected result)
    "begin_turn": (core.begin_turn, ("telegram", "1"), "begin_turn", None),
    "finish_turn": (core.finish_turn, (SESSION, "q", "a"), "append_messages_by_session", None),
    "append_messages": (
        core.append_messages,
        (SESSION, [{"role": "user", "content": "x"}]),
        "append_messages_by_session",
        store.Appended(SESSION, USER, 2, 0, 8),
    ),
    "trim_session_history": (core.trim_session_history, (SESSION, 2), "trim_session_history", 4),
    "clear_session_history": (
        core.clear_session_history,
        (SESSION,),
        "trim_session_history",
        4,
    ),
    "get_history": (core.get_history, (SESSION,), "get_history", None),
    "get_or_create_user": (
        core.get_or_create_user,
        ("telegram", 1),
        "get_or_create_user",
        store.User(USER, "telegram", "1", created=True),
    ),
    "get_or_create_session": (
        core.get_or_create_session,
        (USER,),
        "get_or_create_session",
        store.Session(SESSION, USER, created=True),
    ),
    "check_rate_limit": (
        core.check_rate_limit,
        (USER,),
        "check_rate_limit",
        store.RateDecision(True),
    ),
    "track_usage": (core.track_usage, (USER, "telegram", 1, 2, 3), "track_usage", SESSION),
    "register_proactive_user": (
        core.register_proactive_user,
        (777, USER),
        "register_proactive_user",
        store.ProactiveUser(USER, "chat-1"),
    ),
    "load_users_from_db": (
        core.load_users_from_db,
        (),
        "load_users_from_db",
        [store.ProactiveUser(USER, "1"), store.ProactiveUser(PERSON, "2")],
    ),
    "create_link_code": (
        core.create_link_code,
        (USER,),
        "create_link_code",
        None,  # a fresh random code: tests/unit/test_link_codes.py checks it is the one sent
    ),
    "redeem_link_code": (
        core.redeem_link_code,
        (USER, "7KQ2-M9XD-4HTR"),
        "redeem_link_code",
        store.Linked(PERSON, USER),
    ),
    "unlink": (
        core.unlink,
        (USER,),
        "unlink",
        store.Unlinked(USER, PERSON, True),
    ),
    "get_linked_users": (
        core.get_linked_users,
        (USER,),
        "get_linked_users",
        [store.User(USER, "telegram", "1", PERSON)],
    ),
    "find_user": (
        core.find_user,
        ("telegram", 1),
        "find_user",
        store.User(USER, "telegram", "1", PERSON),
    ),
    "forget_user": (
        erasure.forget_user,
        (USER,),
        "forget",
        store.Forgotten({"users": 1}, {"usage_daily": 3}, USER),
    ),
    "forget_person": (erasure.forget_person, (PERSON,), "forget", None),
}


# Operations of several statements, covered in their own files.
SEVERAL_STATEMENTS = {"export_user", "export_person", "forget_channel_user"}  # see each test


def test_every_operation_is_covered_here() -> None:
    operations = {name for name in vars(Operations) if not name.startswith("_")}
    assert operations == set(CALLS) | SEVERAL_STATEMENTS
    for name, (plan_function, *_) in CALLS.items():
        assert getattr(Operations, name).plan is plan_function


@pytest.mark.parametrize("operation", sorted(CALLS))
def test_each_operation_sends_one_statement_with_exactly_its_parameters(
    config: StoreConfig, operation: str
) -> None:
    # InMemoryDatabase checks the statement exists and its placeholders equal the parameters.
    plan_function, args, statement, expected = CALLS[operation]
    db = InMemoryDatabase(**{statement: [CANNED[statement]]})
    result = db.call(plan_function, config, *args)
    assert db.names() == [statement]
    if expected is not None:
        assert result == expected


def test_an_unknown_identity_is_not_found(config: StoreConfig) -> None:
    with pytest.raises(store.NotFound, match="no user '42' on channel 'telegram'"):
        InMemoryDatabase(find_user=[[]]).call(core.find_user, config, "telegram", 42)


def test_forget_sends_the_user_or_the_person(config: StoreConfig) -> None:
    db = InMemoryDatabase(forget=[CANNED["forget"], CANNED["forget"]])
    db.call(erasure.forget_user, config, str(USER))
    db.call(erasure.forget_person, config, str(PERSON))
    assert [s.params for s in db.sent] == [
        {"user_id": USER, "person_id": None},
        {"user_id": None, "person_id": PERSON},
    ]


def test_forget_channel_user_erases_the_user_of_the_identity(config: StoreConfig) -> None:
    db = InMemoryDatabase(find_user=[CANNED["find_user"]], forget=[CANNED["forget"]])
    forgotten = db.call(erasure.forget_channel_user, config, "telegram", 1)
    assert db.names() == ["find_user", "forget"]
    assert db.sent[1].params == {"user_id": USER, "person_id": None}
    assert forgotten == store.Forgotten({"users": 1}, {"usage_daily": 3}, USER)


def test_forget_channel_user_without_a_users_row_erases_what_is_kept_under_it(
    config: StoreConfig,
) -> None:
    db = InMemoryDatabase(find_user=[[]], forget_telegram_identity=[[{"deleted": 3}]])
    forgotten = db.call(erasure.forget_channel_user, config, "telegram", 7001)
    assert db.names() == ["find_user", "forget_telegram_identity"]
    assert db.sent[1].params == {"channel": "telegram", "channel_user_id": "7001"}
    assert forgotten == store.Forgotten({"telegram_persistence": 3}, {}, None)


def test_forget_channel_user_found_nowhere_is_not_found(config: StoreConfig) -> None:
    db = InMemoryDatabase(find_user=[[]], forget_telegram_identity=[[{"deleted": 0}]])
    with pytest.raises(store.NotFound, match=r"^no user '8' on channel 'telegram'$"):
        db.call(erasure.forget_channel_user, config, "telegram", 8)
    with pytest.raises(store.InvalidInput):
        InMemoryDatabase().call(erasure.forget_channel_user, config, "Tele gram", 8)


@pytest.mark.parametrize(
    ("plan_function", "statement", "message"),
    [
        (erasure.forget_user, "forget", f"user {USER} does not exist"),
        (core.get_linked_users, "get_linked_users", f"user {USER} does not exist"),
        (core.trim_session_history, "trim_session_history", f"session {USER} does not exist"),
    ],
)
def test_no_row_means_not_found(
    config: StoreConfig,
    plan_function: Callable[..., core.Plan[Any]],
    statement: str,
    message: str,
) -> None:
    with pytest.raises(store.NotFound, match=message):
        InMemoryDatabase(**{statement: [[]]}).call(plan_function, config, USER)


def test_a_blocked_erasure_names_the_constraint(config: StoreConfig) -> None:
    blocked = one(table_name="blocked", action="memories_user_id_fkey", row_count=0)
    with pytest.raises(store.ErasureBlocked, match="memories_user_id_fkey"):
        InMemoryDatabase(forget=[blocked]).call(erasure.forget_user, config, USER)


# -- input that never reaches a statement ------------------------------------------------------

LONG = "x" * 257
NAIVE = datetime(2026, 3, 2, 12, 0)
REFUSED_TURN = store.Turn(
    user=store.User(USER, "telegram", "1"),
    rate=store.RateDecision(False, T0, 60),
    started_at=T0,
)


def message(content: object, role: object = "user") -> list[dict[str, object]]:
    return [{"role": role, "content": content}]


INVALID: list[tuple[Callable[..., core.Plan[Any]], tuple[Any, ...], dict[str, Any], str]] = [
    (core.begin_turn, ("Telegram", "1"), {}, "channel"),
    (core.begin_turn, ("tele gram", "1"), {}, "channel"),
    (core.begin_turn, ("telegram", ""), {}, "channel_user_id"),
    (core.begin_turn, ("telegram", None), {}, "channel_user_id"),
    (core.begin_turn, ("telegram", True), {}, "channel_user_id"),
    (core.begin_turn, ("telegram", LONG), {}, "channel_user_id"),
    (core.begin_turn, ("telegram", "a\x00b"), {}, "channel_user_id"),
    (core.begin_turn, ("telegram", "1"), {"display_name": "\ud800"}, "display_name"),
    (core.begin_turn, ("telegram", "1"), {"now": NAIVE}, "now"),
    (core.begin_turn, ("telegram", "1"), {"now": "2026-03-02"}, "now"),
    (core.begin_turn, ("telegram", "1"), {"history_pairs": 0}, "history_pairs"),
    (core.finish_turn, (REFUSED_TURN, "q", "a"), {}, ""),
    (core.finish_turn, ("not-a-uuid", "q", "a"), {}, "session_id"),
    (core.finish_turn, (SESSION, "q\x00", "a"), {}, "messages[0].content"),
    (core.finish_turn, (SESSION, "q", ""), {}, "messages[1].content"),
    (core.finish_turn, (SESSION, "q", "a"), {"input_tokens": -1}, "input_tokens"),
    (core.finish_turn, (SESSION, "q", "a"), {"output_tokens": 1.5}, "output_tokens"),
    (core.finish_turn, (SESSION, "q", "a"), {"cached_tokens": False}, "cached_tokens"),
    (core.finish_turn, (SESSION, "q", "a"), {"max_pairs": 0}, "max_pairs"),
    (core.append_messages, (SESSION, []), {}, "messages"),
    (core.append_messages, (SESSION, "hello"), {}, "messages"),
    (core.append_messages, (SESSION, message("x", role="bot")), {}, "messages[0]"),
    (core.append_messages, (SESSION, message("x" * 65537)), {}, "messages[0].content"),
    (core.append_messages, (SESSION, message(None)), {}, "messages[0].content"),
    (core.append_messages, (SESSION, message("x") * 1001), {}, "messages"),
    (
        core.append_messages,
        (SESSION, [{"role": "user", "content": "x", "timestamp": "soon"}]),
        {},
        "messages[0]",
    ),
    (core.trim_session_history, (SESSION, -1), {}, "max_pairs"),
    (core.get_history, (12345,), {}, "session_id"),
    (core.get_or_create_session, ("",), {}, "user_id"),
    (core.check_rate_limit, (None,), {}, "user_id"),
    (core.track_usage, (USER, "telegram", 2**62 + 1), {}, "input_tokens"),
    (core.register_proactive_user, ("", USER), {}, "chat_id"),
    (core.create_link_code, ("12",), {}, "user_id"),
    (core.get_linked_users, (object(),), {}, "user_id"),
    (core.find_user, ("Telegram!", "1"), {}, "channel"),
    (core.find_user, ("telegram", ""), {}, "channel_user_id"),
    (erasure.forget_person, ("person",), {}, "person_id"),
]


@pytest.mark.parametrize(("plan_function", "args", "kwargs", "field"), INVALID)
def test_invalid_input_raises_before_any_statement(
    config: StoreConfig,
    plan_function: Callable[..., core.Plan[Any]],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    field: str,
) -> None:
    db = InMemoryDatabase()  # answers nothing: any statement would fail the test
    with pytest.raises(store.InvalidInput) as raised:
        db.call(plan_function, config, *args, **kwargs)
    assert db.sent == []
    assert isinstance(raised.value, ValueError)
    assert (raised.value.field or "") == field


def test_a_channel_outside_the_allow_list_is_refused(config: StoreConfig) -> None:
    allowed = replace(config, channels=frozenset({"telegram"}))
    db = InMemoryDatabase(begin_turn=[turn_row()])
    db.call(core.begin_turn, allowed, "telegram", "1")
    with pytest.raises(store.InvalidInput, match="not in the configured channels"):
        db.call(core.begin_turn, allowed, "whatsapp", "1")
    assert db.names() == ["begin_turn"]


def test_max_message_bytes_counts_utf8_bytes(config: StoreConfig) -> None:
    small = replace(config, max_message_bytes=4)
    db = InMemoryDatabase(append_messages_by_session=[appended_row()])
    db.call(core.append_messages, small, SESSION, message("ab€"[:2] + "c"))  # 3 bytes
    with pytest.raises(store.InvalidInput, match="5 bytes; the limit is 4"):
        db.call(core.append_messages, small, SESSION, message("ab€"))  # 5 bytes
    assert len(db.sent) == 1


def test_a_refused_turn_cannot_be_finished(config: StoreConfig) -> None:
    with pytest.raises(store.InvalidInput, match="refused by the rate limit"):
        InMemoryDatabase().call(core.finish_turn, config, REFUSED_TURN, "q", "a")


def test_ids_may_be_uuid_objects_or_strings(config: StoreConfig) -> None:
    db = InMemoryDatabase(check_rate_limit=[CANNED["check_rate_limit"]] * 2)
    db.call(core.check_rate_limit, config, USER)
    db.call(core.check_rate_limit, config, str(USER).upper())
    assert [s.params["user_id"] for s in db.sent] == [USER, USER]
    assert all(isinstance(s.params["user_id"], UUID) for s in db.sent)
