"""A stored message as a provider's chat API takes it (``Message.as_prompt``, ``prompt``).

Tool calls are stored as the bot gave them, in a message's ``extra``: OpenAI's shape
(``{"id", "type": "function", "function": {"name", "arguments"}}``, as a chat completion returns
them) or LangChain's (``{"id", "name", "args"}``). Both come out in the format asked for:

- ``openai``: assistant messages carry ``tool_calls`` (content None when they only call
  tools), tool messages carry ``tool_call_id``;
- ``anthropic``: the Messages API's content blocks: an assistant message's calls become
  ``tool_use`` blocks, a tool message a user message with a ``tool_result`` block. ``prompt``
  merges consecutive messages of one role (the results of one turn's calls go in one user
  message) and leaves system messages out: Anthropic takes them as ``system=``.

In a shared group conversation a user message's text is prefixed with who spoke it
(``"Ann: hello"``), in both formats: not every API has a field for it (docs/conversations.md).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .errors import InvalidInput

if TYPE_CHECKING:
    from .models import Message

FORMATS = ("openai", "anthropic")


def message(entry: Message, format: str) -> dict[str, Any]:
    """One message in ``format``."""
    if format == "openai":
        return _openai(entry)
    if format == "anthropic":
        if entry.role == "system":
            raise InvalidInput(
                "Anthropic takes the system prompt as system=, not as a message",
                field="format",
            )
        return _anthropic(entry)
    raise InvalidInput(
        f"format must be one of {', '.join(FORMATS)}, not {format!r}", field="format"
    )


def prompt(history: Iterable[Message], format: str = "openai") -> list[dict[str, Any]]:
    """A history (``turn.history``) as the ``messages`` of a chat request in ``format``."""
    if format != "anthropic":
        return [entry.as_prompt(format) for entry in history]
    merged: list[dict[str, Any]] = []
    for entry in history:
        if entry.role == "system":
            continue
        item = _anthropic(entry)
        if merged and merged[-1]["role"] == item["role"]:
            merged[-1]["content"] = _blocks(merged[-1]["content"]) + _blocks(item["content"])
        else:
            merged.append(item)
    return merged


def _spoken(entry: Message) -> str:
    if entry.speaker is not None and entry.role == "user":
        return f"{entry.speaker}: {entry.content}"
    return entry.content


def _calls(entry: Message) -> list[Mapping[str, Any]]:
    calls = (entry.extra or {}).get("tool_calls") if entry.role == "assistant" else None
    return list(calls) if isinstance(calls, list | tuple) else []


def _call_id(entry: Message) -> str:
    return str((entry.extra or {}).get("tool_call_id") or "")


def _name_and_arguments(call: Mapping[str, Any]) -> tuple[str, Any]:
    """A call's function name and arguments: a JSON text (OpenAI) or an object (LangChain)."""
    function = call.get("function")
    if isinstance(function, Mapping):
        return str(function.get("name", "")), function.get("arguments", "{}")
    return str(call.get("name", "")), call.get("args", {})


def _openai(entry: Message) -> dict[str, Any]:
    content = _spoken(entry)
    result: dict[str, Any] = {"role": entry.role, "content": content}
    calls = _calls(entry)
    if calls:
        result["tool_calls"] = [_openai_call(call) for call in calls]
        result["content"] = content or None
    elif entry.role == "tool":
        result["tool_call_id"] = _call_id(entry)
    return result


def _openai_call(call: Mapping[str, Any]) -> dict[str, Any]:
    name, arguments = _name_and_arguments(call)
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments, ensure_ascii=False)
    function = {"name": name, "arguments": arguments}
    return {"id": str(call["id"]), "type": "function", "function": function}


def _anthropic(entry: Message) -> dict[str, Any]:
    if entry.role == "tool":
        block = {"type": "tool_result", "tool_use_id": _call_id(entry), "content": entry.content}
        return {"role": "user", "content": [block]}
    content = _spoken(entry)
    calls = _calls(entry)
    if not calls:
        return {"role": entry.role, "content": content}
    blocks: list[dict[str, Any]] = [{"type": "text", "text": content}] if content else []
    blocks.extend(_tool_use(call) for call in calls)
    return {"role": "assistant", "content": blocks}


def _tool_use(call: Mapping[str, Any]) -> dict[str, Any]:
    name, arguments = _name_and_arguments(call)
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments or "{}")
        except ValueError:
            arguments = {"arguments": arguments}  # not JSON: kept, as the model wrote it
    return {"type": "tool_use", "id": str(call["id"]), "name": name, "input": arguments}


def _blocks(content: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else content
