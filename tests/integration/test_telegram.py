"""store.integrations.telegram with the real python-telegram-bot: an Application and its Bot
calling a fake Telegram server on loopback over HTTP, a real AsyncStore on PostgreSQL."""

from __future__ import annotations

import re
from collections.abc import Callable, Coroutine
from typing import Any

import psycopg
import pytest
from fake_telegram import TOKEN, FakeTelegram, message_update, run, stored
from prometheus_client import CollectorRegistry
from telegram import Update
from telegram.ext import Application, CommandHandler, ContextTypes, MessageHandler, filters

import store.metrics
from store import AsyncStore, InvalidInput, Store
from store.integrations.telegram import TelegramTurns, current_turn

ADA = 7001


def application(telegram: FakeTelegram) -> Application[Any, Any, Any, Any, Any, Any]:
    """A real Application whose Bot talks to the fake server (no updater: updates are fed)."""
    return Application.builder().token(TOKEN).base_url(f"{telegram.url}/bot").updater(None).build()


async def feed(app: Application[Any, Any, Any, Any, Any, Any], update_id: int, text: str) -> None:
    await app.process_update(Update.de_json(message_update(update_id, ADA, text), app.bot))


async def serve(
    telegram: FakeTelegram,
    turns: TelegramTurns,
    chat: Callable[[Update, ContextTypes.DEFAULT_TYPE], Coroutine[Any, Any, None]],
    *texts: str,
) -> None:
    """An Application with ``turns`` installed and ``chat`` handling text, fed ``texts``."""
    app = application(telegram)
    turns.install(app)
    app.add_handler(MessageHandler(filters.TEXT, chat))
    async with app:
        for update_id, text in enumerate(texts, start=1):
            await feed(app, update_id, text)


def test_a_message_is_a_stored_turn_and_the_reply_goes_over_the_wire(database_url: str) -> None:
    prompts: list[list[dict[str, str]]] = []

    async def scenario(telegram: FakeTelegram) -> None:
        async with AsyncStore(database_url) as db:
            turns = TelegramTurns(db)

            async def chat(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
                assert update.message is not None
                turn = current_turn(context)
                prompt = [m.as_prompt() for m in turn.history]
                prompts.append([*prompt, {"role": "user", "content": update.message.text or ""}])
                await turns.reply(
                    update, turn, f"echo: {update.message.text}", input_tokens=5, output_tokens=7
                )

            await serve(telegram, turns, chat, "hello", "again")

    telegram = run(scenario)

    assert [(int(b["chat_id"]), b["text"]) for b in telegram.sent] == [
        (ADA, "echo: hello"),
        (ADA, "echo: again"),
    ]
    assert prompts[1][:2] == [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "echo: hello"},
    ]
    assert stored(database_url, ADA) == [
        ("user", "hello"),
        ("assistant", "echo: hello"),
        ("user", "again"),
        ("assistant", "echo: again"),
    ]
    with psycopg.connect(database_url) as conn:
        usage = conn.execute(
            "SELECT count(*), sum(input_tokens), sum(output_tokens) FROM usage_stats"
        )
        assert usage.fetchone() == (2, 10, 14)


def test_a_group_turn_does_not_see_the_private_chat(database_url: str) -> None:
    # Issue 23: the handler passes the chat, so a group's prompt never holds the private one.
    group = {"id": -100123, "type": "supergroup", "title": "Club"}
    histories: list[list[str]] = []

    async def scenario(telegram: FakeTelegram) -> None:
        async with AsyncStore(database_url) as db:
            turns = TelegramTurns(db)

            async def chat(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
                assert update.message is not None
                turn = current_turn(context)
                histories.append([m.content for m in turn.history])
                await turns.reply(update, turn, f"echo: {update.message.text}")

            app = application(telegram)
            turns.install(app)
            app.add_handler(MessageHandler(filters.TEXT, chat))
            async with app:
                await feed(app, 1, "in private")
                update = message_update(2, ADA, "in group", chat=group)
                await app.process_update(Update.de_json(update, app.bot))
                await feed(app, 3, "private again")

    run(scenario)
    assert histories == [[], [], ["in private", "echo: in private"]]


def test_a_rate_limited_user_gets_the_refusal_and_no_later_handler_runs(
    database_url: str,
) -> None:
    handled: list[str] = []

    async def scenario(telegram: FakeTelegram) -> None:
        async with AsyncStore(database_url, rate_per_minute=None, rate_per_day=1) as db:
            turns = TelegramTurns(db, refusal="Not now: try again in {retry_in}.")

            async def chat(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
                assert update.message is not None
                handled.append(update.message.text or "")
                await turns.reply(update, current_turn(context), "ok")

            await serve(telegram, turns, chat, "one", "two")

    telegram = run(scenario)

    assert handled == ["one"]
    ok, refusal = telegram.texts()
    assert ok == "ok"
    # The day's window ends at the next UTC midnight: at most 24 hours away.
    matched = re.fullmatch(r"Not now: try again in (\d+) (hours|minutes|seconds?)\.", refusal)
    assert matched and int(matched[1]) <= 60
    assert stored(database_url, ADA) == [("user", "one"), ("assistant", "ok")]


def test_without_the_turns_handler_a_handler_is_told(database_url: str) -> None:
    errors: list[BaseException] = []

    async def scenario(telegram: FakeTelegram) -> None:
        async def chat(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
            current_turn(context)

        async def on_error(update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
            assert context.error is not None
            errors.append(context.error)

        app = application(telegram)
        app.add_handler(MessageHandler(filters.TEXT, chat))
        app.add_error_handler(on_error)
        async with app:
            await feed(app, 1, "hello")

    run(scenario)
    assert len(errors) == 1 and isinstance(errors[0], InvalidInput)
    assert "install TelegramTurns" in str(errors[0])


def test_the_handler_takes_only_an_async_store(database_url: str) -> None:
    with Store(database_url) as db, pytest.raises(InvalidInput, match="AsyncStore"):
        TelegramTurns(db)  # type: ignore[arg-type]


def command_update(update_id: int, text: str) -> dict[str, Any]:
    """A message whose text starts with a command, with the entity Telegram marks it with."""
    update = message_update(update_id, ADA, text)
    length = len(text.split(" ", 1)[0])
    update["message"]["entities"] = [{"type": "bot_command", "offset": 0, "length": length}]
    return update


@pytest.mark.parametrize("exempt", ["filter", "callable"])
def test_one_notice_per_window_then_silence_and_exempt_commands_and_form_steps(
    database_url: str, exempt: str
) -> None:
    # Issue 23: 1 a day. The second message gets the notice, later ones are dropped quietly
    # (counted); /size and the form step it opens are exempt, given as a python-telegram-bot
    # filter (commands only) or as an async callable reading user_data (commands and the step).
    handled: list[str] = []
    registry = CollectorRegistry()

    async def in_form(update: Update, context: ContextTypes.DEFAULT_TYPE) -> bool:
        assert context.user_data is not None
        return bool(filters.COMMAND.check_update(update) or context.user_data.get("form"))

    async def scenario(telegram: FakeTelegram) -> None:
        async with AsyncStore(database_url, rate_per_minute=None, rate_per_day=1) as db:
            store.metrics.instrument(db, registry=registry)
            turns = TelegramTurns(
                db,
                refusal="Wait {retry_in}.",
                exempt=filters.COMMAND if exempt == "filter" else in_form,
            )

            async def size(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
                assert update.message is not None and context.user_data is not None
                handled.append(update.message.text or "")
                context.user_data["form"] = True
                await update.message.reply_text("What size?")

            async def chat(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
                assert update.message is not None and context.user_data is not None
                handled.append(update.message.text or "")
                answer = "size" if context.user_data.pop("form", False) else "ok"
                await turns.reply(update, current_turn(context), f"{answer} {update.message.text}")

            app = application(telegram)
            turns.install(app)
            app.add_handler(CommandHandler("size", size))
            app.add_handler(MessageHandler(filters.TEXT & ~filters.COMMAND, chat))
            async with app:
                for update_id, text in enumerate(["one", "two", "three", "/size", "large"], 1):
                    raw = command_update(update_id, text) if text[0] == "/" else None
                    raw = raw or message_update(update_id, ADA, text)
                    await app.process_update(Update.de_json(raw, app.bot))

    telegram = run(scenario)
    sent = telegram.texts()
    assert sent[0] == "ok one"
    assert re.fullmatch(r"Wait \d+ (hours|minutes|seconds?)\.", sent[1])
    dropped = registry.get_sample_value(
        "sessionkeeper_store_refusals_dropped_total", {"channel": "telegram"}
    )
    if exempt == "filter":
        # The form step is not a command: refused, quietly.
        assert handled == ["one", "/size"]
        assert sent[2:] == ["What size?"]
        assert dropped == 2.0  # "three" and "large"
    else:
        assert handled == ["one", "/size", "large"]
        assert sent[2:] == ["What size?", "size large"]
        assert dropped == 1.0  # "three"
    with psycopg.connect(database_url) as conn:
        counts = conn.execute("SELECT request_count, refused_count FROM rate_limits").fetchall()
    assert counts == [(1, 1 + int(dropped))]


@pytest.mark.parametrize("bad", ["start", 42])
def test_exempt_must_be_a_filter_or_a_callable(database_url: str, bad: object) -> None:
    with pytest.raises(InvalidInput, match="exempt") as raised:
        TelegramTurns(AsyncStore(database_url), exempt=bad)  # type: ignore[arg-type]
    assert raised.value.field == "exempt"
