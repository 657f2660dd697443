"""The daemon's HTTP port: ``/metrics``, ``/healthz`` and ``/readyz``.

A small HTTP/1.x server on its own asyncio loop, so that an open connection costs a socket and
no thread: a client that trickles its request (or never ends it) cannot hold threads, and
/healthz keeps answering. Bounds (docs/security.md):

* the request line and headers must arrive within ``read_timeout`` seconds, in total (a byte
  now and then does not extend it), and within 8 KiB; else the connection is closed;
* at most ``max_connections`` are open: a new one evicts the oldest still sending its request,
  so slow clients make room for a scrape or a probe;
* one request per connection (``Connection: close``); HTTP/0.9 and anything that is not an
  HTTP/1.x request line is closed without a reply;
* the answers that need work (/metrics, /readyz: a database round trip) run on two worker
  threads, the only threads the server has beside its loop;
* errors are logged at debug through ``sessionkeeper.metrics``, never printed as tracebacks;
  when file descriptors run out, asyncio pauses accepting for a second (no busy loop).
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

log = logging.getLogger("sessionkeeper.metrics")

Readiness = Callable[[], tuple[bool, str]]

MAX_HEAD_BYTES = 8192
REQUEST_LINE = re.compile(rb"(GET|HEAD) (\S+) HTTP/1\.[01]\r?\n")
REASONS = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}
TEXT = "text/plain; charset=utf-8"
# The head was too long, or the client left before finishing it.
_CUT_SHORT = (asyncio.LimitOverrunError, asyncio.IncompleteReadError)


class BadRequest(Exception):
    """Not an HTTP/1.x GET or HEAD: the connection is closed without a reply."""


class MetricsServer:
    """``/metrics``, ``/healthz`` (the process answers) and ``/readyz`` on one port."""

    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        readiness: Readiness,
        *,
        read_timeout: float = 5,
        max_connections: int = 256,
    ) -> None:
        self.registry = registry
        self.readiness = readiness
        self.read_timeout = read_timeout
        self.max_connections = max_connections
        # Open connections, oldest first; those still reading their request are evictable.
        self._open: dict[asyncio.StreamWriter, bool] = {}
        self._workers = ThreadPoolExecutor(2, thread_name_prefix="metrics-http-worker")
        self._loop = asyncio.new_event_loop()
        self._loop.set_exception_handler(_log_loop_error)
        self._loop.set_default_executor(self._workers)  # getaddrinfo's too: no other threads
        try:
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._connection, host, port, limit=MAX_HEAD_BYTES)
            )
        except BaseException:
            self._loop.close()
            self._workers.shutdown()
            raise
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="metrics-http", daemon=True
        )

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        async def close() -> None:
            self._server.close()
            for writer in list(self._open):
                writer.transport.abort()
            await self._server.wait_closed()
            # Connections still being handled end here, not as pending tasks of a closed loop.
            pending = asyncio.all_tasks() - {asyncio.current_task()}
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        else:
            self._loop.run_until_complete(close())
        self._loop.close()
        self._workers.shutdown(wait=False, cancel_futures=True)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        if not self._make_room():
            log.debug("closed %s: %d connections open", peer, len(self._open))
            writer.transport.abort()
            return
        self._open[writer] = True
        try:
            try:
                async with asyncio.timeout(self.read_timeout):
                    method, path, headers = await _read_head(reader)
            except (TimeoutError, BadRequest, ConnectionError, *_CUT_SHORT) as exc:
                log.debug("closed %s without a reply: %s", peer, type(exc).__name__)
                return
            self._open[writer] = False
            status, body, content_type = await self._answer(path, headers)
            head = (
                f"HTTP/1.1 {status} {REASONS.get(status, '')}\r\n"
                f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n"
            )
            writer.write(head.encode() + (b"" if method == "HEAD" else body))
            async with asyncio.timeout(self.read_timeout):
                await writer.drain()
            log.debug("%s %s %s %d", peer, method, path, status)
        except Exception:
            log.debug("request from %s failed", peer, exc_info=True)
        finally:
            self._open.pop(writer, None)
            writer.transport.abort()

    def _make_room(self) -> bool:
        """Below the cap, or made so by closing the oldest connection still sending its
        request; False when every open connection is being answered."""
        if len(self._open) < self.max_connections:
            return True
        oldest = next((w for w, reading in self._open.items() if reading), None)
        if oldest is None:
            return False
        log.debug("%d connections open: closing the oldest unfinished request", len(self._open))
        self._open.pop(oldest)
        oldest.transport.abort()
        return True

    async def _answer(self, path: str, headers: dict[str, str]) -> tuple[int, bytes, str]:
        if path == "/healthz":
            return 200, b"ok\n", TEXT
        loop = asyncio.get_running_loop()
        if path == "/metrics":
            encoder, content_type = choose_encoder(headers.get("accept", ""))
            body = await loop.run_in_executor(self._workers, encoder, self.registry)
            return 200, body, content_type
        if path == "/readyz":
            ready, reason = await loop.run_in_executor(self._workers, self.readiness)
            return (200 if ready else 503), f"{reason}\n".encode(), TEXT
        return 404, b"not found: try /metrics, /healthz or /readyz\n", TEXT


async def _read_head(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str]]:
    """The request's method, path (without its query) and headers (lower-case names)."""
    line = await reader.readuntil(b"\n")
    match = REQUEST_LINE.fullmatch(line)
    if match is None:
        raise BadRequest(line[:40])
    headers: dict[str, str] = {}
    size = len(line)
    while True:
        line = await reader.readuntil(b"\n")
        size += len(line)
        if size > MAX_HEAD_BYTES:
            raise BadRequest("request head too long")
        if line in (b"\r\n", b"\n"):
            break
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep:
            raise BadRequest("malformed header")
        headers[name.strip().lower()] = value.strip()
    method, target = match.group(1).decode(), match.group(2).decode("latin-1")
    return method, target.split("?", 1)[0], headers


def _log_loop_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    # asyncio's own reports (e.g. accept() failing with EMFILE, retried after a second).
    log.debug("metrics server: %s", context.get("message"), exc_info=context.get("exception"))
