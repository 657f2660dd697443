-- Adopting a database made by the original TypeScript system, in place
-- (sessionkeeper/admin/legacy/adoption.py), as named blocks ("-- name --" then the SQL). They run
-- in one transaction with TimeZone set to the zone the legacy TIMESTAMP columns were written in.
-- Revision 0001's own shape (columns, constraints, indexes, its other tables) is not written
-- here: adoption.py compiles it from the revision (target.py).

-- core_constraints --
-- Constraints of the seed tables, which get the names and rules of revision 0001. Only the
-- primary keys are kept (renamed): other subsystems' foreign keys may depend on them.
SELECT c.relname, con.conname, con.contype::text,
       array_agg(a.attname::text ORDER BY k.ord) AS columns
FROM pg_constraint con
JOIN pg_class c ON c.oid = con.conrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
CROSS JOIN LATERAL unnest(con.conkey) WITH ORDINALITY AS k(attnum, ord)
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
WHERE n.nspname = 'public' AND c.relname = ANY(%(tables)s) AND con.contype IN ('p', 'u', 'f', 'c')
GROUP BY c.relname, con.conname, con.contype
ORDER BY con.contype = 'p', c.relname, con.conname

-- core_indexes --
-- Plain indexes of the seed tables (those not behind a constraint), replaced by 0001's.
SELECT c.relname AS index_name
FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid
JOIN pg_class t ON t.oid = i.indrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
WHERE n.nspname = 'public' AND t.relname = ANY(%(tables)s)
  AND NOT EXISTS (SELECT 1 FROM pg_constraint con WHERE con.conindid = i.indexrelid)

-- adopt_backfill --
-- Values for rows that predate a column. Seed rate-limit windows were minutes; seed link codes
-- lived ten minutes, so they were created ten minutes before they expire. Users linked to a
-- person id that has no persons row (the seed had no such foreign key) get one.
UPDATE rate_limits SET window_seconds = 60 WHERE window_seconds IS NULL;
UPDATE link_codes SET created_at = expires_at - interval '10 minutes' WHERE created_at IS NULL;
INSERT INTO persons (person_id, created_at)
SELECT DISTINCT u.person_id, now() FROM users u
WHERE u.person_id IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM persons p WHERE p.person_id = u.person_id)

-- history_to_jsonb --
-- A seed that kept its histories as json: the converter and its verification read jsonb.
ALTER TABLE sessions ALTER COLUMN messages TYPE jsonb USING messages::jsonb

-- release_history_column --
-- The history column stays until every session is converted; NULL marks a converted session,
-- so sessions opened from now on (by this store) have nothing to convert.
ALTER TABLE sessions ALTER COLUMN messages DROP NOT NULL, ALTER COLUMN messages DROP DEFAULT

-- create_version_table --
-- Alembic's version table, as Alembic creates it; stamped with revision 0001 (stamp).
CREATE TABLE alembic_version (
    version_num varchar(32) NOT NULL,
    CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num)
)

-- stamp --
INSERT INTO alembic_version (version_num) VALUES (%(revision)s)
