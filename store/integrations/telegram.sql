-- The statements of python-telegram-bot's persistence (store/integrations/telegram.py), as
-- named blocks. A row is one entry of a persistence namespace: (kind, name, key) is
-- ('user_data', '', user id), ('chat_data', '', chat id), ('bot_data', '', ''),
-- ('callback_data', '', ''), ('conversation', handler name, JSON array of the key).
-- A row of a user (owner_ids) is claimed at the user's first update (tp_put, replace false)
-- and then only written while it still exists (tp_update): gone, it was erased, and the bot's
-- copy must not bring it back.

-- tp_load --
SELECT key, data FROM telegram_persistence
WHERE namespace = %(namespace)s AND kind = %(kind)s AND name = %(name)s
ORDER BY key

-- tp_put --
-- A row with one owner is linked to the store's user of (channel, owner) when it exists, so
-- that it goes with the user (and its export finds it by the link too). %(replace)s false is a
-- claim: an empty row for a user's entry, an existing one left as it is.
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
WHERE %(replace)s

-- tp_update --
-- A row the persistence loaded or wrote before: no row back means it was erased meanwhile.
UPDATE telegram_persistence AS p
SET data = %(data)s, owner_ids = %(owner_ids)s, updated_at = now(),
    user_id = coalesce(p.user_id,
                       (SELECT u.user_id FROM users u
                        WHERE cardinality(%(owner_ids)s::text[]) = 1 AND u.channel = p.channel
                          AND u.channel_user_id = (%(owner_ids)s::text[])[1]))
WHERE namespace = %(namespace)s AND kind = %(kind)s AND name = %(name)s AND key = %(key)s
RETURNING 1 AS kept

-- tp_exists --
SELECT 1 AS kept FROM telegram_persistence
WHERE namespace = %(namespace)s AND kind = %(kind)s AND name = %(name)s AND key = %(key)s

-- tp_drop --
DELETE FROM telegram_persistence
WHERE namespace = %(namespace)s AND kind = %(kind)s AND name = %(name)s AND key = %(key)s
