-- Adopting a database made by the original TypeScript system (store/legacy.py), as named
-- blocks ("-- name --" then the SQL). The adoption blocks run in one transaction with TimeZone
-- set to the zone the legacy TIMESTAMP columns were written in; they bring the six seed tables
-- to the exact shape of revision 0001, so that Alembic can take over from there.

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

-- create_missing_core_tables --
-- A seed database that never used linking, limits or usage may lack these: a key is enough,
-- the column steps that follow add the rest.
CREATE TABLE IF NOT EXISTS persons (person_id uuid PRIMARY KEY);
CREATE TABLE IF NOT EXISTS rate_limits (user_id uuid NOT NULL);
CREATE TABLE IF NOT EXISTS usage_stats (stat_id uuid PRIMARY KEY);
CREATE TABLE IF NOT EXISTS link_codes (code text PRIMARY KEY)

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

-- adopt_constraints --
-- Revision 0001's keys, checks, foreign keys and indexes, with its names.
ALTER TABLE rate_limits
    ADD CONSTRAINT pk_rate_limits PRIMARY KEY (user_id, window_seconds, window_start),
    ADD CONSTRAINT ck_rate_limits_window_seconds CHECK (window_seconds > 0),
    ADD CONSTRAINT fk_rate_limits_user_id_users FOREIGN KEY (user_id)
        REFERENCES users (user_id) ON DELETE CASCADE;
ALTER TABLE users
    ADD CONSTRAINT fk_users_person_id_persons FOREIGN KEY (person_id)
        REFERENCES persons (person_id) ON DELETE SET NULL;
ALTER TABLE sessions
    ADD CONSTRAINT fk_sessions_user_id_users FOREIGN KEY (user_id)
        REFERENCES users (user_id) ON DELETE CASCADE;
ALTER TABLE usage_stats
    ADD CONSTRAINT ck_usage_stats_tokens
        CHECK (input_tokens >= 0 AND output_tokens >= 0 AND cached_tokens >= 0),
    ADD CONSTRAINT fk_usage_stats_user_id_users FOREIGN KEY (user_id)
        REFERENCES users (user_id) ON DELETE CASCADE;
ALTER TABLE link_codes
    ADD CONSTRAINT fk_link_codes_user_id_users FOREIGN KEY (user_id)
        REFERENCES users (user_id) ON DELETE CASCADE;
CREATE INDEX ix_users_person_id ON users (person_id);
CREATE UNIQUE INDEX uq_users_channel_channel_user_id ON users (channel, channel_user_id);
CREATE INDEX ix_sessions_last_active ON sessions (last_active);
CREATE INDEX ix_sessions_user_id_last_active ON sessions (user_id, last_active DESC);
CREATE INDEX ix_rate_limits_window_start ON rate_limits (window_start);
CREATE INDEX ix_usage_stats_created_at ON usage_stats (created_at);
CREATE INDEX ix_usage_stats_pending ON usage_stats (created_at) WHERE NOT rolled_up;
CREATE INDEX ix_usage_stats_user_id ON usage_stats (user_id);
CREATE INDEX ix_link_codes_expires_at ON link_codes (expires_at);
CREATE INDEX ix_link_codes_user_id ON link_codes (user_id);
-- The history column stays until every session is converted; NULL marks a converted session,
-- so sessions opened from now on (by this store) have nothing to convert.
ALTER TABLE sessions ALTER COLUMN messages DROP NOT NULL, ALTER COLUMN messages DROP DEFAULT

-- create_new_tables --
-- Revision 0001's tables the seed did not have, exactly as 0001 creates them (a revision is
-- frozen, so is this copy), and Alembic's version table stamped at 0001.
CREATE TABLE archived_sessions (
    session_id uuid NOT NULL,
    user_id uuid NOT NULL,
    created_at timestamp with time zone NOT NULL,
    last_active timestamp with time zone NOT NULL,
    next_seq bigint NOT NULL,
    archived_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT pk_archived_sessions PRIMARY KEY (session_id)
);
CREATE INDEX ix_archived_sessions_archived_at ON archived_sessions (archived_at);
CREATE INDEX ix_archived_sessions_user_id ON archived_sessions (user_id);
CREATE TABLE archived_session_messages (
    session_id uuid NOT NULL,
    seq bigint NOT NULL,
    role text NOT NULL,
    content text NOT NULL,
    created_at timestamp with time zone NOT NULL,
    CONSTRAINT pk_archived_session_messages PRIMARY KEY (session_id, seq),
    CONSTRAINT fk_archived_session_messages_session_id_archived_sessions FOREIGN KEY (session_id)
        REFERENCES archived_sessions (session_id) ON DELETE CASCADE
);
CREATE TABLE job_runs (
    run_id bigserial NOT NULL,
    job text NOT NULL,
    replica_id text NOT NULL,
    started_at timestamp with time zone DEFAULT now() NOT NULL,
    finished_at timestamp with time zone,
    outcome text DEFAULT 'running'::text NOT NULL,
    rows bigint DEFAULT 0 NOT NULL,
    error text,
    details jsonb,
    CONSTRAINT pk_job_runs PRIMARY KEY (run_id),
    CONSTRAINT ck_job_runs_outcome
        CHECK (outcome = ANY (ARRAY['running'::text, 'success'::text, 'failure'::text, 'skipped'::text]))
);
CREATE INDEX ix_job_runs_job_started_at ON job_runs (job, started_at DESC);
CREATE TABLE proactive_user_list (
    user_id uuid NOT NULL,
    chat_id text NOT NULL,
    loaded_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT pk_proactive_user_list PRIMARY KEY (user_id)
);
CREATE TABLE usage_daily (
    day date NOT NULL,
    user_id uuid NOT NULL,
    channel text NOT NULL,
    requests bigint DEFAULT 0 NOT NULL,
    input_tokens bigint DEFAULT 0 NOT NULL,
    output_tokens bigint DEFAULT 0 NOT NULL,
    cached_tokens bigint DEFAULT 0 NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT pk_usage_daily PRIMARY KEY (day, user_id, channel)
);
CREATE TABLE link_code_failures (
    user_id uuid NOT NULL,
    window_start timestamp with time zone NOT NULL,
    failures integer DEFAULT 0 NOT NULL,
    locked_until timestamp with time zone,
    CONSTRAINT pk_link_code_failures PRIMARY KEY (user_id),
    CONSTRAINT fk_link_code_failures_user_id_users FOREIGN KEY (user_id)
        REFERENCES users (user_id) ON DELETE CASCADE
);
CREATE TABLE proactive_users (
    user_id uuid NOT NULL,
    chat_id text NOT NULL,
    registered_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT pk_proactive_users PRIMARY KEY (user_id),
    CONSTRAINT fk_proactive_users_user_id_users FOREIGN KEY (user_id)
        REFERENCES users (user_id) ON DELETE CASCADE
);
CREATE INDEX ix_proactive_users_chat_id ON proactive_users (chat_id);
CREATE TABLE session_messages (
    session_id uuid NOT NULL,
    seq bigint NOT NULL,
    role text NOT NULL,
    content text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT pk_session_messages PRIMARY KEY (session_id, seq),
    CONSTRAINT ck_session_messages_role
        CHECK (role = ANY (ARRAY['user'::text, 'assistant'::text, 'system'::text, 'tool'::text])),
    CONSTRAINT fk_session_messages_session_id_sessions FOREIGN KEY (session_id)
        REFERENCES sessions (session_id) ON DELETE CASCADE
);
CREATE TABLE alembic_version (
    version_num varchar(32) NOT NULL,
    CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num)
);
INSERT INTO alembic_version (version_num) VALUES ('0001')

-- sessions_to_convert --
SELECT count(*) FROM sessions WHERE messages IS NOT NULL

-- survey --
-- Every history still to convert, for --dry-run (read through a server-side cursor).
SELECT session_id, user_id, created_at, messages FROM sessions WHERE messages IS NOT NULL

-- claim_batch --
-- The next sessions whose history is still in the legacy column, locked for this batch.
SELECT session_id, user_id, created_at, messages
FROM sessions
WHERE messages IS NOT NULL
ORDER BY session_id
LIMIT %(batch_size)s
FOR UPDATE

-- insert_quarantined --
INSERT INTO legacy_quarantined_messages (session_id, array_index, user_id, reason, message)
VALUES (%(session_id)s, %(array_index)s, %(user_id)s, %(reason)s, %(message)s)

-- verify_batch --
-- Sessions of the batch whose new rows do not reproduce their legacy array exactly: every
-- element is either quarantined as it was, or the next history row with its role and content.
-- Independent of the Python that wrote the rows; nothing of the batch commits unless it is empty.
WITH elements AS (
    SELECT s.session_id, e.ord - 1 AS array_index, e.m,
           EXISTS (SELECT 1 FROM legacy_quarantined_messages q
                   WHERE q.session_id = s.session_id AND q.array_index = e.ord - 1
                     AND q.message = e.m) AS quarantined
    FROM sessions s
    -- As the converter reads it: JSON null is no history, any other non-array one element.
    CROSS JOIN LATERAL jsonb_array_elements(CASE jsonb_typeof(s.messages)
            WHEN 'array' THEN s.messages WHEN 'null' THEN '[]'::jsonb
            ELSE jsonb_build_array(s.messages) END) WITH ORDINALITY AS e(m, ord)
    WHERE s.session_id = ANY(%(ids)s)
), kept AS (
    SELECT session_id, m,
           row_number() OVER (PARTITION BY session_id ORDER BY array_index) - 1 AS seq
    FROM elements WHERE NOT quarantined
), written AS (
    SELECT session_id, seq, role, content FROM session_messages WHERE session_id = ANY(%(ids)s)
), mismatched AS (
    SELECT coalesce(k.session_id, w.session_id) AS session_id
    FROM kept k FULL JOIN written w ON w.session_id = k.session_id AND w.seq = k.seq
    WHERE k.session_id IS NULL OR w.session_id IS NULL
       OR w.role IS DISTINCT FROM k.m ->> 'role' OR w.content IS DISTINCT FROM k.m ->> 'content'
    UNION
    SELECT q.session_id FROM legacy_quarantined_messages q
    WHERE q.session_id = ANY(%(ids)s)
      AND NOT EXISTS (SELECT 1 FROM elements e
                      WHERE e.session_id = q.session_id AND e.array_index = q.array_index
                        AND e.quarantined)
)
SELECT session_id FROM mismatched ORDER BY session_id

-- finish_batch --
-- The copy is verified: the legacy array goes, and the next appended message follows the last.
UPDATE sessions s
SET messages = NULL,
    next_seq = (SELECT coalesce(max(m.seq) + 1, 0) FROM session_messages m
                WHERE m.session_id = s.session_id)
WHERE s.session_id = ANY(%(ids)s)

-- drop_legacy_column --
ALTER TABLE sessions DROP COLUMN messages
