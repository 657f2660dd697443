-- The statements of the LangGraph checkpointer (store/integrations/langgraph.py), as named
-- blocks. Writing a checkpoint and collecting unreferenced values are functions of
-- store/sql/functions.sql (sk_langgraph_*): they take several statements in one transaction.

-- lg_put --
SELECT channel, line_id FROM sk_langgraph_put(
    %(thread_id)s, %(checkpoint_ns)s, %(checkpoint_id)s, %(parent_id)s, %(user_id)s::uuid,
    %(type)s, %(checkpoint)s, %(versions)s::jsonb, %(metadata)s::jsonb,
    %(channels)s::text[], %(channel_versions)s::text[], %(types)s::text[], %(data)s::bytea[],
    %(list_channels)s::text[], %(list_versions)s::text[], %(list_lines)s::bigint[],
    %(list_from)s::integer[], %(list_to)s::integer[],
    %(item_lists)s::integer[], %(item_seqs)s::integer[], %(item_types)s::text[],
    %(item_data)s::bytea[])

-- lg_put_writes --
-- Only for a stored checkpoint (found false: nothing written). A task's regular writes are
-- written once (a retried task keeps its first); special ones (negative idx: error, interrupt,
-- resume...) are replaced.
WITH cp AS (
    SELECT FROM langgraph_checkpoints c
    WHERE c.thread_id = %(thread_id)s AND c.checkpoint_ns = %(checkpoint_ns)s
      AND c.checkpoint_id = %(checkpoint_id)s
), written AS (
    INSERT INTO langgraph_writes AS w (thread_id, checkpoint_ns, checkpoint_id, task_id, idx,
                                       channel, type, data, task_path)
    SELECT %(thread_id)s, %(checkpoint_ns)s, %(checkpoint_id)s, %(task_id)s, x.idx, x.channel,
           x.type, x.data, %(task_path)s
    FROM unnest(%(idxs)s::integer[], %(channels)s::text[], %(types)s::text[],
                %(data)s::bytea[]) AS x(idx, channel, type, data)
    WHERE EXISTS (SELECT FROM cp)
    ON CONFLICT (thread_id, checkpoint_ns, checkpoint_id, task_id, idx) DO UPDATE
    SET channel = EXCLUDED.channel, type = EXCLUDED.type, data = EXCLUDED.data,
        task_path = EXCLUDED.task_path
    WHERE EXCLUDED.idx < 0
    RETURNING 1
)
SELECT EXISTS (SELECT FROM cp) AS found, (SELECT count(*) FROM written) AS written

-- lg_get --
-- One checkpoint: the newest of the thread's namespace when checkpoint_id is NULL. Run inside
-- lg_read (as {chosen}): its values are read for it alone.
SELECT * FROM langgraph_checkpoints c
WHERE c.thread_id = %(thread_id)s AND c.checkpoint_ns = %(checkpoint_ns)s
  AND (%(checkpoint_id)s::text IS NULL OR c.checkpoint_id = %(checkpoint_id)s::text)
ORDER BY c.checkpoint_id DESC
LIMIT 1

-- lg_list --
-- Checkpoints newest first; every filter is optional (NULL: any). Run inside lg_read: the
-- checkpoints are chosen (and limited) first, the values of the others are never read.
SELECT * FROM langgraph_checkpoints c
WHERE (%(thread_id)s::text IS NULL OR c.thread_id = %(thread_id)s::text)
  AND (%(checkpoint_ns)s::text IS NULL OR c.checkpoint_ns = %(checkpoint_ns)s::text)
  AND (%(checkpoint_id)s::text IS NULL OR c.checkpoint_id = %(checkpoint_id)s::text)
  AND (%(before)s::text IS NULL OR c.checkpoint_id < %(before)s::text)
  AND c.metadata @> %(filter)s::jsonb
ORDER BY c.checkpoint_id DESC
LIMIT %(limit)s::bigint

-- lg_read --
-- The checkpoints {chosen} (lg_get's or lg_list's statement), newest first, each with its
-- channel values (sk_langgraph_values_v2: a list as its rows, a chunk holding several items)
-- and pending writes, in one row.
SELECT c.thread_id, c.checkpoint_ns, c.checkpoint_id, c.parent_checkpoint_id, c.type,
       c.checkpoint, c.versions, c.metadata, v.*, w.*
FROM ({chosen}) c
CROSS JOIN LATERAL (
    SELECT array_agg(x.channel ORDER BY x.channel, x.seq) AS v_channels,
           array_agg(x.type ORDER BY x.channel, x.seq) AS v_types,
           array_agg(x.data ORDER BY x.channel, x.seq) AS v_data,
           array_agg(x.seq ORDER BY x.channel, x.seq) AS v_seqs,
           array_agg(x.line_id ORDER BY x.channel, x.seq) AS v_lines,
           array_agg(x.length ORDER BY x.channel, x.seq) AS v_lengths
    FROM sk_langgraph_values_v2(c.thread_id, c.checkpoint_ns, c.versions) x
) v
CROSS JOIN LATERAL (
    SELECT array_agg(p.task_id ORDER BY p.task_id, p.idx) AS w_tasks,
           array_agg(p.channel ORDER BY p.task_id, p.idx) AS w_channels,
           array_agg(p.type ORDER BY p.task_id, p.idx) AS w_types,
           array_agg(p.data ORDER BY p.task_id, p.idx) AS w_data
    FROM langgraph_writes p
    WHERE p.thread_id = c.thread_id AND p.checkpoint_ns = c.checkpoint_ns
      AND p.checkpoint_id = c.checkpoint_id
) w
ORDER BY c.checkpoint_id DESC

-- lg_delete_threads --
-- Every row of a thread goes with it (foreign keys ON DELETE CASCADE).
DELETE FROM langgraph_threads WHERE thread_id = ANY(%(thread_ids)s::text[])

-- lg_delete_runs --
-- The checkpoints (and their writes) of the runs; the threads they were in.
WITH d AS (
    DELETE FROM langgraph_checkpoints c WHERE c.metadata ->> 'run_id' = ANY(%(run_ids)s::text[])
    RETURNING c.thread_id
)
SELECT coalesce(array_agg(DISTINCT thread_id), '{}') AS thread_ids FROM d

-- lg_keep_latest --
-- All but the newest checkpoint of each namespace of the threads.
DELETE FROM langgraph_checkpoints c
WHERE c.thread_id = ANY(%(thread_ids)s::text[])
  AND c.checkpoint_id < (SELECT max(x.checkpoint_id) FROM langgraph_checkpoints x
                         WHERE x.thread_id = c.thread_id AND x.checkpoint_ns = c.checkpoint_ns)

-- lg_collect --
SELECT sk_langgraph_collect(%(thread_ids)s::text[]) AS deleted

-- lg_copy_thread --
SELECT sk_langgraph_copy_thread(%(source)s, %(target)s)

-- lg_thread_users --
-- The user each thread is tied to (NULL: none), for thread_config's callers and tests.
SELECT thread_id, user_id FROM langgraph_threads WHERE thread_id = ANY(%(thread_ids)s::text[])
