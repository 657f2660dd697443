"""Administration of a sessionkeeper database: migrations, the embedded server, adoption of a
TypeScript-era database, applying the SQL functions. ``import store`` imports none of it."""
