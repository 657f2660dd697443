"""The store's settings: pool, timeouts and policies, with the seed's defaults where it had one."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

from . import settings
from .settings import CENTURY, SQL_INTEGER_MAX, require

# The windows of the rate-limit caps (per minute, hour, day), in seconds.
RATE_WINDOW_SECONDS = (60, 3600, 86400)
LONGEST_RATE_WINDOW_SECONDS = max(RATE_WINDOW_SECONDS)


GROUP_CONVERSATIONS = ("member", "shared")


@dataclass(frozen=True, kw_only=True)
class StoreConfig:
    """Every tunable of a ``Store``; ``Store(url, max_size=20)`` sets fields by keyword."""

    # Pool (the seed: 10 connections, 30 s idle, no other tuning).
    min_size: int = 1
    max_size: int = 10
    max_idle: float = 300.0
    pool_timeout: float = 5.0  # seconds to wait for a free connection before DatabaseUnavailable
    # Reconnect back-off of the pool: a failed connection attempt is retried after
    # reconnect_delay seconds, the wait doubling up to reconnect_max_delay; the pool gives a
    # connection slot up after reconnect_timeout (and opens one again on demand).
    # psycopg_pool's own: 1 s, doubling without a cap, 300 s.
    reconnect_delay: float = 0.1
    reconnect_max_delay: float = 1.0
    reconnect_timeout: float = 300.0
    connect_timeout: int = 5  # seconds for one connection attempt (libpq connect_timeout)
    # Server-side statement timeout in milliseconds, sent as a startup option. None sends
    # nothing: needed behind PgBouncer, which refuses startup options (set it on the role).
    statement_timeout_ms: int | None = 5000
    # Milliseconds unacknowledged data may wait on a TCP connection before it is dropped, so a
    # vanished server is noticed promptly (libpq tcp_user_timeout; ignored on Unix sockets).
    tcp_user_timeout_ms: int = 10_000
    # psycopg prepares a statement after this many runs; None never prepares (PgBouncer < 1.21
    # in transaction mode cannot keep prepared statements).
    prepare_threshold: int | None = 5
    # Sessions and history.
    idle_timeout: timedelta = timedelta(minutes=30)
    carry_over_pairs: int = 2
    history_pairs: int = 20
    max_message_bytes: int = 64 * 1024
    # Conversations (docs/conversations.md). In a group chat, "member": each member has a
    # conversation of its own with the bot; "shared": the group is one conversation, and the
    # prompt shows who spoke. linked_continuity: a person's linked users (Telegram and WhatsApp,
    # ...) continue one private conversation on either channel.
    group_conversations: str = "member"
    linked_continuity: bool = False
    # Rate limits: None turns a cap off. The seed had 15 per minute and nothing else.
    rate_per_minute: int | None = 15
    rate_per_hour: int | None = None
    rate_per_day: int | None = None
    # Wait for the WAL flush when committing rate-limit counters (begin_turn, check_rate_limit).
    durable_rate_limits: bool = False
    # Channels accepted; None accepts any well-formed name.
    channels: frozenset[str] | None = None
    # Link codes.
    link_code_ttl: timedelta = timedelta(minutes=10)
    link_max_failures: int = 10
    link_failure_window: timedelta = timedelta(minutes=10)
    link_lockout: timedelta = timedelta(minutes=15)
    # Failures of one account over any 24 hours, however paced (docs/security.md: the bound).
    link_max_daily_failures: int = 50
    # Proactive messages: authenticated users of this channel are candidates without
    # registering a chat (the seed: Telegram, where the chat id is the user id).
    proactive_channel: str = "telegram"

    def __post_init__(self) -> None:
        # Upper bounds: what PostgreSQL takes where the value goes (an SQL integer parameter or
        # setting, a text value of at most 1 GB), so that an accepted setting cannot fail later.
        for name, maximum in (
            ("max_size", 10_000),
            ("connect_timeout", SQL_INTEGER_MAX),
            ("history_pairs", 100_000),
            ("max_message_bytes", 2**29),
            ("link_max_failures", SQL_INTEGER_MAX),
            # The database keeps the time of each failure of the day: a bounded array.
            ("link_max_daily_failures", 10_000),
        ):
            value = getattr(self, name)
            require(1 <= value <= maximum, name, value, f"a whole number from 1 to {maximum}")
        for name in ("statement_timeout_ms", "tcp_user_timeout_ms", "prepare_threshold"):
            value = getattr(self, name)
            require(
                value is None or 0 <= value <= SQL_INTEGER_MAX,
                name,
                value,
                f"a whole number from 0 to {SQL_INTEGER_MAX}, or none",
            )
        for name in ("pool_timeout", "reconnect_delay", "reconnect_max_delay", "reconnect_timeout"):
            value = getattr(self, name)
            require(value > 0, name, value, "a number above 0")
        require(
            0 <= self.min_size <= self.max_size,
            "min_size",
            self.min_size,
            f"a whole number from 0 to max_size ({self.max_size})",
        )
        require(
            0 <= self.carry_over_pairs <= 100_000,
            "carry_over_pairs",
            self.carry_over_pairs,
            "a whole number from 0 to 100000",
        )
        for name, cap in self.rate_caps_by_name().items():
            require(
                cap is None or 1 <= cap <= SQL_INTEGER_MAX,
                name,
                cap,
                f"a whole number from 1 to {SQL_INTEGER_MAX}, or none",
            )
        for name in ("idle_timeout", "link_code_ttl", "link_failure_window", "link_lockout"):
            value = getattr(self, name)
            positive = name != "link_lockout"  # no lock-out at all is a choice
            require(
                (value > timedelta(0) if positive else value >= timedelta(0)) and value <= CENTURY,
                name,
                value,
                ("a positive duration" if positive else "a duration") + " of at most 100 years",
            )
        require(
            self.group_conversations in GROUP_CONVERSATIONS,
            "group_conversations",
            self.group_conversations,
            " or ".join(repr(mode) for mode in GROUP_CONVERSATIONS),
        )
        require(
            bool(self.proactive_channel),
            "proactive_channel",
            self.proactive_channel,
            "a channel name",
        )

    def rate_caps_by_name(self) -> dict[str, int | None]:
        return {
            "rate_per_minute": self.rate_per_minute,
            "rate_per_hour": self.rate_per_hour,
            "rate_per_day": self.rate_per_day,
        }

    def rate_windows(self) -> tuple[list[int], list[int]]:
        """The configured caps as parallel lists (window seconds, cap), shortest window first."""
        caps = (self.rate_per_minute, self.rate_per_hour, self.rate_per_day)
        pairs = [(s, c) for s, c in zip(RATE_WINDOW_SECONDS, caps, strict=True) if c is not None]
        return [s for s, _ in pairs], [c for _, c in pairs]

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        config_file: str | os.PathLike[str] | None = None,
        **overrides: object,
    ) -> StoreConfig:
        """Settings from the one loader (``store.settings``): ``SESSIONKEEPER_<FIELD>``
        variables (e.g. ``SESSIONKEEPER_MAX_SIZE``) over the top-level keys of the TOML file
        (``config_file`` or ``SESSIONKEEPER_CONFIG``) over the defaults; ``overrides`` win.
        """
        return settings.load(cls, settings.Source(environ, config_file), overrides=overrides)
