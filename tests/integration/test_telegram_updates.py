"""python-telegram-bot updates that are not a new message (edits, channel posts, callback
queries), through a real Application on a fake Telegram server and a real AsyncStore: the docs'
bot (a TEXT MessageHandler calling current_turn) never crashes on them."""

from __future__ import annotations

from typing import Any

import pytest
from fake_telegram import TOKEN, FakeTelegram, message_update, run, stored
from telegram import Update
from telegram.ext import (
    Application,
    CallbackQueryHandler,
    ContextTypes,
    MessageHandler,
    filters,
)

from store import AsyncStore, InvalidInput
from store.integrations.telegram import TelegramTurns, current_turn, turn_of

ADA = 7001
CHANNEL = -1001234


def edited(update_id: int, message_id: int, text: str) -> dict[str, Any]:
    """Ada's message ``message_id`` edited to ``text``."""
    message = message_update(message_id, ADA, text)["message"]
    return {"update_id": update_id, "edited_message": {**message, "edit_date": message["date"]}}


def channel_post(update_id: int, text: str) -> dict[str, Any]:
    chat = {"id": CHANNEL, "type": "channel", "title": "news"}
    post = {"message_id": update_id, "date": 0, "chat": chat, "sender_chat": chat, "text": text}
    return {"update_id": update_id, "channel_post": post}


def callback(update_id: int, data: str) -> dict[str, Any]:
    message = message_update(1, ADA, "pick one")["message"]
    person = message["from"]
    query = {"id": str(update_id), "from": person, "chat_instance": "c", "data": data}
    return {"update_id": update_id, "callback_query": {**query, "message": message}}


async def bot(
    telegram: FakeTelegram, turns: TelegramTurns, updates: list[dict[str, Any]]
) -> tuple[list[str], list[tuple[str, bool]], list[BaseException]]:
    """The docs' bot (and a button handler), fed ``updates``: the texts its chat handler saw,
    the button data with whether a turn came with it, and the errors."""
    chats: list[str] = []
    buttons: list[tuple[str, bool]] = []
    errors: list[BaseException] = []

    async def chat(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        turn = current_turn(context)
        message = update.effective_message
        assert message is not None
        chats.append(message.text or "")
        await turns.reply(update, turn, f"echo: {message.text}")

    async def button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.callback_query is not None
        buttons.append((update.callback_query.data or "", turn_of(context) is not None))

    async def on_error(update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert context.error is not None
        errors.append(context.error)

    app = Application.builder().token(TOKEN).base_url(f"{telegram.url}/bot").updater(None).build()
    turns.install(app)
    app.add_handler(MessageHandler(filters.TEXT & ~filters.COMMAND, chat))
    app.add_handler(CallbackQueryHandler(button))
    app.add_error_handler(on_error)
    async with app:
        for update in updates:
            await app.process_update(Update.de_json(update, app.bot))
    return chats, buttons, errors


UPDATES = [
    message_update(1, ADA, "hello"),
    edited(2, 1, "hello there"),
    channel_post(3, "news of the day"),
    callback(4, "yes"),
    message_update(5, ADA, "again"),
]


def test_by_default_an_edit_begins_no_turn_and_nothing_crashes(database_url: str) -> None:
    seen: dict[str, Any] = {}

    async def scenario(telegram: FakeTelegram) -> None:
        async with AsyncStore(database_url) as db:
            seen["chats"], seen["buttons"], seen["errors"] = await bot(
                telegram, TelegramTurns(db), UPDATES
            )

    telegram = run(scenario)

    assert seen["errors"] == []
    assert seen["chats"] == ["hello", "again"]  # the edit and the channel post stopped early
    assert seen["buttons"] == [("yes", False)]  # a callback query goes on, without a turn
    assert telegram.texts() == ["echo: hello", "echo: again"]
    assert stored(database_url, ADA) == [
        ("user", "hello"),
        ("assistant", "echo: hello"),
        ("user", "again"),
        ("assistant", "echo: again"),
    ]


def test_with_edits_turn_an_edit_is_a_turn_answered_in_its_chat(database_url: str) -> None:
    seen: dict[str, Any] = {}

    async def scenario(telegram: FakeTelegram) -> None:
        async with AsyncStore(database_url) as db:
            seen["chats"], _, seen["errors"] = await bot(
                telegram, TelegramTurns(db, edits="turn"), UPDATES[:3]
            )

    telegram = run(scenario)

    assert seen["errors"] == []
    assert seen["chats"] == ["hello", "hello there"]
    assert [(int(b["chat_id"]), b["text"]) for b in telegram.sent] == [
        (ADA, "echo: hello"),
        (ADA, "echo: hello there"),
    ]
    assert stored(database_url, ADA)[2:] == [
        ("user", "hello there"),
        ("assistant", "echo: hello there"),
    ]


def test_unturned_pass_hands_an_edit_on_without_a_turn(database_url: str) -> None:
    edits: list[tuple[str, bool]] = []

    async def scenario(telegram: FakeTelegram) -> None:
        async with AsyncStore(database_url) as db:
            turns = TelegramTurns(db, unturned="pass")

            async def on_edit(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
                assert update.edited_message is not None
                edits.append((update.edited_message.text or "", turn_of(context) is not None))

            app = Application.builder().token(TOKEN).base_url(f"{telegram.url}/bot")
            application = app.updater(None).build()
            turns.install(application)
            application.add_handler(MessageHandler(filters.UpdateType.EDITED_MESSAGE, on_edit))
            async with application:
                await application.process_update(
                    Update.de_json(edited(2, 1, "fixed"), application.bot)
                )

    run(scenario)
    assert edits == [("fixed", False)]
    assert stored(database_url, ADA) == []


@pytest.mark.parametrize("option", [{"edits": "always"}, {"unturned": "drop"}])
def test_unknown_options_are_refused(database_url: str, option: dict[str, Any]) -> None:
    async def scenario(telegram: FakeTelegram) -> None:
        async with AsyncStore(database_url) as db:
            with pytest.raises(InvalidInput, match=next(iter(option))):
                TelegramTurns(db, **option)

    run(scenario)
