"""Administration of a sessionkeeper database: migrations, the embedded server, adoption of a
TypeScript-era database. Nothing here is imported by ``import store``."""
