-- The previous release's (0.1.0) append statement, verbatim: bots of that release keep sending
-- it after `sessionkeeper migrate`; tests/integration/test_store_failover.py runs it at head.

-- append_messages --
-- Append a batch to a session; optionally trim and record usage (finish_turn does both).
-- Raising sessions.next_seq locks the session row, so concurrent appends take consecutive seq
-- ranges and none is lost. The cost does not depend on the history's length, and the trim is an
-- index range on the primary key (session_id, seq). NULL %(keep)s keeps everything.
-- The message arrays are sent in binary format (the b placeholders): the client does not quote
-- and escape every message into an array literal.
WITH session AS (
    UPDATE sessions s
    SET next_seq = s.next_seq + cardinality(%(roles)b::text[]),
        last_active = greatest(s.last_active, coalesce(%(now)s::timestamptz, now()))
    WHERE s.session_id = %(session_id)s
    RETURNING s.session_id, s.user_id, s.next_seq
), appended AS (
    INSERT INTO session_messages (session_id, seq, role, content, created_at)
    SELECT s.session_id, s.next_seq - cardinality(%(roles)b::text[]) + m.ord - 1,
           m.role, m.content, coalesce(m.created_at, %(now)s::timestamptz, now())
    FROM session s,
         unnest(%(roles)b::text[], %(contents)b::text[], %(created)b::timestamptz[])
             WITH ORDINALITY AS m(role, content, created_at, ord)
    RETURNING seq
), trimmed AS (
    DELETE FROM session_messages m USING session s
    WHERE m.session_id = s.session_id AND m.seq < s.next_seq - %(keep)s::bigint
    RETURNING m.seq
), usage AS (
    INSERT INTO usage_stats (user_id, channel, input_tokens, output_tokens, cached_tokens,
                             created_at)
    SELECT s.user_id, u.channel, %(input_tokens)s, %(output_tokens)s, %(cached_tokens)s,
           coalesce(%(now)s::timestamptz, now())
    FROM session s JOIN users u ON u.user_id = s.user_id
    WHERE %(track_usage)s
    RETURNING stat_id
)
SELECT s.session_id, s.user_id, s.next_seq,
       (SELECT count(*) FROM appended) AS appended,
       (SELECT count(*) FROM trimmed) AS trimmed
FROM session s

