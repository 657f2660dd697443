-- Every statement the maintenance jobs run, by name (loaded by jobs/sql.py).
-- Each block starts with a name line ("-- name --") and runs up to the next one; comment lines
-- are dropped (store.queries.parse, the one parser of every .sql file of named statements).
-- Parameters are psycopg named placeholders; time is always passed in as %(now)s so that
-- tests and benchmarks control it. Batches lock their rows with FOR UPDATE SKIP LOCKED: a row
-- that an online call is using is left for the next batch instead of waiting for it.

-- link_code_expiry --
-- Codes that expired or were used more than retention_seconds ago.
WITH b AS (
    SELECT code
    FROM link_codes
    WHERE expires_at < %(now)s - make_interval(secs => %(retention_seconds)s)
       OR used_at < %(now)s - make_interval(secs => %(retention_seconds)s)
    ORDER BY expires_at
    LIMIT %(batch_size)s
    FOR UPDATE SKIP LOCKED
)
DELETE FROM link_codes c
USING b
WHERE c.code = b.code

-- link_code_failures_expiry --
-- Lock-outs that ended and failure windows that can no longer lead to one (the window is the
-- store's link_failure_window, the one the store counts failures in), once no failure of the
-- last day is left for the daily cap to count.
WITH b AS (
    SELECT user_id
    FROM link_code_failures
    WHERE (locked_until IS NULL OR locked_until < %(now)s)
      AND window_start + %(link_failure_window)s::interval < %(now)s
      AND NOT EXISTS (SELECT 1 FROM unnest(recent) t WHERE t > %(now)s - interval '1 day')
    ORDER BY window_start
    LIMIT %(batch_size)s
    FOR UPDATE SKIP LOCKED
)
DELETE FROM link_code_failures f
USING b
WHERE f.user_id = b.user_id

-- link_code_erased_failures_expiry --
-- Erased accounts' failure records (sk_forget keeps them), on the same terms.
WITH b AS (
    SELECT account_key
    FROM link_code_erased_failures
    WHERE (locked_until IS NULL OR locked_until < %(now)s)
      AND window_start + %(link_failure_window)s::interval < %(now)s
      AND NOT EXISTS (SELECT 1 FROM unnest(recent) t WHERE t > %(now)s - interval '1 day')
    ORDER BY window_start
    LIMIT %(batch_size)s
    FOR UPDATE SKIP LOCKED
)
DELETE FROM link_code_erased_failures e
USING b
WHERE e.account_key = b.account_key

-- archivable_sessions --
-- The sessions archive_sessions would select now, all batches together (a progress bar's
-- total): the index range on sessions(last_active) as long as the backlog.
SELECT count(*) FROM sessions
WHERE last_active < %(now)s - make_interval(secs => %(idle_seconds)s)
  AND (restored_at IS NULL OR restored_at < %(now)s - make_interval(secs => %(idle_seconds)s))

-- archive_sessions --
-- Step 1 of a batch: copy idle sessions to the archive, keeping them locked until commit.
-- Messages must move before the session rows go (their foreign key cascades). A session
-- restored from the archive stays online for idle_seconds after its restoration.
WITH b AS (
    SELECT session_id
    FROM sessions
    WHERE last_active < %(now)s - make_interval(secs => %(idle_seconds)s)
      AND (restored_at IS NULL OR restored_at < %(now)s - make_interval(secs => %(idle_seconds)s))
    ORDER BY last_active
    LIMIT %(batch_size)s
    FOR UPDATE SKIP LOCKED
)
-- A session keeps its chat (revision 0016): restored, it is the same conversation again.
INSERT INTO archived_sessions (session_id, user_id, created_at, last_active, next_seq, archived_at,
                               chat_id)
SELECT s.session_id, s.user_id, s.created_at, s.last_active, s.next_seq, %(now)s, s.chat_id
FROM sessions s
JOIN b USING (session_id)
RETURNING session_id

-- archive_session_messages --
-- Step 2: move the messages of the sessions of step 1, in order.
WITH moved AS (
    DELETE FROM session_messages
    WHERE session_id = ANY(%(session_ids)s)
    RETURNING session_id, seq, role, content, created_at, extra
)
INSERT INTO archived_session_messages (session_id, seq, role, content, created_at, extra)
SELECT session_id, seq, role, content, created_at, extra
FROM moved
ORDER BY session_id, seq

-- archive_delete_sessions --
-- Step 3: the sessions of step 1 leave the online table.
DELETE FROM sessions
WHERE session_id = ANY(%(session_ids)s)

-- purge_archived_sessions --
-- Archives older than the retention period; their messages go with them (foreign key).
WITH b AS (
    SELECT session_id
    FROM archived_sessions
    WHERE archived_at < %(now)s - make_interval(secs => %(purge_after_seconds)s)
    ORDER BY archived_at
    LIMIT %(batch_size)s
    FOR UPDATE SKIP LOCKED
)
DELETE FROM archived_sessions a
USING b
WHERE a.session_id = b.session_id

-- restore_session --
-- Bring an archived session back online (step 1 of 3, one transaction). It keeps its
-- last_active, so it does not become the user's current session, unless %(make_current)s
-- moves last_active to now. restored_at keeps archival from taking it back at once.
INSERT INTO sessions (session_id, user_id, created_at, last_active, next_seq, restored_at, chat_id)
SELECT session_id, user_id, created_at,
       CASE WHEN %(make_current)s THEN greatest(last_active, %(now)s) ELSE last_active END,
       next_seq, %(now)s, chat_id
FROM archived_sessions
WHERE session_id = %(session_id)s
FOR UPDATE
RETURNING session_id

-- restore_session_messages --
-- Step 2: copy its messages back, in order, with the session's user (revision 0014).
INSERT INTO session_messages (user_id, session_id, seq, role, content, created_at, extra)
SELECT s.user_id, m.session_id, m.seq, m.role, m.content, m.created_at, m.extra
FROM archived_session_messages m JOIN archived_sessions s ON s.session_id = m.session_id
WHERE m.session_id = %(session_id)s
ORDER BY m.seq

-- restore_delete_archive --
-- Step 3: drop the archive copy (its messages go with it).
DELETE FROM archived_sessions
WHERE session_id = %(session_id)s

-- proactive_upsert --
-- One batch of the current proactive users (keyset over user_id), written only when changed.
-- Who they are is sk_proactive_candidates (store/sql/functions.sql), which the store's
-- load_users_from_db reads too: authenticated users of the store's proactive_channel (chat id =
-- their channel user id unless they registered one) and users who registered a chat. The
-- function is inlined, so the keyset condition and the LIMIT reach the scan of users.
WITH source AS (
    SELECT c.user_id, c.chat_id
    FROM sk_proactive_candidates(%(proactive_channel)s) c
    WHERE c.user_id > %(after)s
    ORDER BY c.user_id
    LIMIT %(batch_size)s
), written AS (
    INSERT INTO proactive_user_list AS l (user_id, chat_id, loaded_at)
    SELECT user_id, chat_id, %(now)s FROM source
    ON CONFLICT (user_id) DO UPDATE
        SET chat_id = EXCLUDED.chat_id, loaded_at = EXCLUDED.loaded_at
        WHERE l.chat_id IS DISTINCT FROM EXCLUDED.chat_id
    RETURNING 1
)
SELECT (SELECT count(*) FROM source) AS seen,
       (SELECT user_id FROM source ORDER BY user_id DESC LIMIT 1) AS last_user_id,
       (SELECT count(*) FROM written) AS written

-- proactive_remove_stale --
-- List entries whose user is no longer a proactive user.
WITH b AS (
    SELECT l.user_id
    FROM proactive_user_list l
    WHERE NOT EXISTS (
        SELECT 1 FROM sk_proactive_candidates(%(proactive_channel)s) c WHERE c.user_id = l.user_id
    )
    LIMIT %(batch_size)s
    FOR UPDATE SKIP LOCKED
)
DELETE FROM proactive_user_list l
USING b
WHERE l.user_id = b.user_id

-- proactive_list_size --
SELECT count(*) FROM proactive_user_list

-- proactive_publish --
-- Raise the list's version and NOTIFY the bots when it changed (or was never published).
SELECT sk_publish_proactive_list(%(changed)s)

-- usage_rollup_lock --
-- First statement of every rollup batch: the watermark, locked until the batch commits, so
-- that batches never overlap and erasure (sk_forget) waits for a batch in progress.
SELECT watermark FROM usage_rollup_state FOR UPDATE

-- usage_rollup --
-- One batch of the watermark rollup: the raw rows with inserted_xid from the watermark up to
-- the bound, added to the daily totals (UTC days), and the watermark moved to the bound, in one
-- transaction. The bound is at most the oldest transaction still running (the snapshot's
-- xmin): every transaction below it has ended, so no row can ever appear below the bound
-- again, and raw rows are read once and never written. Within that, the bound is just past
-- the batch_size-th row's transaction: a batch counts at least batch_size rows (all rows of a
-- transaction together) unless the range up to the horizon holds fewer, which ends the run.
-- Rows with a rolled_up flag (written before revision 0013) are usage_rollup_legacy's, never
-- counted here. Totals stop at the bigint maximum instead of failing (sk_capped_total): one
-- overflowing total would otherwise fail every batch, for every user, on every run.
WITH horizon AS (
    SELECT (pg_snapshot_xmin(pg_current_snapshot()))::text::bigint AS xmin
), bound AS (
    SELECT least(h.xmin, coalesce(
               (SELECT s.inserted_xid + 1 FROM usage_stats s
                WHERE s.inserted_xid >= %(watermark)s
                ORDER BY s.inserted_xid OFFSET %(batch_size)s - 1 LIMIT 1),
               h.xmin)) AS upto
    FROM horizon h
), counted AS (
    SELECT s.user_id, s.channel, s.created_at, s.input_tokens, s.output_tokens, s.cached_tokens
    FROM usage_stats s, bound b
    WHERE s.inserted_xid >= %(watermark)s AND s.inserted_xid < b.upto
      AND s.rolled_up IS NULL
), days AS (
    SELECT (created_at AT TIME ZONE 'UTC')::date AS day, user_id, channel, count(*) AS requests,
           sk_capped_total(sum(input_tokens)) AS input_tokens,
           sk_capped_total(sum(output_tokens)) AS output_tokens,
           sk_capped_total(sum(cached_tokens)) AS cached_tokens
    FROM counted
    GROUP BY 1, 2, 3
), totals AS (
    SELECT sk_add_usage_daily(array_agg(day), array_agg(user_id), array_agg(channel),
                              array_agg(requests), array_agg(input_tokens),
                              array_agg(output_tokens), array_agg(cached_tokens), %(now)s)
    FROM days
), advanced AS (
    UPDATE usage_rollup_state w
    SET watermark = b.upto, updated_at = %(now)s
    FROM bound b
    WHERE b.upto > %(watermark)s
    RETURNING w.watermark
)
-- (totals is one row: reading it here is what runs it.)
SELECT (SELECT count(*) FROM counted) AS rows,
       coalesce((SELECT watermark FROM advanced), %(watermark)s) AS watermark
FROM totals

-- usage_rollup_legacy --
-- Rows written before revision 0013 and not yet counted (rolled_up false; later rows leave it
-- NULL): release 0.1.0's flagging rollup, kept for them alone, so that a 0.1.0 daemon still
-- running it during the upgrade and this one count each such row exactly once (the row lock
-- and the flag decide). It finds nothing once they are counted: the partial index
-- ix_usage_stats_pending is then empty.
WITH b AS (
    SELECT stat_id, created_at
    FROM usage_stats
    WHERE NOT rolled_up
    ORDER BY created_at
    LIMIT %(batch_size)s
    FOR UPDATE SKIP LOCKED
), marked AS (
    UPDATE usage_stats u
    SET rolled_up = true
    FROM b
    WHERE u.stat_id = b.stat_id AND u.created_at = b.created_at
    RETURNING u.user_id, u.channel, u.created_at, u.input_tokens, u.output_tokens, u.cached_tokens
), days AS (
    SELECT (created_at AT TIME ZONE 'UTC')::date AS day, user_id, channel, count(*) AS requests,
           sk_capped_total(sum(input_tokens)) AS input_tokens,
           sk_capped_total(sum(output_tokens)) AS output_tokens,
           sk_capped_total(sum(cached_tokens)) AS cached_tokens
    FROM marked
    GROUP BY 1, 2, 3
)
SELECT (SELECT count(*) FROM marked)
FROM (SELECT sk_add_usage_daily(array_agg(day), array_agg(user_id), array_agg(channel),
                                array_agg(requests), array_agg(input_tokens),
                                array_agg(output_tokens), array_agg(cached_tokens), %(now)s)
      FROM days) AS totals

-- usage_partition_pending --
-- Whether a usage_stats partition still holds rows the rollup has not counted (checked under
-- the lock of its detach: nothing can be added meanwhile).
SELECT EXISTS (
    SELECT 1 FROM {partition}
    WHERE NOT rolled_up
       OR rolled_up IS NULL AND inserted_xid >= (SELECT watermark FROM usage_rollup_state)
)

-- partitions --
-- The partitions of the given tables with their bounds (NULL lower: MINVALUE; both NULL: the
-- DEFAULT partition). The bounds are read back from their text form, which carries the offset.
SELECT p.relname AS parent, c.relname AS name,
       pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT' AS is_default,
       (regexp_match(pg_get_expr(c.relpartbound, c.oid),
                     'FROM \(''([^'']*)''\)'))[1]::timestamptz AS lower,
       (regexp_match(pg_get_expr(c.relpartbound, c.oid),
                     'TO \(''([^'']*)''\)'))[1]::timestamptz AS upper,
       c.reltuples AS estimated_rows,
       -- A DETACH ... CONCURRENTLY cancelled half-way (no such column before PostgreSQL 14).
       coalesce((to_jsonb(i) ->> 'inhdetachpending')::boolean, false) AS detach_pending
FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid
JOIN pg_class p ON p.oid = i.inhparent
WHERE i.inhparent = ANY (%(tables)s::text[]::regclass[])
ORDER BY 1, 4 NULLS FIRST

-- partition_owner --
-- The owner of a partitioned table, and whether the connected role must take it (SET ROLE) for
-- partition DDL: it does not hold the owner's privileges (the daemon role is a NOINHERIT
-- member of the owner role, docs/roles.md) but may become it.
SELECT r.rolname,
       NOT pg_has_role(current_user, r.oid, 'USAGE')
       AND pg_has_role(current_user, r.oid, 'MEMBER') AS must_set
FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner
WHERE c.oid = %(table)s::regclass

-- partition_ddl_refused --
-- The tables whose partitions the connected role may not make or drop: it is not a member of
-- the owner's role (partition DDL needs the owner's privileges; _as_owner takes them).
SELECT c.relname
FROM pg_class c
WHERE c.oid = ANY (%(tables)s::text[]::regclass[])
  AND NOT pg_has_role(current_user, c.relowner, 'MEMBER')
ORDER BY 1

-- partition_lock_timeout --
-- The longest wait for a lock of partition DDL: lock_timeout_ms, and less than half the
-- server's deadlock_timeout. The bots lock users and these tables in both orders (begin_turn:
-- users first; an INSERT's foreign-key check: the table first), so no lock order of the job's
-- avoids every cycle with them; but a job that gives up its wait before any deadlock check
-- runs is always the one that yields: a bot is never chosen as the deadlock's victim. The
-- first statement of each locked step, which is sent whole in one round trip (one implicit
-- transaction), so that its locks are held for the server's work alone.
SELECT set_config('lock_timeout',
                  least({lock_timeout_ms},
                        extract(epoch FROM current_setting('deadlock_timeout')::interval)
                        * 1000 / 2)::int || 'ms',
                  true)

-- partition_citus --
-- A row when Citus is installed: it refuses DETACH ... CONCURRENTLY and FINALIZE on distributed
-- tables (docs/partitions.md, "Citus"), so partitions are detached the plain way.
SELECT 1 FROM pg_extension WHERE extname = 'citus'

-- partition_lock_for_detach --
-- A plain detach (PostgreSQL 13, a DEFAULT partition, or Citus: partitions.detach_concurrently)
-- takes the table in ACCESS EXCLUSIVE mode, and users in SHARE ROW EXCLUSIVE mode (the detached
-- table's foreign key gets triggers of its own there); taken first, the table before users as
-- ATTACH takes them, for the milliseconds of the detach alone: nothing is read or dropped under
-- them.
LOCK TABLE {parent} IN ACCESS EXCLUSIVE MODE

-- partition_exists --
-- Whether a table of that name exists: one made by an attempt whose attach was deferred.
SELECT 1 WHERE to_regclass(%(name)s) IS NOT NULL

-- partition_begun --
SELECT now() >= %(lower)s

-- partition_create --
-- A new partition is made outside the table, in a transaction of its own, and attached later
-- (ATTACH needs SHARE UPDATE EXCLUSIVE on the table, which the bots' writes do not conflict
-- with, where CREATE TABLE ... PARTITION OF needs ACCESS EXCLUSIVE); the CHECK proves its
-- range so that ATTACH does not scan it. Identifiers and bounds are filled in by
-- jobs/partitions.py.
CREATE TABLE {partition} (LIKE {parent} INCLUDING ALL);
ALTER TABLE {partition} ADD CONSTRAINT {check} CHECK ({key} >= {lower} AND {key} < {upper})

-- partition_lock_parent --
-- Only for a partition whose range the bots may be writing now (the job catching up after an
-- outage): a row routed to the DEFAULT partition before the attach would fail its changed
-- partition constraint after it, so the bots wait for the attach instead.
LOCK TABLE {parent} IN ACCESS EXCLUSIVE MODE

-- partition_lock_default --
-- ATTACH takes the DEFAULT partition in ACCESS EXCLUSIVE mode anyway (it must prove that no row
-- there belongs to the new range); taken first, no bot can put such a row there between the
-- move below and the attach.
LOCK TABLE {default} IN ACCESS EXCLUSIVE MODE

-- partition_adopt_default_rows --
-- Rows of the new range that went to the DEFAULT partition meanwhile move into it (ATTACH
-- would fail on them); rows move whole, inserted_xid included, so none is counted twice.
WITH moved AS (
    DELETE FROM {default} WHERE {key} >= {lower} AND {key} < {upper} RETURNING *
)
INSERT INTO {partition} SELECT * FROM moved

-- partition_attach --
ALTER TABLE {parent} ATTACH PARTITION {partition} FOR VALUES FROM ({lower}) TO ({upper});
ALTER TABLE {partition} DROP CONSTRAINT {check}

-- partition_detach --
ALTER TABLE {parent} DETACH PARTITION {partition}

-- partition_reattach --
-- A detached partition that must be kept after all (rows the rollup has not counted).
ALTER TABLE {parent} ATTACH PARTITION {partition} FOR VALUES FROM ({lower}) TO ({upper})

-- partition_foreign_keys --
-- The foreign keys of a detached partition: dropped on their own before the table, because
-- dropping one removes its triggers on users, in ACCESS EXCLUSIVE mode, for every bot: alone,
-- that lock is held for a catalog change, not for the table's drop.
SELECT conname FROM pg_constraint WHERE conrelid = to_regclass(%(name)s) AND contype = 'f'

-- partition_drop_foreign_key --
ALTER TABLE {partition} DROP CONSTRAINT {constraint}

-- partition_detach_concurrently --
-- Allowed only when the table has no DEFAULT partition (revision 0022 retired them), on
-- PostgreSQL 14 and later, and outside a transaction block. Two transactions: the first marks
-- the partition "detach pending" (SHARE UPDATE EXCLUSIVE on the table and the partition, which
-- the bots' writes do not conflict with), then waits for every transaction that may still use
-- the partition; the second detaches it. Cancelled between the two (a lock_timeout, a stop),
-- the partition stays pending: new statements no longer see it, and FINALIZE completes it.
ALTER TABLE {parent} DETACH PARTITION {partition} CONCURRENTLY

-- partition_detach_finalize --
ALTER TABLE {parent} DETACH PARTITION {partition} FINALIZE

-- partition_session_lock_timeout --
-- partition_lock_timeout for the session (DETACH ... CONCURRENTLY runs in no transaction
-- block of ours): reset after the detach.
SELECT set_config('lock_timeout',
                  least({lock_timeout_ms},
                        extract(epoch FROM current_setting('deadlock_timeout')::interval)
                        * 1000 / 2)::int || 'ms',
                  false)

-- partition_drop --
DROP TABLE {partition}

-- partition_count --
SELECT count(*) FROM {partition}

-- user_retention_batch --
-- The next batch_size users in user_id order (keyset: after %(after)s), and which of them had
-- no activity since the cutoff: no change of the user row, no session (online or archived)
-- active since. Those are locked until the batch commits (SKIP LOCKED: a user in the middle
-- of a turn is busy, hence active), so that a message arriving meanwhile waits for the
-- erasure. Both NOT EXISTS probes read an index on the user's sessions.
WITH scanned AS (
    SELECT user_id FROM users
    WHERE user_id > %(after)s
    ORDER BY user_id
    LIMIT %(batch_size)s
), inactive AS (
    SELECT u.user_id
    FROM users u JOIN scanned USING (user_id)
    WHERE u.updated_at < %(now)s - make_interval(secs => %(inactive_seconds)s)
      AND NOT EXISTS (
          SELECT 1 FROM sessions s
          WHERE s.user_id = u.user_id
            AND s.last_active >= %(now)s - make_interval(secs => %(inactive_seconds)s))
      AND NOT EXISTS (
          SELECT 1 FROM archived_sessions a
          WHERE a.user_id = u.user_id
            AND a.last_active >= %(now)s - make_interval(secs => %(inactive_seconds)s))
    ORDER BY u.user_id
    FOR UPDATE OF u SKIP LOCKED
)
SELECT (SELECT count(*) FROM scanned) AS scanned,
       (SELECT user_id FROM scanned ORDER BY user_id DESC LIMIT 1) AS last_user_id,
       (SELECT array_agg(user_id ORDER BY user_id) FROM inactive) AS inactive

-- user_retention_lock_timeout --
-- The batch holds its users' rows while it erases them one by one, against the order in which
-- sk_forget, redemption and unlink take their locks (store/sql/functions.sql, "Identity"). So
-- an erasure does not wait long for a lock an online call holds: the user is left for the
-- next run (long before deadlock_timeout, 1 s, would make PostgreSQL abort one of the two).
SET LOCAL lock_timeout = '200ms'

-- user_retention_forget --
-- Exactly what store.forget_user does (sk_forget, store/sql/functions.sql).
SELECT table_name, action, row_count FROM sk_forget(%(user_id)s::uuid, NULL)

-- lock_job --
-- Session-scoped on purpose: held across the run's many batch transactions, and released by
-- the server when the connection ends, so a killed replica never keeps it.
SELECT pg_try_advisory_lock(%(namespace)s, %(key)s)

-- unlock_job --
SELECT pg_advisory_unlock(%(namespace)s, %(key)s)

-- ledger_start --
INSERT INTO job_runs (job, replica_id, outcome, details)
VALUES (%(job)s, %(replica_id)s, 'running', %(details)s)
RETURNING run_id

-- ledger_finish --
UPDATE job_runs
SET finished_at = clock_timestamp(), outcome = %(outcome)s, rows = %(rows)s, error = %(error)s,
    details = coalesce(details, '{}'::jsonb) || %(details)s
WHERE run_id = %(run_id)s

-- ledger_skipped --
INSERT INTO job_runs (job, replica_id, finished_at, outcome, error, details)
VALUES (%(job)s, %(replica_id)s, clock_timestamp(), 'skipped', %(reason)s, %(details)s)

-- ledger_window_skipped --
-- A scheduled slot outside the job's window, recorded once per closed period instead of once
-- per slot and replica: when the job's latest row is this period's skipped row (the same
-- window, opening next at the same time) it counts one more slot (a slot another replica
-- already counted counts once); otherwise a new skipped row starts the period. Called only
-- while holding the job's lock, so two replicas never both insert; reads the (job, started_at)
-- index's first entry.
WITH latest AS (
    SELECT run_id, outcome, details FROM job_runs
    WHERE job = %(job)s
    ORDER BY started_at DESC, run_id DESC
    LIMIT 1
), period AS (
    SELECT run_id FROM latest
    WHERE outcome = 'skipped'
      AND details ->> 'window' = %(window)s
      AND details ->> 'window_opens' = %(window_opens)s
), counted AS (
    UPDATE job_runs r
    SET finished_at = clock_timestamp(),
        details = r.details || jsonb_build_object(
            'slots_skipped', (r.details ->> 'slots_skipped')::bigint + 1,
            'last_slot', %(slot)s::text)
    FROM period p
    WHERE r.run_id = p.run_id
      AND (r.details ->> 'last_slot')::timestamptz < %(slot_time)s
)
INSERT INTO job_runs (job, replica_id, finished_at, outcome, error, details)
SELECT %(job)s, %(replica_id)s, clock_timestamp(), 'skipped', %(reason)s, %(details)s
WHERE NOT EXISTS (SELECT FROM period)

-- ledger_slot_done --
-- Whether some replica already ran this job successfully for this schedule slot. Runs of a
-- slot start after it (the hour allows for clock skew between replicas and server), which
-- keeps this on the (job, started_at) index however long the ledger is.
SELECT EXISTS (
    SELECT 1 FROM job_runs
    WHERE job = %(job)s
      AND started_at > %(slot_time)s - interval '1 hour'
      AND outcome = 'success'
      AND details ->> 'slot' = %(slot)s
)

-- ledger_sweep_interrupted --
-- Called while holding the job's lock: any run of the job still marked running belongs to a
-- replica (or database) that went away before it could record the outcome.
UPDATE job_runs
SET finished_at = clock_timestamp(), outcome = 'failure',
    error = coalesce(error, 'interrupted: the replica or the database went away during the run')
WHERE job = %(job)s AND outcome = 'running'

-- ledger_prune --
WITH b AS (
    SELECT run_id FROM job_runs
    WHERE job = %(job)s AND started_at < clock_timestamp() - make_interval(secs => %(keep_seconds)s)
    ORDER BY started_at
    LIMIT 1000
)
DELETE FROM job_runs r USING b WHERE r.run_id = b.run_id

-- ledger_last_runs --
SELECT DISTINCT ON (job) job, replica_id, started_at, finished_at, outcome, rows, error, details
FROM job_runs
WHERE job = ANY(%(jobs)s)
ORDER BY job, started_at DESC, run_id DESC

-- domain_gauges --
-- The last two figures are the archival backlog, selected as archive_sessions selects it. Both
-- read the index on sessions(last_active): the count an index range as long as the backlog,
-- the age the index's first entries (sessions restored lately are skipped: they wait).
SELECT (SELECT count(*) FROM sessions) AS sessions_active,
       (SELECT count(*) FROM archived_sessions) AS sessions_archived,
       (SELECT count(*) FROM proactive_user_list) AS proactive_users,
       (SELECT count(*) FROM rate_limits) AS rate_limit_rows,
       (SELECT count(*) FROM sessions
        WHERE last_active < %(now)s - make_interval(secs => %(idle_seconds)s)
          AND (restored_at IS NULL
               OR restored_at < %(now)s - make_interval(secs => %(idle_seconds)s))
       ) AS sessions_archivable,
       greatest(0, extract(epoch FROM %(now)s - make_interval(secs => %(idle_seconds)s)
                                      - (SELECT min(last_active) FROM sessions
                                         WHERE restored_at IS NULL
                                            OR restored_at < %(now)s
                                               - make_interval(secs => %(idle_seconds)s)))
       ) AS sessions_archivable_age_seconds

-- checkpoint_retention_idle --
-- LangGraph threads idle longer than idle_seconds, oldest first, with all their rows (the
-- cascade); not one whose newest checkpoint (of a namespace) has a pending interrupt.
WITH b AS (
    SELECT t.thread_id
    FROM langgraph_threads t
    WHERE t.updated_at < %(now)s - make_interval(secs => %(idle_seconds)s)
      AND NOT EXISTS (
          SELECT FROM langgraph_writes w
          WHERE w.thread_id = t.thread_id AND w.channel = '__interrupt__'
            AND w.checkpoint_id = (SELECT max(c.checkpoint_id) FROM langgraph_checkpoints c
                                   WHERE c.thread_id = w.thread_id
                                     AND c.checkpoint_ns = w.checkpoint_ns))
    ORDER BY t.updated_at
    LIMIT %(batch_size)s
    FOR UPDATE SKIP LOCKED
)
DELETE FROM langgraph_threads t USING b WHERE t.thread_id = b.thread_id

-- checkpoint_retention_threads --
SELECT thread_id FROM langgraph_threads
WHERE thread_id > %(after)s ORDER BY thread_id LIMIT %(batch_size)s

-- checkpoint_retention_trim --
-- All but the newest keep_latest checkpoints of each namespace of the threads (their writes
-- go with them).
DELETE FROM langgraph_checkpoints c
WHERE c.thread_id = ANY(%(threads)s::text[])
  AND c.checkpoint_id < (SELECT x.checkpoint_id FROM langgraph_checkpoints x
                         WHERE x.thread_id = c.thread_id AND x.checkpoint_ns = c.checkpoint_ns
                         ORDER BY x.checkpoint_id DESC
                         OFFSET %(keep_latest)s - 1 LIMIT 1)

-- checkpoint_retention_collect --
SELECT sk_langgraph_collect(%(threads)s::text[])

-- checkpoint_gauges --
-- LangGraph threads checkpoint_retention should have removed as idle (none while its
-- idle_seconds is 0; threads waiting on an interrupt are kept, and not counted), and how long
-- the oldest has waited (the daemon's domain gauges).
WITH expired AS (
    SELECT t.updated_at FROM langgraph_threads t
    WHERE %(checkpoint_idle_seconds)s > 0
      AND t.updated_at < %(now)s - make_interval(secs => %(checkpoint_idle_seconds)s)
      AND NOT EXISTS (
          SELECT FROM langgraph_writes w
          WHERE w.thread_id = t.thread_id AND w.channel = '__interrupt__'
            AND w.checkpoint_id = (SELECT max(c.checkpoint_id) FROM langgraph_checkpoints c
                                   WHERE c.thread_id = w.thread_id
                                     AND c.checkpoint_ns = w.checkpoint_ns))
)
SELECT (SELECT count(*) FROM expired) AS langgraph_threads_expired,
       coalesce((SELECT extract(epoch FROM %(now)s
                                - make_interval(secs => %(checkpoint_idle_seconds)s)
                                - min(updated_at)) FROM expired), 0
       ) AS langgraph_threads_expired_age_seconds
