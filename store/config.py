"""The store's settings: pool, timeouts and policies, with the seed's defaults where it had one."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import timedelta

from .errors import ConfigurationError

ENV_PREFIX = "SESSIONKEEPER_"


@dataclass(frozen=True, kw_only=True)
class StoreConfig:
    """Every tunable of a ``Store``; ``Store(url, max_size=20)`` sets fields by keyword."""

    # Pool (the seed: 10 connections, 30 s idle, no other tuning).
    min_size: int = 1
    max_size: int = 10
    max_idle: float = 300.0
    pool_timeout: float = 5.0  # seconds to wait for a free connection before DatabaseUnavailable
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
    # Proactive messages: authenticated users of this channel are candidates without
    # registering a chat (the seed: Telegram, where the chat id is the user id).
    proactive_channel: str = "telegram"

    def __post_init__(self) -> None:
        positive = {
            "max_size": self.max_size,
            "pool_timeout": self.pool_timeout,
            "connect_timeout": self.connect_timeout,
            "history_pairs": self.history_pairs,
            "max_message_bytes": self.max_message_bytes,
            "link_max_failures": self.link_max_failures,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ConfigurationError(f"{name} must be positive, not {value!r}")
        if not 0 <= self.min_size <= self.max_size:
            raise ConfigurationError("min_size must be between 0 and max_size")
        if self.carry_over_pairs < 0:
            raise ConfigurationError("carry_over_pairs must not be negative")
        for name, cap in self.rate_caps_by_name().items():
            if cap is not None and cap <= 0:
                raise ConfigurationError(f"{name} must be positive or None, not {cap!r}")
        if not self.proactive_channel:
            raise ConfigurationError("proactive_channel must not be empty")
        if self.idle_timeout <= timedelta(0) or self.link_code_ttl <= timedelta(0):
            raise ConfigurationError("idle_timeout and link_code_ttl must be positive")

    def rate_caps_by_name(self) -> dict[str, int | None]:
        return {
            "rate_per_minute": self.rate_per_minute,
            "rate_per_hour": self.rate_per_hour,
            "rate_per_day": self.rate_per_day,
        }

    def rate_windows(self) -> tuple[list[int], list[int]]:
        """The configured caps as parallel lists (window seconds, cap), shortest window first."""
        seconds = (60, 3600, 86400)
        caps = (self.rate_per_minute, self.rate_per_hour, self.rate_per_day)
        pairs = [(s, c) for s, c in zip(seconds, caps, strict=True) if c is not None]
        return [s for s, _ in pairs], [c for _, c in pairs]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> StoreConfig:
        """Settings from ``SESSIONKEEPER_<FIELD>`` variables (e.g. ``SESSIONKEEPER_MAX_SIZE``),
        then ``overrides``. Durations are seconds; ``SESSIONKEEPER_CHANNELS`` is comma-separated;
        ``none`` turns off an optional setting.
        """
        environ = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for field in fields(cls):
            raw = environ.get(ENV_PREFIX + field.name.upper())
            if raw is not None:
                values[field.name] = _parse(field.name, str(field.type), raw.strip())
        values.update(overrides)
        try:
            return cls(**values)  # type: ignore[arg-type]
        except TypeError as exc:
            raise ConfigurationError(f"unknown store setting: {exc}") from None


def _parse(name: str, kind: str, raw: str) -> object:
    try:
        if raw.lower() == "none" and "None" in kind:
            return None
        if kind.startswith("timedelta"):
            return timedelta(seconds=float(raw))
        if kind.startswith("bool"):
            return raw.lower() in ("1", "true", "yes", "on")
        if kind.startswith("frozenset"):
            return frozenset(part.strip() for part in raw.split(",") if part.strip())
        if kind == "str":
            return raw
        if kind.startswith("float"):
            return float(raw)
        return int(raw)
    except ValueError:
        raise ConfigurationError(f"{ENV_PREFIX}{name.upper()}={raw!r} is not a {kind}") from None
