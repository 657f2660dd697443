"""The Alembic revisions and store/schema.py describe the same database."""

from __future__ import annotations

import psycopg
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from sessionkeeper.admin import migrate
from store.schema import is_partition, metadata


def include_name(name: str | None, type_: str, parent_names: object) -> bool:
    return not (type_ == "table" and is_partition(name))


def _drift(url: str) -> list[object]:
    engine = migrate.engine_for(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection,
                opts={
                    "compare_type": True,
                    "compare_server_default": True,
                    "include_name": include_name,
                },
            )
            return list(compare_metadata(context, metadata))
    finally:
        engine.dispose()


def _tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
    return {row[0] for row in rows}


def test_empty_database_migrates_to_head(empty_database_url: str) -> None:
    assert migrate.current_revision(empty_database_url) is None
    migrate.upgrade(empty_database_url)
    assert migrate.current_revision(empty_database_url) == migrate.head_revision()
    assert set(metadata.tables) <= _tables(empty_database_url)


def test_migrated_schema_matches_metadata(empty_database_url: str) -> None:
    migrate.upgrade(empty_database_url)
    assert _drift(empty_database_url) == []


def test_upgrade_is_idempotent(empty_database_url: str) -> None:
    migrate.upgrade(empty_database_url)
    migrate.upgrade(empty_database_url)
    assert migrate.current_revision(empty_database_url) == migrate.head_revision()


def test_downgrade_to_base_then_upgrade_to_head(empty_database_url: str) -> None:
    migrate.upgrade(empty_database_url)
    migrate.downgrade(empty_database_url, "base")
    assert migrate.current_revision(empty_database_url) is None
    assert _tables(empty_database_url) == {"alembic_version"}
    migrate.upgrade(empty_database_url)
    assert migrate.current_revision(empty_database_url) == migrate.head_revision()
    assert _drift(empty_database_url) == []


def test_drift_check_notices_a_missing_column(empty_database_url: str) -> None:
    # Guards the guard: the comparison must see a difference when there is one.
    migrate.upgrade(empty_database_url)
    with psycopg.connect(empty_database_url) as conn:
        conn.execute("ALTER TABLE users DROP COLUMN home_location")
    assert _drift(empty_database_url) != []
