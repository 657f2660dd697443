"""The values the store returns: small frozen dataclasses."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID, uuid4

from . import prompt_formats
from .errors import RateLimited

# The roles a history message may have; store/schema.py's CHECK constraint and the input checks
# (store/validate.py) both read this, so it lives here, away from SQLAlchemy.
ROLES = ("user", "assistant", "system", "tool")


@dataclass(frozen=True)
class User:
    user_id: UUID
    channel: str
    channel_user_id: str
    person_id: UUID | None = None
    display_name: str | None = None
    created: bool = False  # made by this call


@dataclass(frozen=True)
class Message:
    """One history entry; ``as_dict()`` is the seed's ``{role, content, timestamp}``, plus
    ``extra`` when the message carries fields beyond role and content (a JSON object: a tool
    message's ``tool_call_id``, an assistant message's ``tool_calls``, ...). ``speaker`` is who
    spoke it in a shared group conversation (their display name), else None."""

    role: str
    content: str
    timestamp: datetime
    seq: int | None = None
    extra: Mapping[str, Any] | None = None
    speaker: str | None = None

    def as_dict(self) -> dict[str, Any]:
        entry = {"role": self.role, "content": self.content, "timestamp": self.timestamp}
        if self.extra is not None:
            entry["extra"] = self.extra
        if self.speaker is not None:
            entry["speaker"] = self.speaker
        return entry

    def as_prompt(self, format: str = "openai") -> dict[str, Any]:
        """The message as chat-completion APIs take it: ``format="openai"`` (the default; also
        what most other providers' chat APIs take) or ``"anthropic"`` (Messages API content
        blocks). See ``prompt()`` for a whole history, and docs/conversations.md."""
        if self.extra is None and self.speaker is None and format == "openai":
            return {"role": self.role, "content": self.content}
        return prompt_formats.message(self, format)


def stored_message(
    role: str,
    content: str,
    timestamp: datetime,
    seq: int,
    extra: Mapping[str, Any] | None,
    speaker: str | None = None,
) -> Message:
    """A ``Message`` read from the database, built without the frozen dataclass's
    ``__init__``: it sets each field through ``object.__setattr__``, which made building a
    long history several times dearer than filling ``__dict__`` (bench/RESULTS.md). The values are
    the database's, already of the right types, so the result equals ``Message(...)``."""
    message = _new(Message)
    fields = message.__dict__
    fields["role"] = role
    fields["content"] = content
    fields["timestamp"] = timestamp
    fields["seq"] = seq
    fields["extra"] = extra
    fields["speaker"] = speaker
    return message


_new = object.__new__


@dataclass(frozen=True)
class RateDecision:
    """The outcome of a rate-limit check; true when the request is admitted.

    ``notify`` is true for the first refusal of the refusing window only: the one refusal to
    tell the user about. Later refusals of that window are best dropped without an answer, so
    that a user who keeps sending gets one notice, not one per message (the Telegram
    integrations do so; docs/conversations.md, "Refusals")."""

    allowed: bool
    retry_at: datetime | None = None  # when refused: the end of the longest window at its cap
    refused_window: int | None = None  # when refused: that window's length in seconds
    notify: bool = False  # when refused: the first refusal of that window

    def __bool__(self) -> bool:
        return self.allowed

    def raise_if_refused(self) -> None:
        if not self.allowed:
            assert self.retry_at is not None and self.refused_window is not None
            raise RateLimited(
                f"rate limit of the {self.refused_window}-second window reached; "
                f"retry at {self.retry_at.isoformat()}",
                retry_at=self.retry_at,
                window_seconds=self.refused_window,
            )


@dataclass(frozen=True)
class Session:
    session_id: UUID
    user_id: UUID
    created: bool = False


@dataclass(frozen=True)
class Turn:
    """What ``begin_turn`` found: the user, the rate decision and, when admitted, the current
    session and its history (oldest first). Refused turns have no session.

    ``turn_id`` is the turn's idempotency key, drawn on the client: ``finish_turn`` called
    again with the same Turn and the same arguments (a retry after an in-doubt error) stores
    nothing more and returns the first call's ``Appended``."""

    user: User
    rate: RateDecision
    started_at: datetime
    session_id: UUID | None = None
    session_created: bool = False
    history: list[Message] = field(default_factory=list)
    turn_id: UUID = field(default_factory=uuid4)
    # The conversation's chat (as stored); None for the user's private chat.
    chat_id: str | None = None

    @property
    def allowed(self) -> bool:
        return self.rate.allowed

    @property
    def notify_refusal(self) -> bool:
        """Refused, and the first refusal of its window: answer this one, drop the others."""
        return not self.rate.allowed and self.rate.notify


@dataclass(frozen=True)
class Appended:
    session_id: UUID
    user_id: UUID
    appended: int
    trimmed: int
    next_seq: int


@dataclass(frozen=True)
class LinkCode:
    code: str
    expires_at: datetime


@dataclass(frozen=True)
class Linked:
    """A successful redemption: both users now belong to ``person_id``."""

    person_id: UUID
    owner_id: UUID


@dataclass(frozen=True)
class Unlinked:
    """What ``unlink`` did: the person the user left (None: it was linked to nobody), and
    whether that person went because no user was left in it."""

    user_id: UUID
    person_id: UUID | None
    person_deleted: bool


@dataclass(frozen=True)
class ProactiveUser:
    user_id: UUID
    chat_id: str


@dataclass(frozen=True)
class ProactiveList:
    """The proactive list as published: its version (0 while the proactive_reload job has not
    published one; the users are then read from their tables) and its users by user id."""

    version: int
    users: tuple[ProactiveUser, ...] = ()
