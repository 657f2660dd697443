"""store.integrations.telegram.SessionkeeperPersistence with the real python-telegram-bot: an
Application (its real lifecycle: initialize, start, stop, shutdown) whose Bot calls a fake
Telegram server on loopback, and a real AsyncStore on PostgreSQL."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from fake_telegram import TOKEN, FakeTelegram, message_update, run
from telegram import Update
from telegram.ext import (
    Application,
    CommandHandler,
    ContextTypes,
    ConversationHandler,
    MessageHandler,
    filters,
)

from store import AsyncStore, InvalidInput, Store
from store.integrations.telegram import NotJSON, SessionkeeperPersistence, TelegramTurns

ADA = 7001
BOB = 7002
GROUP = -100123
SIZE = 1
App = Application[Any, Any, Any, Any, Any, Any]


def update(update_id: int, text: str, sender: int = ADA, chat: int | None = None) -> dict[str, Any]:
    """A text message (a command when it starts with /) from ``sender`` in ``chat``."""
    data = message_update(update_id, sender, text)
    if chat is not None:
        data["message"]["chat"] = {"id": chat, "type": "supergroup", "title": "g"}
    if text.startswith("/"):
        data["message"]["entities"] = [{"type": "bot_command", "offset": 0, "length": len(text)}]
    return data


def order_bot(telegram: FakeTelegram, db: AsyncStore, errors: list[BaseException]) -> App:
    """A bot with a persistent ConversationHandler: /order asks the size, the next message is
    the size; it keeps counts in user_data, chat_data and bot_data."""

    async def order(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int:
        assert update.message is not None and context.user_data is not None
        context.user_data["orders"] = context.user_data.get("orders", 0) + 1
        await update.message.reply_text("which size?")
        return SIZE

    async def size(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int:
        assert update.message is not None and context.user_data is not None
        context.user_data["size"] = update.message.text
        await update.message.reply_text(f"{update.message.text} it is")
        return ConversationHandler.END

    async def note(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.message is not None and context.chat_data is not None
        context.chat_data.setdefault("notes", []).append(update.message.text)
        context.bot_data["notes"] = context.bot_data.get("notes", 0) + 1
        if update.message.text == "remember the time":
            assert context.user_data is not None
            context.user_data["when"] = datetime.now(UTC)  # not JSON

    async def on_error(update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert context.error is not None
        errors.append(context.error)

    app = (
        Application.builder()
        .token(TOKEN)
        .base_url(f"{telegram.url}/bot")
        .updater(None)
        .persistence(SessionkeeperPersistence(db))
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
    app.add_handler(MessageHandler(filters.TEXT & ~filters.COMMAND, note), group=1)
    app.add_error_handler(on_error)
    return app


async def lifetime(app: App, *updates: dict[str, Any]) -> None:
    """One run of the bot: PTB loads the persistence at initialize, writes it at stop."""
    async with app:
        await app.start()
        for data in updates:
            await app.process_update(Update.de_json(data, app.bot))
        await app.stop()


def rows(database_url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(database_url) as conn:
        return conn.execute(
            "SELECT kind, name, key, owner_ids, data FROM telegram_persistence ORDER BY 1, 2, 3"
        ).fetchall()


def test_a_conversation_state_and_data_survive_a_restart(database_url: str) -> None:
    errors: list[BaseException] = []

    async def first(telegram: FakeTelegram) -> None:
        async with AsyncStore(database_url) as db:
            await lifetime(order_bot(telegram, db, errors), update(1, "/order"))

    run(first)
    # Stored as JSON, the conversation keyed by (chat, user).
    assert rows(database_url) == [
        ("bot_data", "", "", [], {}),
        ("chat_data", "", str(ADA), [str(ADA)], {}),  # PTB writes what a handler accessed
        ("conversation", "order", f"[{ADA},{ADA}]", [str(ADA)], SIZE),
        ("user_data", "", str(ADA), [str(ADA)], {"orders": 1}),
    ]

    async def second(telegram: FakeTelegram) -> None:
        async with AsyncStore(database_url) as db:
            await lifetime(order_bot(telegram, db, errors), update(2, "large"))

    telegram = run(second)

    assert errors == []
    assert telegram.texts() == ["large it is"]  # the second process was still in SIZE
    kept = {(kind, key): data for kind, _, key, _, data in rows(database_url)}
    assert kept[("user_data", str(ADA))] == {"orders": 1, "size": "large"}
    assert ("conversation", f"[{ADA},{ADA}]") not in kept  # ended: the entry is dropped
    # The group 1 handler saw "large" too: chat data and bot data.
    assert kept[("chat_data", str(ADA))] == {"notes": ["large"]}
    assert kept[("bot_data", "")] == {"notes": 1}


def test_a_value_json_cannot_hold_is_refused_when_stored(database_url: str) -> None:
    errors: list[BaseException] = []

    async def scenario(telegram: FakeTelegram) -> None:
        async with AsyncStore(database_url) as db:
            app = order_bot(telegram, db, errors)
            await lifetime(app, update(1, "remember the time"), update(2, "hi", sender=BOB))

    run(scenario)

    assert len(errors) == 1 and isinstance(errors[0], NotJSON)
    assert isinstance(errors[0], InvalidInput)
    assert f"user_data[{ADA}]['when'] is a datetime" in str(errors[0])
    kept = {(kind, key): data for kind, _, key, _, data in rows(database_url)}
    # Nothing of that entry written: the row is the empty one claimed at Ada's first update.
    assert kept[("user_data", str(ADA))] == {}
    assert ("chat_data", str(BOB)) in kept  # the other entries were


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ({1: "a"}, "has the key 1 (int)"),
        ({"t": (1, 2)}, "is a tuple, which JSON cannot hold (it would come back as a list)"),
        ({"s": {1}}, "is a set"),
        ({"f": float("nan")}, "JSON has no NaN"),
        ({"x": ["\x00"]}, "holds a NUL character"),
    ],
)
def test_values_json_would_change_are_refused(
    database_url: str, value: dict[Any, Any], complaint: str
) -> None:
    async def scenario(telegram: FakeTelegram) -> None:
        async with AsyncStore(database_url) as db:
            persistence = SessionkeeperPersistence(db)
            with pytest.raises(NotJSON, match=complaint.replace("(", r"\(").replace(")", r"\)")):
                await persistence.update_bot_data(value)

    run(scenario)
    assert rows(database_url) == []


def test_callback_data_and_namespaces(database_url: str) -> None:
    loaded: dict[str, Any] = {}

    async def scenario(telegram: FakeTelegram) -> None:
        async with AsyncStore(database_url) as db:
            one, two = SessionkeeperPersistence(db), SessionkeeperPersistence(db, namespace="b")
            assert await one.get_callback_data() is None
            await one.update_callback_data(
                ([("k1", 1700000000.5, {"u1": {"pick": 2}})], {"q": "k1"})
            )
            await one.update_user_data(ADA, {"a": 1})
            loaded["callback"] = await one.get_callback_data()
            loaded["two"] = await two.get_user_data()
            loaded["one"] = await one.get_user_data()
            await one.drop_user_data(ADA)
            loaded["dropped"] = await one.get_user_data()

    run(scenario)
    assert loaded["callback"] == ([("k1", 1700000000.5, {"u1": {"pick": 2}})], {"q": "k1"})
    assert loaded["one"] == {ADA: {"a": 1}} and loaded["two"] == {}
    assert loaded["dropped"] == {}


def test_erasure_and_export_cover_the_users_data_and_private_chat(database_url: str) -> None:
    found: dict[str, Any] = {}

    async def scenario(telegram: FakeTelegram) -> None:
        async with AsyncStore(database_url) as db:
            persistence = SessionkeeperPersistence(db)
            await persistence.update_user_data(ADA, {"name": "Ada"})  # before her first turn
            turn = await db.begin_turn("telegram", ADA)
            await persistence.update_chat_data(ADA, {"private": True})
            await persistence.update_chat_data(GROUP, {"group": True})
            await persistence.update_conversation("order", (GROUP, ADA), SIZE)
            await persistence.update_conversation("order", (GROUP, BOB), SIZE)
            await persistence.update_user_data(BOB, {"name": "Bob"})
            await persistence.update_bot_data({"total": 2})
            out = io.StringIO()
            await db.export_user(turn.user.user_id, out)
            found["export"] = json.loads(out.getvalue())["tables"]["telegram_persistence"]
            found["forgotten"] = await db.forget_user(turn.user.user_id)
            found["left"] = await persistence.get_user_data(), await persistence.get_chat_data()
            found["conversations"] = await persistence.get_conversations("order")

    run(scenario)
    exported = {(row["kind"], row["key"]): row["data"] for row in found["export"]}
    assert exported == {
        ("user_data", str(ADA)): {"name": "Ada"},
        ("chat_data", str(ADA)): {"private": True},
        ("conversation", f"[{GROUP},{ADA}]"): SIZE,
    }
    assert found["forgotten"].deleted["telegram_persistence"] == 3
    assert found["left"] == ({BOB: {"name": "Bob"}}, {GROUP: {"group": True}})
    assert found["conversations"] == {(GROUP, BOB): SIZE}


def test_the_persistence_takes_only_an_async_store(database_url: str) -> None:
    with Store(database_url) as db, pytest.raises(InvalidInput, match="AsyncStore"):
        SessionkeeperPersistence(db)  # type: ignore[arg-type]


def test_turns_and_persistence_together(database_url: str) -> None:
    """The turns handler links the user; the user's data row is linked to it when written."""

    async def scenario(telegram: FakeTelegram) -> None:
        async with AsyncStore(database_url) as db:
            app = order_bot(telegram, db, [])
            TelegramTurns(db).install(app)
            await lifetime(app, update(1, "hello"))

    run(scenario)
    with psycopg.connect(database_url) as conn:
        linked = conn.execute(
            "SELECT p.kind, u.channel_user_id FROM telegram_persistence p"
            " JOIN users u USING (user_id) ORDER BY 1"
        ).fetchall()
    assert linked == [("chat_data", str(ADA)), ("user_data", str(ADA))]
