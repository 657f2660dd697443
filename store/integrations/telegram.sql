-- The statements of python-telegram-bot's persistence (store/integrations/telegram.py), as
-- named blocks. A row is one entry of a persistence namespace: (kind, name, key) is
-- ('user_data', '', user id), ('chat_data', '', chat id), ('bot_data', '', ''),
-- ('callback_data', '', ''), ('conversation', handler name, JSON array of the key).

-- tp_load --
SELECT key, data FROM telegram_persistence
WHERE namespace = %(namespace)s AND kind = %(kind)s AND name = %(name)s
ORDER BY key

-- tp_put --
-- A row with one owner is linked to the store's user of (channel, owner) when it exists, so
-- that it goes with the user (and its export finds it by the link too).
INSERT INTO telegram_persistence AS p (namespace, kind, name, key, channel, owner_ids, user_id,
                                       data)
VALUES (%(namespace)s, %(kind)s, %(name)s, %(key)s, %(channel)s, %(owner_ids)s,
        (SELECT u.user_id FROM users u
         WHERE cardinality(%(owner_ids)s::text[]) = 1
           AND u.channel = %(channel)s AND u.channel_user_id = (%(owner_ids)s::text[])[1]),
        %(data)s)
ON CONFLICT (namespace, kind, name, key)
DO UPDATE SET data = EXCLUDED.data, channel = EXCLUDED.channel, owner_ids = EXCLUDED.owner_ids,
              user_id = EXCLUDED.user_id, updated_at = now()

-- tp_drop --
DELETE FROM telegram_persistence
WHERE namespace = %(namespace)s AND kind = %(kind)s AND name = %(name)s AND key = %(key)s
