"""The legacy adoption takes its rules from their owners: the target shape from revision 0001
(sessionkeeper/admin/legacy/target.py), the quarantine from the store's validation."""

from __future__ import annotations

import pytest

from sessionkeeper.admin.legacy import extra_fields, quarantine_reason
from sessionkeeper.admin.legacy.target import SEED_TABLES, revision_0001
from store import InvalidInput, StoreConfig, validate
from store.schema import metadata

# format_type() spellings the catalog reports for 0001's columns: adoption compares with them.
CATALOG_TYPES = {"uuid", "text", "boolean", "integer", "bigint", "date", "jsonb"}
CATALOG_TYPES |= {"timestamp with time zone"}


def test_revision_0001_is_read_from_the_revision() -> None:
    target = revision_0001()
    assert target.revision == "0001"
    assert set(SEED_TABLES) < set(target.tables) <= set(metadata.tables)
    users = {c.name: c for c in target.columns("users")}
    assert users["user_id"].default == "gen_random_uuid()" and not users["user_id"].nullable
    assert users["display_name"].nullable and users["display_name"].default is None
    for table in target.tables:
        assert {c.type for c in target.columns(table)} <= CATALOG_TYPES, table
    assert [c.name for c in target.primary_key("rate_limits").columns] == [
        "user_id",
        "window_seconds",
        "window_start",
    ]
    indexes = target.create_indexes("users")
    assert "CREATE UNIQUE INDEX uq_users_channel_channel_user_id" in "\n".join(indexes)


@pytest.mark.parametrize(
    ("message", "rule"),
    [
        ({"role": "developer", "content": "hi"}, "role"),
        ({"role": "user", "content": 5}, "type"),
        ({"role": "user", "content": ""}, "empty"),
        ({"role": "user", "content": "a\x00b"}, "nul"),
        ({"role": "user", "content": "\ud800"}, "unicode"),
        ({"role": "user", "content": "x" * 11}, "size"),
        (["user", "hi"], "shape"),
    ],
)
def test_the_quarantine_follows_the_stores_refusal(message: object, rule: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        validate.message(StoreConfig(max_message_bytes=10), message, "m")
    assert refused.value.rule == rule
    assert quarantine_reason(message, 10) is not None


def test_what_the_store_takes_is_not_quarantined() -> None:
    message = {"role": "tool", "content": "x" * 10, "timestamp": "not a time"}
    assert quarantine_reason(message, 10) is None  # an unreadable time is replaced, not refused
    validate.message(StoreConfig(max_message_bytes=10), {**message, "timestamp": None}, "m")


@pytest.mark.parametrize(
    ("extra", "rule", "reason"),
    [
        ({"na\x00me": "x"}, "nul", "NUL in extra fields"),
        ({"name": ["a", {"deep": "b\x00"}]}, "nul", "NUL in extra fields"),
        ({"name": "\ud800"}, "unicode", "invalid Unicode in extra fields"),
        ({"blob": "x" * 20}, "size", "extra fields over 20 bytes"),
        ({"score": float("inf")}, "json", "number out of range in extra fields"),
    ],
)
def test_extra_keys_are_checked_as_the_stores_extra(
    extra: dict[str, object], rule: str, reason: str
) -> None:
    message = {"role": "tool", "content": "ok", "timestamp": "not a time", **extra}
    with pytest.raises(InvalidInput) as refused:
        validate.message(
            StoreConfig(max_message_bytes=20),
            {"role": "tool", "content": "ok", "extra": extra},
            "m",
        )
    assert refused.value.rule == rule and refused.value.field == "m.extra"
    assert quarantine_reason(message, 20) == reason


def test_extra_keys_the_store_takes_are_not_quarantined() -> None:
    assert extra_fields({"role": "user", "content": "hi", "timestamp": 1}) == {}
    calls = {"role": "assistant", "content": "", "tool_calls": [{"id": "c1"}], "timestamp": 1}
    assert extra_fields(calls) == {"tool_calls": [{"id": "c1"}]}
    # Empty content is taken when extra carries the message, as the store takes it.
    assert quarantine_reason(calls, 100) is None
    assert quarantine_reason({"role": "assistant", "content": ""}, 100) == "empty content"
    # The limit counts the extra's compact JSON, {"name":"x"}: 12 bytes.
    assert quarantine_reason({"role": "tool", "content": "ok", "name": "x"}, 12) is None
    assert quarantine_reason({"role": "tool", "content": "ok", "name": "xx"}, 12) == (
        "extra fields over 12 bytes"
    )
