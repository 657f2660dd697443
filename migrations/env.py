"""Alembic environment: runs revisions on the connection that sessionkeeper.admin.migrate
hands over.

Run through ``sessionkeeper migrate`` (or sessionkeeper.admin.migrate); plain ``alembic`` works
too with ``-x url=...`` or SESSIONKEEPER_DATABASE_URL / DATABASE_URL set.
"""

from __future__ import annotations

from alembic import context

from sessionkeeper.admin.functions import apply_functions
from sessionkeeper.admin.migrate import MIGRATION_LOCK_KEY, engine_for
from sessionkeeper.admin.roles import apply_grants, assume_owner
from store import settings
from store.errors import ConfigurationError
from store.schema import is_partition, metadata

config = context.config


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("url") or settings.database_url()
    if url is None:
        raise ConfigurationError(
            "no database URL: pass -x url=... or set SESSIONKEEPER_DATABASE_URL"
        )
    engine = engine_for(url)
    with engine.connect() as connection:
        _run(connection)
        # Each revision committed its own transaction; what ran after the last one (the
        # functions' apply) is committed here. sessionkeeper.admin.migrate commits its
        # connection itself.
        connection.commit()
    engine.dispose()


def _run(connection: object) -> None:
    context.configure(
        connection=connection,  # type: ignore[arg-type]
        target_metadata=metadata,
        compare_type=True,
        compare_server_default=True,
        transaction_per_migration=True,
        include_name=include_name,
    )
    # A migrate login that is a member of the owner role creates everything as owner
    # (docs/roles.md).
    assume_owner(connection.connection.driver_connection)  # type: ignore[attr-defined]
    # Replicas may all run "migrate" at start-up: one at a time, the others then find head.
    context.execute(f"SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})")
    try:
        with context.begin_transaction():
            context.run_migrations()
            _apply_functions_at_head(connection)
    finally:
        context.execute(f"SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY})")


def include_name(name: str | None, type_: str, parent_names: object) -> bool:
    """Partitions are the partition_maintenance job's, not the schema's (store.schema)."""
    return not (type_ == "table" and is_partition(name))


def _apply_functions_at_head(connection: object) -> None:
    """Install store/sql/functions.sql once the database is at head, also when no revision was
    pending (a release may change only a function body). Not after a downgrade or an upgrade to
    an older revision: the file is written for head's tables."""
    at = set(context.get_context().get_current_heads())
    if at != set(context.script.get_heads()):
        return
    # The psycopg connection under SQLAlchemy's: same session, same transaction.
    driver = connection.connection.driver_connection  # type: ignore[attr-defined]
    # Grants follow the functions' release gate: an older release must not take back what a
    # newer one granted.
    if apply_functions(driver):
        apply_grants(driver)


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; connect to a database")
run_migrations_online()
