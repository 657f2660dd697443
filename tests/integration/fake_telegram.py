"""A fake Telegram Bot API server on loopback: the only part of the bot tests that is not real.

The real ``Bot`` objects of aiogram and python-telegram-bot are pointed at it (both take a
custom API base URL) and call it over HTTP as they would call Telegram: it answers ``getMe``,
records every ``sendMessage`` (what the bot sent, as it went over the wire), hands out queued
updates through ``getUpdates`` (long polling) and accepts any other method. ``run`` plays a
bot test's scenario against it; ``stored`` reads back what the store kept of a Telegram user.
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import json
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

import psycopg

TOKEN = "123456:TEST-fake-token"
BOT_ID = 123456
BOT_USER = {"id": BOT_ID, "is_bot": True, "first_name": "Keeper", "username": "keeper_bot"}


def message_update(
    update_id: int,
    sender: int,
    text: str,
    first_name: str = "Ada",
    chat: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A text message from ``sender``, as Telegram delivers it: in the private chat, or in
    ``chat`` (``{"id": -100123, "type": "supergroup", "title": ...}``)."""
    person = {"id": sender, "is_bot": False, "first_name": first_name}
    return {
        "update_id": update_id,
        "message": {
            "message_id": update_id,
            "date": int(time.time()),
            "chat": chat or {"id": sender, "type": "private", "first_name": first_name},
            "from": person,
            "text": text,
        },
    }


@dataclass
class FakeTelegram:
    """``url`` is the API root (aiogram: ``TelegramAPIServer.from_base(url)``; PTB:
    ``base_url(url + "/bot")``). ``on_send`` is called with every sendMessage body, once its
    answer was sent; ``delivered`` counts the updates handed out by getUpdates."""

    on_send: Callable[[dict[str, Any]], None] | None = None
    sent: list[dict[str, Any]] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    _updates: list[dict[str, Any]] = field(default_factory=list)
    _changed: threading.Condition = field(default_factory=threading.Condition)
    delivered: int = 0
    _closing: bool = False
    url: str = ""

    def queue(self, update: dict[str, Any]) -> None:
        with self._changed:
            self._updates.append(update)
            self._changed.notify_all()

    def texts(self) -> list[str]:
        return [str(body["text"]) for body in self.sent]

    # -- the API ---------------------------------------------------------------------------

    def answer(self, method: str, params: dict[str, Any]) -> Any:
        self.calls.append(method)
        if method == "getMe":
            return BOT_USER
        if method == "sendMessage":
            with self._changed:
                self.sent.append(params)
                number = len(self.sent)
            chat_id = int(params["chat_id"])
            return {
                "message_id": 10_000 + number,
                "date": int(time.time()),
                "chat": {"id": chat_id, "type": "private"},
                "from": BOT_USER,
                "text": params["text"],
            }
        if method == "getUpdates":
            return self._get_updates(params)
        return True  # deleteWebhook, setMyCommands, ...

    def _get_updates(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        offset = int(params.get("offset") or 0)
        deadline = time.monotonic() + min(float(params.get("timeout") or 0), 2.0)
        with self._changed:
            while True:
                # Confirmed updates (below the offset) are forgotten, as Telegram does.
                self._updates = [u for u in self._updates if u["update_id"] >= offset]
                remaining = deadline - time.monotonic()
                if self._updates or remaining <= 0 or self._closing:
                    self.delivered = max([self.delivered, *(u["update_id"] for u in self._updates)])
                    return list(self._updates)
                self._changed.wait(remaining)

    def close(self) -> None:
        with self._changed:
            self._closing = True
            self._changed.notify_all()


def _params(content_type: str, body: bytes) -> dict[str, Any]:
    """A request's parameters: form-encoded, multipart or JSON, as the libraries send them."""
    if not body:
        return {}
    if content_type.startswith("application/json"):
        return dict(json.loads(body))
    if content_type.startswith("multipart/form-data"):
        parsed = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
        )
        return {
            str(part.get_param("name", header="content-disposition")): part.get_content()
            for part in parsed.iter_parts()
        }
    return dict(parse_qsl(body.decode(), keep_blank_values=True))


@contextmanager
def fake_telegram(
    on_send: Callable[[dict[str, Any]], None] | None = None,
) -> Iterator[FakeTelegram]:
    """A running fake server on 127.0.0.1 (a free port), stopped on leaving."""
    fake = FakeTelegram(on_send=on_send)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self._serve()

        def do_GET(self) -> None:
            self._serve()

        def _serve(self) -> None:
            # /bot<token>/<method>
            head, _, method = self.path.strip("/").partition("/")
            length = int(self.headers.get("Content-Length") or 0)
            params = _params(self.headers.get("Content-Type", ""), self.rfile.read(length))
            if head != f"bot{TOKEN}":
                status, payload = (
                    401,
                    {"ok": False, "error_code": 401, "description": "Unauthorized"},
                )
            else:
                status, payload = 200, {"ok": True, "result": fake.answer(method, params)}
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            try:
                self.end_headers()
                self.wfile.write(body)
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                return  # a long poll the bot gave up on while stopping
            if method == "sendMessage" and status == 200 and fake.on_send is not None:
                # After the answer went out: the bot has its reply confirmed.
                fake.on_send(params)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="fake-telegram", daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        fake.close()
        server.shutdown()
        server.server_close()
        thread.join()


def run(scenario: Callable[[FakeTelegram], Awaitable[None]]) -> FakeTelegram:
    """Run ``scenario`` on a new event loop against a fake server; the server, stopped."""

    async def main() -> None:
        with fake_telegram() as telegram:
            fake.append(telegram)
            await scenario(telegram)

    fake: list[FakeTelegram] = []
    asyncio.run(main())
    return fake[0]


def stored(database_url: str, telegram_id: int) -> list[tuple[Any, ...]]:
    """The (role, content) of every message the store keeps for a Telegram user, in order."""
    with psycopg.connect(database_url) as conn:
        return conn.execute(
            "SELECT m.role, m.content FROM session_messages m JOIN sessions s USING (session_id)"
            " JOIN users u ON u.user_id = s.user_id WHERE u.channel = 'telegram'"
            " AND u.channel_user_id = %s ORDER BY m.seq",
            [str(telegram_id)],
        ).fetchall()
