"""The scripted chat of docs/whatsapp.md's cross-channel bot (run by test_readme.py): one person,
Ada, on Telegram and on WhatsApp.

On Telegram (a fake Bot API server, polled by the bot) Ada tells the bot something, then asks
for a link code with ``/link``. On WhatsApp, the harness plays Meta's part: it verifies the
bot's webhook (the ``hub.challenge`` handshake), then posts signed webhooks to it: ``link
<code>`` with the code the bot sent on Telegram, then a question whose prompt must hold the
Telegram exchange (continuity across linked channels). The bot's WhatsApp replies go to a fake
Cloud API. Each message is delivered once the previous one was answered, as a person would
type, and the bot is stopped with SIGINT once the last one was answered.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import threading
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import psycopg
import pytest
from fake_telegram import FakeTelegram, fake_telegram, message_update
from fake_whatsapp import (
    ADA,
    APP_SECRET,
    PHONE_ID,
    TOKEN,
    FakeCloudAPI,
    body_of,
    fake_cloud_api,
    message_webhook,
    signature,
)

TELEGRAM_ADA = 4242
VERIFY_TOKEN = "verify-me"


@dataclass(frozen=True)
class Usage:
    input: int
    output: int


@dataclass
class CrossChannel:
    telegram_messages: tuple[str, ...] = ("I am Ada and I like tea.", "/link")
    question: str = "What do I like?"
    prompts: list[list[dict[str, Any]]] = field(default_factory=list)
    telegram_sent: list[str] = field(default_factory=list)
    whatsapp_sent: list[str] = field(default_factory=list)
    consumed: bool = False
    api: FakeCloudAPI | None = None  # the fake Cloud API, while over_telegram runs

    @staticmethod
    def runs(source: str) -> bool:
        """Whether a documented block is the cross-channel bot (it reads the WhatsApp env)."""
        return "WHATSAPP_TOKEN" in source and "TELEGRAM_BOT_TOKEN" in source

    async def call_the_model_async(self, prompt: list[dict[str, Any]]) -> tuple[str, Usage]:
        self.prompts.append(prompt)
        question = str(prompt[-1]["content"])
        return f"echo: {question}", Usage(input=len(question), output=len(question) + 6)

    def names(self) -> dict[str, Any]:
        return {"call_the_model_async": self.call_the_model_async}

    @contextmanager
    def over_telegram(self) -> Iterator[FakeTelegram]:
        """Both fake servers, the bot's environment, and the chat driven by their callbacks."""
        pending = list(enumerate(self.telegram_messages, start=1))
        port = _free_port()
        webhook = f"http://127.0.0.1:{port}/whatsapp"

        def deliver_telegram() -> None:
            update_id, text = pending.pop(0)
            telegram.queue(message_update(update_id, TELEGRAM_ADA, text))

        def telegram_answered(body: dict[str, Any]) -> None:
            self.telegram_sent.append(str(body["text"]))
            if pending:
                deliver_telegram()
                return
            code = re.search(r"link (\S+)", self.telegram_sent[-1])
            assert code, f"no link code in {self.telegram_sent[-1]!r}"

            def link() -> None:
                verify()
                post(f"link {code[1]}")

            _soon(link)

        def whatsapp_answered(body: dict[str, Any]) -> None:
            self.whatsapp_sent.append(str(body["text"]["body"]))
            if len(self.whatsapp_sent) == 1:
                _soon(lambda: post(self.question))
            else:  # the conversation is over: stop the bot as an operator would
                self.consumed = True
                os.kill(os.getpid(), signal.SIGINT)

        def verify() -> None:
            query = urlencode(
                {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "42"}
            )
            with urllib.request.urlopen(f"{webhook}?{query}", timeout=10) as answer:
                assert answer.read() == b"42"

        def post(text: str) -> None:
            body = body_of(message_webhook(ADA, text))
            request = urllib.request.Request(
                webhook,
                data=body,
                headers={
                    "Content-Type": "application/json",
                    "X-Hub-Signature-256": signature(body),
                },
            )
            with urllib.request.urlopen(request, timeout=30) as answer:
                assert answer.status == 200

        environment = {
            "WHATSAPP_PHONE_ID": PHONE_ID,
            "WHATSAPP_TOKEN": TOKEN,
            "WHATSAPP_APP_SECRET": APP_SECRET,
            "WHATSAPP_VERIFY_TOKEN": VERIFY_TOKEN,
            "WHATSAPP_WEBHOOK_PORT": str(port),
        }
        with (
            pytest.MonkeyPatch.context() as env,
            fake_cloud_api(whatsapp_answered) as api,
            fake_telegram(telegram_answered) as telegram,
        ):
            for name, value in environment.items():
                env.setenv(name, value)
            env.setenv("WHATSAPP_API_URL", api.url)
            self.api = api
            deliver_telegram()
            yield telegram

    def check(self, database_url: str, logged: str) -> None:
        """What docs/whatsapp.md promises: linked, and one conversation across both channels."""
        told, _ = self.telegram_messages
        assert self.telegram_sent[0] == f"echo: {told}"
        assert self.whatsapp_sent[0].startswith("Linked")
        assert self.whatsapp_sent[1] == f"echo: {self.question}"
        # The WhatsApp question's prompt holds the Telegram exchange (the /link and link turns
        # stored nothing), then the question.
        assert self.prompts[-1] == [
            {"role": "user", "content": told},
            {"role": "assistant", "content": f"echo: {told}"},
            {"role": "user", "content": self.question},
        ]
        assert self.api is not None
        assert self.api.recipients() == [ADA["user_id"]] * 2
        with psycopg.connect(database_url) as conn:
            rows = conn.execute(
                "SELECT u.channel, u.person_id, count(m.*) FROM users u"
                " JOIN sessions s ON s.user_id = u.user_id"
                " LEFT JOIN session_messages m ON m.session_id = s.session_id"
                " GROUP BY u.channel, u.person_id ORDER BY u.channel"
            ).fetchall()
        # Each message stays in its own user's session; both users are one person.
        assert [(channel, count) for channel, _, count in rows] == [
            ("telegram", 2),
            ("whatsapp", 2),
        ]
        assert rows[0][1] is not None and rows[0][1] == rows[1][1]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _soon(action: Callable[[], None]) -> None:
    """Run ``action`` in a thread of its own: a fake server's callback must not wait for the
    bot, which is about to call that server again."""
    threading.Thread(target=action, daemon=True).start()
