"""Every error the store raises, under one base class so callers can catch ``StoreError``."""

from __future__ import annotations

from datetime import datetime


class StoreError(Exception):
    """Base class of all sessionkeeper errors."""


class ConfigurationError(StoreError):
    """A setting is missing or invalid; the message names the setting."""


class InvalidInput(StoreError, ValueError):
    """An argument was rejected before anything reached the database. ``rule`` names the check
    a text or message broke (``type``, ``empty``, ``length``, ``nul``, ``unicode``, ``size``,
    ``shape``, ``role``, ``timestamp``, ``json``), for callers that sort refusals; None for
    other checks."""

    def __init__(self, message: str, *, field: str | None = None, rule: str | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.rule = rule


class RateLimited(StoreError):
    """A rate-limit cap refused the request; ``retry_at`` says when it would be admitted."""

    def __init__(self, message: str, *, retry_at: datetime, window_seconds: int) -> None:
        super().__init__(message)
        self.retry_at = retry_at
        self.window_seconds = window_seconds


class LinkCodeError(StoreError):
    """Base class of link-code redemption failures."""


class LinkCodeInvalid(LinkCodeError):
    """The code does not exist, was already used, or belongs to the redeeming user."""


class LinkCodeOutdated(LinkCodeInvalid):
    """A six-digit code of the previous release: no longer redeemed; ask for a new code."""


class LinkCodeExpired(LinkCodeError):
    """The code existed but its validity ended."""


class LinkCodeLocked(LinkCodeError):
    """Too many wrong codes: the user may not redeem any code until ``locked_until``."""

    def __init__(self, message: str, *, locked_until: datetime) -> None:
        super().__init__(message)
        self.locked_until = locked_until


class NotFound(StoreError, LookupError):
    """A referenced user, person or session does not exist."""


class ErasureBlocked(StoreError):
    """A table the store does not own (another subsystem's) still references the user or
    person: nothing was erased."""


class DatabaseUnavailable(StoreError):
    """PostgreSQL could not be reached or went away, or timed out: the call did not succeed.

    ``in_doubt`` is true when the connection was lost after the statement had been sent: it
    may have committed all the same (the answer was lost). ``finish_turn`` is safe to call
    again with the same ``Turn`` and arguments then (the turn's idempotency key stores it
    once); for other writes the caller decides.
    """

    def __init__(self, message: str, *, in_doubt: bool = False) -> None:
        super().__init__(message)
        self.in_doubt = in_doubt


class ConnectionRefused(DatabaseUnavailable):
    """The server (or the TLS handshake) refused the connection for a reason that waiting will
    not cure: raised at once, not after ``pool_timeout``. The message carries the server's own
    words (passwords redacted) and what to change; the subclasses say which kind."""


class AuthenticationFailed(ConnectionRefused):
    """The server refused the login: a wrong password, an unknown role, or no ``pg_hba.conf``
    entry for this client."""


class DatabaseMissing(ConnectionRefused):
    """The database named in the URL does not exist on the server."""


class TLSFailed(ConnectionRefused):
    """The TLS handshake failed or was refused (no TLS on the server, an unknown certificate
    authority, a certificate for another name); the message says which ``sslmode`` or
    ``sslrootcert`` to set."""


class ReadOnlyDatabase(DatabaseUnavailable):
    """The connection reached a read-only server (a standby, or a primary demoted by a
    failover): nothing was written. The store dropped that connection, so the next call
    connects afresh and, with ``target_session_attrs=read-write`` and several hosts in the
    URL, finds the new primary."""


class TransactionConflict(DatabaseUnavailable):
    """The statement lost a race with another transaction (a deadlock, a serialization
    failure, a lock it could not get within ``lock_timeout``) and was rolled back whole:
    nothing was written, and trying again is safe."""


class PermissionDenied(StoreError):
    """The database role lacks a privilege the call needs (SQLSTATE 42501): nothing was
    written. The bots' login must be a member of the bot role, and ``sessionkeeper migrate``
    (or ``sessionkeeper roles setup``) must have applied the grants (docs/roles.md)."""


class PartitionMissing(StoreError):
    """No time partition of ``rate_limits`` or ``usage_stats`` covers the row's time (SQLSTATE
    23514): nothing was written. The ``partition_maintenance`` job keeps partitions made ahead
    of the current time (``ahead``, 7 days by default) and the alert
    ``SessionkeeperPartitionsNotAhead`` fires long before they run out; a ``now`` passed to the
    store far outside them (a clock days off, a date of another year) meets this error."""


class SchemaOutOfDate(StoreError):
    """The database is not migrated to the revision this code expects."""
