"""sessionkeeper's store: the PostgreSQL data backbone that chat bots call on every message."""

from .errors import (
    ConfigurationError,
    DatabaseUnavailable,
    InvalidInput,
    LinkCodeError,
    LinkCodeExpired,
    LinkCodeInvalid,
    LinkCodeLocked,
    NotFound,
    RateLimited,
    SchemaOutOfDate,
    StoreError,
)

__all__ = [
    "ConfigurationError",
    "DatabaseUnavailable",
    "InvalidInput",
    "LinkCodeError",
    "LinkCodeExpired",
    "LinkCodeInvalid",
    "LinkCodeLocked",
    "NotFound",
    "RateLimited",
    "SchemaOutOfDate",
    "StoreError",
]
