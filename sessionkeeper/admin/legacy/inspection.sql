-- What a database holds (sessionkeeper/admin/legacy/inspection.py), as named blocks
-- ("-- name --" then the SQL).

-- inspect --
-- What is there: one row per table of the public schema, with its columns and their types.
SELECT c.relname AS table_name,
       array_agg(a.attname::text ORDER BY a.attnum) AS columns,
       array_agg(format_type(a.atttypid, a.atttypmod) ORDER BY a.attnum) AS types,
       array_agg(NOT a.attnotnull ORDER BY a.attnum) AS nullable
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
GROUP BY c.relname
ORDER BY c.relname

-- alembic_revision --
SELECT max(version_num) FROM alembic_version
