-- Every statement the store sends, as named blocks ("-- name --" then the SQL), loaded by
-- store/queries.py. Parameters are psycopg's %(name)s. Every statement runs on its own in
-- autocommit mode: one statement, one round trip, one transaction. The sk_* functions called
-- here are defined in store/sql/functions.sql (their current bodies; `sessionkeeper migrate`
-- installs that file).
-- %(now)s is NULL unless the caller passes a time (tests do): the database clock then decides,
-- one clock for every bot replica.

-- begin_turn --
-- Upsert the user, decide the rate limit and, when admitted, find or open the current session
-- of the conversation (the user in chat %(chat_id)s; NULL: the private chat) and read its
-- history. A refusal says whether it is the first of its window (notify: the one to answer).
-- The history comes back as parallel arrays, oldest first, with each message's extra fields
-- and, in a shared group conversation, who spoke each (see sk_begin_turn_v5).
SELECT user_id, person_id, display_name, user_created, now, allowed, retry_at, refused_window,
       notify, session_id, session_created, history_seqs, history_roles, history_contents,
       history_created, history_extras, history_speakers
FROM sk_begin_turn_v5(%(channel)s, %(channel_user_id)s, %(display_name)s, %(chat_id)s::text,
                      %(shared)s, %(continuity)s, %(now)s::timestamptz, %(windows)s::integer[],
                      %(caps)s::integer[], %(durable)s, %(idle)s::interval, %(carry_pairs)s,
                      %(history_pairs)s)

-- append_messages --
-- Append a batch to a session of user %(user_id)s; optionally trim and record usage
-- (finish_turn does both). Every part names the user: on Citus, where the tables are
-- distributed by user_id, the statement goes to that user's shard alone (docs/scaling.md).
-- Raising sessions.next_seq locks the session row, so concurrent appends take consecutive seq
-- ranges and none is lost. The cost does not depend on the history's length, and the trim is an
-- index range on the primary key (session_id, seq); the user_id filters are checked on the rows
-- that range finds. NULL %(keep)s keeps everything. A session that is not the user's is not
-- found (no row).
-- All parts share one snapshot, so the DELETE cannot see the rows this statement inserts: a
-- batch longer than %(keep)s inserts only its newest %(keep)s messages, and the others count
-- as appended and trimmed.
-- The message arrays are sent in binary format (the b placeholders): the client does not quote
-- and escape every message into an array literal.
-- %(turn_id)s (finish_turn's idempotency key, NULL for append_messages) makes a retry safe: a
-- turn with a receipt writes nothing and returns the receipt. Two attempts racing (a retry
-- while the first is still running) both pass `prior`; the second then fails on the receipt's
-- primary key, is rolled back whole, and the caller runs it again to read the receipt.
-- Receipts go once the trim has removed the turn's messages (within 4 turns, see below).
-- append_messages_by_session (store/queries.py) is this statement for a caller that knows only
-- the session: %(user_id)s is read from the session.
WITH prior AS (
    SELECT r.session_id, r.user_id, r.next_seq, r.appended::bigint, r.trimmed::bigint
    FROM turn_receipts r
    WHERE r.user_id = %(user_id)s::uuid AND r.session_id = %(session_id)s
      AND r.turn_id = %(turn_id)s::uuid
), session AS (
    UPDATE sessions s
    SET next_seq = s.next_seq + cardinality(%(roles)b::text[]),
        last_active = greatest(s.last_active, coalesce(%(now)s::timestamptz, now()))
    WHERE s.user_id = %(user_id)s::uuid AND s.session_id = %(session_id)s
      AND NOT EXISTS (SELECT FROM prior)
    RETURNING s.session_id, s.user_id, s.next_seq
), appended AS (
    INSERT INTO session_messages (user_id, session_id, seq, role, content, created_at, extra)
    SELECT %(user_id)s::uuid, s.session_id, s.next_seq - cardinality(%(roles)b::text[]) + m.ord - 1,
           m.role, m.content, coalesce(m.created_at, %(now)s::timestamptz, now()),
           nullif(m.extra, '')::jsonb
    FROM session s,
         unnest(%(roles)b::text[], %(contents)b::text[], %(created)b::timestamptz[],
                %(extras)b::text[])
             WITH ORDINALITY AS m(role, content, created_at, extra, ord)
    WHERE %(keep)s::bigint IS NULL OR m.ord > cardinality(%(roles)b::text[]) - %(keep)s::bigint
    RETURNING seq
), cut AS (
    -- Where the kept history starts: at next_seq - keep, moved past tool results there (their
    -- call would go: providers refuse a tool result without its call). When only tool results
    -- lie between there and this batch, they go: the batch starts the kept history.
    -- NULL %(keep)s: no cut (greatest() would ignore the NULL).
    SELECT CASE WHEN %(keep)s::bigint IS NOT NULL THEN
               greatest(s.next_seq - %(keep)s::bigint,
                        coalesce((SELECT min(x.seq) FROM session_messages x
                                  WHERE x.user_id = %(user_id)s::uuid
                                    AND x.session_id = s.session_id
                                    AND x.seq >= s.next_seq - %(keep)s::bigint
                                    AND x.role <> 'tool'),
                                 s.next_seq - cardinality(%(roles)b::text[])))
           END AS seq
    FROM session s
), trimmed AS (
    DELETE FROM session_messages m USING session s, cut c
    WHERE m.user_id = %(user_id)s::uuid AND m.session_id = s.session_id
      AND m.seq < c.seq
    RETURNING m.seq
), usage AS (
    INSERT INTO usage_stats (user_id, channel, input_tokens, output_tokens, cached_tokens,
                             created_at)
    SELECT %(user_id)s::uuid, u.channel, %(input_tokens)s, %(output_tokens)s, %(cached_tokens)s,
           coalesce(%(now)s::timestamptz, now())
    FROM session s JOIN users u ON u.user_id = %(user_id)s::uuid
    WHERE %(track_usage)s
    RETURNING stat_id
), counts AS (
    -- Messages of the batch beyond %(keep)s are counted as appended and trimmed (see above).
    SELECT cardinality(%(roles)b::text[])::bigint AS appended,
           (SELECT count(*) FROM trimmed)
               + cardinality(%(roles)b::text[]) - (SELECT count(*) FROM appended) AS trimmed
), receipt AS (
    INSERT INTO turn_receipts (user_id, session_id, turn_id, appended, trimmed, next_seq)
    SELECT %(user_id)s::uuid, s.session_id, %(turn_id)s::uuid, c.appended, c.trimmed, s.next_seq
    FROM session s, counts c
    WHERE %(turn_id)s::uuid IS NOT NULL
), expired_receipts AS (
    -- Only when the session's next_seq passes a multiple of 8 (every 4th turn): finding the
    -- expired receipts visits every receipt of the session (about 20), which cost more than
    -- the rest of the statement's writes. A receipt may outlive its messages by 3 turns.
    DELETE FROM turn_receipts r USING session s
    WHERE r.user_id = %(user_id)s::uuid AND r.session_id = s.session_id
      AND r.next_seq <= s.next_seq - %(keep)s::bigint
      AND (s.next_seq - cardinality(%(roles)b::text[])) / 8 < s.next_seq / 8
)
SELECT s.session_id, s.user_id, s.next_seq, c.appended, c.trimmed
FROM session s, counts c
UNION ALL
SELECT session_id, user_id, next_seq, appended, trimmed FROM prior

-- trim_session_history --
-- Keep the newest %(keep)s messages: everything below next_seq - keep, an index range; and the
-- tool results right there, whose call goes (see append_messages).
WITH session AS (
    SELECT s.session_id, s.next_seq FROM sessions s WHERE s.session_id = %(session_id)s
), cut AS (
    SELECT coalesce((SELECT min(x.seq) FROM session_messages x
                     WHERE x.session_id = s.session_id
                       AND x.seq >= s.next_seq - %(keep)s::bigint AND x.role <> 'tool'),
                    s.next_seq) AS seq
    FROM session s
), trimmed AS (
    DELETE FROM session_messages m USING session s, cut c
    WHERE m.session_id = s.session_id AND m.seq < c.seq
    RETURNING m.seq
)
SELECT s.session_id, (SELECT count(*) FROM trimmed) AS trimmed FROM session s

-- get_history --
SELECT seqs AS history_seqs, roles AS history_roles, contents AS history_contents,
       created AS history_created, extras AS history_extras
FROM sk_history_arrays_v2(%(session_id)s, %(history_pairs)s)

-- get_or_create_user --
-- The seed's upsert, as begin_turn does it (sk_channel_user): a user's first message creates
-- it (its id is sk_user_key's), every message marks it authenticated; the row is written only
-- when something changes.
SELECT c.user_id, %(channel)s::text AS channel, %(channel_user_id)s::text AS channel_user_id,
       c.display_name, c.person_id, c.user_created
FROM sk_channel_user(%(channel)s, %(channel_user_id)s, %(display_name)s, %(now)s::timestamptz) c

-- get_or_create_session --
SELECT session_id, created AS session_created
FROM sk_current_session_v2(%(user_id)s, %(chat_id)s::text, %(now)s::timestamptz,
                           %(idle)s::interval, %(carry_pairs)s)

-- check_rate_limit --
SELECT allowed, retry_at, refused_window, notify
FROM sk_check_rate_limit_v2(%(user_id)s, %(now)s::timestamptz, %(windows)s::integer[],
                            %(caps)s::integer[], %(durable)s)

-- track_usage --
INSERT INTO usage_stats (user_id, channel, input_tokens, output_tokens, cached_tokens,
                         created_at)
VALUES (%(user_id)s, %(channel)s, %(input_tokens)s, %(output_tokens)s, %(cached_tokens)s,
        coalesce(%(now)s::timestamptz, now()))
RETURNING stat_id

-- register_proactive_user --
INSERT INTO proactive_users AS p (user_id, chat_id, registered_at)
VALUES (%(user_id)s, %(chat_id)s, coalesce(%(now)s::timestamptz, now()))
ON CONFLICT (user_id) DO UPDATE SET chat_id = EXCLUDED.chat_id
RETURNING p.user_id, p.chat_id

-- load_users_from_db --
-- The seed loads every authenticated Telegram user (its chat id is its user id there) for
-- proactive messages; users registered explicitly bring their own chat id, on any channel.
-- Who counts is sk_proactive_candidates, which the proactive_reload job reads too;
-- %(channel)s is the store's proactive_channel setting.
SELECT user_id, chat_id
FROM sk_proactive_candidates(%(channel)s)
ORDER BY user_created_at, user_id

-- create_link_code --
-- A user has at most one live code: a new one retires the previous. Only the code's key
-- (store.validate.link_code_key = sk_link_code_key, a hash) is sent and stored; the caller
-- alone keeps the code. A clash with any stored key inserts nothing, and the caller draws
-- again.
WITH retired AS (
    UPDATE link_codes c SET expires_at = coalesce(%(now)s::timestamptz, now())
    WHERE c.user_id = %(user_id)s AND c.used_at IS NULL
      AND c.expires_at > coalesce(%(now)s::timestamptz, now())
)
INSERT INTO link_codes AS c (code, user_id, created_at, expires_at)
VALUES (%(code_key)s, %(user_id)s, coalesce(%(now)s::timestamptz, now()),
        coalesce(%(now)s::timestamptz, now()) + %(ttl)s::interval)
ON CONFLICT (code) DO NOTHING
RETURNING c.expires_at

-- redeem_link_code --
SELECT outcome, person_id, owner_id, locked_until
FROM sk_redeem_link_code_v3(%(user_id)s, %(code_key)s, NULL, %(now)s::timestamptz,
                            %(max_failures)s, %(failure_window)s::interval,
                            %(lockout)s::interval, %(max_daily_failures)s)

-- find_user --
-- A user by its channel identity, never creating it (the CLI's --channel/--channel-user-id).
SELECT user_id, channel, channel_user_id, display_name, person_id, false AS user_created
FROM users
WHERE channel = %(channel)s AND channel_user_id = %(channel_user_id)s

-- get_linked_users --
-- The user and every user of its person; nothing when the user does not exist.
SELECT u.user_id, u.channel, u.channel_user_id, u.display_name, u.person_id,
       false AS user_created
FROM users me
JOIN users u ON u.user_id = me.user_id OR u.person_id = me.person_id
WHERE me.user_id = %(user_id)s
ORDER BY u.created_at, u.user_id

-- unlink --
-- The user leaves its person, which goes when no user is left in it (see sk_unlink).
SELECT person_id, person_deleted FROM sk_unlink(%(user_id)s, %(now)s::timestamptz)

-- forget --
-- Erase a user (or every user of a person) and everything the store holds about them, in one
-- transaction: one row per table with what was done (see sk_forget in store/sql/functions.sql).
-- No rows: no such user or person.
SELECT table_name, action, row_count FROM sk_forget(%(user_id)s::uuid, %(person_id)s::uuid)

-- forget_telegram_identity --
-- A channel identity without a users row: what the python-telegram-bot persistence keeps under
-- it (sk_telegram_forget).
SELECT sk_telegram_forget(%(channel)s, ARRAY[%(channel_user_id)s]::text[]) AS deleted

-- export_begin --
-- An export reads everything about its subject in one snapshot (see store/export.py): a
-- read-only transaction, its rows streamed through one server-side cursor per table.
BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY

-- export_time_zone --
-- Timestamps in the document are written in UTC.
SET LOCAL TIME ZONE 'UTC'

-- export_end --
COMMIT

-- export_abandon --
ROLLBACK

-- export_subject --
-- The users an export covers (a user, or every user of a person) and their persons; no row
-- when the user or person does not exist.
SELECT now() AS exported_at, coalesce(array_agg(u.user_id ORDER BY u.user_id)
                                      FILTER (WHERE u.user_id IS NOT NULL), '{}') AS users,
       CASE WHEN %(person_id)s::uuid IS NOT NULL THEN ARRAY[%(person_id)s::uuid]
            ELSE coalesce(array_agg(u.person_id) FILTER (WHERE u.person_id IS NOT NULL), '{}')
       END AS persons
FROM (SELECT 1) one
LEFT JOIN users u ON u.user_id = %(user_id)s::uuid OR u.person_id = %(person_id)s::uuid
HAVING count(u.user_id) > 0
    OR EXISTS (SELECT 1 FROM persons p WHERE p.person_id = %(person_id)s::uuid)

-- export_fetch --
FETCH FORWARD 256 FROM sk_export

-- export_close --
CLOSE sk_export

-- The tables of an export, one cursor each (export_<table>): every row of the table about the
-- subject's users or persons, as JSON, in a stable order. The same tables as sk_forget.

-- export_persons --
DECLARE sk_export NO SCROLL CURSOR FOR
SELECT row_to_json(t)::text AS doc FROM persons t
WHERE t.person_id = ANY(%(persons)s::uuid[]) ORDER BY t.person_id

-- export_users --
DECLARE sk_export NO SCROLL CURSOR FOR
SELECT row_to_json(t)::text AS doc FROM users t
WHERE t.user_id = ANY(%(users)s::uuid[]) ORDER BY t.created_at, t.user_id

-- export_sessions --
DECLARE sk_export NO SCROLL CURSOR FOR
SELECT row_to_json(t)::text AS doc FROM sessions t
WHERE t.user_id = ANY(%(users)s::uuid[]) ORDER BY t.created_at, t.session_id

-- export_session_messages --
-- In primary-key order within each session: no sort, however long a history is.
DECLARE sk_export NO SCROLL CURSOR FOR
SELECT row_to_json(t)::text AS doc
FROM sessions s JOIN session_messages t ON t.session_id = s.session_id
WHERE s.user_id = ANY(%(users)s::uuid[]) ORDER BY s.created_at, s.session_id, t.seq

-- export_turn_receipts --
-- What finish_turn recorded to store each turn once (see append_messages).
DECLARE sk_export NO SCROLL CURSOR FOR
SELECT row_to_json(t)::text AS doc
FROM sessions s JOIN turn_receipts t ON t.session_id = s.session_id
WHERE s.user_id = ANY(%(users)s::uuid[]) ORDER BY s.created_at, s.session_id, t.turn_id

-- export_archived_sessions --
DECLARE sk_export NO SCROLL CURSOR FOR
SELECT row_to_json(t)::text AS doc FROM archived_sessions t
WHERE t.user_id = ANY(%(users)s::uuid[]) ORDER BY t.created_at, t.session_id

-- export_archived_session_messages --
DECLARE sk_export NO SCROLL CURSOR FOR
SELECT row_to_json(t)::text AS doc
FROM archived_sessions s JOIN archived_session_messages t ON t.session_id = s.session_id
WHERE s.user_id = ANY(%(users)s::uuid[]) ORDER BY s.created_at, s.session_id, t.seq

-- export_legacy_quarantined_messages --
DECLARE sk_export NO SCROLL CURSOR FOR
SELECT row_to_json(t)::text AS doc FROM legacy_quarantined_messages t
WHERE t.user_id = ANY(%(users)s::uuid[]) ORDER BY t.session_id, t.array_index

-- export_link_codes --
-- Codes the users made, and codes of others they redeemed (as erasure deletes them). A code
-- of release 0.1.0, stored as typed, is shown by its key like the others: the document must
-- not hold a code anybody could still redeem.
DECLARE sk_export NO SCROLL CURSOR FOR
SELECT (to_jsonb(t) || jsonb_build_object('code', CASE WHEN t.code LIKE 'h:%%' THEN t.code
                                                       ELSE sk_link_code_key(t.code) END))::text
       AS doc
FROM link_codes t
WHERE t.user_id = ANY(%(users)s::uuid[]) OR t.used_by = ANY(%(users)s::uuid[])
ORDER BY t.created_at, t.code

-- export_link_code_failures --
DECLARE sk_export NO SCROLL CURSOR FOR
SELECT row_to_json(t)::text AS doc FROM link_code_failures t
WHERE t.user_id = ANY(%(users)s::uuid[]) ORDER BY t.user_id

-- export_rate_limits --
DECLARE sk_export NO SCROLL CURSOR FOR
SELECT row_to_json(t)::text AS doc FROM rate_limits t
WHERE t.user_id = ANY(%(users)s::uuid[]) ORDER BY t.user_id, t.window_seconds, t.window_start

-- export_aiogram_fsm_states --
-- The aiogram integration's states: linked to the users, or only keyed by their Telegram id
-- (as erasure finds them: two index lookups, where an OR read every state).
DECLARE sk_export NO SCROLL CURSOR FOR
SELECT row_to_json(t)::text AS doc FROM (
    SELECT f.* FROM aiogram_fsm_states f WHERE f.user_id = ANY(%(users)s::uuid[])
    UNION
    SELECT f.* FROM users u
    JOIN aiogram_fsm_states f
      ON f.channel = u.channel AND f.telegram_user_id = sk_telegram_user_id(u.channel_user_id)
    WHERE u.user_id = ANY(%(users)s::uuid[])
) t
ORDER BY t.bot_id, t.chat_id, t.telegram_user_id, t.thread_id, t.business_connection_id,
         t.destiny

-- export_telegram_persistence --
-- python-telegram-bot persistence rows about the users (as erasure finds them).
DECLARE sk_export NO SCROLL CURSOR FOR
SELECT row_to_json(t)::text AS doc FROM telegram_persistence t
WHERE t.user_id = ANY(%(users)s::uuid[])
   OR EXISTS (SELECT 1 FROM users u
              WHERE u.user_id = ANY(%(users)s::uuid[]) AND u.channel = t.channel
                AND t.owner_ids @> ARRAY[u.channel_user_id])
ORDER BY t.namespace, t.kind, t.name, t.key

-- export_usage_stats --
DECLARE sk_export NO SCROLL CURSOR FOR
SELECT row_to_json(t)::text AS doc FROM usage_stats t
WHERE t.user_id = ANY(%(users)s::uuid[]) ORDER BY t.created_at, t.stat_id

-- export_usage_daily --
DECLARE sk_export NO SCROLL CURSOR FOR
SELECT row_to_json(t)::text AS doc FROM usage_daily t
WHERE t.user_id = ANY(%(users)s::uuid[]) ORDER BY t.day, t.channel, t.user_id

-- export_proactive_users --
DECLARE sk_export NO SCROLL CURSOR FOR
SELECT row_to_json(t)::text AS doc FROM proactive_users t
WHERE t.user_id = ANY(%(users)s::uuid[]) ORDER BY t.user_id

-- export_proactive_user_list --
DECLARE sk_export NO SCROLL CURSOR FOR
SELECT row_to_json(t)::text AS doc FROM proactive_user_list t
WHERE t.user_id = ANY(%(users)s::uuid[]) ORDER BY t.user_id

-- export_langgraph_threads --
-- The LangGraph threads tied to the users (store/integrations/langgraph.py).
DECLARE sk_export NO SCROLL CURSOR FOR
SELECT row_to_json(t)::text AS doc FROM langgraph_threads t
WHERE t.user_id = ANY(%(users)s::uuid[]) ORDER BY t.thread_id

-- export_langgraph_checkpoints --
-- Each checkpoint of those threads with its channel values, decoded where they are JSON
-- (sk_langgraph_decode: others as their serializer's type and base64 bytes; a chunk of a
-- list's items as one such entry, see sk_langgraph_export_items).
DECLARE sk_export NO SCROLL CURSOR FOR
SELECT json_build_object(
    'thread_id', c.thread_id, 'checkpoint_ns', c.checkpoint_ns,
    'checkpoint_id', c.checkpoint_id, 'parent_checkpoint_id', c.parent_checkpoint_id,
    'created_at', c.created_at, 'metadata', c.metadata,
    'checkpoint', sk_langgraph_decode(c.type, c.checkpoint),
    'channel_values', coalesce((
        SELECT jsonb_object_agg(g.channel, g.value) FROM (
            SELECT x.channel,
                   CASE WHEN bool_and(x.seq = -1)
                        THEN (array_agg(e.value))[1]
                        ELSE coalesce(jsonb_agg(e.value ORDER BY e.at)
                                      FILTER (WHERE x.seq >= 0), '[]'::jsonb)
                   END AS value
            FROM sk_langgraph_values_v2(c.thread_id, c.checkpoint_ns, c.versions) x
            CROSS JOIN LATERAL sk_langgraph_export_items(x.type, x.data, x.seq, x.length) e
            GROUP BY x.channel) g), '{}'::jsonb)
)::text AS doc
FROM langgraph_checkpoints c JOIN langgraph_threads t ON t.thread_id = c.thread_id
WHERE t.user_id = ANY(%(users)s::uuid[])
ORDER BY c.thread_id, c.checkpoint_ns, c.checkpoint_id

-- export_langgraph_writes --
DECLARE sk_export NO SCROLL CURSOR FOR
SELECT json_build_object(
    'thread_id', w.thread_id, 'checkpoint_ns', w.checkpoint_ns,
    'checkpoint_id', w.checkpoint_id, 'task_id', w.task_id, 'idx', w.idx,
    'channel', w.channel, 'task_path', w.task_path,
    'value', sk_langgraph_decode(w.type, w.data))::text AS doc
FROM langgraph_writes w JOIN langgraph_threads t ON t.thread_id = w.thread_id
WHERE t.user_id = ANY(%(users)s::uuid[])
ORDER BY w.thread_id, w.checkpoint_ns, w.checkpoint_id, w.task_id, w.idx

-- export_langgraph_blobs --
-- The stored rows themselves (langgraph_checkpoints above shows them decoded).
DECLARE sk_export NO SCROLL CURSOR FOR
SELECT row_to_json(b)::text AS doc FROM langgraph_blobs b
JOIN langgraph_threads t ON t.thread_id = b.thread_id
WHERE t.user_id = ANY(%(users)s::uuid[])
ORDER BY b.thread_id, b.checkpoint_ns, b.channel, b.version

-- export_langgraph_lines --
DECLARE sk_export NO SCROLL CURSOR FOR
SELECT row_to_json(l)::text AS doc FROM langgraph_lines l
JOIN langgraph_threads t ON t.thread_id = l.thread_id
WHERE t.user_id = ANY(%(users)s::uuid[]) ORDER BY l.line_id

-- export_langgraph_items --
DECLARE sk_export NO SCROLL CURSOR FOR
SELECT row_to_json(i)::text AS doc FROM langgraph_items i
JOIN langgraph_lines l ON l.line_id = i.line_id
JOIN langgraph_threads t ON t.thread_id = l.thread_id
WHERE t.user_id = ANY(%(users)s::uuid[]) ORDER BY i.line_id, i.seq

-- proactive_snapshot --
-- The list a bot keeps in memory (store.ProactiveUsers), with its version, in one row: the list
-- the proactive_reload job published, or, while none was published yet (version 0), the users
-- sk_proactive_candidates names now, the same definition the job publishes.
WITH state AS (SELECT version FROM proactive_list_state),
listed AS (
    SELECT l.user_id, l.chat_id FROM proactive_user_list l WHERE EXISTS (SELECT FROM state)
    UNION ALL
    SELECT c.user_id, c.chat_id FROM sk_proactive_candidates(%(channel)s) c
    WHERE NOT EXISTS (SELECT FROM state)
)
SELECT coalesce((SELECT version FROM state), 0) AS version,
       coalesce(array_agg(user_id ORDER BY user_id), '{}') AS user_ids,
       coalesce(array_agg(chat_id ORDER BY user_id), '{}') AS chat_ids
FROM listed
