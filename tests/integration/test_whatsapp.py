"""store.integrations.whatsapp with the real pywa: a pywa_async ``WhatsApp`` client whose Graph
API calls go over HTTP to a fake Cloud API on loopback, webhook payloads parsed and dispatched
by pywa itself, a real AsyncStore on PostgreSQL."""

# pywa 4.5 declares ``on_message`` with overloads on ``self`` that mypy cannot bind.
# mypy: disable-error-code="misc"

from __future__ import annotations

import json
import logging
import re
from typing import Any

import psycopg
import pytest
from fake_whatsapp import ADA, BOB, FakeCloudAPI, deliver, message_webhook, run, stored
from pywa_async import filters
from pywa_async.client import WhatsApp
from pywa_async.types.message import Message

from store import AsyncStore, InvalidInput, Store, Turn
from store.integrations.whatsapp import WhatsAppTurns

GROUP = "Y2FwaV9ncm91cDoxNjUwNTU1MTIzNDoxMjAzNjM0MDQ2MTY2MDQ1NzQ="


def test_a_message_is_a_stored_turn_and_the_reply_goes_over_the_wire(database_url: str) -> None:
    prompts: list[list[dict[str, Any]]] = []
    turns_seen: list[Turn] = []

    async def scenario(api: FakeCloudAPI, wa: WhatsApp) -> None:
        async with AsyncStore(database_url) as db:
            turns = WhatsAppTurns(db)

            @wa.on_message(filters.text)
            @turns.handler
            async def chat(client: WhatsApp, msg: Message, turn: Turn) -> None:
                turns_seen.append(turn)
                prompt = [m.as_prompt() for m in turn.history]
                prompts.append([*prompt, {"role": "user", "content": msg.text}])
                await turns.reply(msg, turn, f"echo: {msg.text}", input_tokens=11, output_tokens=22)

            await deliver(wa, message_webhook(ADA, "hello"))
            await deliver(wa, message_webhook(ADA, "again"))

    api = run(scenario)

    # Replies go to the user's BSUID, as pywa answers by default, in the 1:1 chat.
    assert api.texts() == ["echo: hello", "echo: again"]
    assert api.recipients() == [ADA["user_id"]] * 2
    assert prompts[1] == [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "echo: hello"},
        {"role": "user", "content": "again"},
    ]
    assert [t.chat_id for t in turns_seen] == [None, None]  # the private conversation
    assert stored(database_url, ADA) == [
        ("user", "hello", None),
        ("assistant", "echo: hello", None),
        ("user", "again", None),
        ("assistant", "echo: again", None),
    ]
    with psycopg.connect(database_url) as conn:
        usage = conn.execute(
            "SELECT channel, count(*), sum(input_tokens), sum(output_tokens) FROM usage_stats"
            " GROUP BY channel"
        ).fetchall()
        user = conn.execute("SELECT channel, channel_user_id, display_name FROM users").fetchall()
    assert usage == [("whatsapp", 2, 22, 44)]
    assert user == [("whatsapp", ADA["user_id"], "Ada Lovelace")]


def test_a_group_message_is_the_senders_conversation_in_that_group(database_url: str) -> None:
    histories: list[list[str]] = []

    async def scenario(api: FakeCloudAPI, wa: WhatsApp) -> None:
        async with AsyncStore(database_url) as db:
            turns = WhatsAppTurns(db)

            @wa.on_message
            @turns.handler
            async def chat(client: WhatsApp, msg: Message, turn: Turn) -> None:
                histories.append([m.content for m in turn.history])
                # Bob's answer goes to his 1:1 chat (still stored in his group conversation).
                private = msg.from_user.bsuid == BOB["user_id"]
                await turns.reply(msg, turn, f"echo: {msg.text}", private=private)

            await deliver(wa, message_webhook(ADA, "in private"))
            await deliver(wa, message_webhook(ADA, "in group", group_id=GROUP))
            await deliver(wa, message_webhook(BOB, "me too", group_id=GROUP))
            await deliver(wa, message_webhook(ADA, "group again", group_id=GROUP))

    api = run(scenario)

    # The group's prompt never holds the private exchange, nor (per member) another member's.
    assert histories == [[], [], [], ["in group", "echo: in group"]]
    # The reply goes to the chat the message came from, unless private=True.
    assert api.recipients() == [ADA["user_id"], GROUP, BOB["user_id"], GROUP]
    assert [body["recipient_type"] for body in api.sent] == [
        "individual",
        "group",
        "individual",
        "group",
    ]
    assert stored(database_url, ADA)[2:] == [
        ("user", "in group", GROUP),
        ("assistant", "echo: in group", GROUP),
        ("user", "group again", GROUP),
        ("assistant", "echo: group again", GROUP),
    ]


def test_one_refusal_per_window_then_silence_and_exempt_commands(database_url: str) -> None:
    # A daily cap of 2: "one" and "two" are answered, "three" gets the window's one refusal,
    # "four" is dropped quietly; "/help" is exempt (not counted, handled) even past the cap.
    handled: list[str] = []

    def is_command(msg: Message, client: WhatsApp) -> bool:
        assert isinstance(client, WhatsApp)
        return (msg.text or "").startswith("/")

    async def scenario(api: FakeCloudAPI, wa: WhatsApp) -> None:
        async with AsyncStore(database_url, rate_per_minute=None, rate_per_day=2) as db:
            turns = WhatsAppTurns(
                db, refusal="Easy! Back in {retry_in}, at {retry_at:%H:%M}.", exempt=is_command
            )

            @wa.on_message(filters.text)
            @turns.handler
            async def chat(client: WhatsApp, msg: Message, turn: Turn) -> None:
                handled.append(msg.text or "")
                await turns.reply(msg, turn, "ok")

            for text in ("one", "/help", "two", "three", "four", "/help"):
                await deliver(wa, message_webhook(ADA, text))

    api = run(scenario)

    assert handled == ["one", "/help", "two", "/help"]
    texts = api.texts()
    assert texts[:3] == ["ok", "ok", "ok"] and texts[4] == "ok" and len(texts) == 5
    assert re.fullmatch(r"Easy! Back in \d+ (hours|minutes|seconds?), at 00:00\.", texts[3])
    assert api.recipients()[3] == ADA["user_id"]
    with psycopg.connect(database_url) as conn:
        counted = conn.execute(
            "SELECT request_count, refused_count FROM rate_limits r JOIN users u USING (user_id)"
            " WHERE u.channel = 'whatsapp' AND u.channel_user_id = %s",
            (ADA["user_id"],),
        ).fetchall()
    assert counted == [(2, 2)]


def test_a_webhook_delivered_twice_is_one_turn(database_url: str) -> None:
    # The Cloud API redelivers a webhook it got no 200 for; pywa drops the duplicate (by its
    # hash), so the user's message is not stored, answered or counted twice.
    async def scenario(api: FakeCloudAPI, wa: WhatsApp) -> None:
        async with AsyncStore(database_url) as db:
            turns = WhatsAppTurns(db)

            @wa.on_message
            @turns.handler
            async def chat(client: WhatsApp, msg: Message, turn: Turn) -> None:
                await turns.reply(msg, turn, "once")

            payload = message_webhook(ADA, "hi", message_id="wamid.same")
            await deliver(wa, payload)
            await deliver(wa, json.loads(json.dumps(payload)))

    api = run(scenario)
    assert api.texts() == ["once"]
    assert len(stored(database_url, ADA)) == 2


def test_an_image_caption_is_the_users_message(database_url: str) -> None:
    async def scenario(api: FakeCloudAPI, wa: WhatsApp) -> None:
        async with AsyncStore(database_url) as db:
            turns = WhatsAppTurns(db)

            @wa.on_message(filters.image)
            @turns.handler
            async def photo(client: WhatsApp, msg: Message, turn: Turn) -> None:
                await turns.reply(msg, turn, "nice picture", quote=True)

            await deliver(wa, message_webhook(ADA, image_caption="my cat"))

    api = run(scenario)
    assert api.texts() == ["nice picture"]
    assert "message_id" in api.sent[0]["context"]  # quote=True reached pywa's reply_text
    assert stored(database_url, ADA) == [
        ("user", "my cat", None),
        ("assistant", "nice picture", None),
    ]


def test_a_tool_using_turn_is_stored_whole_and_its_final_text_sent(database_url: str) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}
    exchange: list[dict[str, Any]] = [
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "-3 °C"},
        {"role": "assistant", "content": "Cold: -3 °C."},
    ]
    prompts: list[list[dict[str, Any]]] = []

    async def scenario(api: FakeCloudAPI, wa: WhatsApp) -> None:
        async with AsyncStore(database_url) as db:
            turns = WhatsAppTurns(db)

            @wa.on_message
            @turns.handler
            async def chat(client: WhatsApp, msg: Message, turn: Turn) -> None:
                prompts.append([m.as_prompt() for m in turn.history])
                if not turn.history:
                    await turns.reply(msg, turn, exchange, input_tokens=5)
                else:
                    await turns.reply(msg, turn, "You are welcome.")

            await deliver(wa, message_webhook(ADA, "Weather in Oslo?"))
            await deliver(wa, message_webhook(ADA, "thanks"))

    api = run(scenario)
    assert api.texts() == ["Cold: -3 °C.", "You are welcome."]
    assert prompts[1] == [{"role": "user", "content": "Weather in Oslo?"}, *exchange]


@pytest.mark.parametrize(
    "reply",
    [
        [],
        [{"role": "assistant", "content": None, "tool_calls": [{"id": "c"}]}],
        [{"role": "tool", "tool_call_id": "c", "content": "x"}],
        [{"role": "assistant", "content": ""}],
    ],
    ids=["empty", "ends-with-a-call", "ends-with-a-result", "empty-text"],
)
def test_an_exchange_without_a_final_text_writes_and_sends_nothing(
    database_url: str, reply: list[dict[str, Any]]
) -> None:
    refused: list[InvalidInput] = []

    async def scenario(api: FakeCloudAPI, wa: WhatsApp) -> None:
        async with AsyncStore(database_url) as db:
            turns = WhatsAppTurns(db)

            @wa.on_message
            @turns.handler
            async def chat(client: WhatsApp, msg: Message, turn: Turn) -> None:
                try:
                    await turns.reply(msg, turn, reply)
                except InvalidInput as exc:
                    refused.append(exc)

            await deliver(wa, message_webhook(ADA, "hi"))

    api = run(scenario)
    assert len(refused) == 1 and refused[0].field == "reply"
    assert api.sent == []
    assert stored(database_url, ADA) == []


def test_a_reply_that_cannot_be_stored_is_still_sent(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Left to pywa, the StoreError is logged by its dispatcher (the handler's error).
    async def scenario(api: FakeCloudAPI, wa: WhatsApp) -> None:
        async with AsyncStore(database_url) as db:
            turns = WhatsAppTurns(db)

            @wa.on_message
            @turns.handler
            async def chat(client: WhatsApp, msg: Message, turn: Turn) -> None:
                await turns.reply(msg, turn, "a NUL \x00 reply")

            with caplog.at_level(logging.ERROR, logger="pywa"):
                await deliver(wa, message_webhook(ADA, "hi"))

    api = run(scenario)
    assert api.texts() == ["a NUL \x00 reply"]
    assert stored(database_url, ADA) == []
    assert "InvalidInput" in caplog.text


def test_bad_arguments_raise_typed_errors(database_url: str) -> None:
    with Store(database_url) as db, pytest.raises(InvalidInput, match="AsyncStore"):
        WhatsAppTurns(db)  # type: ignore[arg-type]
    adb = AsyncStore(database_url)
    with pytest.raises(InvalidInput, match="refusal"):
        WhatsAppTurns(adb, refusal="wait {minutes}")
    turns = WhatsAppTurns(adb)
    assert turns.channel == "whatsapp" and WhatsAppTurns(adb, channel="wa").channel == "wa"
    with pytest.raises(InvalidInput, match="callback"):
        turns.handler("chat")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="pywa_async Message"):
        turns.message_of({"text": "hi"})  # type: ignore[arg-type]
