"""Alembic environment and revisions (installed as the package ``sessionkeeper.migrations``)."""
