"""Erasure records of SessionkeeperPersistence (issue 22): a write of data a running bot held
from before an erasure is dropped, never stored, also for the data it had no row for yet (a
user whose first update came while the database was away, a conversation's first state); and
``sessionkeeper forget --channel telegram --channel-user-id ID`` erases what the persistence
keeps of a user that has no users row. A real Application (fake Telegram server), a real
database (made unavailable and back), the CLI as a process."""

from __future__ import annotations

import asyncio
import logging
import subprocess
from typing import Any

import psycopg
import pytest
from fake_telegram import TOKEN, FakeTelegram, run
from telegram import Update
from telegram.ext import (
    Application,
    CommandHandler,
    ContextTypes,
    ConversationHandler,
    MessageHandler,
    PersistenceInput,
    filters,
)
from test_cli import clean_env, sessionkeeper
from test_telegram_persistence import update
from test_telegram_persistence_outage import outage, short_waits

from store import AsyncStore, DatabaseUnavailable
from store.integrations.telegram import SessionkeeperPersistence

ADA = 7001
BOB = 7002
GROUP = -100123
SIZE = 1
App = Application[Any, Any, Any, Any, Any, Any]
LOGGER = "store.integrations.telegram"


def shop_bot(telegram: FakeTelegram, db: AsyncStore, errors: list[BaseException]) -> App:
    """Counts each user's and chat's messages (user_data, chat_data) and answers the user's
    count; /order begins a persistent conversation whose next message is the size. No
    bot_data nor callback_data: every write of a round is a user's or a chat's."""

    async def count(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.message is not None
        assert context.user_data is not None and context.chat_data is not None
        for data in (context.user_data, context.chat_data):
            data["count"] = data.get("count", 0) + 1
        await update.message.reply_text(f"you {context.user_data['count']}")

    async def order(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int:
        assert update.message is not None
        await update.message.reply_text("which size?")
        return SIZE

    async def size(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int:
        assert update.message is not None
        await update.message.reply_text(f"{update.message.text} it is")
        return ConversationHandler.END

    async def on_error(update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert context.error is not None
        errors.append(context.error)

    persistence = SessionkeeperPersistence(
        db, store_data=PersistenceInput(bot_data=False, callback_data=False)
    )
    app = (
        Application.builder()
        .token(TOKEN)
        .base_url(f"{telegram.url}/bot")
        .updater(None)
        .persistence(persistence)
        .build()
    )
    app.add_handler(
        ConversationHandler(
            entry_points=[CommandHandler("order", order)],
            states={SIZE: [MessageHandler(filters.TEXT & ~filters.COMMAND, size)]},
            fallbacks=[],
            name="order",
            persistent=True,
        )
    )
    app.add_handler(MessageHandler(filters.TEXT & ~filters.COMMAND, count), group=1)
    app.add_error_handler(on_error)
    return app


async def say(app: App, update_id: int, text: str, sender: int, chat: int | None = None) -> None:
    await app.process_update(Update.de_json(update(update_id, text, sender, chat), app.bot))


async def forget(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``sessionkeeper forget --yes ARGS`` in a process of its own, as an operator runs it."""
    env = clean_env(DATABASE_URL=database_url)
    return await asyncio.to_thread(sessionkeeper, "forget", "--yes", *args, env=env)


def of_telegram(telegram_id: int) -> list[str]:
    return ["--channel", "telegram", "--channel-user-id", str(telegram_id)]


def kept(database_url: str) -> dict[tuple[str, str], Any]:
    """Every row of the persistence: (kind, key) -> data."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT kind, key, data FROM telegram_persistence").fetchall()
    return {(kind, key): data for kind, key, data in rows}


def records(database_url: str) -> list[str]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT erasure_key FROM telegram_persistence_erasures").fetchall()
    return [key for (key,) in rows]


def test_a_first_update_during_an_outage_is_not_stored_after_the_erasure(
    admin_url: str, database_url: str, bot_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Ada's first update comes while the database is away: no row is claimed, her data waits
    in memory. She is erased once the database is back, before the write goes: it is dropped."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    away, back = outage(admin_url, database_url)
    errors: list[BaseException] = []
    seen: dict[str, Any] = {}

    async def scenario(telegram: FakeTelegram) -> None:
        async with short_waits(bot_url) as db:
            await db.get_or_create_user("telegram", ADA)  # a user of the store (TelegramTurns)
            app = shop_bot(telegram, db, errors)
            async with app:
                await app.start()
                await say(app, 1, "hi", BOB)
                await app.update_persistence()
                away()
                await say(app, 2, "hi", ADA)  # her first update: nothing claimed
                await say(app, 3, "hi", ADA)
                await app.update_persistence()  # fails: her count 2 is kept
                seen["errors"] = list(errors)
                back()
                await db.pool.wait(timeout=30)
                seen["forget"] = await forget(database_url, *of_telegram(ADA))
                await say(app, 4, "hi", BOB)
                await app.update_persistence()  # Bob's write, then Ada's kept one: dropped
                seen["round"] = kept(database_url)
                await say(app, 5, "hi", ADA)  # to the bot she is new
                await app.stop()
        seen["end"] = kept(database_url)

    telegram = run(scenario)

    assert seen["forget"].returncode == 0, seen["forget"].stderr
    assert seen["errors"] and all(isinstance(e, DatabaseUnavailable) for e in seen["errors"])
    ada, bob = str(ADA), str(BOB)
    bobs = {("user_data", bob): {"count": 2}, ("chat_data", bob): {"count": 2}}
    assert seen["round"] == bobs  # nothing of Ada came back
    assert f"user_data[{ADA}] was erased: the bot's copy is not written back" in caplog.text
    assert telegram.texts() == ["you 1", "you 1", "you 2", "you 2", "you 1"]
    hers = {("user_data", ada): {"count": 1}, ("chat_data", ada): {"count": 1}}
    assert seen["end"] == {**bobs, **hers}  # what she did after the erasure
    assert errors == seen["errors"]  # nothing failed once the database was back


def test_a_conversation_begun_before_the_erasure_is_not_stored_after_it(
    database_url: str, bot_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Ada's conversation state is set, not written yet, when she is erased: the round that
    follows drops it. Once that conversation has ended, her next one is stored."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    errors: list[BaseException] = []
    seen: dict[str, Any] = {}
    entry = ("conversation", f"[{ADA},{ADA}]")

    async def scenario(telegram: FakeTelegram) -> None:
        async with AsyncStore(bot_url) as db:
            await db.get_or_create_user("telegram", ADA)
            app = shop_bot(telegram, db, errors)
            async with app:
                await app.start()
                await say(app, 1, "hi", ADA)
                await app.update_persistence()
                await say(app, 2, "/order", ADA)  # in SIZE, in memory only
                seen["forget"] = await forget(database_url, *of_telegram(ADA))
                await app.update_persistence()
                seen["round"] = kept(database_url)
                await say(app, 3, "large", ADA)  # the handler still had her in SIZE: END
                await app.update_persistence()
                await say(app, 4, "/order", ADA)  # a conversation begun after the erasure
                await app.update_persistence()
                seen["next"] = kept(database_url)
                await app.stop()

    telegram = run(scenario)

    assert seen["forget"].returncode == 0, seen["forget"].stderr
    assert errors == []
    assert entry not in seen["round"]
    assert f"conversation order[[{ADA},{ADA}]] was erased" in caplog.text
    # "large" ended the conversation and was counted: her data was cleared (the erasure).
    assert telegram.texts() == ["you 1", "which size?", "large it is", "you 1", "which size?"]
    assert seen["next"][entry] == SIZE


def test_forget_erases_what_the_persistence_keeps_of_a_user_without_a_users_row(
    database_url: str, bot_url: str
) -> None:
    """A bot on the persistence alone (no TelegramTurns: no users row). ``sessionkeeper
    forget`` by channel identity removes Ada's user_data, her private chat's chat_data and her
    conversation entry, says so, and the running bot does not bring them back."""
    errors: list[BaseException] = []
    seen: dict[str, Any] = {}

    async def scenario(telegram: FakeTelegram) -> None:
        async with AsyncStore(bot_url) as db:
            app = shop_bot(telegram, db, errors)
            async with app:
                await app.start()
                await say(app, 1, "hi", ADA)
                await say(app, 2, "hi", ADA, chat=GROUP)
                await say(app, 3, "/order", ADA)
                await say(app, 4, "hi", BOB)
                await app.update_persistence()
                seen["before"] = kept(database_url)
                await say(app, 5, "hi", ADA, chat=GROUP)  # her count 3: not written yet
                seen["forget"] = await forget(database_url, *of_telegram(ADA))
                seen["erased"] = kept(database_url)
                seen["records"] = records(database_url)
                await app.update_persistence()
                seen["round"] = kept(database_url)
                await say(app, 6, "hi", ADA)  # to the bot she is new
                await app.stop()
        seen["end"] = kept(database_url)

    telegram = run(scenario)

    assert errors == []
    done = seen["forget"]
    assert done.returncode == 0, done.stderr
    assert done.stdout == (
        f"forgot telegram user {ADA} (it had no users row):\n  telegram_persistence: 3 deleted\n"
    )
    ada, bob, group = str(ADA), str(BOB), str(GROUP)
    hers = {("user_data", ada), ("chat_data", ada), ("conversation", f"[{ADA},{ADA}]")}
    assert hers <= set(seen["before"])
    assert seen["erased"] == {k: v for k, v in seen["before"].items() if k not in hers}
    # The group's chat_data is nobody's; Bob's rows are his.
    assert seen["erased"][("chat_data", group)] == {"count": 1}
    assert seen["erased"][("user_data", bob)] == {"count": 1}
    # One record, naming nobody: a hash, not her id.
    assert len(seen["records"]) == 1 and ada not in seen["records"][0]
    # The round writes the group's count 2, not her count 3.
    assert {k: v for k, v in seen["round"].items() if k in hers} == {}
    assert seen["round"][("chat_data", group)] == {"count": 2}
    assert telegram.texts()[-1] == "you 1"
    assert seen["end"][("user_data", ada)] == {"count": 1}


def test_forget_of_an_identity_found_nowhere_or_bad_input_changes_nothing(
    database_url: str,
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO telegram_persistence (namespace, kind, key, channel, owner_ids, data)"
            " VALUES ('default', 'user_data', %s, 'telegram', ARRAY[%s], '{}')",
            [str(BOB), str(BOB)],
        )
    before = kept(database_url)

    unknown = asyncio.run(forget(database_url, *of_telegram(ADA)))
    assert unknown.returncode == 1
    assert unknown.stderr.strip() == f"sessionkeeper: no user '{ADA}' on channel 'telegram'"
    assert unknown.stdout == ""
    bad = asyncio.run(forget(database_url, "--channel", "Tele gram", "--channel-user-id", "7"))
    assert bad.returncode == 2 and "lower-case name" in bad.stderr
    long = asyncio.run(forget(database_url, *of_telegram(10**300)))
    assert long.returncode == 2 and "channel_user_id" in long.stderr

    assert kept(database_url) == before
    assert records(database_url) == []
