"""Alembic environment and revisions (installed as the package ``store.migrations``)."""
