-- The statements of python-telegram-bot's persistence (store/integrations/telegram.py), as
-- named blocks. A row is one entry of a persistence namespace: (kind, name, key) is
-- ('user_data', '', user id), ('chat_data', '', chat id), ('bot_data', '', ''),
-- ('callback_data', '', ''), ('conversation', handler name, JSON array of the key).
-- A row of a user (owner_ids) is claimed at the user's first update and then only written
-- while it still exists and the user was not erased since the process's copy began (the
-- erasure records of sk_telegram_write): the bot's copy must not bring an erased user back.

-- tp_load --
SELECT key, data FROM telegram_persistence
WHERE namespace = %(namespace)s AND kind = %(kind)s AND name = %(name)s
ORDER BY key

-- tp_write --
-- Every write of a row (sk_telegram_write): %(mode)s 'put' (insert or replace), 'update' (only
-- a row that still exists: one this process loaded, claimed or wrote) or 'claim' (an empty row
-- for a user's entry at the user's first update, an existing one left as it is). A user's row
-- is not written when the user was erased after %(since)s, when this process's copy began.
SELECT outcome, erased_at, checked_at
FROM sk_telegram_write(%(namespace)s, %(kind)s, %(name)s, %(key)s, %(channel)s,
                       %(owner_ids)s::text[], %(data)s::jsonb, %(mode)s,
                       %(since)s::timestamptz)

-- tp_drop --
DELETE FROM telegram_persistence
WHERE namespace = %(namespace)s AND kind = %(kind)s AND name = %(name)s AND key = %(key)s
