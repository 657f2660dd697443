"""Bad input gets a typed error and writes nothing."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import psycopg
import pytest
from store_support import T0, store_fixture  # noqa: F401 (fixture)

from store import AsyncStore, InvalidInput, Store, StoreError

TABLES = ("users", "sessions", "session_messages", "rate_limits", "usage_stats", "link_codes")


def snapshot(conn: psycopg.Connection[Any]) -> dict[str, int]:
    counts = {}
    for table in TABLES:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
        assert row is not None
        counts[table] = row[0]
    return counts


Call = Callable[[Store, uuid.UUID, uuid.UUID], object]
NUL = "a\x00b"
SURROGATE = "a\ud800b"
BIG = "x" * (64 * 1024 + 1)


def _append(content: object, role: object = "user") -> Call:
    return lambda s, _u, sid: s.append_messages(sid, [{"role": role, "content": content}])


def _extra(extra: object, content: str = "x") -> Call:
    message = {"role": "tool", "content": content, "extra": extra}
    return lambda s, _u, sid: s.append_messages(sid, [message])


BAD_CALLS: dict[str, Call] = {
    "nul in content": _append(NUL),
    "lone surrogate in content": _append(SURROGATE),
    "oversized content": _append(BIG),
    "oversized in multibyte": _append("é" * (32 * 1024 + 1)),
    "empty content": _append(""),
    "content not text": _append(b"bytes"),
    "unknown role": _append("hi", role="robot"),
    "missing role": lambda s, _u, sid: s.append_messages(sid, [{"content": "x"}]),
    "message not a mapping": lambda s, _u, sid: s.append_messages(sid, ["just text"]),
    "messages a string": lambda s, _u, sid: s.append_messages(sid, "hello"),
    "no messages": lambda s, _u, sid: s.append_messages(sid, []),
    "extra not a mapping": _extra(["tool_call_id", "c1"]),
    "extra with NUL in a value": _extra({"tool_call_id": NUL}),
    "extra with NUL in a key": _extra({NUL: 1}),
    "extra with NUL deep inside": _extra({"calls": [{"args": {"q": NUL}}]}),
    "extra with a lone surrogate": _extra({"name": SURROGATE}),
    "extra with NaN": _extra({"score": float("nan")}),
    "extra with infinity": _extra({"score": float("inf")}),
    "extra not JSON": _extra({"when": datetime(2026, 1, 1)}),
    "oversized extra": _extra({"blob": BIG}),
    "empty content with empty extra": _extra({}, content=""),
    "naive timestamp": lambda s, _u, sid: s.append_messages(
        sid, [{"role": "user", "content": "x", "timestamp": datetime(2026, 1, 1)}]
    ),
    "bad timestamp": lambda s, _u, sid: s.append_messages(
        sid, [{"role": "user", "content": "x", "timestamp": "yesterday"}]
    ),
    "session id not a uuid": lambda s, _u, _s: s.append_messages("42", [{"role": "user"}]),
    "session id of wrong type": lambda s, _u, _s: s.get_history(42),  # type: ignore[arg-type]
    "empty channel user id": lambda s, _u, _s: s.begin_turn("telegram", ""),
    "None channel user id": lambda s, _u, _s: s.begin_turn("telegram", None),  # type: ignore[arg-type]
    "over-long channel user id": lambda s, _u, _s: s.begin_turn("telegram", "9" * 257),
    "float channel user id": lambda s, _u, _s: s.begin_turn("telegram", 1.5),  # type: ignore[arg-type]
    "bool channel user id": lambda s, _u, _s: s.get_or_create_user("telegram", True),
    "channel user id with NUL": lambda s, _u, _s: s.get_or_create_user("telegram", NUL),
    "channel not a name": lambda s, _u, _s: s.begin_turn("Tele gram", "1"),
    "empty channel": lambda s, _u, _s: s.get_or_create_user("", "1"),
    "display name with surrogate": lambda s, _u, _s: s.begin_turn(
        "telegram", "1", display_name=SURROGATE
    ),
    "naive now": lambda s, _u, _s: s.begin_turn("telegram", "1", now=datetime(2026, 1, 1)),
    "user id not a uuid": lambda s, _u, _s: s.check_rate_limit("not-a-uuid"),
    "user id None": lambda s, _u, _s: s.get_or_create_session(None),  # type: ignore[arg-type]
    "negative tokens": lambda s, u, _s: s.track_usage(u, "telegram", -1),
    "tokens of wrong type": lambda s, u, _s: s.track_usage(u, "telegram", "10"),  # type: ignore[arg-type]
    "max_pairs zero": lambda s, _u, sid: s.trim_session_history(sid, 0),
    "max_pairs negative": lambda s, _u, sid: s.get_history(sid, -3),
    "finish with oversized reply": lambda s, _u, sid: s.finish_turn(sid, "q", BIG),
    "finish with NUL question": lambda s, _u, sid: s.finish_turn(sid, NUL, "a"),
    "link code not digits": lambda s, u, _s: s.redeem_link_code(u, "12a456"),
    "link code too short": lambda s, u, _s: s.redeem_link_code(u, "12345"),
    "chat id empty": lambda s, u, _s: s.register_proactive_user("", u),
}


@pytest.mark.parametrize("call", BAD_CALLS.values(), ids=BAD_CALLS.keys())
def test_bad_input_raises_invalid_input_and_writes_nothing(
    store: Store, conn: psycopg.Connection[Any], call: Call
) -> None:
    user = store.get_or_create_user("telegram", "existing", now=T0).user_id
    session = store.get_or_create_session(user, now=T0).session_id
    store.append_messages(session, [{"role": "user", "content": "kept"}], now=T0)
    before = snapshot(conn)
    with pytest.raises(InvalidInput) as caught:
        call(store, user, session)
    assert isinstance(caught.value, StoreError) and isinstance(caught.value, ValueError)
    assert snapshot(conn) == before


def test_a_batch_with_one_bad_message_writes_none_of_it(
    store: Store, conn: psycopg.Connection[Any]
) -> None:
    session = store.get_or_create_session(store.get_or_create_user("telegram", "b").user_id)
    good = {"role": "user", "content": "fine"}
    with pytest.raises(InvalidInput, match=r"messages\[2\]\.content"):
        store.append_messages(session.session_id, [good, good, {"role": "user", "content": NUL}])
    assert snapshot(conn)["session_messages"] == 0


def test_channel_allow_list(database_url: str) -> None:
    with Store(database_url, channels=frozenset({"telegram", "whatsapp"})) as store:
        store.begin_turn("whatsapp", "1")
        with pytest.raises(InvalidInput, match="not in the configured channels"):
            store.begin_turn("signal", "1")


def test_size_cap_is_configurable(database_url: str) -> None:
    with Store(database_url, max_message_bytes=10) as store:
        turn = store.begin_turn("telegram", "1")
        store.finish_turn(turn, "0123456789", "ok")
        with pytest.raises(InvalidInput, match="11 bytes; the limit is 10"):
            store.finish_turn(turn, "01234567890", "ok")


def test_unknown_ids_raise_not_found(store: Store) -> None:
    from store import NotFound

    missing = uuid.uuid4()
    for call in (
        lambda: store.append_messages(missing, [{"role": "user", "content": "x"}]),
        lambda: store.get_or_create_session(missing),
        lambda: store.check_rate_limit(missing),
        lambda: store.create_link_code(missing),
        lambda: store.redeem_link_code(missing, "7KQ2-M9XD-4HTR"),
        lambda: store.get_linked_users(missing),
        lambda: store.trim_session_history(missing),
    ):
        with pytest.raises(NotFound):
            call()
    assert store.get_history(missing) == []


def test_input_is_checked_before_any_connection_in_both_shells() -> None:
    # Nothing listens on port 1: a call that reached for a connection would report the database
    # as unavailable; bad input is refused before that, by the same checks in both shells.
    url = "postgresql://bot@127.0.0.1:1/chat"
    with Store(url, pool_timeout=0.2, min_size=0) as store:
        with pytest.raises(InvalidInput, match="content"):
            store.append_messages(uuid.uuid4(), [{"role": "user", "content": NUL}])
        with pytest.raises(InvalidInput, match="channel_user_id"):
            store.begin_turn("telegram", "")

    async def scenario() -> None:
        async with AsyncStore(url, pool_timeout=0.2, min_size=0) as astore:
            with pytest.raises(InvalidInput, match="role"):
                await astore.finish_turn(uuid.uuid4(), {"role": "robot", "content": "x"}, "a")
            with pytest.raises(InvalidInput, match="user_id"):
                await astore.redeem_link_code("nope", "123456")
            with pytest.raises(InvalidInput, match="surrogate"):
                await astore.begin_turn("telegram", SURROGATE)

    asyncio.run(scenario())
