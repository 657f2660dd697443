-- The statements of aiogram's FSM storage (store/integrations/aiogram.py), as named blocks.
-- A row is one StorageKey (absent thread and business connection: 0 and ''). Every write links
-- the row to the store's user of (channel, Telegram user id) when that user exists, so that
-- erasure (sk_forget) finds it; rows written before the user's first turn are found by
-- (channel, telegram_user_id).

-- fsm_set_state --
INSERT INTO aiogram_fsm_states AS f (bot_id, chat_id, telegram_user_id, thread_id,
                                     business_connection_id, destiny, channel, user_id, state)
VALUES (%(bot_id)s, %(chat_id)s, %(telegram_user_id)s, %(thread_id)s,
        %(business_connection_id)s, %(destiny)s, %(channel)s,
        (SELECT u.user_id FROM users u
         WHERE u.channel = %(channel)s AND u.channel_user_id = %(telegram_user_id)s::text),
        %(state)s)
ON CONFLICT (bot_id, chat_id, telegram_user_id, thread_id, business_connection_id, destiny)
DO UPDATE SET state = EXCLUDED.state, user_id = EXCLUDED.user_id, updated_at = now()

-- fsm_set_data --
INSERT INTO aiogram_fsm_states AS f (bot_id, chat_id, telegram_user_id, thread_id,
                                     business_connection_id, destiny, channel, user_id, data)
VALUES (%(bot_id)s, %(chat_id)s, %(telegram_user_id)s, %(thread_id)s,
        %(business_connection_id)s, %(destiny)s, %(channel)s,
        (SELECT u.user_id FROM users u
         WHERE u.channel = %(channel)s AND u.channel_user_id = %(telegram_user_id)s::text),
        %(data)s)
ON CONFLICT (bot_id, chat_id, telegram_user_id, thread_id, business_connection_id, destiny)
DO UPDATE SET data = EXCLUDED.data, user_id = EXCLUDED.user_id, updated_at = now()

-- fsm_update_data --
-- dict.update in one statement: top-level keys of %(data)s replace the stored ones.
INSERT INTO aiogram_fsm_states AS f (bot_id, chat_id, telegram_user_id, thread_id,
                                     business_connection_id, destiny, channel, user_id, data)
VALUES (%(bot_id)s, %(chat_id)s, %(telegram_user_id)s, %(thread_id)s,
        %(business_connection_id)s, %(destiny)s, %(channel)s,
        (SELECT u.user_id FROM users u
         WHERE u.channel = %(channel)s AND u.channel_user_id = %(telegram_user_id)s::text),
        %(data)s)
ON CONFLICT (bot_id, chat_id, telegram_user_id, thread_id, business_connection_id, destiny)
DO UPDATE SET data = f.data || EXCLUDED.data, user_id = EXCLUDED.user_id, updated_at = now()
RETURNING f.data

-- fsm_drop_if_empty --
-- A key with no state and no data keeps no row (aiogram's state.clear() leads here).
DELETE FROM aiogram_fsm_states
WHERE bot_id = %(bot_id)s AND chat_id = %(chat_id)s AND telegram_user_id = %(telegram_user_id)s
  AND thread_id = %(thread_id)s AND business_connection_id = %(business_connection_id)s
  AND destiny = %(destiny)s AND state IS NULL AND data = '{}'::jsonb

-- fsm_get --
SELECT state, data FROM aiogram_fsm_states
WHERE bot_id = %(bot_id)s AND chat_id = %(chat_id)s AND telegram_user_id = %(telegram_user_id)s
  AND thread_id = %(thread_id)s AND business_connection_id = %(business_connection_id)s
  AND destiny = %(destiny)s
