-- Converting the legacy JSONB histories into session_messages in batches
-- (sessionkeeper/admin/legacy/conversion.py), as named blocks ("-- name --" then the SQL).

-- sessions_to_convert --
SELECT count(*) FROM sessions WHERE messages IS NOT NULL

-- survey --
-- Every history still to convert, for --dry-run (read through a server-side cursor).
SELECT session_id, created_at, messages FROM sessions WHERE messages IS NOT NULL

-- claim_batch --
-- The next sessions whose history is still in the legacy column, locked for this batch.
SELECT session_id, created_at, messages, user_id
FROM sessions
WHERE messages IS NOT NULL
ORDER BY session_id
LIMIT %(batch_size)s
FOR UPDATE

-- copy_extras --
-- Each copied message's keys besides role, content and timestamp become its extra, taken from
-- the array in SQL (jsonb to jsonb): no number passes through a Python float on the way.
UPDATE session_messages m
SET extra = nullif(e.m - 'role' - 'content' - 'timestamp', '{}'::jsonb)
FROM unnest(%(session_ids)s::uuid[], %(array_indexes)s::int[], %(seqs)s::bigint[])
         AS x(session_id, array_index, seq)
JOIN sessions s ON s.session_id = x.session_id
CROSS JOIN LATERAL (SELECT CASE jsonb_typeof(s.messages) WHEN 'array'
                           THEN s.messages -> x.array_index ELSE s.messages END) AS e(m)
WHERE m.session_id = x.session_id AND m.seq = x.seq

-- insert_quarantined --
-- The refused elements, verbatim: copied from the array in SQL, as the history rows' extras are.
INSERT INTO legacy_quarantined_messages (session_id, array_index, user_id, reason, message)
SELECT s.session_id, x.array_index, s.user_id, x.reason,
       CASE jsonb_typeof(s.messages) WHEN 'array' THEN s.messages -> x.array_index
            ELSE s.messages END
FROM unnest(%(session_ids)s::uuid[], %(array_indexes)s::int[], %(reasons)s::text[])
         AS x(session_id, array_index, reason)
JOIN sessions s ON s.session_id = x.session_id

-- verify_batch --
-- Sessions of the batch whose new rows do not reproduce their legacy array exactly: every
-- element is either quarantined as it was, or the next history row with its role, content and
-- its other keys as extra (jsonb compared with jsonb, so exactly).
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
    SELECT session_id, seq, role, content, extra
    FROM session_messages WHERE session_id = ANY(%(ids)s)
), mismatched AS (
    SELECT coalesce(k.session_id, w.session_id) AS session_id
    FROM kept k FULL JOIN written w ON w.session_id = k.session_id AND w.seq = k.seq
    WHERE k.session_id IS NULL OR w.session_id IS NULL
       OR w.role IS DISTINCT FROM k.m ->> 'role' OR w.content IS DISTINCT FROM k.m ->> 'content'
       OR w.extra IS DISTINCT FROM CASE jsonb_typeof(k.m) WHEN 'object'
              THEN nullif(k.m - 'role' - 'content' - 'timestamp', '{}'::jsonb) END
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
