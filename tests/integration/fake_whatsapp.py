"""A fake WhatsApp Cloud API on loopback: with fake_telegram.py, the only part of the bot tests
that is not real.

pywa's real ``WhatsApp`` client (``pywa_async``) talks to it over HTTP: pywa sets the Graph API's
address on the ``httpx.AsyncClient`` it is given, and ``cloud_api_client`` points that client
here instead. The server records every message the bot sends (``POST /v<version>/<phone
id>/messages``, as it went over the wire) and answers as the Cloud API does. Incoming messages
are webhook payloads in the Cloud API's shape (``message_webhook``), handed to pywa's own
webhook handler, which parses them and dispatches them to the bot's handlers.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import psycopg
from pywa_async.client import WhatsApp

PHONE_ID = "106540352242922"
TOKEN = "EAAtest-fake-cloud-api-token"
APP_SECRET = "fake-app-secret"
WABA_ID = "102290129340398"
# A user as the Cloud API names them since business-scoped user ids: BSUID, phone number, name.
ADA = {"user_id": "US.13491208655302741918", "wa_id": "16505551234", "name": "Ada Lovelace"}
BOB = {"user_id": "US.80235119073652004417", "wa_id": "447700900123", "name": "Bob"}
_ids = itertools.count(1)


def message_webhook(
    user: dict[str, str],
    text: str | None = None,
    *,
    image_caption: str | None = None,
    group_id: str | None = None,
    message_id: str | None = None,
) -> dict[str, Any]:
    """The webhook payload the Cloud API posts for a message from ``user``: a text, or an
    image with a caption; in the 1:1 chat, or in the group ``group_id``."""
    message: dict[str, Any] = {
        "from": user["wa_id"],
        "from_user_id": user["user_id"],
        "id": message_id or f"wamid.in.{next(_ids)}.{time.time_ns()}",
        "timestamp": str(int(time.time())),
    }
    if image_caption is not None:
        message |= {
            "type": "image",
            "image": {
                "caption": image_caption,
                "mime_type": "image/jpeg",
                "sha256": "2f8b6e0d",
                "id": "1003383421387256",
            },
        }
    else:
        message |= {"type": "text", "text": {"body": text}}
    if group_id is not None:
        message["group_id"] = group_id
    contact = {
        "profile": {"name": user["name"]},
        "wa_id": user["wa_id"],
        "user_id": user["user_id"],
    }
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": PHONE_ID},
        "contacts": [contact],
        "messages": [message],
    }
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": WABA_ID, "changes": [{"field": "messages", "value": value}]}],
    }


def body_of(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload).encode()


def signature(body: bytes, secret: str = APP_SECRET) -> str:
    """The ``X-Hub-Signature-256`` header Meta sends with a webhook signed with the app secret."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass
class FakeCloudAPI:
    """``url`` is the Graph API root. ``sent`` holds every message body the bot sent;
    ``on_send`` is called with each one, once its answer went out."""

    on_send: Callable[[dict[str, Any]], None] | None = None
    sent: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""

    def texts(self) -> list[str]:
        return [str(body["text"]["body"]) for body in self.sent if body.get("type") == "text"]

    def recipients(self) -> list[str]:
        """Whom each message went to: a user's BSUID (``recipient``) or phone / group (``to``)."""
        return [str(body.get("recipient") or body.get("to")) for body in self.sent]

    def answer(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        version, phone_id, edge = [*path.strip("/").split("/"), "", "", ""][:3]
        if not version.startswith("v") or edge != "messages" or phone_id != PHONE_ID:
            return 400, {"error": {"message": f"Unknown path {path}", "code": 100}}
        self.sent.append(body)
        recipient = body.get("recipient") or body.get("to")
        key = "user_id" if body.get("recipient") else "wa_id"
        return 200, {
            "messaging_product": "whatsapp",
            "contacts": [{"input": recipient, key: recipient}],
            "messages": [{"id": f"wamid.out.{len(self.sent)}"}],
        }


@contextmanager
def fake_cloud_api(
    on_send: Callable[[dict[str, Any]], None] | None = None,
) -> Iterator[FakeCloudAPI]:
    """A running fake Cloud API on 127.0.0.1 (a free port), stopped on leaving."""
    fake = FakeCloudAPI(on_send=on_send)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            request = json.loads(self.rfile.read(length) or b"{}")
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                status, payload = 401, {"error": {"message": "Invalid OAuth token", "code": 190}}
            else:
                status, payload = fake.answer(self.path, request)
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
            if status == 200 and fake.on_send is not None:
                fake.on_send(request)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="fake-cloud-api", daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@asynccontextmanager
async def cloud_api_client(api: FakeCloudAPI) -> AsyncIterator[WhatsApp]:
    """A real pywa_async client whose Graph API calls go to ``api`` (no webhook server: the
    tests hand it the webhook bodies, see ``deliver``)."""
    async with httpx.AsyncClient() as session:
        wa = WhatsApp(phone_id=PHONE_ID, token=TOKEN, session=session, server=None)
        # pywa set the Graph API root on the session; keep its path (the API version).
        session.base_url = httpx.URL(f"{api.url}{session.base_url.path}")
        yield wa


async def deliver(wa: WhatsApp, payload: dict[str, Any]) -> None:
    """Hand ``payload`` to pywa as its webhook route would: parsed and dispatched by pywa."""
    answer = await wa.webhook_update_handler(body_of(payload))
    assert answer == ("ok", 200), answer


def run(scenario: Callable[[FakeCloudAPI, WhatsApp], Awaitable[None]]) -> FakeCloudAPI:
    """Run ``scenario`` on a new event loop with a client of a fake Cloud API; the API, stopped."""

    async def main() -> FakeCloudAPI:
        with fake_cloud_api() as api:
            async with cloud_api_client(api) as wa:
                await scenario(api, wa)
            return api

    return asyncio.run(main())


def stored(database_url: str, user: dict[str, str]) -> list[tuple[Any, ...]]:
    """The (role, content, chat) of every message the store keeps for a WhatsApp user: the
    private conversation's first, then each group's, in order."""
    with psycopg.connect(database_url) as conn:
        return conn.execute(
            "SELECT m.role, m.content, s.chat_id FROM session_messages m"
            " JOIN sessions s USING (session_id) JOIN users u ON u.user_id = s.user_id"
            " WHERE u.channel = 'whatsapp' AND u.channel_user_id = %s"
            " ORDER BY s.chat_id NULLS FIRST, m.seq",
            [user["user_id"]],
        ).fetchall()
