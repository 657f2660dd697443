"""``core.translate``: which ``StoreError`` a driver or pool error stands for, without a server.
psycopg builds the class of a server error from its SQLSTATE (``errors.lookup``), so each case
starts from the SQLSTATE the server would send."""

from __future__ import annotations

from typing import cast

import psycopg
import pytest
from psycopg import errors as pg_errors
from psycopg_pool import PoolTimeout

import store
from store import core
from store.client import raise_store_error

SECRET = "hunter2-s3cret"


@pytest.mark.parametrize(
    ("sqlstate", "expected"),
    [
        ("P0002", store.NotFound),  # no_data_found: raised by sk_* for an unknown user
        ("42883", store.SchemaOutOfDate),  # undefined_function: sk_* not installed yet
        ("42P01", store.SchemaOutOfDate),  # undefined_table
        ("57014", store.DatabaseUnavailable),  # query_canceled: the statement timeout
        ("57P01", store.DatabaseUnavailable),  # admin_shutdown: the server is going down
        ("08006", store.DatabaseUnavailable),  # connection_failure
        ("53300", store.DatabaseUnavailable),  # too_many_connections
        ("25006", store.ReadOnlyDatabase),  # read_only_sql_transaction: a standby answered
        ("40P01", store.TransactionConflict),  # deadlock_detected: rolled back, retry is safe
        ("40001", store.TransactionConflict),  # serialization_failure
        ("55P03", store.TransactionConflict),  # lock_not_available: lock_timeout
        ("42501", store.PermissionDenied),  # insufficient_privilege: a role without grants
    ],
)
def test_sqlstates_become_store_errors(sqlstate: str, expected: type[store.StoreError]) -> None:
    error = pg_errors.lookup(sqlstate)("the server's message")
    translated = core.translate(error)
    assert type(translated) is expected
    assert str(translated).startswith("the server's message (SQLSTATE " + sqlstate + ")")


def test_a_foreign_key_violation_names_no_table_or_constraint() -> None:
    # foreign_key_violation: a session or user that is gone. The server's message names the
    # table (a partition, for usage_stats) and the constraint: neither means anything to the
    # caller. The missing id comes from DETAIL (tests/integration/test_cli_operator.py).
    error = pg_errors.ForeignKeyViolation(
        'insert or update on table "usage_stats_p20261206_0000" violates foreign key'
        ' constraint "fk_usage_stats_user_id_users"'
    )
    translated = core.translate(error)
    assert type(translated) is store.NotFound
    assert str(translated) == "a row it refers to does not exist (SQLSTATE 23503)"


def test_a_row_outside_every_partition_is_partition_missing() -> None:
    # check_violation raised by the partition routing (no DEFAULT partition since 0022), and
    # not by a CHECK constraint, which stays the driver's error.
    missing = pg_errors.CheckViolation('no partition of relation "rate_limits" found for row')
    translated = core.translate(missing)
    assert type(translated) is store.PartitionMissing
    assert "nothing was written" in str(translated)
    assert "partition_maintenance" in str(translated)
    other = pg_errors.CheckViolation('new row violates check constraint "ck_usage_stats_tokens"')
    assert core.translate(other) is other


def test_a_connection_lost_after_sending_is_in_doubt() -> None:
    lost = psycopg.OperationalError("server closed the connection unexpectedly")
    step = core.Step("append_messages", {}, if_in_doubt="retrying is safe")
    translated = core.translate(lost, step)
    assert isinstance(translated, store.DatabaseUnavailable) and translated.in_doubt
    assert str(translated).endswith(
        "the connection was lost after the statement was sent: retrying is safe"
    )
    # Nothing sent yet, or the server's own verdict (a statement timeout): nothing committed.
    assert not cast(store.DatabaseUnavailable, core.translate(lost)).in_doubt
    canceled = pg_errors.QueryCanceled("canceling statement due to statement timeout")
    assert not cast(store.DatabaseUnavailable, core.translate(canceled, step)).in_doubt
    read_only = pg_errors.ReadOnlySqlTransaction("cannot execute INSERT in a read-only transaction")
    assert not cast(store.DatabaseUnavailable, core.translate(read_only, step)).in_doubt


def test_schema_out_of_date_says_what_to_run() -> None:
    error = pg_errors.UndefinedFunction("function sk_begin_turn(text) does not exist")
    assert "run `sessionkeeper migrate`" in str(core.translate(error))


@pytest.mark.parametrize(
    "error",
    [
        psycopg.OperationalError("connection to server failed: Connection refused"),
        psycopg.InterfaceError("the connection is closed"),
    ],
)
def test_driver_errors_without_sqlstate_mean_the_database_is_unavailable(
    error: psycopg.Error,
) -> None:
    translated = core.translate(error)
    assert type(translated) is store.DatabaseUnavailable
    assert str(translated) == str(error) and "SQLSTATE" not in str(translated)


def test_pool_timeout_means_no_free_connection() -> None:
    translated = core.translate(PoolTimeout("couldn't get a connection after 5.00 sec"))
    assert type(translated) is store.DatabaseUnavailable
    assert str(translated) == (
        "no database connection available: couldn't get a connection after 5.00 sec"
    )


@pytest.mark.parametrize(
    "error",
    [
        psycopg.OperationalError(f'connection to "postgresql://bot:{SECRET}@db:5432/x" failed'),
        psycopg.OperationalError(f"could not connect with host=db password={SECRET} user=bot"),
        psycopg.OperationalError(f"could not connect: password = '{SECRET} with blanks' host=db"),
        pg_errors.NoDataFound(f"key (dsn)=(postgres://u:{SECRET}@h/d) is not present"),
        PoolTimeout(f"pool 'postgresql://bot:{SECRET}@db/x' had no connection"),
    ],
)
def test_passwords_are_redacted(error: Exception) -> None:
    translated = core.translate(error)
    assert isinstance(translated, store.StoreError)
    assert SECRET not in str(translated) and "***" in str(translated)


@pytest.mark.parametrize(
    "error",
    [
        pg_errors.UniqueViolation("duplicate key value violates unique constraint"),  # 23505
        pg_errors.InvalidTextRepresentation("invalid input syntax for type uuid"),  # 22P02
        pg_errors.RaiseException("raised by a function"),  # P0001
        psycopg.ProgrammingError("the query has 2 placeholders but 1 parameters were passed"),
        ValueError("not a driver error"),
    ],
)
def test_other_errors_pass_through_unchanged(error: Exception) -> None:
    assert core.translate(error) is error


def test_the_store_raises_the_translation_from_the_original() -> None:
    original = pg_errors.NoDataFound("user 1 does not exist")
    with pytest.raises(store.NotFound) as raised:
        raise_store_error(original)
    assert raised.value.__cause__ is original


def test_an_untranslated_error_is_raised_as_it_is() -> None:
    original = pg_errors.UniqueViolation("duplicate key")
    with pytest.raises(pg_errors.UniqueViolation) as raised:
        raise_store_error(original)
    assert raised.value is original
