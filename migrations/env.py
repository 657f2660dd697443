"""Alembic environment: runs revisions on the connection that sessionkeeper.admin.migrate
hands over.

Run through ``sessionkeeper migrate`` (or sessionkeeper.admin.migrate); plain ``alembic`` works
too with ``-x url=...`` or SESSIONKEEPER_DATABASE_URL / DATABASE_URL set.
"""

from __future__ import annotations

from alembic import context

from sessionkeeper.admin.migrate import MIGRATION_LOCK_KEY, engine_for
from store.schema import metadata

config = context.config


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("url")
    engine = engine_for(url)
    with engine.connect() as connection:
        _run(connection)
    engine.dispose()


def _run(connection: object) -> None:
    context.configure(
        connection=connection,  # type: ignore[arg-type]
        target_metadata=metadata,
        compare_type=True,
        compare_server_default=True,
        transaction_per_migration=True,
    )
    # Replicas may all run "migrate" at start-up: one at a time, the others then find head.
    context.execute(f"SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})")
    try:
        with context.begin_transaction():
            context.run_migrations()
    finally:
        context.execute(f"SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY})")


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; connect to a database")
run_migrations_online()
