"""Administration: migrations, the embedded server, legacy adoption, SQL function apply."""
