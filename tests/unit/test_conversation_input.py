"""Conversations' input checks and prompt formats, without a database (issue 23)."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any
from uuid import UUID

import pytest

from store import InvalidInput, Message, StoreConfig, core, models, prompt, validate

T0 = datetime(2026, 12, 6, tzinfo=UTC)


@pytest.mark.parametrize(
    ("chat", "stored"),
    [
        (None, None),
        (42, None),  # the user's own id: the private chat
        ("42", None),
        (-100123, "-100123"),
        ("group-7", "group-7"),
        (SimpleNamespace(id=42, type="private"), None),
        (SimpleNamespace(id=-5, type="supergroup"), "-5"),
        ({"id": 9, "type": "private"}, None),  # a private chat that is not the user's id
        ({"id": -5, "type": "group"}, "-5"),
    ],
)
def test_a_chat_is_stored_by_its_id_and_a_private_chat_as_none(chat: object, stored: Any) -> None:
    assert validate.chat(chat, "42") == stored


@pytest.mark.parametrize(
    "chat",
    [object(), True, 1.5, {"id": -5}, SimpleNamespace(type="group"), {"id": "", "type": "g"}],
)
def test_an_unknown_chat_shape_is_refused(chat: object) -> None:
    with pytest.raises(InvalidInput) as raised:
        validate.chat(chat, "42")
    assert raised.value.field in ("chat", "chat.id")


def test_a_tool_result_must_answer_a_call_of_the_same_turn() -> None:
    call = {"role": "assistant", "content": None, "tool_calls": [{"id": "c1"}]}
    validate.tool_exchange(
        [{"role": "user", "content": "q"}, call, {"role": "tool", "tool_call_id": "c1"}]
    )
    with pytest.raises(InvalidInput, match="without a matching tool call"):
        validate.tool_exchange([{"role": "tool", "tool_call_id": "c1"}, call])


def test_a_bad_exchange_is_refused_before_a_connection_is_taken() -> None:
    turn = models.Turn(
        user=models.User(UUID(int=1), "telegram", "1"),
        rate=models.RateDecision(True),
        started_at=T0,
        session_id=UUID(int=2),
    )
    bad = [{"role": "assistant", "content": "", "tool_calls": [{"name": "no id"}]}]
    with pytest.raises(InvalidInput) as raised:
        core.finish_turn(StoreConfig(), turn, "q", bad)
    assert raised.value.rule == "tool_calls"


def test_prompt_formats() -> None:
    call = {"id": "c1", "name": "weather", "args": {"city": "Oslo"}}
    history = [
        Message("system", "be brief", T0),
        Message("user", "hi", T0, speaker="Ann"),
        Message("assistant", "", T0, extra={"tool_calls": [call]}),
        Message("tool", "-3", T0, extra={"tool_call_id": "c1"}),
        Message("tool", "windy", T0, extra={"tool_call_id": "c1"}),
    ]
    assert prompt(history)[1:3] == [
        {"role": "user", "content": "Ann: hi"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city": "Oslo"}'},
                }
            ],
        },
    ]
    anthropic = prompt(history, format="anthropic")
    assert [m["role"] for m in anthropic] == ["user", "assistant", "user"]  # system left out
    assert anthropic[1]["content"] == [
        {"type": "tool_use", "id": "c1", "name": "weather", "input": {"city": "Oslo"}}
    ]
    assert [b["content"] for b in anthropic[2]["content"]] == ["-3", "windy"]  # one message
    with pytest.raises(InvalidInput):
        history[0].as_prompt("anthropic")
    with pytest.raises(InvalidInput):
        history[1].as_prompt("gemini")
