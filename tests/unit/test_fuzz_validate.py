"""Property-based tests of the store's input checks, without a database.

Every validator and every operation's plan either accepts a value (and then hands on only what
PostgreSQL and Python can store and read back) or raises ``InvalidInput``: never a raw Python
error. The same strategies drive tests/integration/test_fuzz_store.py against PostgreSQL.
"""

from __future__ import annotations

import inspect
import json
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import pytest
from fuzz_strategies import (
    _nested,
    aware_times,
    call_arguments,
    channel_user_ids,
    examples,
    extras,
    message_lists,
    moments,
    random_known,
    texts,
    token_counts,
)
from hypothesis import given
from hypothesis import strategies as st

from store import InvalidInput, LinkCodeOutdated, Operations, validate
from store.client import Op
from store.config import StoreConfig
from store.core import Step

CONFIG = StoreConfig()
BIGINT = range(-(2**63), 2**63)
MANY = examples(3)


def accepted(check: Any, *args: Any) -> Any:
    """The checked value, or None when refused with ``InvalidInput`` (anything else fails)."""
    try:
        return check(*args)
    except InvalidInput as refused:
        assert str(refused) and refused.field is not None
        return None


def storable(value: object) -> None:
    """What PostgreSQL stores and Python reads back: no NUL or lone surrogate in text, bigint
    integers, aware UTC times within the accepted range."""
    if isinstance(value, str):
        assert "\x00" not in value
        value.encode("utf-8")
    elif isinstance(value, bool):
        pass
    elif isinstance(value, int):
        assert value in BIGINT
    elif isinstance(value, datetime):
        assert value.tzinfo is UTC
        assert validate.EARLIEST <= value < validate.LATEST
    elif isinstance(value, list | tuple):
        for item in value:
            storable(item)


@MANY
@given(texts)
def test_text_is_storable_or_refused(value: str) -> None:
    checked = accepted(validate.text, value, "field")
    if checked is not None:
        assert checked == value
        storable(checked)


@MANY
@given(channel_user_ids)
def test_identifiers_are_bounded_strings_or_refused(value: object) -> None:
    checked = accepted(validate.identifier, value, "channel_user_id")
    if checked is not None:
        storable(checked)
        assert 1 <= len(checked) <= validate.MAX_ID_LENGTH


@MANY
@given(token_counts)
def test_token_counts_are_in_range_or_refused(value: object) -> None:
    checked = accepted(validate.tokens, value, "input_tokens")
    if checked is not None:
        assert type(value) is int and 0 <= checked <= validate.MAX_TOKENS


@MANY
@given(moments)
def test_times_are_utc_within_range_or_refused(value: object) -> None:
    checked = accepted(validate.moment, value, "now")
    if checked is not None:
        storable(checked)
        assert isinstance(value, datetime) and checked == value


@MANY
@given(aware_times)
def test_every_aware_time_in_range_is_accepted(value: datetime) -> None:
    in_range = validate.EARLIEST <= value < validate.LATEST
    assert (accepted(validate.moment, value, "now") is not None) == in_range


@MANY
@given(message_lists)
def test_message_batches_are_storable_or_refused(values: object) -> None:
    checked = accepted(validate.messages, CONFIG, values)
    if checked is not None:
        roles, contents, times, extras = checked
        assert 1 <= len(roles) == len(contents) == len(times) == len(extras)
        assert len(roles) <= validate.MAX_BATCH
        for part in checked:
            storable([item for item in part if item is not None])
        for content in contents:
            assert len(content.encode("utf-8")) <= CONFIG.max_message_bytes


@MANY
@given(extras)
def test_extra_fields_are_json_text_or_refused(value: object) -> None:
    checked = accepted(validate.extra, CONFIG, value, "extra")
    if checked is not None:
        storable(checked)
        assert isinstance(json.loads(checked), dict)


def test_deeply_nested_extra_fields_are_refused() -> None:
    # Was: a raw RecursionError from json.dumps.
    with pytest.raises(InvalidInput, match="nested deeper than 64 levels"):
        validate.extra(CONFIG, _nested(5000), "extra")
    assert validate.extra(CONFIG, _nested(63), "extra") is not None


OPERATIONS = {name: op for name, op in vars(Operations).items() if isinstance(op, Op)}


def test_every_operation_is_fuzzed() -> None:
    # A new operation without generated arguments fails here (and is fuzzed nowhere).
    assert set(call_arguments(random_known())) == set(OPERATIONS)


@pytest.mark.parametrize("name", sorted(OPERATIONS))
@examples(2)
@given(data=st.data())
def test_plans_check_all_input_before_the_first_statement(name: str, data: st.DataObject) -> None:
    args, kwargs = data.draw(call_arguments(random_known())[name], label="arguments")
    try:
        # Checked when the plan is made or when it is started: both before a shell takes a
        # connection (core.Runner starts the plan first).
        plan = OPERATIONS[name].plan(CONFIG, *args, **kwargs)
        assert inspect.isgenerator(plan)
        step = next(plan)
    except (InvalidInput, LinkCodeOutdated):  # LinkCodeOutdated: a six-digit code of 0.1.0
        return
    assert isinstance(step, Step) and step.sql
    for value in step.params.values():
        if isinstance(value, UUID | None | bool | list | int | str | datetime):
            storable(value)
        else:  # intervals from the settings
            assert name in {
                "begin_turn",
                "get_or_create_session",
                "create_link_code",
                "redeem_link_code",
            }
    plan.close()
