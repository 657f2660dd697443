"""Running the Alembic migrations programmatically (``sessionkeeper migrate`` and the tests)."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import psycopg
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine
from sqlalchemy.pool import NullPool

from store.connection import secure_conninfo
from store.errors import SchemaOutOfDate

# pg_advisory_lock key held while migrations run ("sk-migr" in ASCII).
MIGRATION_LOCK_KEY = 0x736B2D6D69677200 >> 8


def migrations_dir() -> Path:
    """The Alembic script directory, installed as ``sessionkeeper.migrations`` or in the source
    tree (the repository's top-level ``migrations/`` folder)."""
    spec = importlib.util.find_spec("sessionkeeper.migrations")
    if spec is not None and spec.origin is not None:
        return Path(spec.origin).parent
    return Path(__file__).resolve().parents[2] / "migrations"


def revision_module(filename: str) -> ModuleType:
    """An earlier revision's module (``versions/filename``), so that a downgrade restores that
    revision's function bodies exactly (Alembic's "replaceable objects" recipe)."""
    path = migrations_dir() / "versions" / filename
    spec = importlib.util.spec_from_file_location(f"_sessionkeeper_revision_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def engine_for(url: str) -> Engine:
    """A SQLAlchemy engine on psycopg 3 for ``url`` (resolved by the caller)."""
    conninfo = secure_conninfo(url, application_name="sessionkeeper-migrate")
    return create_engine(
        "postgresql+psycopg://",
        creator=lambda: psycopg.connect(conninfo),
        poolclass=NullPool,
    )


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "the migrations directory has no revisions"
    return head


def current_revision(url: str) -> str | None:
    """The revision the database is at, or None for a database Alembic never touched."""
    engine = engine_for(url)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


# A TypeScript-era database: the seed's JSONB history column and no Alembic history.
_UNADOPTED_LEGACY = """
SELECT to_regclass('alembic_version') IS NULL AND EXISTS (
    SELECT 1 FROM information_schema.columns
    WHERE table_schema = current_schema() AND table_name = 'sessions'
      AND column_name = 'messages')
"""


def upgrade(
    url: str, revision: str = "head", progress: Callable[[str, int], None] | None = None
) -> None:
    """Upgrade to ``revision``. Revisions that fill big tables in batches call
    ``progress(what, rows done)`` after each batch, when given (``sessionkeeper migrate``)."""

    def action(config: Config) -> None:
        config.attributes["progress"] = progress
        # Adopting one alters tables in place: only `sessionkeeper migrate` (admin.legacy) does
        # that, deliberately, never as a side effect of e.g. `sessionkeeper run`.
        if config.attributes["connection"].exec_driver_sql(_UNADOPTED_LEGACY).scalar():
            raise SchemaOutOfDate(
                "this is a database of the TypeScript store: run `sessionkeeper migrate`"
                " to adopt it (see --dry-run first)"
            )
        command.upgrade(config, revision)

    _run(url, action)


def downgrade(url: str, revision: str) -> None:
    _run(url, lambda config: command.downgrade(config, revision))


def _run(url: str, action: object) -> None:
    engine = engine_for(url)
    try:
        with engine.connect() as connection:
            config = alembic_config()
            config.attributes["connection"] = connection
            action(config)  # type: ignore[operator]
            connection.commit()
    finally:
        engine.dispose()
