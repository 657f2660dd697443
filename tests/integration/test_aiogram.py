"""store.integrations.aiogram with the real aiogram: a Dispatcher and a Bot whose API calls go
over HTTP to a fake Telegram server on loopback, a real AsyncStore on PostgreSQL."""

from __future__ import annotations

import re
from typing import Any

import psycopg
import pytest
from aiogram import Bot, Dispatcher
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.filters import Command, StateFilter, or_f
from aiogram.fsm.context import FSMContext
from aiogram.fsm.state import State, StatesGroup
from aiogram.fsm.storage.base import StorageKey
from aiogram.types import Message, Update
from fake_telegram import BOT_ID, TOKEN, FakeTelegram, message_update, run, stored
from prometheus_client import CollectorRegistry

import store.metrics
from store import AsyncStore, InvalidInput, Store, Turn
from store.integrations.aiogram import SessionkeeperStorage, TurnMiddleware

ADA = 7001


class Order(StatesGroup):
    size = State()


def real_bot(telegram: FakeTelegram) -> Bot:
    return Bot(TOKEN, session=AiohttpSession(api=TelegramAPIServer.from_base(telegram.url)))


async def feed(dp: Dispatcher, bot: Bot, update_id: int, text: str, sender: int = ADA) -> None:
    await dp.feed_update(bot, Update.model_validate(message_update(update_id, sender, text)))


def test_a_message_is_a_stored_turn_and_the_reply_goes_over_the_wire(database_url: str) -> None:
    prompts: list[list[dict[str, str]]] = []

    async def scenario(telegram: FakeTelegram) -> None:
        async with AsyncStore(database_url) as db:
            turns = TurnMiddleware(db)
            dp = Dispatcher()
            dp.message.outer_middleware(turns)

            @dp.message()
            async def chat(message: Message, turn: Turn) -> None:
                prompt = [m.as_prompt() for m in turn.history]
                prompts.append([*prompt, {"role": "user", "content": message.text or ""}])
                await turns.reply(
                    message, turn, f"echo: {message.text}", input_tokens=11, output_tokens=22
                )

            bot = real_bot(telegram)
            try:
                await feed(dp, bot, 1, "hello")
                await feed(dp, bot, 2, "again")
            finally:
                await bot.session.close()

    telegram = run(scenario)

    assert [(int(b["chat_id"]), b["text"]) for b in telegram.sent] == [
        (ADA, "echo: hello"),
        (ADA, "echo: again"),
    ]
    assert prompts[1] == [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "echo: hello"},
        {"role": "user", "content": "again"},
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
        ).fetchone()
        name = conn.execute("SELECT display_name FROM users").fetchone()
    assert usage == (2, 22, 44)
    assert name == ("Ada",)


def test_a_group_turn_does_not_see_the_private_chat(database_url: str) -> None:
    # Issue 23: the same user writes in private, then in a group; the group's prompt must not
    # hold the private exchange (the middleware passes the chat).
    group = {"id": -100123, "type": "supergroup", "title": "Club"}
    histories: list[list[str]] = []

    async def scenario(telegram: FakeTelegram) -> None:
        async with AsyncStore(database_url) as db:
            turns = TurnMiddleware(db)
            dp = Dispatcher()
            dp.message.outer_middleware(turns)

            @dp.message()
            async def chat(message: Message, turn: Turn) -> None:
                histories.append([m.content for m in turn.history])
                await turns.reply(message, turn, f"echo: {message.text}")

            bot = real_bot(telegram)
            try:
                await feed(dp, bot, 1, "in private")
                update = message_update(2, ADA, "in group", chat=group)
                await dp.feed_update(bot, Update.model_validate(update))
                await feed(dp, bot, 3, "private again")
            finally:
                await bot.session.close()

    run(scenario)
    assert histories == [[], [], ["in private", "echo: in private"]]


def test_a_rate_limited_user_gets_the_refusal_and_the_handler_does_not_run(
    database_url: str,
) -> None:
    handled: list[str] = []

    async def scenario(telegram: FakeTelegram) -> None:
        async with AsyncStore(database_url, rate_per_minute=None, rate_per_day=2) as db:
            turns = TurnMiddleware(db, refusal="Easy! Back in {retry_in}, at {retry_at:%H:%M}.")
            dp = Dispatcher()
            dp.message.outer_middleware(turns)

            @dp.message()
            async def chat(message: Message, turn: Turn) -> None:
                handled.append(message.text or "")
                await turns.reply(message, turn, "ok")

            bot = real_bot(telegram)
            try:
                for update_id, text in enumerate(["one", "two", "three"], start=1):
                    await feed(dp, bot, update_id, text)
            finally:
                await bot.session.close()

    telegram = run(scenario)

    assert handled == ["one", "two"]
    ok, ok_too, refusal = telegram.texts()
    assert (ok, ok_too) == ("ok", "ok")
    # The day's window ends at the next UTC midnight: hours away, rounded up; and its time.
    assert re.fullmatch(r"Easy! Back in \d+ (hours|minutes|seconds?), at 00:00\.", refusal)
    assert stored(database_url, ADA) == [
        ("user", "one"),
        ("assistant", "ok"),
        ("user", "two"),
        ("assistant", "ok"),
    ]


def test_a_reply_that_cannot_be_stored_is_still_sent(database_url: str) -> None:
    async def scenario(telegram: FakeTelegram) -> None:
        async with AsyncStore(database_url) as db:
            turns = TurnMiddleware(db)
            dp = Dispatcher()
            dp.message.outer_middleware(turns)
            refused: list[InvalidInput] = []

            @dp.message()
            async def chat(message: Message, turn: Turn) -> None:
                try:
                    await turns.reply(message, turn, "a NUL \x00 reply")
                except InvalidInput as exc:
                    refused.append(exc)

            bot = real_bot(telegram)
            try:
                await feed(dp, bot, 1, "hi")
            finally:
                await bot.session.close()
            assert len(refused) == 1

    telegram = run(scenario)
    assert telegram.texts() == ["a NUL \x00 reply"]
    assert stored(database_url, ADA) == []


def test_a_tool_using_exchange_is_stored_and_its_final_text_sent(database_url: str) -> None:
    # reply takes the exchange finish_turn takes (shared with PTB and WhatsApp: _turns.py).
    call = {"id": "c1", "type": "function", "function": {"name": "clock", "arguments": "{}"}}
    exchange: list[dict[str, Any]] = [
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "12:00"},
        {"role": "assistant", "content": "It is noon."},
    ]
    refused: list[InvalidInput] = []

    async def scenario(telegram: FakeTelegram) -> None:
        async with AsyncStore(database_url) as db:
            turns = TurnMiddleware(db)
            dp = Dispatcher()
            dp.message.outer_middleware(turns)

            @dp.message()
            async def chat(message: Message, turn: Turn) -> None:
                try:
                    await turns.reply(message, turn, exchange[: 2 if turn.history else 3])
                except InvalidInput as exc:
                    refused.append(exc)

            bot = real_bot(telegram)
            try:
                await feed(dp, bot, 1, "time?")
                await feed(dp, bot, 2, "again?")  # an exchange without its final text
            finally:
                await bot.session.close()

    telegram = run(scenario)
    assert telegram.texts() == ["It is noon."]
    assert len(refused) == 1 and refused[0].field == "reply"
    assert stored(database_url, ADA) == [
        ("user", "time?"),
        ("assistant", ""),
        ("tool", "12:00"),
        ("assistant", "It is noon."),
    ]


def test_the_middleware_takes_only_an_async_store(database_url: str) -> None:
    with Store(database_url) as db, pytest.raises(InvalidInput, match="AsyncStore"):
        TurnMiddleware(db)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="refusal"):
        TurnMiddleware(AsyncStore(database_url), refusal="wait {minutes}")


def test_fsm_states_and_data_live_in_the_database_and_erasure_removes_them(
    database_url: str,
) -> None:
    async def scenario(telegram: FakeTelegram) -> None:
        async with AsyncStore(database_url) as db:
            storage = SessionkeeperStorage(db)
            turns = TurnMiddleware(db)
            dp = Dispatcher(storage=storage)
            dp.message.outer_middleware(turns)

            @dp.message(Order.size)
            async def size(message: Message, turn: Turn, state: FSMContext) -> None:
                data = await state.update_data(size=message.text)
                await state.set_state(None)
                await turns.reply(message, turn, f"a {data['size']} {data['drink']}")

            @dp.message()
            async def order(message: Message, turn: Turn, state: FSMContext) -> None:
                await state.set_state(Order.size)
                await state.set_data({"drink": message.text})
                await turns.reply(message, turn, "which size?")

            bot = real_bot(telegram)
            try:
                await feed(dp, bot, 1, "tea")
                # Between two messages the state is in the database, where a new storage
                # (another bot process) finds it.
                key = StorageKey(bot_id=BOT_ID, chat_id=ADA, user_id=ADA)
                other = SessionkeeperStorage(db)
                assert await other.get_state(key) == Order.size.state
                assert await other.get_data(key) == {"drink": "tea"}
                await feed(dp, bot, 2, "large")
                assert await other.get_state(key) is None
                assert await other.get_data(key) == {"drink": "tea", "size": "large"}

                # Keys differ by every part: a thread of the chat has its own state.
                in_thread = StorageKey(bot_id=BOT_ID, chat_id=ADA, user_id=ADA, thread_id=5)
                await other.set_state(in_thread, "busy")
                assert await other.get_state(in_thread) == "busy"
                assert await other.get_state(key) is None
                with pytest.raises(InvalidInput, match="JSON"):
                    await other.set_data(key, {"when": object()})
                with pytest.raises(InvalidInput, match="NUL"):
                    await other.update_data(key, {"x": "\x00"})
                assert await other.get_data(key) == {"drink": "tea", "size": "large"}

                # Cleared (state.clear()): no row is kept for the thread's key.
                await other.set_state(in_thread, None)
                await other.set_data(in_thread, {})
                await storage.close()  # the store stays open: it belongs to the bot
                user_id = (await db.begin_turn("telegram", ADA)).user.user_id
                with psycopg.connect(database_url) as conn:
                    rows = conn.execute(
                        "SELECT thread_id, user_id FROM aiogram_fsm_states"
                    ).fetchall()
                assert rows == [(0, user_id)]  # linked to the store's user

                forgotten = await db.forget_user(user_id)
                assert forgotten.deleted["aiogram_fsm_states"] == 1
                assert await other.get_data(key) == {}
            finally:
                await bot.session.close()

    telegram = run(scenario)
    assert telegram.texts() == ["which size?", "a large tea"]


def test_one_notice_per_window_then_silence_and_exempt_commands_and_form_steps(
    database_url: str,
) -> None:
    # Issue 23: 2 a day. The third message gets the notice; later ones are dropped quietly and
    # counted; /start and the form step it opens are exempt: handled, counted against no cap.
    handled: list[str] = []
    registry = CollectorRegistry()

    async def scenario(telegram: FakeTelegram) -> None:
        async with AsyncStore(database_url, rate_per_minute=None, rate_per_day=2) as db:
            store.metrics.instrument(db, registry=registry)
            exempt = or_f(Command("start"), StateFilter(Order.size))
            turns = TurnMiddleware(db, refusal="Wait {retry_in}.", exempt=exempt)
            dp = Dispatcher()
            dp.message.outer_middleware(turns)

            @dp.message(Command("start"))
            async def start(message: Message, turn: Turn, state: FSMContext) -> None:
                handled.append(message.text or "")
                await state.set_state(Order.size)
                await message.answer("What size?")

            @dp.message(Order.size)
            async def size(message: Message, turn: Turn, state: FSMContext) -> None:
                handled.append(message.text or "")
                await state.set_state(None)
                await turns.reply(message, turn, f"size {message.text}")

            @dp.message()
            async def chat(message: Message, turn: Turn) -> None:
                handled.append(message.text or "")
                await turns.reply(message, turn, f"ok {message.text}")

            bot = real_bot(telegram)
            texts = ["one", "two", "three", "four", "/start", "large", "five"]
            try:
                for update_id, text in enumerate(texts, start=1):
                    await feed(dp, bot, update_id, text)
            finally:
                await bot.session.close()

    telegram = run(scenario)
    assert handled == ["one", "two", "/start", "large"]
    sent = telegram.texts()
    assert sent[:2] == ["ok one", "ok two"]
    assert re.fullmatch(r"Wait \d+ (hours|minutes|seconds?)\.", sent[2])
    assert sent[3:] == ["What size?", "size large"]
    dropped = registry.get_sample_value(
        "sessionkeeper_store_refusals_dropped_total", {"channel": "telegram"}
    )
    assert dropped == 2.0  # "four" and "five"
    with psycopg.connect(database_url) as conn:
        counts = conn.execute("SELECT request_count, refused_count FROM rate_limits").fetchall()
    assert counts == [(2, 3)]


def test_exempt_must_be_a_filter(database_url: str) -> None:
    with pytest.raises(InvalidInput, match="exempt") as raised:
        TurnMiddleware(AsyncStore(database_url), exempt="start")  # type: ignore[arg-type]
    assert raised.value.field == "exempt"
