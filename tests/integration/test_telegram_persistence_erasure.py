"""Erasure while a python-telegram-bot Application runs (issue 22): ``sessionkeeper forget``, run
as another process, removes the user's rows; the running bot's copy in memory must not bring
them back, neither with the write of a change made before the erasure nor at the user's next
update. A real Application (fake Telegram server), a real database, the CLI as a process."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
from fake_telegram import TOKEN, FakeTelegram, message_update, run
from telegram import Update
from telegram.ext import Application, ContextTypes, MessageHandler, filters
from test_cli import clean_env, sessionkeeper

from store import AsyncStore
from store.integrations.telegram import SessionkeeperPersistence

ADA = 7001
BOB = 7002
GROUP = -100123
App = Application[Any, Any, Any, Any, Any, Any]


def counter_bot(telegram: FakeTelegram, db: AsyncStore) -> App:
    """Counts each user's messages (user_data) and each chat's (chat_data), and answers both."""

    async def count(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.message is not None
        assert context.user_data is not None and context.chat_data is not None
        for data in (context.user_data, context.chat_data):
            data["count"] = data.get("count", 0) + 1
        await update.message.reply_text(
            f"you {context.user_data['count']}, chat {context.chat_data['count']}"
        )

    app = (
        Application.builder()
        .token(TOKEN)
        .base_url(f"{telegram.url}/bot")
        .updater(None)
        .persistence(SessionkeeperPersistence(db))
        .build()
    )
    app.add_handler(MessageHandler(filters.TEXT, count))
    return app


async def say(app: App, update_id: int, sender: int, chat: int | None = None) -> None:
    group = None if chat is None else {"id": chat, "type": "supergroup", "title": "g"}
    data = message_update(update_id, sender, "hi", chat=group)
    await app.process_update(Update.de_json(data, app.bot))


async def forget(database_url: str, telegram_id: int) -> None:
    """``sessionkeeper forget`` in a process of its own, as an operator runs it."""
    who = ["--channel", "telegram", "--channel-user-id", str(telegram_id)]
    env = clean_env(DATABASE_URL=database_url)
    done = await asyncio.to_thread(sessionkeeper, "forget", "--yes", *who, env=env)
    assert done.returncode == 0, done.stderr


def stored(database_url: str) -> dict[tuple[str, str], Any]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT kind, key, data FROM telegram_persistence"
            " WHERE kind IN ('user_data', 'chat_data')"
        ).fetchall()
    return {(kind, key): data for kind, key, data in rows}


def test_erasure_clears_the_running_bots_copy_and_is_not_undone(
    database_url: str, bot_url: str
) -> None:
    seen: dict[str, Any] = {}

    async def scenario(telegram: FakeTelegram) -> None:
        async with AsyncStore(bot_url) as db:  # the bot logs in as the bots' login
            for user in (ADA, BOB):
                await db.get_or_create_user("telegram", user)
            app = counter_bot(telegram, db)
            async with app:
                await app.start()
                await say(app, 1, ADA)
                await say(app, 2, ADA, chat=GROUP)
                await say(app, 3, BOB)
                await app.update_persistence()
                seen["before"] = stored(database_url)
                await say(app, 4, ADA)  # Ada's count 2, not written yet
                await forget(database_url, ADA)
                seen["erased"] = stored(database_url)
                await app.update_persistence()  # PTB writes Ada's count 2: must not come back
                seen["round"] = stored(database_url)
                await say(app, 5, ADA)  # her next message: the bot forgot her
                await forget(database_url, BOB)  # Bob: erased with nothing left to write
                await say(app, 6, BOB)
                await app.update_persistence()
                await app.stop()
        seen["end"] = stored(database_url)

    telegram = run(scenario)

    ada, bob, group = str(ADA), str(BOB), str(GROUP)
    assert seen["before"] == {
        ("user_data", ada): {"count": 2},
        ("chat_data", ada): {"count": 1},
        ("chat_data", group): {"count": 1},
        ("user_data", bob): {"count": 1},
        ("chat_data", bob): {"count": 1},
    }
    # The erasure took her data and her private chat's; the group's chat_data is nobody's.
    gone = {("user_data", ada), ("chat_data", ada)}
    assert seen["erased"] == {k: v for k, v in seen["before"].items() if k not in gone}
    assert seen["round"] == seen["erased"]
    assert telegram.texts() == [
        "you 1, chat 1",
        "you 2, chat 1",  # in the group
        "you 1, chat 1",  # Bob
        "you 3, chat 2",  # Ada's message just before the erasure
        "you 1, chat 1",  # after it: a new user to the bot
        "you 1, chat 1",  # Bob after his erasure
    ]
    assert seen["end"] == {
        ("user_data", ada): {"count": 1},  # what she did after the erasure
        ("chat_data", ada): {"count": 1},
        ("chat_data", group): {"count": 1},
        ("user_data", bob): {"count": 1},
        ("chat_data", bob): {"count": 1},
    }


def test_a_conversation_state_erased_meanwhile_is_not_written_back(database_url: str) -> None:
    found: dict[str, Any] = {}

    async def scenario(telegram: FakeTelegram) -> None:
        async with AsyncStore(database_url) as db:
            user = (await db.get_or_create_user("telegram", ADA)).user_id
            persistence = SessionkeeperPersistence(db)
            await persistence.update_conversation("order", (GROUP, ADA), 1)
            await persistence.update_conversation("order", (GROUP, BOB), 1)
            await db.forget_user(user)
            # The running handler's state from before the erasure: not written.
            await persistence.update_conversation("order", (GROUP, ADA), 2)
            await persistence.update_conversation("order", (GROUP, BOB), 2)
            found["after"] = await persistence.get_conversations("order")
            # That conversation ends; her next one is hers anew and is written.
            await persistence.update_conversation("order", (GROUP, ADA), None)
            await persistence.update_conversation("order", (GROUP, ADA), 1)
            found["next"] = await persistence.get_conversations("order")

    run(scenario)
    assert found["after"] == {(GROUP, BOB): 2}
    assert found["next"] == {(GROUP, ADA): 1, (GROUP, BOB): 2}


def test_a_new_users_data_not_written_yet_is_not_written_after_the_erasure(
    database_url: str, bot_url: str
) -> None:
    """The bot has never written Ada's data when she is erased: her first update claimed a row
    (empty), so its disappearance tells the erasure as well."""
    seen: dict[str, Any] = {}

    async def scenario(telegram: FakeTelegram) -> None:
        async with AsyncStore(bot_url) as db:
            await db.get_or_create_user("telegram", ADA)
            app = counter_bot(telegram, db)
            async with app:
                await app.start()
                await say(app, 1, ADA)
                await say(app, 2, ADA)  # count 2: in memory only
                seen["claimed"] = stored(database_url)
                await forget(database_url, ADA)
                await app.update_persistence()
                seen["round"] = stored(database_url)
                await say(app, 3, ADA)
                await app.stop()
        seen["end"] = stored(database_url)

    telegram = run(scenario)

    ada = str(ADA)
    assert seen["claimed"] == {("user_data", ada): {}, ("chat_data", ada): {}}
    assert seen["round"] == {}
    assert telegram.texts() == ["you 1, chat 1", "you 2, chat 2", "you 1, chat 1"]
    assert seen["end"] == {("user_data", ada): {"count": 1}, ("chat_data", ada): {"count": 1}}
