"""sessionkeeper's operator side: administration (``sessionkeeper.admin``), the daemon and the
Alembic environment (``sessionkeeper.migrations``). Bots import only the ``store`` package."""
