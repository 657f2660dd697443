-- The current definition of every server-side function (sk_*) the store and the jobs call.
-- This file is the one place to read or change them.
--
-- How it is applied: `sessionkeeper migrate` runs the Alembic revisions and then, once the
-- database is at head (also when no revision was pending), executes this whole file in the
-- same transaction, under the migration lock (sessionkeeper/admin/functions.py). Applying it
-- again changes nothing. Revisions 0001-0007 created these functions and stay as they were;
-- from 0008 on revisions change tables only. A revision whose triggers need a function before
-- this file runs takes that function's statement from here (0014: sk_user_key,
-- sk_key_new_user, sk_fill_user_id), never a copy.
--
-- Rules (docs/upgrades.md): bots of the previous release keep calling these while they are
-- rolled, so
-- - a body may change in place (CREATE OR REPLACE);
-- - a changed signature or result (columns, types) gets a new name, e.g. sk_begin_turn_v2;
--   CREATE OR REPLACE refuses a changed result type, which is the point. The old function
--   moves to the "Kept for earlier releases" section and stays for one release; the release
--   after that drops it with a DROP FUNCTION IF EXISTS in the "Retired" section at the end;
-- - SQL-language functions referenced by other definitions come before them (their bodies
--   are checked when created).
--
-- A test (tests/integration/test_sql_functions.py) checks that a database migrated to head
-- holds exactly these definitions.

-- =============================================================================================
-- Usage totals
-- =============================================================================================

-- sk_capped_total: a token total that stops at the bigint maximum instead of failing. Daily
-- totals add up many calls, and one total that overflowed would fail the usage rollup (or an
-- erasure) on every retry, for every user. The store's per-call cap (2^31 - 1) keeps real
-- totals far below it; rows written by release 0.1.0 (up to 2^62 a call) or by hand may not be.
CREATE OR REPLACE FUNCTION sk_capped_total(p_total numeric) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT least(p_total, 9223372036854775807)::bigint $$;

-- sk_add_usage_daily: adds totals to usage_daily, one element of the arrays per (day, user,
-- channel); the one upsert of the daily totals (the rollups in jobs/queries.sql and erasure
-- call it). Callers pass each key once, with totals already capped (sk_capped_total); NULL
-- arrays add nothing. Returns the number of keys written.
CREATE OR REPLACE FUNCTION sk_add_usage_daily(
    p_days date[], p_user_ids uuid[], p_channels text[], p_requests bigint[],
    p_input_tokens bigint[], p_output_tokens bigint[], p_cached_tokens bigint[],
    p_now timestamptz
) RETURNS bigint
LANGUAGE sql
AS $$
    WITH added AS (
        INSERT INTO usage_daily AS t (day, user_id, channel, requests, input_tokens, output_tokens,
                                      cached_tokens, updated_at)
        SELECT a.day, a.user_id, a.channel, a.requests, a.input_tokens, a.output_tokens,
               a.cached_tokens, p_now
        FROM unnest(p_days, p_user_ids, p_channels, p_requests, p_input_tokens, p_output_tokens,
                    p_cached_tokens)
             AS a (day, user_id, channel, requests, input_tokens, output_tokens, cached_tokens)
        ON CONFLICT (day, user_id, channel) DO UPDATE
            SET requests = t.requests + EXCLUDED.requests,
                input_tokens = sk_capped_total(t.input_tokens::numeric + EXCLUDED.input_tokens),
                output_tokens = sk_capped_total(t.output_tokens::numeric + EXCLUDED.output_tokens),
                cached_tokens = sk_capped_total(t.cached_tokens::numeric + EXCLUDED.cached_tokens),
                updated_at = EXCLUDED.updated_at
        RETURNING 1
    )
    SELECT count(*) FROM added
$$;

-- =============================================================================================
-- Rate limits
-- Every configured cap (per minute, hour, day) is decided in one call; a request refused by any
-- cap counts against none of them. Windows are aligned to the epoch (UTC days).
-- =============================================================================================

-- sk_count_refusal: counts a refused request in the refusing window's row (refused_count,
-- revision 0020) and says whether it is the window's first refusal: the one a bot answers
-- (docs/conversations.md, "Refusals"). The caller's rate check holds the row locked, so of a
-- user's concurrent refusals exactly one sees the count reach 1. Only refusals pay for it.
CREATE OR REPLACE FUNCTION sk_count_refusal(
    p_user_id uuid, p_window integer, p_window_start timestamptz
) RETURNS boolean
LANGUAGE sql AS $$
    UPDATE rate_limits r SET refused_count = r.refused_count + 1
    WHERE r.user_id = p_user_id AND r.window_seconds = p_window
      AND r.window_start = p_window_start
    RETURNING r.refused_count = 1
$$;

-- sk_check_rate_limit_v2: is this request allowed, and if not, when may the user retry and
-- whether this is the first refusal of the refusing window (notify; sk_count_refusal).
-- One cap (the default: 15 a minute) decides, counts and locks in one upsert (revision 0007);
-- several caps lock every window first and raise the counts only when all admit (0002).
CREATE OR REPLACE FUNCTION sk_check_rate_limit_v2(
    p_user_id uuid, p_now timestamptz, p_windows integer[], p_caps integer[], p_durable boolean
) RETURNS TABLE (allowed boolean, retry_at timestamptz, refused_window integer, notify boolean)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_now timestamptz := coalesce(p_now, now());
    v_first_start timestamptz;
    v_last_start timestamptz;
    v_start timestamptz;
BEGIN
    notify := false;
    IF NOT p_durable THEN
        -- A request counter is soft state: this commit need not wait for the WAL flush.
        PERFORM set_config('synchronous_commit', 'off', true);
    END IF;
    IF cardinality(p_windows) = 1 AND p_caps[1] > 0 THEN
        -- One cap: one upsert counts the request unless the cap is reached, and locks the
        -- window's row either way (concurrent checks of one user queue up).
        INSERT INTO rate_limits AS r (user_id, window_seconds, window_start, request_count)
        VALUES (p_user_id, p_windows[1],
                to_timestamp(floor(extract(epoch FROM v_now) / p_windows[1]) * p_windows[1]), 1)
        ON CONFLICT (user_id, window_seconds, window_start)
        DO UPDATE SET request_count = r.request_count + 1 WHERE r.request_count < p_caps[1];
        allowed := FOUND;
        IF NOT allowed THEN
            refused_window := p_windows[1];
            v_start := to_timestamp(floor(extract(epoch FROM v_now) / p_windows[1])
                                    * p_windows[1]);
            retry_at := v_start + make_interval(secs => p_windows[1]);
            notify := sk_count_refusal(p_user_id, refused_window, v_start);
        END IF;
        RETURN NEXT;
        RETURN;
    END IF;
    SELECT min(to_timestamp(floor(extract(epoch FROM v_now) / w) * w)),
           max(to_timestamp(floor(extract(epoch FROM v_now) / w) * w))
    INTO v_first_start, v_last_start FROM unnest(p_windows) AS w;
    -- Upserting every window (aligned to the epoch, so UTC days) locks its row in window order,
    -- so concurrent checks of one user queue up, and returns its latest count. Only when no cap
    -- is reached are the counts raised: a refused request counts against none of them.
    WITH windows AS (
        SELECT w.seconds, w.cap,
               to_timestamp(floor(extract(epoch FROM v_now) / w.seconds) * w.seconds) AS start
        FROM unnest(p_windows, p_caps) AS w(seconds, cap)
    ), counted AS (
        INSERT INTO rate_limits AS r (user_id, window_seconds, window_start, request_count)
        SELECT p_user_id, w.seconds, w.start, 0 FROM windows w ORDER BY w.seconds
        ON CONFLICT (user_id, window_seconds, window_start)
        DO UPDATE SET request_count = r.request_count
        RETURNING r.window_seconds, r.window_start, r.request_count
    )
    SELECT coalesce(bool_and(c.request_count < w.cap), true),
           max(c.window_start + make_interval(secs => c.window_seconds))
               FILTER (WHERE c.request_count >= w.cap),
           max(c.window_seconds) FILTER (WHERE c.request_count >= w.cap)
    INTO allowed, retry_at, refused_window
    FROM counted c JOIN windows w ON w.seconds = c.window_seconds;
    IF allowed THEN
        -- The range of the windows' starts (parameters: an array would not do) prunes the
        -- partitions at executor start-up (rate_limits is partitioned by window_start,
        -- revision 0013): the windows of one request lie in one daily partition.
        UPDATE rate_limits r SET request_count = r.request_count + 1
        WHERE r.user_id = p_user_id
          AND r.window_seconds = ANY (p_windows)
          AND r.window_start BETWEEN v_first_start AND v_last_start
          AND r.window_start
              = to_timestamp(floor(extract(epoch FROM v_now) / r.window_seconds) * r.window_seconds);
    ELSE
        -- The refusing window (the longest at its cap) counts the refusal: a user at the
        -- hourly cap hears of it once that hour, not again with every new minute.
        notify := sk_count_refusal(
            p_user_id, refused_window,
            to_timestamp(floor(extract(epoch FROM v_now) / refused_window) * refused_window));
    END IF;
    RETURN NEXT;
END $$;

-- =============================================================================================
-- Users: the id a channel identity gets (revision 0014)
-- A user's id is a keyed hash of its channel identity, so every statement can find a user by
-- its id, the column Citus distributes by (docs/scaling.md), and no statement has to look a
-- user up by (channel, channel_user_id). Users created before revision 0014 (and by bots of
-- release 0.1.0 before the upgrade's migration) keep the random id they got; on one node they
-- are still found by their channel identity, and `sessionkeeper citus-ddl` re-keys them before
-- the move. Since revision 0014 every new user gets its key, however it is inserted.
-- =============================================================================================

-- sk_user_key: the user id of a channel identity: the first 16 bytes of
-- SHA-256(secret || length of the channel in bytes (4 bytes, big-endian) || channel ||
-- channel_user_id), UTF-8, shaped as a UUID of version 8 (RFC 9562's vendor-specific layout:
-- it is not a name-based v5) with the RFC 4122 variant. The secret is 32 random bytes made by
-- revision 0014 (user_key_secret), per database, and never sent to a client: a plain hash of
-- a Telegram id could be inverted by trying every id, and a user id must not reveal its
-- channel id. The length prefix keeps ('ab', 'c') apart from ('a', 'bc'); the truncated output
-- leaves nothing for a length-extension attack to start from.
-- SECURITY DEFINER: only the owner role reads user_key_secret (docs/roles.md); the bots call
-- this function with their own role. Its search_path is pinned after every apply
-- (sessionkeeper/admin/functions.py, harden_functions), as every function's is.
CREATE OR REPLACE FUNCTION sk_user_key(p_channel text, p_channel_user_id text) RETURNS uuid
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE SECURITY DEFINER AS $$
DECLARE
    v_hash bytea;
BEGIN
    SELECT substr(sha256(k.secret || int4send(octet_length(convert_to(p_channel, 'UTF8')))
                         || convert_to(p_channel, 'UTF8')
                         || convert_to(p_channel_user_id, 'UTF8')), 1, 16)
    INTO v_hash FROM user_key_secret k;
    IF v_hash IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = 'user_key_secret is empty: run `sessionkeeper migrate`';
    END IF;
    -- Version 8 in the high nibble of byte 6, variant 10 in the two high bits of byte 8.
    v_hash := set_byte(v_hash, 6, (get_byte(v_hash, 6) & 15) | 128);
    v_hash := set_byte(v_hash, 8, (get_byte(v_hash, 8) & 63) | 128);
    RETURN encode(v_hash, 'hex')::uuid;
END $$;

-- sk_channel_user: the user of a channel identity, created on its first message (its id is
-- sk_user_key's: the one way a user id is born), marked authenticated, its display name kept
-- current; the row stays locked (FOR NO KEY UPDATE) until commit, which serialises a user's
-- concurrent first messages (see sk_current_session). Written only when something changes:
-- most messages come from a known, authenticated user with no new display name. begin_turn
-- (sk_begin_turn_v3) and get_or_create_user call it.
CREATE OR REPLACE FUNCTION sk_channel_user(
    p_channel text, p_channel_user_id text, p_display_name text, p_now timestamptz
) RETURNS TABLE (user_id uuid, person_id uuid, display_name text, user_created boolean)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_now timestamptz := coalesce(p_now, now());
    v_key uuid := sk_user_key(p_channel, p_channel_user_id);
    v_user uuid;
    v_authenticated boolean;
    v_attempts integer := 0;
BEGIN
    user_created := false;
    LOOP
        v_attempts := v_attempts + 1;
        IF v_attempts > 3 THEN
            -- Not reached unless the key collides with another user's id (122 random bits).
            RAISE EXCEPTION USING ERRCODE = 'unique_violation',
                MESSAGE = 'no user found or created for this channel identity';
        END IF;
        SELECT u.user_id, u.person_id, u.display_name, u.authenticated
        INTO v_user, person_id, display_name, v_authenticated
        FROM users u WHERE u.user_id = v_key FOR NO KEY UPDATE;
        EXIT WHEN v_user IS NOT NULL;
        -- A new user. Concurrent first messages compute the same key: one inserts, the others
        -- wait for it here and then find nothing inserted.
        INSERT INTO users AS u (user_id, channel, channel_user_id, display_name, authenticated,
                                created_at, updated_at)
        VALUES (v_key, p_channel, p_channel_user_id, p_display_name, true, v_now, v_now)
        ON CONFLICT DO NOTHING
        RETURNING u.user_id, u.person_id, u.display_name, u.authenticated
        INTO v_user, person_id, display_name, v_authenticated;
        user_created := v_user IS NOT NULL;
        EXIT WHEN v_user IS NOT NULL;
        -- The identity exists under another id: a user created before revision 0014, whose
        -- random id stays; or a concurrent first message's. The first kind only on one node:
        -- `sessionkeeper citus-ddl` re-keys them before distributing.
        SELECT u.user_id, u.person_id, u.display_name, u.authenticated
        INTO v_user, person_id, display_name, v_authenticated
        FROM users u WHERE u.channel = p_channel AND u.channel_user_id = p_channel_user_id
        FOR NO KEY UPDATE;
        EXIT WHEN v_user IS NOT NULL;
        -- Erased meanwhile: look again (the next insert creates it anew).
    END LOOP;
    user_id := v_user;
    IF NOT v_authenticated OR display_name IS DISTINCT FROM coalesce(p_display_name, display_name)
    THEN
        UPDATE users u SET authenticated = true, updated_at = v_now,
                           display_name = coalesce(p_display_name, u.display_name)
        WHERE u.user_id = v_user
        RETURNING u.person_id, u.display_name INTO person_id, display_name;
    END IF;
    RETURN NEXT;
END $$;

-- sk_key_new_user: a trigger function (revision 0014) that gives a user inserted without an id
-- its key, in place of the random default the column had: bots of release 0.1.0 insert users
-- that way (get_or_create_user), and so do hand-written or bench inserts. The trigger fires
-- only WHEN (NEW.user_id IS NULL): sk_channel_user gives the id and pays nothing.
CREATE OR REPLACE FUNCTION sk_key_new_user() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.user_id := sk_user_key(NEW.channel, NEW.channel_user_id);
    RETURN NEW;
END $$;

-- sk_fill_user_id: a trigger function (revision 0014) that gives a session_messages or
-- turn_receipts row its session's user_id when the insert did not (statements of release 0.1.0
-- do not). The triggers fire only WHEN (NEW.user_id IS NULL): the
-- store's own statements give it, and pay nothing. The release after 0.2.0 drops the triggers
-- and makes the column NOT NULL (docs/upgrades.md).
CREATE OR REPLACE FUNCTION sk_fill_user_id() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    SELECT s.user_id INTO NEW.user_id FROM sessions s WHERE s.session_id = NEW.session_id;
    RETURN NEW;
END $$;

-- =============================================================================================
-- Turns: sessions and history
-- Why functions: begin_turn must upsert the user, decide the rate limit, find or open the current
-- session and read its history in one round trip, and stay race-free. A single statement with
-- data-modifying CTEs cannot: all its parts share one snapshot, so a request that waited for a
-- concurrent first message's lock would not see the session that message opened and would open a
-- second one. In PL/pgSQL every statement takes a fresh snapshot (READ COMMITTED), so after the
-- user row's lock is granted the later statements see what the lock holder committed.
-- =============================================================================================

-- sk_current_session: the user's private session (no chat) if it was active within p_idle,
-- else a new one that carries the newest p_carry_pairs pairs of the stale one: sk_current_session_v2
-- for the private chat (release 0.2.0's get_or_create_session and sk_begin_turn_v3 call it).
CREATE OR REPLACE FUNCTION sk_current_session(
    p_user_id uuid, p_now timestamptz, p_idle interval, p_carry_pairs integer
) RETURNS TABLE (session_id uuid, created boolean)
LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY SELECT c.session_id, c.created
    FROM sk_current_session_v2(p_user_id, NULL, p_now, p_idle, p_carry_pairs) c;
END $$;

-- sk_history_arrays_v2: the newest pairs of a session, oldest first, as parallel arrays in one
-- row (revision 0005): no per-message JSON to build on the server and parse on the client. The
-- fifth array holds each message's extra fields (revision 0010; NULL for plain text).
-- get_history reads it (it is given a session, not a user); begin_turn reads v3.
CREATE OR REPLACE FUNCTION sk_history_arrays_v2(p_session_id uuid, p_pairs integer)
RETURNS TABLE (seqs bigint[], roles text[], contents text[], created timestamptz[],
               extras jsonb[])
LANGUAGE sql STABLE AS $$
    -- The newest 2 * p_pairs messages, oldest first: an index range on (session_id, seq).
    SELECT coalesce(array_agg(m.seq ORDER BY m.seq), '{}'),
           coalesce(array_agg(m.role ORDER BY m.seq), '{}'),
           coalesce(array_agg(m.content ORDER BY m.seq), '{}'),
           coalesce(array_agg(m.created_at ORDER BY m.seq), '{}'),
           coalesce(array_agg(m.extra ORDER BY m.seq), '{}')
    FROM (
        SELECT x.seq, x.role, x.content, x.created_at, x.extra FROM session_messages x
        WHERE x.session_id = p_session_id ORDER BY x.seq DESC LIMIT 2 * p_pairs
    ) m
$$;

-- sk_history_arrays_v3: sk_history_arrays_v2 given the session's user too (revision 0014), so
-- that the read names the distribution column (docs/scaling.md); on one node the filter is
-- checked on the rows the index range already found. begin_turn reads it.
CREATE OR REPLACE FUNCTION sk_history_arrays_v3(
    p_user_id uuid, p_session_id uuid, p_pairs integer
)
RETURNS TABLE (seqs bigint[], roles text[], contents text[], created timestamptz[],
               extras jsonb[])
LANGUAGE sql STABLE AS $$
    -- The newest 2 * p_pairs messages, oldest first: an index range on (session_id, seq).
    SELECT coalesce(array_agg(m.seq ORDER BY m.seq), '{}'),
           coalesce(array_agg(m.role ORDER BY m.seq), '{}'),
           coalesce(array_agg(m.content ORDER BY m.seq), '{}'),
           coalesce(array_agg(m.created_at ORDER BY m.seq), '{}'),
           coalesce(array_agg(m.extra ORDER BY m.seq), '{}')
    FROM (
        SELECT x.seq, x.role, x.content, x.created_at, x.extra FROM session_messages x
        WHERE x.user_id = p_user_id AND x.session_id = p_session_id
        ORDER BY x.seq DESC LIMIT 2 * p_pairs
    ) m
$$;

-- sk_begin_turn_v3: sk_begin_turn_v5 for the user's private chat, without the speakers and
-- the refusal's notify. Release 0.2.0 calls it (and answers every refusal). Until revision
-- 0016 it held the body v5 has now (see there).
CREATE OR REPLACE FUNCTION sk_begin_turn_v3(
    p_channel text, p_channel_user_id text, p_display_name text, p_now timestamptz,
    p_windows integer[], p_caps integer[], p_durable boolean,
    p_idle interval, p_carry_pairs integer, p_history_pairs integer
) RETURNS TABLE (
    user_id uuid, person_id uuid, display_name text, user_created boolean, now timestamptz,
    allowed boolean, retry_at timestamptz, refused_window integer,
    session_id uuid, session_created boolean,
    history_seqs bigint[], history_roles text[], history_contents text[],
    history_created timestamptz[], history_extras jsonb[]
)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
    RETURN QUERY
    SELECT t.user_id, t.person_id, t.display_name, t.user_created, t.now, t.allowed,
           t.retry_at, t.refused_window, t.session_id, t.session_created, t.history_seqs,
           t.history_roles, t.history_contents, t.history_created, t.history_extras
    FROM sk_begin_turn_v5(p_channel, p_channel_user_id, p_display_name, NULL, false, false,
                          p_now, p_windows, p_caps, p_durable, p_idle, p_carry_pairs,
                          p_history_pairs) t;
END $$;

-- =============================================================================================
-- Identity: link codes and persons
-- The online part of linking a user's channels under one person, and of leaving it. Creating a
-- code is a plain statement (store/queries.sql). Locks, always taken in this order by
-- redemption, unlink and erasure (sk_forget), so that none of them deadlocks against another
-- and nothing is serialised database-wide:
-- 1. the redeeming account: advisory lock ("skac", hash of its user id); its attempts are
--    counted one at a time, so concurrent guesses cannot overshoot the failure limit (an
--    erasure takes those of all the users it erases, in ascending key order);
-- 2. the code's row (FOR UPDATE): a code raced for by many accounts is redeemed once (an
--    erasure locks every code it will delete, in code order);
-- 3. each person being merged or left: advisory lock ("skpe", hash of the person id, or of the
--    user id for a user without a person), in ascending key order. Merges of overlapping persons
--    wait for each other; unrelated ones run in parallel.
-- =============================================================================================

-- sk_link_code_key: what link_codes.code holds for a code of this release: a SHA-256 of the
-- canonical code (12 symbols, as store.validate.link_code gives it), so that whoever reads the
-- table (a backup, a read-only role) finds no code to type. Codes of release 0.1.0 are stored
-- as typed (six digits) and are redeemed as they are. The store computes the same key itself
-- (store.validate.link_code_key) and sends only the key, so that the code never appears in the
-- server's statement log or pg_stat_activity; sk_redeem_link_code (release 0.1.0's call) and
-- the export use this function.
CREATE OR REPLACE FUNCTION sk_link_code_key(p_code text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT 'h:' || encode(sha256(convert_to(p_code, 'UTF8')), 'hex')
$$;

-- sk_lock_people: take the person locks (3. above) of two users and return their persons,
-- as they are once the locks are held. A merge or an unlink that committed while this waited
-- may have moved a user to another person: then the locks taken are released (the block's
-- subtransaction rolls back) and the right ones are taken, still in ascending order.
CREATE OR REPLACE FUNCTION sk_lock_people(
    p_first uuid, p_second uuid, OUT first_person uuid, OUT second_person uuid
)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_key integer;
BEGIN
    LOOP
        SELECT u.person_id INTO first_person FROM users u WHERE u.user_id = p_first;
        SELECT u.person_id INTO second_person FROM users u WHERE u.user_id = p_second;
        BEGIN
            FOR v_key IN
                SELECT DISTINCT hashtext(k::text) AS lock_key
                FROM unnest(ARRAY[coalesce(first_person, p_first),
                                  coalesce(second_person, p_second)]) k
                ORDER BY lock_key
            LOOP
                PERFORM pg_advisory_xact_lock(1936420965, v_key);  -- "skpe"
            END LOOP;
            IF NOT EXISTS (
                SELECT 1 FROM users u
                WHERE (u.user_id = p_first AND u.person_id IS DISTINCT FROM first_person)
                   OR (u.user_id = p_second AND u.person_id IS DISTINCT FROM second_person)
            ) THEN
                RETURN;
            END IF;
            RAISE EXCEPTION USING ERRCODE = 'SK001', MESSAGE = 'persons moved; lock again';
        EXCEPTION WHEN SQLSTATE 'SK001' THEN
            NULL;  -- the subtransaction's locks are released; read the persons again
        END;
    END LOOP;
END $$;

-- sk_link_failure_key: the key of an erased account's failure record
-- (link_code_erased_failures): a SHA-256 of its user id, so that the record names nobody.
CREATE OR REPLACE FUNCTION sk_link_failure_key(p_user_id uuid) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT 'f:' || encode(sha256(convert_to('link-failures:' || p_user_id::text, 'UTF8')), 'hex')
$$;

-- sk_redeem_link_code_v3: outcome 'linked', 'own', 'invalid', 'expired' or 'locked'. Failures
-- are counted two ways, and either locks the account out; while locked, even the right code
-- is refused (guessing must not pay):
-- - in a window: reaching p_max_failures locks the user out for p_lockout;
-- - over a sliding day: `recent` keeps the failure times of the last 24 hours, and reaching
--   p_max_daily_failures locks the user out until the oldest of them is a day old. So no 24
--   hours hold more than p_max_daily_failures failures of one account, however they are paced.
-- A success does not reset the counts: an attacker redeeming codes of its own accounts must
-- not earn more guesses. An erased account's record (sk_forget keeps it, keyed) comes back
-- with the account. The bound these limits give is worked out in docs/security.md. The code's
-- format is checked by the store before it gets here (12 symbols; bots of 0.1.0 send six
-- digits). The code arrives as its key (sk_link_code_key, computed by the store: the code
-- itself never reaches the server); p_legacy_code is a code as bots of 0.1.0 send it (NULL
-- from release 0.2.0), matched as typed because that release stored six-digit codes so.
CREATE OR REPLACE FUNCTION sk_redeem_link_code_v3(
    p_user_id uuid, p_code_key text, p_legacy_code text, p_now timestamptz,
    p_max_failures integer, p_failure_window interval, p_lockout interval,
    p_max_daily_failures integer
) RETURNS TABLE (outcome text, person_id uuid, owner_id uuid, locked_until timestamptz)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_now timestamptz := coalesce(p_now, now());
    v_code link_codes;
    v_failures link_code_failures;
    v_outcome text;
    v_owner_person uuid;
    v_user_person uuid;
    v_person uuid;
BEGIN
    PERFORM pg_advisory_xact_lock(1936417123, hashtext(p_user_id::text));  -- "skac"
    PERFORM 1 FROM users u WHERE u.user_id = p_user_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'no_data_found',
            MESSAGE = 'user ' || p_user_id || ' does not exist';
    END IF;
    SELECT * INTO v_failures FROM link_code_failures f WHERE f.user_id = p_user_id;
    IF NOT FOUND THEN
        -- An erased account back under the same id gets its record back.
        WITH e AS (DELETE FROM link_code_erased_failures e
                   WHERE e.account_key = sk_link_failure_key(p_user_id) RETURNING e.*)
        INSERT INTO link_code_failures (user_id, window_start, failures, locked_until, recent)
        SELECT p_user_id, e.window_start, e.failures, e.locked_until, e.recent FROM e
        RETURNING * INTO v_failures;
    END IF;
    IF v_failures.locked_until > v_now THEN
        -- Locked out, even with the right code: guessing must not pay.
        RETURN QUERY SELECT 'locked', NULL::uuid, NULL::uuid, v_failures.locked_until;
        RETURN;
    END IF;
    -- The code's key; or the code itself, as bots of 0.1.0 stored it (never a stored key
    -- passed as that code: reading the table must not be enough to redeem).
    SELECT * INTO v_code FROM link_codes c
    WHERE c.code = p_code_key OR (c.code = p_legacy_code AND p_legacy_code NOT LIKE 'h:%')
    FOR UPDATE;
    IF FOUND AND v_code.user_id = p_user_id THEN
        RETURN QUERY SELECT 'own', NULL::uuid, NULL::uuid, NULL::timestamptz;
        RETURN;
    ELSIF NOT FOUND OR v_code.used_at IS NOT NULL THEN
        v_outcome := 'invalid';
    ELSIF v_code.expires_at <= v_now THEN
        v_outcome := 'expired';
    END IF;
    IF v_outcome IS NOT NULL THEN
        -- Count the failure in its window and in the last day (the times of the day's
        -- failures, at most the cap's number of them).
        INSERT INTO link_code_failures AS f (user_id, window_start, failures, recent)
        VALUES (p_user_id, v_now, 1, ARRAY[v_now])
        ON CONFLICT (user_id) DO UPDATE SET
            window_start = CASE WHEN f.window_start <= v_now - p_failure_window
                                THEN v_now ELSE f.window_start END,
            failures = CASE WHEN f.window_start <= v_now - p_failure_window
                            THEN 1 ELSE f.failures + 1 END,
            recent = ARRAY(SELECT t FROM unnest(f.recent || v_now) t
                           WHERE t > v_now - interval '1 day'
                           ORDER BY t DESC LIMIT p_max_daily_failures)
        RETURNING * INTO v_failures;
        IF v_failures.failures >= p_max_failures THEN
            -- The window's cap: locked out, and the window starts afresh.
            UPDATE link_code_failures f
            SET locked_until = v_now + p_lockout, failures = 0, window_start = v_now
            WHERE f.user_id = p_user_id
            RETURNING * INTO v_failures;
        END IF;
        IF cardinality(v_failures.recent) >= p_max_daily_failures THEN
            -- The day's cap: locked out until the oldest of the day's failures is a day old.
            UPDATE link_code_failures f
            SET locked_until = greatest(f.locked_until,
                                        (SELECT min(t) FROM unnest(f.recent) t)
                                        + interval '1 day')
            WHERE f.user_id = p_user_id
            RETURNING * INTO v_failures;
        END IF;
        RETURN QUERY SELECT v_outcome, NULL::uuid, NULL::uuid, v_failures.locked_until;
        RETURN;
    END IF;
    UPDATE link_codes c SET used_at = v_now, used_by = p_user_id WHERE c.code = v_code.code;
    SELECT l.first_person, l.second_person INTO v_owner_person, v_user_person
    FROM sk_lock_people(v_code.user_id, p_user_id) l;
    v_person := coalesce(v_owner_person, v_user_person);
    IF v_person IS NULL THEN
        INSERT INTO persons AS p (created_at) VALUES (v_now) RETURNING p.person_id INTO v_person;
    END IF;
    -- Both users and every user of either's person end up under one person. A person emptied
    -- by a merge stays (nothing is deleted on the online path but by unlink).
    UPDATE users u SET person_id = v_person, updated_at = v_now
    WHERE u.user_id IN (v_code.user_id, p_user_id)
       OR u.person_id IN (v_owner_person, v_user_person);
    RETURN QUERY SELECT 'linked', v_person, v_code.user_id, NULL::timestamptz;
END $$;

-- sk_redeem_link_code_v2: sk_redeem_link_code_v3 with the default daily cap (50). Bots of
-- release 0.2.0 call it.
CREATE OR REPLACE FUNCTION sk_redeem_link_code_v2(
    p_user_id uuid, p_code_key text, p_legacy_code text, p_now timestamptz,
    p_max_failures integer, p_failure_window interval, p_lockout interval
) RETURNS TABLE (outcome text, person_id uuid, owner_id uuid, locked_until timestamptz)
LANGUAGE sql AS $$
    SELECT * FROM sk_redeem_link_code_v3(p_user_id, p_code_key, p_legacy_code, p_now,
                                         p_max_failures, p_failure_window, p_lockout, 50)
$$;

-- sk_redeem_link_code: sk_redeem_link_code_v2 for a caller that sends the code itself (bots of
-- release 0.1.0): its key is computed here, and a six-digit code of that release is matched as
-- typed.
CREATE OR REPLACE FUNCTION sk_redeem_link_code(
    p_user_id uuid, p_code text, p_now timestamptz,
    p_max_failures integer, p_failure_window interval, p_lockout interval
) RETURNS TABLE (outcome text, person_id uuid, owner_id uuid, locked_until timestamptz)
LANGUAGE sql AS $$
    SELECT * FROM sk_redeem_link_code_v2(p_user_id, sk_link_code_key(p_code), p_code, p_now,
                                         p_max_failures, p_failure_window, p_lockout)
$$;

-- sk_unlink: the user leaves its person; the person goes when no user is left in it. No row
-- of the result is missing: person_id is NULL when the user was linked to nobody.
CREATE OR REPLACE FUNCTION sk_unlink(p_user_id uuid, p_now timestamptz)
RETURNS TABLE (person_id uuid, person_deleted boolean)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_person uuid;
BEGIN
    SELECT l.first_person INTO v_person FROM sk_lock_people(p_user_id, p_user_id) l;
    -- Checked under the lock: an erasure that held it may have removed the user.
    PERFORM 1 FROM users u WHERE u.user_id = p_user_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'no_data_found',
            MESSAGE = 'user ' || p_user_id || ' does not exist';
    END IF;
    IF v_person IS NULL THEN
        RETURN QUERY SELECT NULL::uuid, false;
        RETURN;
    END IF;
    UPDATE users u SET person_id = NULL, updated_at = coalesce(p_now, now())
    WHERE u.user_id = p_user_id;
    DELETE FROM persons p
    WHERE p.person_id = v_person
      AND NOT EXISTS (SELECT 1 FROM users u WHERE u.person_id = v_person);
    RETURN QUERY SELECT v_person, FOUND;
END $$;

-- =============================================================================================
-- Proactive messages
-- Who proactive messages may go to. One definition read by the store's load_users_from_db and by
-- the proactive_reload job (jobs/queries.sql), so the two lists cannot differ.
-- =============================================================================================

-- sk_proactive_candidates: every authenticated user who registered a chat (any channel), and
-- every authenticated user of p_channel (the seed: Telegram, where the chat id is the user id).
-- A plain SQL function, STABLE and not STRICT, so the planner inlines it into the calling
-- query: the job's keyset filter and LIMIT reach the scan of users.
CREATE OR REPLACE FUNCTION sk_proactive_candidates(p_channel text)
RETURNS TABLE (user_id uuid, chat_id text, user_created_at timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT u.user_id, coalesce(p.chat_id, u.channel_user_id), u.created_at
    FROM users u
    LEFT JOIN proactive_users p ON p.user_id = u.user_id
    WHERE u.authenticated AND (p.user_id IS NOT NULL OR u.channel = p_channel)
$$;

-- sk_publish_proactive_list: announce that proactive_user_list is current. When p_changed (or
-- on the first publication) the list's version goes up by one and NOTIFY on the channel
-- sessionkeeper_proactive_list carries it (store.proactive.NOTIFY_CHANNEL; delivered when the
-- caller's transaction commits). Bots keeping the list in memory (store.ProactiveUsers) reload
-- on it. Returns the current version.
CREATE OR REPLACE FUNCTION sk_publish_proactive_list(p_changed boolean)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_version bigint;
BEGIN
    INSERT INTO proactive_list_state AS s (singleton, version, published_at)
    VALUES (true, 1, now())
    ON CONFLICT (singleton) DO UPDATE SET version = s.version + 1, published_at = now()
        WHERE p_changed
    RETURNING s.version INTO v_version;
    IF v_version IS NULL THEN
        -- Unchanged: nothing to announce.
        SELECT s.version INTO v_version FROM proactive_list_state s;
        RETURN v_version;
    END IF;
    PERFORM pg_notify('sessionkeeper_proactive_list', v_version::text);
    RETURN v_version;
END $$;

-- =============================================================================================
-- Erasure
-- Why a function: erasure must see rows that a concurrent usage rollup commits while erasure waits
-- for its locks. In PL/pgSQL every statement takes a fresh snapshot (READ COMMITTED), so the daily
-- totals are re-keyed after the raw usage rows were deleted, including totals the rollup added
-- meanwhile. A single statement with data-modifying CTEs would miss them.
-- =============================================================================================

-- sk_telegram_user_id: a channel user id as the bigint whose text it is (aiogram keys its states
-- by that number), NULL when it is no bigint's text; a CASE, so that the casts only see text
-- they accept. Compared with aiogram_fsm_states.telegram_user_id it finds exactly the rows whose
-- telegram_user_id::text is the id, by the index on (channel, telegram_user_id).
CREATE OR REPLACE FUNCTION sk_telegram_user_id(p_channel_user_id text) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN p_channel_user_id !~ '^(0|-?[1-9][0-9]{0,18})$' THEN NULL
        WHEN p_channel_user_id::numeric BETWEEN -9223372036854775808 AND 9223372036854775807
        THEN p_channel_user_id::bigint END
$$;

-- sk_forget: erase a user (p_user_id) or a person and all its users (p_person_id) and
-- everything the store holds about them, in one transaction; one row per table with what was
-- done, or a single 'blocked' row naming the foreign key of another subsystem that refers to
-- the user (then nothing was changed). No rows: no such user or person.
-- plan_cache_mode = force_generic_plan: every statement here (and in the functions it calls,
-- which inherit the setting) finds rows by user, session, thread or code through an index, for
-- which the generic plan is the plan. With the default (auto) PL/pgSQL re-planned most of them
-- on every erasure: half of an erasure's server time, 1-2 ms for the usage_stats DELETE alone
-- (every daily partition planned), which bounds the user_retention job's users/s (issue 24).
CREATE OR REPLACE FUNCTION sk_forget(p_user_id uuid, p_person_id uuid)
RETURNS TABLE (table_name text, action text, row_count bigint)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
DECLARE
    -- Usage totals outlive the user under this id, as anonymous aggregates.
    v_anonymous CONSTANT uuid := '00000000-0000-0000-0000-000000000000';
    v_users uuid[];
    v_persons uuid[];
    v_key integer;
    v_n bigint;
    v_watermark bigint;
    v_added bigint;
BEGIN
    -- Locks, in the order redemption and unlink take them (see "Identity" above), so that none
    -- of the three deadlocks against another: 1. the account lock of each user, 2. the link
    -- codes about to be deleted, 3. the person lock; then the rows. A redemption by one of the
    -- users finishes first or finds it gone; a merge or unlink of its person finishes first,
    -- and who is erased is read again under the locks (when a person's users changed
    -- meanwhile, the locks are released and taken again).
    LOOP
        IF p_person_id IS NOT NULL THEN
            PERFORM 1 FROM persons WHERE person_id = p_person_id;
            IF NOT FOUND THEN
                RETURN;
            END IF;
            SELECT coalesce(array_agg(user_id ORDER BY user_id), '{}') INTO v_users
            FROM users WHERE person_id = p_person_id;
        ELSE
            v_users := ARRAY[p_user_id];
        END IF;
        BEGIN
            FOR v_key IN
                SELECT DISTINCT hashtext(u::text) AS lock_key FROM unnest(v_users) u
                ORDER BY lock_key
            LOOP
                PERFORM pg_advisory_xact_lock(1936417123, v_key);  -- "skac"
            END LOOP;
            PERFORM 1 FROM link_codes c
            WHERE c.user_id = ANY(v_users) OR c.used_by = ANY(v_users)
            ORDER BY c.code FOR UPDATE;
            IF p_person_id IS NOT NULL THEN
                PERFORM pg_advisory_xact_lock(1936420965, hashtext(p_person_id::text));  -- "skpe"
                EXIT WHEN v_users = (SELECT coalesce(array_agg(user_id ORDER BY user_id), '{}')
                                     FROM users WHERE person_id = p_person_id);
                RAISE EXCEPTION USING ERRCODE = 'SK001', MESSAGE = 'users moved; lock again';
            END IF;
            SELECT array_remove(ARRAY[l.first_person], NULL) INTO v_persons
            FROM sk_lock_people(p_user_id, p_user_id) l;
            EXIT;
        EXCEPTION WHEN SQLSTATE 'SK001' THEN
            NULL;  -- the subtransaction's locks are released; read the users again
        END;
    END LOOP;
    -- The users' rows last: concurrent inserts that reference them (a new session, usage, a
    -- link code) wait, and then fail on the foreign key.
    IF p_person_id IS NOT NULL THEN
        PERFORM 1 FROM persons WHERE person_id = p_person_id FOR UPDATE;
        IF NOT FOUND THEN
            RETURN;  -- erased meanwhile
        END IF;
        v_persons := ARRAY[p_person_id];
    END IF;
    PERFORM 1 FROM users WHERE user_id = ANY(v_users) ORDER BY user_id FOR UPDATE;
    IF NOT FOUND AND p_person_id IS NULL THEN
        RETURN;  -- no such user, or erased meanwhile
    END IF;

    BEGIN
        WITH d AS (DELETE FROM session_messages m USING sessions s
                   WHERE m.session_id = s.session_id AND s.user_id = ANY(v_users) RETURNING 1)
        SELECT count(*) INTO v_n FROM d;
        RETURN QUERY SELECT 'session_messages', 'deleted', v_n;
        -- The sessions' cascade would take them too; deleting them here reports them.
        WITH d AS (DELETE FROM turn_receipts r USING sessions s
                   WHERE r.session_id = s.session_id AND s.user_id = ANY(v_users) RETURNING 1)
        SELECT count(*) INTO v_n FROM d;
        RETURN QUERY SELECT 'turn_receipts', 'deleted', v_n;
        WITH d AS (DELETE FROM sessions WHERE user_id = ANY(v_users) RETURNING 1)
        SELECT count(*) INTO v_n FROM d;
        RETURN QUERY SELECT 'sessions', 'deleted', v_n;
        WITH d AS (DELETE FROM archived_session_messages m USING archived_sessions s
                   WHERE m.session_id = s.session_id AND s.user_id = ANY(v_users) RETURNING 1)
        SELECT count(*) INTO v_n FROM d;
        RETURN QUERY SELECT 'archived_session_messages', 'deleted', v_n;
        WITH d AS (DELETE FROM archived_sessions WHERE user_id = ANY(v_users) RETURNING 1)
        SELECT count(*) INTO v_n FROM d;
        RETURN QUERY SELECT 'archived_sessions', 'deleted', v_n;
        WITH d AS (DELETE FROM legacy_quarantined_messages WHERE user_id = ANY(v_users)
                   RETURNING 1)
        SELECT count(*) INTO v_n FROM d;
        RETURN QUERY SELECT 'legacy_quarantined_messages', 'deleted', v_n;
        -- Codes the user made, and codes of others it redeemed (they name it).
        WITH d AS (DELETE FROM link_codes
                   WHERE user_id = ANY(v_users) OR used_by = ANY(v_users) RETURNING 1)
        SELECT count(*) INTO v_n FROM d;
        RETURN QUERY SELECT 'link_codes', 'deleted', v_n;
        -- The failure record outlives the user, keyed by a hash of its id and nothing else,
        -- until link_code_expiry finds its day and lock-out over: a user erased and back
        -- under the same id (a keyed hash of its channel identity) must not earn fresh guesses.
        WITH d AS (DELETE FROM link_code_failures WHERE user_id = ANY(v_users) RETURNING *)
        INSERT INTO link_code_erased_failures AS e
            (account_key, window_start, failures, locked_until, recent)
        SELECT sk_link_failure_key(d.user_id), d.window_start, d.failures, d.locked_until,
               d.recent
        FROM d
        ON CONFLICT (account_key) DO UPDATE SET
            window_start = EXCLUDED.window_start, failures = EXCLUDED.failures,
            locked_until = EXCLUDED.locked_until, recent = EXCLUDED.recent;
        GET DIAGNOSTICS v_n = ROW_COUNT;
        RETURN QUERY SELECT 'link_code_failures', 'deleted', v_n;
        WITH d AS (DELETE FROM rate_limits WHERE user_id = ANY(v_users) RETURNING 1)
        SELECT count(*) INTO v_n FROM d;
        RETURN QUERY SELECT 'rate_limits', 'deleted', v_n;
        WITH d AS (DELETE FROM proactive_users WHERE user_id = ANY(v_users) RETURNING 1)
        SELECT count(*) INTO v_n FROM d;
        RETURN QUERY SELECT 'proactive_users', 'deleted', v_n;
        WITH d AS (DELETE FROM proactive_user_list WHERE user_id = ANY(v_users) RETURNING 1)
        SELECT count(*) INTO v_n FROM d;
        RETURN QUERY SELECT 'proactive_user_list', 'deleted', v_n;
        IF v_n > 0 AND EXISTS (SELECT 1 FROM proactive_list_state) THEN
            -- Bots holding the published list in memory drop the user now, not at the next
            -- proactive_reload.
            PERFORM sk_publish_proactive_list(true);
        END IF;
        -- aiogram FSM states: linked to the user, or keyed by its channel identity (a state
        -- written before the user's first turn has no link). Two statements, each an index
        -- lookup: matched as text (telegram_user_id::text) the key read every state of the
        -- channel (sk_telegram_user_id).
        WITH d AS (DELETE FROM aiogram_fsm_states f WHERE f.user_id = ANY(v_users) RETURNING 1)
        SELECT count(*) INTO v_n FROM d;
        WITH d AS (DELETE FROM aiogram_fsm_states f
                   USING users u
                   WHERE u.user_id = ANY(v_users) AND f.channel = u.channel
                     AND f.telegram_user_id = sk_telegram_user_id(u.channel_user_id)
                   RETURNING 1)
        SELECT v_n + count(*) INTO v_n FROM d;
        RETURN QUERY SELECT 'aiogram_fsm_states', 'deleted', v_n;
        -- LangGraph threads tied to the users, with every row of theirs.
        RETURN QUERY SELECT * FROM sk_langgraph_forget(v_users);
        -- python-telegram-bot persistence: the user's user_data, the chat_data of its private
        -- chat, conversation entries keyed by it (by owner_ids; linked rows are among them).
        WITH d AS (DELETE FROM telegram_persistence p
                   USING users u
                   WHERE u.user_id = ANY(v_users) AND p.channel = u.channel
                     AND p.owner_ids @> ARRAY[u.channel_user_id]
                   RETURNING 1)
        SELECT count(*) INTO v_n FROM d;
        WITH d AS (DELETE FROM telegram_persistence WHERE user_id = ANY(v_users) RETURNING 1)
        SELECT v_n + count(*) INTO v_n FROM d;
        RETURN QUERY SELECT 'telegram_persistence', 'deleted', v_n;
        -- Its record: a bot's write of data from before now is dropped (sk_telegram_write).
        PERFORM sk_telegram_erased(v_users);
        -- Raw usage goes; what the rollup has not counted yet is added to the anonymous daily
        -- totals first (UTC days, as the rollup counts). Not counted yet: a row without flag
        -- at or beyond the rollup's watermark, or a row from before revision 0013 whose flag
        -- is still false (see jobs/usage_rollup.py). The watermark's row lock waits for a rollup batch
        -- in progress, and the statements after it see what that batch committed.
        SELECT w.watermark INTO v_watermark FROM usage_rollup_state w FOR SHARE;
        WITH d AS (DELETE FROM usage_stats WHERE user_id = ANY(v_users) RETURNING *),
        folded AS (
            SELECT (created_at AT TIME ZONE 'UTC')::date AS day, channel, count(*) AS requests,
                   sk_capped_total(sum(input_tokens)) AS input_tokens,
                   sk_capped_total(sum(output_tokens)) AS output_tokens,
                   sk_capped_total(sum(cached_tokens)) AS cached_tokens
            FROM d
            WHERE NOT rolled_up OR rolled_up IS NULL AND inserted_xid >= coalesce(v_watermark, 0)
            GROUP BY 1, 2
        )
        SELECT (SELECT count(*) FROM d), (
                   SELECT sk_add_usage_daily(
                       array_agg(f.day), array_fill(v_anonymous, ARRAY[count(*)::int]),
                       array_agg(f.channel), array_agg(f.requests), array_agg(f.input_tokens),
                       array_agg(f.output_tokens), array_agg(f.cached_tokens), now())
                   FROM folded f
                   HAVING count(*) > 0)  -- nothing to add: no call (an SQL function plans anew)
        INTO v_n, v_added;
        RETURN QUERY SELECT 'usage_stats', 'deleted', v_n;
        -- The user's daily totals are merged into the anonymous ones.
        WITH d AS (DELETE FROM usage_daily WHERE user_id = ANY(v_users) RETURNING *),
        merged AS (
            SELECT day, channel, sum(requests)::bigint AS requests,
                   sk_capped_total(sum(input_tokens)) AS input_tokens,
                   sk_capped_total(sum(output_tokens)) AS output_tokens,
                   sk_capped_total(sum(cached_tokens)) AS cached_tokens
            FROM d GROUP BY day, channel
        )
        SELECT (SELECT count(*) FROM d), (
                   SELECT sk_add_usage_daily(
                       array_agg(m.day), array_fill(v_anonymous, ARRAY[count(*)::int]),
                       array_agg(m.channel), array_agg(m.requests), array_agg(m.input_tokens),
                       array_agg(m.output_tokens), array_agg(m.cached_tokens), now())
                   FROM merged m
                   HAVING count(*) > 0)
        INTO v_n, v_added;
        RETURN QUERY SELECT 'usage_daily', 'anonymised', v_n;
        -- `sessionkeeper citus-ddl` re-keys users created before revision 0014 and keeps the
        -- mapping in user_id_rekeys (not part of the migrated schema: only where it ran). The
        -- user's old id and its key both go.
        IF to_regclass('user_id_rekeys') IS NOT NULL THEN
            EXECUTE 'WITH d AS (DELETE FROM user_id_rekeys WHERE old_user_id = ANY($1)'
                    ' OR new_user_id = ANY($1) RETURNING 1) SELECT count(*) FROM d'
                INTO v_n USING v_users;
            RETURN QUERY SELECT 'user_id_rekeys', 'deleted', v_n;
        END IF;
        WITH d AS (DELETE FROM users WHERE user_id = ANY(v_users) RETURNING 1)
        SELECT count(*) INTO v_n FROM d;
        RETURN QUERY SELECT 'users', 'deleted', v_n;
        -- A person goes when it has no user left (a forgotten person always).
        WITH d AS (DELETE FROM persons p WHERE p.person_id = ANY(v_persons)
                   AND NOT EXISTS (SELECT 1 FROM users u WHERE u.person_id = p.person_id)
                   RETURNING 1)
        SELECT count(*) INTO v_n FROM d;
        RETURN QUERY SELECT 'persons', 'deleted', v_n;
    EXCEPTION WHEN foreign_key_violation THEN
        -- A table sessionkeeper does not own (another subsystem's) still references the
        -- user: everything above is rolled back, and the caller is told which constraint.
        RETURN QUERY SELECT 'blocked', SQLERRM, 0::bigint;
    END;
END $$;

-- =============================================================================================
-- Conversations (revision 0016)
-- A conversation is a user in a chat: its session is (user_id, chat_id), chat_id NULL for the
-- user's private chat. Every message is written to the speaker's own session, so writes route
-- by the speaker's user id on Citus and erasing a user removes exactly its messages. A shared
-- group conversation, and continuity across a person's linked users, are read views: the
-- history merges the current sessions of the group's members (or of the linked users), newest
-- messages first (docs/conversations.md).
-- =============================================================================================

-- sk_fill_archived_chat, sk_fill_restored_chat: trigger functions (revision 0016) that keep a
-- session's chat across the archive when a daemon of release 0.2.0 archives or restores it
-- (its statements do not name the column). They fire only WHEN (NEW.chat_id IS NULL) (and, on
-- sessions, for a restored row); the release after 0.3.0 drops them.
CREATE OR REPLACE FUNCTION sk_fill_archived_chat() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    SELECT s.chat_id INTO NEW.chat_id FROM sessions s WHERE s.session_id = NEW.session_id;
    RETURN NEW;
END $$;

CREATE OR REPLACE FUNCTION sk_fill_restored_chat() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    SELECT a.chat_id INTO NEW.chat_id FROM archived_sessions a
    WHERE a.session_id = NEW.session_id;
    RETURN NEW;
END $$;

-- sk_current_session_v2: the user's session in chat p_chat_id (NULL: the private chat) if it
-- was active within p_idle, else a new one that carries the newest p_carry_pairs pairs of the
-- stale one.
CREATE OR REPLACE FUNCTION sk_current_session_v2(
    p_user_id uuid, p_chat_id text, p_now timestamptz, p_idle interval, p_carry_pairs integer
) RETURNS TABLE (session_id uuid, created boolean)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_now timestamptz := coalesce(p_now, now());
    v_previous uuid;
    v_last_active timestamptz;
    v_new uuid;
    v_carried bigint;
BEGIN
    -- The user's row lock serialises the choice: concurrent first messages queue here, and as
    -- each statement below takes a fresh snapshot, the later ones find the session the first
    -- one opened.
    PERFORM 1 FROM users u WHERE u.user_id = p_user_id FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'no_data_found',
            MESSAGE = 'user ' || p_user_id || ' does not exist';
    END IF;
    SELECT s.session_id, s.last_active INTO v_previous, v_last_active
    FROM sessions s
    WHERE s.user_id = p_user_id
      AND (s.chat_id = p_chat_id OR p_chat_id IS NULL AND s.chat_id IS NULL)
    ORDER BY s.last_active DESC LIMIT 1;
    IF v_previous IS NOT NULL AND v_last_active > v_now - p_idle THEN
        session_id := v_previous;
        created := false;
        RETURN NEXT;
        RETURN;
    END IF;
    INSERT INTO sessions AS s (user_id, chat_id, created_at, last_active)
    VALUES (p_user_id, p_chat_id, v_now, v_now) RETURNING s.session_id INTO v_new;
    IF v_previous IS NOT NULL AND p_carry_pairs > 0 THEN
        -- Intermittent chatters keep context: the newest pairs of the stale session of the same
        -- conversation come along, each message with its extra fields (a carried tool call
        -- keeps its id). Every statement names the user (the distribution column on Citus).
        INSERT INTO session_messages (user_id, session_id, seq, role, content, created_at,
                                      extra)
        SELECT p_user_id, v_new, row_number() OVER (ORDER BY m.seq) - 1, m.role, m.content,
               m.created_at, m.extra
        FROM (
            SELECT x.seq, x.role, x.content, x.created_at, x.extra FROM session_messages x
            WHERE x.user_id = p_user_id AND x.session_id = v_previous
            ORDER BY x.seq DESC LIMIT 2 * p_carry_pairs
        ) m;
        GET DIAGNOSTICS v_carried = ROW_COUNT;
        UPDATE sessions s SET next_seq = v_carried
        WHERE s.user_id = p_user_id AND s.session_id = v_new;
    END IF;
    session_id := v_new;
    created := true;
    RETURN NEXT;
END $$;

-- sk_conversation_sessions: the other sessions a conversation's history is read from (NULL:
-- none): in a group chat (p_chat_id) the current session of every other member of the
-- shared conversation; in a private chat the current private session of every other user of
-- the person p_person (continuity). Current: active since p_since. Reads across users: on
-- Citus it does not route to one shard (docs/conversations.md).
CREATE OR REPLACE FUNCTION sk_conversation_sessions(
    p_user_id uuid, p_session_id uuid, p_person_id uuid, p_channel text, p_chat_id text,
    p_since timestamptz
) RETURNS uuid[]
LANGUAGE sql STABLE AS $$
    SELECT array_agg(s.session_id)
    FROM sessions s JOIN users u ON u.user_id = s.user_id
    WHERE p_chat_id IS NOT NULL AND s.chat_id = p_chat_id AND u.channel = p_channel
      AND s.last_active > p_since AND s.session_id <> p_session_id
    HAVING count(*) > 0
    UNION ALL
    SELECT array_agg(l.session_id)
    FROM users u
    CROSS JOIN LATERAL (
        SELECT s.session_id FROM sessions s
        WHERE s.user_id = u.user_id AND s.chat_id IS NULL AND s.last_active > p_since
        ORDER BY s.last_active DESC LIMIT 1
    ) l
    WHERE p_chat_id IS NULL AND u.person_id = p_person_id AND u.user_id <> p_user_id
    HAVING count(*) > 0
$$;

-- sk_conversation_arrays: the newest 2 * p_pairs messages of several sessions (a shared group
-- conversation, or a person's linked users), oldest first, in sk_history_arrays_v3's arrays;
-- a turn's messages keep their order (same time: by seq). With p_speakers, the sixth array
-- names who spoke each message: its session's user (display name, else channel id).
CREATE OR REPLACE FUNCTION sk_conversation_arrays(
    p_session_ids uuid[], p_pairs integer, p_speakers boolean
)
RETURNS TABLE (seqs bigint[], roles text[], contents text[], created timestamptz[],
               extras jsonb[], speakers text[])
LANGUAGE sql STABLE AS $$
    SELECT coalesce(array_agg(m.seq ORDER BY m.created_at, m.session_id, m.seq), '{}'),
           coalesce(array_agg(m.role ORDER BY m.created_at, m.session_id, m.seq), '{}'),
           coalesce(array_agg(m.content ORDER BY m.created_at, m.session_id, m.seq), '{}'),
           coalesce(array_agg(m.created_at ORDER BY m.created_at, m.session_id, m.seq), '{}'),
           coalesce(array_agg(m.extra ORDER BY m.created_at, m.session_id, m.seq), '{}'),
           CASE WHEN p_speakers THEN
               coalesce(array_agg(m.speaker ORDER BY m.created_at, m.session_id, m.seq), '{}')
           END
    FROM (
        SELECT x.session_id, x.seq, x.role, x.content, x.created_at, x.extra,
               coalesce(u.display_name, u.channel_user_id) AS speaker
        FROM session_messages x
        JOIN sessions s ON s.session_id = x.session_id
        JOIN users u ON u.user_id = s.user_id
        WHERE x.session_id = ANY(p_session_ids)
        ORDER BY x.created_at DESC, x.session_id DESC, x.seq DESC LIMIT 2 * p_pairs
    ) m
$$;

-- sk_begin_turn_v5: everything before the model is called, in one round trip: the user
-- (written only when something changes, revision 0005), the rate-limit decision (per user,
-- whatever the chat; when refused, notify says whether it is the refusing window's first
-- refusal, sk_count_refusal; no cap given: admitted and counted nowhere, as an exempt message
-- is), and when admitted the conversation's current session (the user in chat
-- p_chat_id; NULL: the private chat) and its history, each message with its extra fields
-- (0010). p_shared: a group chat's history is the shared conversation of its members (with
-- history_speakers); p_continuity: a private chat's history continues the linked users'
-- (docs/conversations.md). Otherwise history_speakers is NULL.
-- The common turn (one cap, a session active within p_idle) runs in this body: calling
-- sk_check_rate_limit_v2 and sk_current_session_v2 for it cost a PL/pgSQL call each (executor
-- start-up, a tuplestore for the result row, a second lock of the user row), 2-5 % of the
-- server's instructions per turn (bench/RESULTS.md, issue 13). The other cases call them.
-- plan_cache_mode = force_generic_plan (revision 0006): every statement here (and in the
-- functions it calls, which inherit the setting) looks rows up by key or reads an index range,
-- for which the generic plan is the plan; re-planning on every call cost ~10 % of a turn. A
-- function setting, not a connection option, so it holds behind PgBouncer too.
CREATE OR REPLACE FUNCTION sk_begin_turn_v5(
    p_channel text, p_channel_user_id text, p_display_name text, p_chat_id text,
    p_shared boolean, p_continuity boolean, p_now timestamptz,
    p_windows integer[], p_caps integer[], p_durable boolean,
    p_idle interval, p_carry_pairs integer, p_history_pairs integer
) RETURNS TABLE (
    user_id uuid, person_id uuid, display_name text, user_created boolean, now timestamptz,
    allowed boolean, retry_at timestamptz, refused_window integer, notify boolean,
    session_id uuid, session_created boolean,
    history_seqs bigint[], history_roles text[], history_contents text[],
    history_created timestamptz[], history_extras jsonb[], history_speakers text[]
)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
DECLARE
    v_now timestamptz := coalesce(p_now, now());
    v_key uuid := sk_user_key(p_channel, p_channel_user_id);
    v_user uuid;
    v_authenticated boolean;
    v_session uuid;
    v_last_active timestamptz;
    v_others uuid[];
    v_person uuid;
BEGIN
    now := v_now;
    user_created := false;
    -- The user, locked until commit (see sk_current_session), found by its id (sk_user_key),
    -- not by its channel identity: sk_channel_user's first step, here. A known, authenticated
    -- user with no new display name (most messages) is written nothing; any other case is
    -- sk_channel_user's (a new user, a change, a user created before revision 0014).
    SELECT u.user_id, u.person_id, u.display_name, u.authenticated
    INTO v_user, person_id, display_name, v_authenticated
    FROM users u WHERE u.user_id = v_key FOR NO KEY UPDATE;
    IF v_user IS NULL OR NOT v_authenticated
       OR display_name IS DISTINCT FROM coalesce(p_display_name, display_name) THEN
        SELECT c.user_id, c.person_id, c.display_name, c.user_created
        INTO v_user, person_id, display_name, user_created
        FROM sk_channel_user(p_channel, p_channel_user_id, p_display_name, v_now) c;
    END IF;
    user_id := v_user;
    v_person := person_id;
    IF cardinality(p_windows) = 1 AND p_caps[1] > 0 THEN
        -- One cap: sk_check_rate_limit_v2's one-cap upsert, here (see there).
        IF NOT p_durable THEN
            PERFORM set_config('synchronous_commit', 'off', true);
        END IF;
        INSERT INTO rate_limits AS r (user_id, window_seconds, window_start, request_count)
        VALUES (v_user, p_windows[1],
                to_timestamp(floor(extract(epoch FROM v_now) / p_windows[1]) * p_windows[1]), 1)
        ON CONFLICT (user_id, window_seconds, window_start)
        DO UPDATE SET request_count = r.request_count + 1 WHERE r.request_count < p_caps[1];
        allowed := FOUND;
        IF NOT allowed THEN
            refused_window := p_windows[1];
            retry_at := to_timestamp(floor(extract(epoch FROM v_now) / p_windows[1])
                                     * p_windows[1]) + make_interval(secs => p_windows[1]);
            notify := sk_count_refusal(v_user, refused_window,
                                       retry_at - make_interval(secs => p_windows[1]));
        END IF;
    ELSIF cardinality(p_windows) = 0 THEN
        allowed := true;
    ELSE
        SELECT d.allowed, d.retry_at, d.refused_window, d.notify
        INTO allowed, retry_at, refused_window, notify
        FROM sk_check_rate_limit_v2(v_user, v_now, p_windows, p_caps, p_durable) d;
    END IF;
    IF allowed THEN
        -- A refused request opens no session and reads no history. The user row is locked
        -- (above), and this statement takes a fresh snapshot: sk_current_session_v2's first
        -- steps. The conversation's session (this user in this chat; no chat: the private
        -- one) active within p_idle is the current one; otherwise sk_current_session_v2 opens
        -- one (and carries pairs over).
        SELECT s.session_id, s.last_active INTO v_session, v_last_active
        FROM sessions s
        WHERE s.user_id = v_user
          AND (s.chat_id = p_chat_id OR p_chat_id IS NULL AND s.chat_id IS NULL)
        ORDER BY s.last_active DESC LIMIT 1;
        IF v_session IS NOT NULL AND v_last_active > v_now - p_idle THEN
            session_created := false;
        ELSE
            SELECT c.session_id, c.created INTO v_session, session_created
            FROM sk_current_session_v2(v_user, p_chat_id, v_now, p_idle, p_carry_pairs) c;
        END IF;
        session_id := v_session;
        IF p_chat_id IS NOT NULL AND p_shared OR p_chat_id IS NULL AND p_continuity
           AND v_person IS NOT NULL THEN
            -- A read view over several users' sessions (the settings' only cost).
            v_others := sk_conversation_sessions(v_user, v_session, v_person, p_channel,
                                                 p_chat_id, v_now - p_idle);
            IF v_others IS NOT NULL THEN
                SELECT h.seqs, h.roles, h.contents, h.created, h.extras, h.speakers
                INTO history_seqs, history_roles, history_contents, history_created,
                     history_extras, history_speakers
                FROM sk_conversation_arrays(v_session || v_others, p_history_pairs, p_shared) h;
            END IF;
        END IF;
        IF v_others IS NULL THEN
            SELECT h.seqs, h.roles, h.contents, h.created, h.extras
            INTO history_seqs, history_roles, history_contents, history_created, history_extras
            FROM sk_history_arrays_v3(v_user, v_session, p_history_pairs) h;
        END IF;
    END IF;
    RETURN NEXT;
END $$;


-- =============================================================================================
-- Kept for earlier releases
-- Functions the current code no longer calls but a bot or tool of an earlier release may. Each
-- names the release that stopped using it; it moves to "Retired" a release after that.
-- =============================================================================================

-- sk_check_rate_limit: sk_check_rate_limit_v2 without notify. check_rate_limit of releases
-- 0.1.0 and 0.2.0 calls it; its refusals count in refused_count too.
CREATE OR REPLACE FUNCTION sk_check_rate_limit(
    p_user_id uuid, p_now timestamptz, p_windows integer[], p_caps integer[], p_durable boolean
) RETURNS TABLE (allowed boolean, retry_at timestamptz, refused_window integer)
LANGUAGE sql AS $$
    SELECT c.allowed, c.retry_at, c.refused_window
    FROM sk_check_rate_limit_v2(p_user_id, p_now, p_windows, p_caps, p_durable) c
$$;

-- sk_begin_turn: sk_begin_turn_v3 without the history's extra fields. Bots of release 0.1.0
-- call it; 0.2.0 calls sk_begin_turn_v3. It keeps the generic-plan setting it always had.
CREATE OR REPLACE FUNCTION sk_begin_turn(
    p_channel text, p_channel_user_id text, p_display_name text, p_now timestamptz,
    p_windows integer[], p_caps integer[], p_durable boolean,
    p_idle interval, p_carry_pairs integer, p_history_pairs integer
) RETURNS TABLE (
    user_id uuid, person_id uuid, display_name text, user_created boolean, now timestamptz,
    allowed boolean, retry_at timestamptz, refused_window integer,
    session_id uuid, session_created boolean,
    history_seqs bigint[], history_roles text[], history_contents text[],
    history_created timestamptz[]
)
LANGUAGE sql
SET plan_cache_mode = force_generic_plan
AS $$
    SELECT t.user_id, t.person_id, t.display_name, t.user_created, t.now, t.allowed,
           t.retry_at, t.refused_window, t.session_id, t.session_created, t.history_seqs,
           t.history_roles, t.history_contents, t.history_created
    FROM sk_begin_turn_v3(p_channel, p_channel_user_id, p_display_name, p_now, p_windows,
                          p_caps, p_durable, p_idle, p_carry_pairs, p_history_pairs) t
$$;

-- sk_history_arrays: sk_history_arrays_v2 without the extra fields. get_history of release
-- 0.1.0 calls it; 0.2.0 calls sk_history_arrays_v2.
CREATE OR REPLACE FUNCTION sk_history_arrays(p_session_id uuid, p_pairs integer)
RETURNS TABLE (seqs bigint[], roles text[], contents text[], created timestamptz[])
LANGUAGE sql STABLE AS $$
    -- The newest 2 * p_pairs messages, oldest first: an index range on (session_id, seq).
    SELECT coalesce(array_agg(m.seq ORDER BY m.seq), '{}'),
           coalesce(array_agg(m.role ORDER BY m.seq), '{}'),
           coalesce(array_agg(m.content ORDER BY m.seq), '{}'),
           coalesce(array_agg(m.created_at ORDER BY m.seq), '{}')
    FROM (
        SELECT x.seq, x.role, x.content, x.created_at FROM session_messages x
        WHERE x.session_id = p_session_id ORDER BY x.seq DESC LIMIT 2 * p_pairs
    ) m
$$;

-- sk_history: the history as one JSONB document (revision 0002). sk_begin_turn returned it
-- until revision 0005 (before release 0.1.0); sk_history_arrays replaced it. No store call of
-- 0.1.0 uses it; bench/profile.py measures it beside sk_history_arrays.
CREATE OR REPLACE FUNCTION sk_history(p_session_id uuid, p_pairs integer) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    -- The newest 2 * p_pairs messages, oldest first: an index range on (session_id, seq).
    SELECT coalesce(
        jsonb_agg(jsonb_build_object('seq', m.seq, 'role', m.role, 'content', m.content,
                                     'timestamp', m.created_at) ORDER BY m.seq),
        '[]'::jsonb)
    FROM (
        SELECT x.seq, x.role, x.content, x.created_at FROM session_messages x
        WHERE x.session_id = p_session_id ORDER BY x.seq DESC LIMIT 2 * p_pairs
    ) m
$$;

-- =============================================================================================
-- Retired
-- DROP FUNCTION IF EXISTS statements for functions no supported release calls any more.
-- =============================================================================================

-- sk_begin_turn_v2: only development builds of 0.2.0 had it (sk_begin_turn_v3 replaced it
-- before the release); no release calls it.
DROP FUNCTION IF EXISTS sk_begin_turn_v2(
    text, text, text, timestamptz, integer[], integer[], boolean, interval, integer, integer
);

-- sk_begin_turn_v4: only development builds of 0.3.0 had it (sk_begin_turn_v5 replaced it
-- before the release, revision 0020); no release calls it.
DROP FUNCTION IF EXISTS sk_begin_turn_v4(
    text, text, text, text, boolean, boolean, timestamptz, integer[], integer[], boolean,
    interval, integer, integer
);

-- sk_langgraph_values: only development builds of 0.3.0 had it (sk_langgraph_values_v2, which
-- also returns each list's length, replaced it before the release); no release calls it.
DROP FUNCTION IF EXISTS sk_langgraph_values(text, text, jsonb);

-- =============================================================================================
-- LangGraph checkpoints (store/integrations/langgraph.py, tables of revision 0018)
-- A list channel value is the first `length` items of a line (langgraph_lines/_items); a later
-- value that extends it adds only its new items to the same line.
-- =============================================================================================

-- sk_langgraph_put: one checkpoint with its new channel values, in one transaction. Plain
-- values come as parallel p_* arrays; list values as p_list_* (p_list_lines NULL: a new line;
-- else extend that line from p_list_from to p_list_to items) with their rows in p_item_*
-- (p_item_lists: 1-based index into p_list_*; a row at p_item_seqs holds one item, or several
-- when its type is 'chunk+...': see sk_langgraph_values_v2). Returns each list channel with its line. When a
-- line to extend no longer has p_list_from items (another checkpoint extended it: a fork; or
-- it was collected), nothing is written and those channels come back with a NULL line: the
-- caller writes them again as new lines.
CREATE OR REPLACE FUNCTION sk_langgraph_put(
    p_thread_id text, p_ns text, p_checkpoint_id text, p_parent_id text, p_user_id uuid,
    p_type text, p_checkpoint bytea, p_versions jsonb, p_metadata jsonb,
    p_channels text[], p_channel_versions text[], p_types text[], p_data bytea[],
    p_list_channels text[], p_list_versions text[], p_list_lines bigint[],
    p_list_from integer[], p_list_to integer[],
    p_item_lists integer[], p_item_seqs integer[], p_item_types text[], p_item_data bytea[]
) RETURNS TABLE (channel text, line_id bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_lines bigint[] := coalesce(p_list_lines, '{}');
    v_extend integer := cardinality(array_remove(v_lines, NULL));
    v_failed text[] := '{}';
    v_seal boolean := false;
    v_line bigint;
    k integer;
BEGIN
    -- Each statement is a large share of a put's server time at short histories: the common
    -- put runs five (one UPDATE a line extended, the threads check, three INSERTs); the checks
    -- around them are plpgsql expressions, not queries.
    IF v_extend > 0 THEN
        -- Several lines are locked in line order first, so two puts cannot deadlock.
        IF v_extend > 1 THEN
            PERFORM 1 FROM langgraph_lines l WHERE l.line_id = ANY(p_list_lines)
            ORDER BY l.line_id FOR UPDATE;
        END IF;
        -- Lock, check and extend in one: each UPDATE waits for a concurrent put or collection
        -- and re-checks the length on the row it left.
        FOR k IN 1 .. cardinality(v_lines) LOOP
            CONTINUE WHEN v_lines[k] IS NULL;
            UPDATE langgraph_lines l SET length = p_list_to[k]
            WHERE l.line_id = v_lines[k] AND l.thread_id = p_thread_id
              AND l.length = p_list_from[k];
            IF NOT FOUND THEN
                v_failed := v_failed || p_list_channels[k];
            END IF;
        END LOOP;
        IF v_failed <> '{}' THEN
            -- A line no longer has p_list_from items: undo the others, write nothing.
            FOR k IN 1 .. cardinality(v_lines) LOOP
                CONTINUE WHEN v_lines[k] IS NULL OR p_list_channels[k] = ANY(v_failed);
                UPDATE langgraph_lines l SET length = p_list_from[k]
                WHERE l.line_id = v_lines[k];
            END LOOP;
            RETURN QUERY SELECT f, NULL::bigint FROM unnest(v_failed) f;
            RETURN;
        END IF;
    END IF;
    -- updated_at is kept to the minute: rewriting the thread's row (and its indexes) at every
    -- put was a large share of a put's WAL.
    IF NOT EXISTS (
        SELECT FROM langgraph_threads t
        WHERE t.thread_id = p_thread_id AND t.updated_at > now() - interval '1 minute'
          AND (p_user_id IS NULL OR t.user_id = p_user_id)
    ) THEN
        INSERT INTO langgraph_threads AS t (thread_id, user_id) VALUES (p_thread_id, p_user_id)
        ON CONFLICT (thread_id) DO UPDATE
        SET updated_at = now(), user_id = coalesce(EXCLUDED.user_id, t.user_id);
    END IF;
    FOR k IN 1 .. coalesce(cardinality(p_list_channels), 0) LOOP
        IF v_lines[k] IS NULL THEN
            INSERT INTO langgraph_lines (thread_id, length) VALUES (p_thread_id, p_list_to[k])
            RETURNING langgraph_lines.line_id INTO v_line;
            v_lines[k] := v_line;
        END IF;
    END LOOP;
    FOR k IN 1 .. coalesce(cardinality(p_item_seqs), 0) LOOP
        IF p_item_seqs[k] < p_list_from[p_item_lists[k]] THEN
            v_seal := true;
            EXIT;
        END IF;
    END LOOP;
    IF v_seal THEN
        -- Rows from before p_list_from seal a chunk: they replace the line's rows from there
        -- (the same items, fewer rows; older values of the line read them the same).
        DELETE FROM langgraph_items i
        USING unnest(p_item_lists, p_item_seqs) AS x(k, seq)
        WHERE x.seq < p_list_from[x.k] AND i.line_id = v_lines[x.k] AND i.seq >= x.seq;
    END IF;
    IF cardinality(p_item_seqs) > 0 THEN
        INSERT INTO langgraph_items (line_id, seq, type, data)
        SELECT v_lines[i.k], i.seq, i.type, i.data
        FROM unnest(p_item_lists, p_item_seqs, p_item_types, p_item_data) AS i(k, seq, type, data);
    END IF;
    IF cardinality(p_channels) > 0 OR cardinality(p_list_channels) > 0 THEN
        INSERT INTO langgraph_blobs (thread_id, checkpoint_ns, channel, version, type, data,
                                     line_id, length)
        SELECT p_thread_id, p_ns, b.channel, b.version, b.type, b.data, NULL, NULL
        FROM unnest(p_channels, p_channel_versions, p_types, p_data)
             AS b(channel, version, type, data)
        UNION ALL
        SELECT p_thread_id, p_ns, x.channel, x.version, 'list', NULL, v_lines[x.k], x.to_len
        FROM unnest(p_list_channels, p_list_versions, p_list_to)
             WITH ORDINALITY AS x(channel, version, to_len, k)
        ON CONFLICT DO NOTHING;
    END IF;
    INSERT INTO langgraph_checkpoints AS c (thread_id, checkpoint_ns, checkpoint_id,
                                            parent_checkpoint_id, type, checkpoint, versions,
                                            metadata)
    VALUES (p_thread_id, p_ns, p_checkpoint_id, p_parent_id, p_type, p_checkpoint, p_versions,
            p_metadata)
    ON CONFLICT (thread_id, checkpoint_ns, checkpoint_id) DO UPDATE
    SET type = EXCLUDED.type, checkpoint = EXCLUDED.checkpoint, versions = EXCLUDED.versions,
        metadata = EXCLUDED.metadata;
    FOR k IN 1 .. coalesce(cardinality(p_list_channels), 0) LOOP
        channel := p_list_channels[k];
        line_id := v_lines[k];
        RETURN NEXT;
    END LOOP;
END
$$;

-- sk_langgraph_decode: a stored value as JSON for exports: JSON values as they are, lists
-- item by item, anything else as its serializer's type and base64 bytes.
CREATE OR REPLACE FUNCTION sk_langgraph_decode(p_type text, p_data bytea) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE p_type
        WHEN 'json' THEN convert_from(p_data, 'UTF8')::jsonb
        WHEN 'null' THEN 'null'::jsonb
        WHEN 'empty' THEN NULL
        ELSE jsonb_build_object('type', p_type,
                                'base64', translate(encode(p_data, 'base64'), E'\n', ''))
    END
$$;

-- sk_langgraph_collect: after checkpoints were deleted, delete the channel values no remaining
-- checkpoint of the threads references, then the lines no value references. The lines are
-- locked first and checked by a later statement (a fresh snapshot): a put extending one of
-- them commits first, and its value is seen. Returns the rows deleted.
CREATE OR REPLACE FUNCTION sk_langgraph_collect(p_thread_ids text[]) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_blobs bigint;
    v_lines bigint;
BEGIN
    PERFORM 1 FROM langgraph_lines l WHERE l.thread_id = ANY(p_thread_ids)
    ORDER BY l.line_id FOR UPDATE;
    DELETE FROM langgraph_blobs b
    WHERE b.thread_id = ANY(p_thread_ids) AND NOT EXISTS (
        SELECT FROM langgraph_checkpoints c
        WHERE c.thread_id = b.thread_id AND c.checkpoint_ns = b.checkpoint_ns
          AND c.versions ->> b.channel = b.version);
    GET DIAGNOSTICS v_blobs = ROW_COUNT;
    DELETE FROM langgraph_lines l
    WHERE l.thread_id = ANY(p_thread_ids) AND NOT EXISTS (
        SELECT FROM langgraph_blobs b WHERE b.thread_id = l.thread_id AND b.line_id = l.line_id);
    GET DIAGNOSTICS v_lines = ROW_COUNT;
    RETURN v_blobs + v_lines;
END
$$;

-- sk_langgraph_copy_thread: every checkpoint, value and write of one thread copied to another
-- (same checkpoint ids, the same user); lines are copied under new ids. Rows the target already
-- has are kept.
CREATE OR REPLACE FUNCTION sk_langgraph_copy_thread(p_source text, p_target text)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_old bigint[];
    v_new bigint[];
BEGIN
    INSERT INTO langgraph_threads (thread_id, user_id)
    SELECT p_target, t.user_id FROM langgraph_threads t WHERE t.thread_id = p_source
    ON CONFLICT (thread_id) DO NOTHING;
    SELECT array_agg(l.line_id ORDER BY l.line_id),
           array_agg(nextval(pg_get_serial_sequence('langgraph_lines', 'line_id'))
                     ORDER BY l.line_id)
    INTO v_old, v_new
    FROM langgraph_lines l WHERE l.thread_id = p_source;
    INSERT INTO langgraph_lines (line_id, thread_id, length)
    SELECT m.new, p_target, l.length
    FROM unnest(v_old, v_new) AS m(old, new) JOIN langgraph_lines l ON l.line_id = m.old;
    INSERT INTO langgraph_items (line_id, seq, type, data)
    SELECT m.new, i.seq, i.type, i.data
    FROM unnest(v_old, v_new) AS m(old, new) JOIN langgraph_items i ON i.line_id = m.old;
    INSERT INTO langgraph_blobs (thread_id, checkpoint_ns, channel, version, type, data, line_id,
                                 length)
    SELECT p_target, b.checkpoint_ns, b.channel, b.version, b.type, b.data, m.new, b.length
    FROM langgraph_blobs b LEFT JOIN unnest(v_old, v_new) AS m(old, new) ON m.old = b.line_id
    WHERE b.thread_id = p_source
    ON CONFLICT DO NOTHING;
    INSERT INTO langgraph_checkpoints (thread_id, checkpoint_ns, checkpoint_id,
                                       parent_checkpoint_id, type, checkpoint, versions,
                                       metadata, created_at)
    SELECT p_target, c.checkpoint_ns, c.checkpoint_id, c.parent_checkpoint_id, c.type,
           c.checkpoint, c.versions, c.metadata, c.created_at
    FROM langgraph_checkpoints c WHERE c.thread_id = p_source
    ON CONFLICT DO NOTHING;
    INSERT INTO langgraph_writes (thread_id, checkpoint_ns, checkpoint_id, task_id, idx, channel,
                                  type, data, task_path)
    SELECT p_target, w.checkpoint_ns, w.checkpoint_id, w.task_id, w.idx, w.channel, w.type,
           w.data, w.task_path
    FROM langgraph_writes w WHERE w.thread_id = p_source
    ON CONFLICT DO NOTHING;
END
$$;

-- sk_langgraph_forget: erasure's part (sk_forget) of the LangGraph tables: the threads tied to
-- p_users go with all their rows (the cascade); one row per table with the rows deleted.
CREATE OR REPLACE FUNCTION sk_langgraph_forget(p_users uuid[])
RETURNS TABLE (table_name text, action text, row_count bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_threads text[];
BEGIN
    SELECT coalesce(array_agg(t.thread_id), '{}') INTO v_threads
    FROM langgraph_threads t WHERE t.user_id = ANY(p_users);
    RETURN QUERY
    SELECT 'langgraph_writes', 'deleted', count(*) FROM langgraph_writes
    WHERE thread_id = ANY(v_threads)
    UNION ALL
    SELECT 'langgraph_checkpoints', 'deleted', count(*) FROM langgraph_checkpoints
    WHERE thread_id = ANY(v_threads)
    UNION ALL
    SELECT 'langgraph_blobs', 'deleted', count(*) FROM langgraph_blobs
    WHERE thread_id = ANY(v_threads)
    UNION ALL
    SELECT 'langgraph_items', 'deleted', count(*)
    FROM langgraph_items i JOIN langgraph_lines l ON l.line_id = i.line_id
    WHERE l.thread_id = ANY(v_threads)
    UNION ALL
    SELECT 'langgraph_lines', 'deleted', count(*) FROM langgraph_lines
    WHERE thread_id = ANY(v_threads);
    -- Counted first, then deleted in one statement: the rest goes by ON DELETE CASCADE.
    WITH d AS (DELETE FROM langgraph_threads WHERE thread_id = ANY(v_threads) RETURNING 1)
    SELECT 'langgraph_threads', 'deleted', count(*) FROM d INTO table_name, action, row_count;
    RETURN NEXT;
END
$$;

-- =============================================================================================
-- LangGraph checkpoints: reads of lines stored in chunks (issue 22)
-- A row of langgraph_items holds one item, or (type 'chunk+<type>') the list of the items from
-- its seq on: the saver seals a line's items into aligned chunks as the line grows, so a long
-- thread's message list is a few dozen rows. A chunk may hold items past an older value's
-- length: the reader keeps the first `length`.
-- =============================================================================================

-- sk_langgraph_values_v2: the channel values a checkpoint references (p_versions: its
-- channel_versions) with each list's length (the items to keep): a plain value is one row, a
-- list its rows in order (items, or chunks of items).
CREATE OR REPLACE FUNCTION sk_langgraph_values_v2(p_thread_id text, p_ns text, p_versions jsonb)
RETURNS TABLE (channel text, type text, data bytea, seq integer, line_id bigint, length integer)
LANGUAGE sql STABLE AS $$
    SELECT b.channel, coalesce(i.type, b.type), coalesce(i.data, b.data),
           CASE WHEN b.line_id IS NULL THEN -1 ELSE i.seq END, b.line_id, b.length
    FROM jsonb_each_text(p_versions) AS v(channel, version)
    JOIN langgraph_blobs b
      ON b.thread_id = p_thread_id AND b.checkpoint_ns = p_ns AND b.channel = v.channel
     AND b.version = v.version
    LEFT JOIN langgraph_items i ON i.line_id = b.line_id AND i.seq < b.length
    ORDER BY b.channel, i.seq
$$;

-- sk_langgraph_export_items: a row of sk_langgraph_values_v2 as the export shows it: a chunk of
-- JSON items as those of its items the value holds (at: their place in the list), any other
-- row as sk_langgraph_decode shows it (a chunk of the serializer's items: one entry).
CREATE OR REPLACE FUNCTION sk_langgraph_export_items(
    p_type text, p_data bytea, p_seq integer, p_length integer
) RETURNS TABLE (at integer, value jsonb)
LANGUAGE sql IMMUTABLE AS $$
    SELECT p_seq + e.n::integer - 1, e.value
    FROM jsonb_array_elements(CASE WHEN p_type = 'chunk+json'
                                   THEN convert_from(p_data, 'UTF8')::jsonb
                                   ELSE '[]'::jsonb END) WITH ORDINALITY AS e(value, n)
    WHERE p_seq + e.n - 1 < p_length
    UNION ALL
    SELECT p_seq, sk_langgraph_decode(p_type, p_data) WHERE p_type IS DISTINCT FROM 'chunk+json'
$$;

-- =============================================================================================
-- python-telegram-bot persistence: erasure records (revision 0023)
-- A bot process holds a user's user_data, private chat_data and conversation states in memory,
-- and writes them later (its next round, or once the database is back after an outage). A
-- write made of data from before an erasure must not bring the user back. Erasure leaves a
-- record (telegram_persistence_erasures: when, under a hash, nothing else of the user), and
-- every write of a user's row checks it against the moment the process's copy began.
-- The account lock (skac, as sk_forget takes it) orders a write and an erasure of the same user:
-- a write that waited for an erasure reads its record (a fresh snapshot after the lock).
-- =============================================================================================

-- sk_telegram_erasure_key: the key of an erased user's record: a SHA-256 of its user id (itself
-- a keyed hash of the channel identity, sk_user_key), so that the record names nobody.
CREATE OR REPLACE FUNCTION sk_telegram_erasure_key(p_user_id uuid) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT 'tp:' || encode(sha256(convert_to('telegram-erased:' || p_user_id::text, 'UTF8')), 'hex')
$$;

-- sk_telegram_erased: record the erasure of the users p_users, now (the clock after the caller's
-- account locks, so that a write that held the lock before has an earlier check time).
-- PL/pgSQL, not SQL: the functions are applied to databases migrated to earlier revisions too
-- (tests of upgrades), where the table does not exist yet and a SQL body would be refused.
CREATE OR REPLACE FUNCTION sk_telegram_erased(p_users uuid[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO telegram_persistence_erasures AS e (erasure_key, erased_at)
    SELECT DISTINCT sk_telegram_erasure_key(u), clock_timestamp() FROM unnest(p_users) u
    ON CONFLICT (erasure_key) DO UPDATE SET erased_at = EXCLUDED.erased_at;
END $$;

-- sk_telegram_lock: the account locks of channel identities (their ids are sk_user_key's),
-- in sk_forget's order; returns those user ids.
CREATE OR REPLACE FUNCTION sk_telegram_lock(p_channel text, p_channel_user_ids text[])
RETURNS uuid[]
LANGUAGE plpgsql AS $$
DECLARE
    v_users uuid[];
    v_key integer;
BEGIN
    SELECT coalesce(array_agg(DISTINCT sk_user_key(p_channel, i)), '{}') INTO v_users
    FROM unnest(p_channel_user_ids) i;
    FOR v_key IN
        SELECT DISTINCT hashtext(u::text) AS lock_key FROM unnest(v_users) u ORDER BY lock_key
    LOOP
        PERFORM pg_advisory_xact_lock(1936417123, v_key);  -- "skac"
    END LOOP;
    RETURN v_users;
END $$;

-- sk_telegram_forget: erase the python-telegram-bot persistence rows of channel identities that
-- have no users row (a bot using the persistence without TelegramTurns): the rows whose
-- owner_ids hold one of them, and, when there were any, an erasure record for each (nothing
-- found changes nothing: the caller reports an unknown user); returns the rows deleted.
CREATE OR REPLACE FUNCTION sk_telegram_forget(p_channel text, p_channel_user_ids text[])
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_users uuid[] := sk_telegram_lock(p_channel, p_channel_user_ids);
    v_n bigint;
BEGIN
    WITH d AS (DELETE FROM telegram_persistence p
               WHERE p.channel = p_channel AND p.owner_ids && p_channel_user_ids RETURNING 1)
    SELECT count(*) INTO v_n FROM d;
    IF v_n > 0 THEN
        PERFORM sk_telegram_erased(v_users);
    END IF;
    RETURN v_n;
END $$;

-- sk_telegram_write: write one persistence row (store/integrations/telegram.sql names the
-- modes), unless a user it is about (p_owner_ids) was erased after p_since, when the process's
-- copy began. Outcomes: 'written'; 'claimed' / 'present' (mode 'claim': an empty row inserted,
-- or one already there, left as it is); 'gone' (mode 'update': no row, it was deleted);
-- 'erased' (nothing written, except a claim: the user's copy starts again from it). checked_at:
-- the moment up to which no erasure was found (the caller's copy is known clean until then).
CREATE OR REPLACE FUNCTION sk_telegram_write(
    p_namespace text, p_kind text, p_name text, p_key text, p_channel text,
    p_owner_ids text[], p_data jsonb, p_mode text, p_since timestamptz
) RETURNS TABLE (outcome text, erased_at timestamptz, checked_at timestamptz)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_users uuid[] := '{}';
    v_erased timestamptz;
    v_checked timestamptz;
    v_done boolean;
BEGIN
    IF cardinality(p_owner_ids) > 0 THEN
        v_users := sk_telegram_lock(p_channel, p_owner_ids);
        SELECT max(e.erased_at) INTO v_erased FROM telegram_persistence_erasures e
        WHERE e.erasure_key IN (SELECT sk_telegram_erasure_key(u) FROM unnest(v_users) u)
          AND e.erased_at > p_since;
    END IF;
    v_checked := clock_timestamp();
    IF v_erased IS NOT NULL AND p_mode <> 'claim' THEN
        RETURN QUERY SELECT 'erased', v_erased, v_checked;
        RETURN;
    END IF;
    IF p_mode = 'update' THEN
        UPDATE telegram_persistence AS p
        SET data = p_data, owner_ids = p_owner_ids, updated_at = now(),
            user_id = coalesce(p.user_id,
                               (SELECT u.user_id FROM users u
                                WHERE cardinality(p_owner_ids) = 1 AND u.channel = p.channel
                                  AND u.channel_user_id = p_owner_ids[1]))
        WHERE p.namespace = p_namespace AND p.kind = p_kind AND p.name = p_name
          AND p.key = p_key;
        v_done := FOUND;
        RETURN QUERY SELECT CASE WHEN v_done THEN 'written' ELSE 'gone' END, v_erased, v_checked;
        RETURN;
    END IF;
    -- 'put' replaces the row; 'claim' inserts an empty one where there is none. A row with one
    -- owner is linked to the store's user of (channel, owner) when it exists, so that it goes
    -- with the user.
    INSERT INTO telegram_persistence AS p (namespace, kind, name, key, channel, owner_ids,
                                           user_id, data)
    VALUES (p_namespace, p_kind, p_name, p_key, p_channel, p_owner_ids,
            (SELECT u.user_id FROM users u
             WHERE cardinality(p_owner_ids) = 1
               AND u.channel = p_channel AND u.channel_user_id = p_owner_ids[1]),
            p_data)
    ON CONFLICT (namespace, kind, name, key)
    DO UPDATE SET data = EXCLUDED.data, channel = EXCLUDED.channel,
                  owner_ids = EXCLUDED.owner_ids, user_id = EXCLUDED.user_id, updated_at = now()
    WHERE p_mode = 'put';
    v_done := FOUND;
    RETURN QUERY SELECT CASE WHEN v_erased IS NOT NULL THEN 'erased'
                             WHEN p_mode = 'put' THEN 'written'
                             WHEN v_done THEN 'claimed' ELSE 'present' END,
                        v_erased, v_checked;
END $$;
