"""Every ```python block of README.md and docs/*.md runs, against a real database.

A block runs as a script (``__name__ == "__main__"``) with ``SESSIONKEEPER_DATABASE_URL``
pointing at the test's database. The names a block leaves to the reader (its LLM client, its
bot framework) come from ``Conversation``, a scripted chat; a block that needs any other name
fails here, naming it. After the block: every function it defined must have run, it must have
closed every store (connection pool) it opened, and when it consumed the conversation, the
replies, the prompts and what the database holds must be what the handler promises.

A Telegram bot block (aiogram, python-telegram-bot) runs against a fake Telegram Bot API server
on loopback (``TELEGRAM_API_URL``, ``TELEGRAM_BOT_TOKEN``): it delivers the conversation's
messages one at a time, each once the previous one was answered, as a user would, and stops the
bot with SIGINT (as an operator's Ctrl-C) once the last one was answered.

The cross-channel bot (docs/whatsapp.md: aiogram and pywa on one store) gets both fake servers,
a fake WhatsApp Cloud API and the part of Meta that posts signed webhooks to the bot; its chat
and what it must leave in the database are in cross_channel.py.

A block that is not meant to run (a sketch, a framework that is not installed) says so on the
line before it: ``<!-- not-run: the reason -->``. Such a block must still compile.
"""

from __future__ import annotations

import builtins
import gc
import os
import re
import signal
import symtable
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, FunctionType
from typing import Any

import psycopg
import pytest
from cross_channel import CrossChannel
from fake_telegram import TOKEN, FakeTelegram, fake_telegram, message_update
from psycopg_pool import AsyncConnectionPool, ConnectionPool

import store

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PYTHON = {"python", "py", "python3"}

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`\s]*)[^`]*$")
_NOT_RUN = re.compile(r"^\s*<!--\s*not-run:(?P<reason>.*?)-->\s*$")


@dataclass(frozen=True)
class Block:
    document: str  # path relative to the repository
    line: int  # of the opening fence
    source: str
    not_run: str | None  # the reason given by a not-run marker, None when unmarked

    @property
    def where(self) -> str:
        return f"{self.document}:{self.line}"


def python_blocks(text: str, document: str) -> list[Block]:
    """The fenced Python blocks of a Markdown text, with the not-run marker before each."""
    lines = text.splitlines()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        index += 1
        if not opening:
            continue
        fence, start = opening["fence"], index
        while index < len(lines) and not _closes(lines[index], fence):
            index += 1
        body, index = lines[start:index], index + 1
        if opening["info"].lower() in PYTHON:
            source = textwrap.dedent("\n".join(body)) + "\n"
            blocks.append(Block(document, start, source, _marker(lines[: start - 1])))
    return blocks


def _closes(line: str, fence: str) -> bool:
    stripped = line.strip()
    return stripped.startswith(fence) and set(stripped) == {fence[0]}


def _marker(before: list[str]) -> str | None:
    """The reason of a not-run marker on the last non-blank line before a block."""
    for line in reversed(before):
        if line.strip():
            marked = _NOT_RUN.match(line)
            return marked["reason"].strip() if marked else None
    return None


def free_names(block: Block) -> set[str]:
    """Global names the block reads but never binds, builtins aside: what it leaves to the
    reader."""
    table = symtable.symtable(block.source, block.where, "exec")
    bound = {s.get_name() for s in table.get_symbols() if s.is_assigned() or s.is_imported()}
    free: set[str] = set()

    def visit(scope: symtable.SymbolTable) -> None:
        for symbol in scope.get_symbols():
            module_level = scope.get_type() == "module"
            reads = symbol.is_referenced() if module_level else symbol.is_global()
            name = symbol.get_name()
            if reads and name not in bound and not hasattr(builtins, name):
                free.add(name)
        for child in scope.get_children():
            visit(child)

    visit(table)
    return free


# -- what a block leaves to the reader ---------------------------------------------------------


@dataclass(frozen=True)
class Usage:
    input: int
    output: int


@dataclass
class Conversation:
    """One user's chat: the messages a bot framework delivers, an echoing model, the replies
    sent. With ``rate_per_day=3`` the fourth message is refused (the database clock decides:
    only a UTC midnight between the first and the fourth message would admit it); the third
    holds a NUL, so its turn cannot be stored."""

    channel: str = "telegram"
    sender: str = "4242"
    messages: tuple[str, ...] = ("hello", "how are you?", "a NUL \x00 here", "one more")
    prompts: list[list[dict[str, str]]] = field(default_factory=list)
    sent: list[str] = field(default_factory=list)
    consumed: bool = False

    def incoming_messages(self) -> Iterator[tuple[str, str, str]]:
        self.consumed = True
        for text in self.messages:
            yield self.channel, self.sender, text

    async def incoming_messages_async(self) -> AsyncIterator[tuple[str, str, str]]:
        for message in self.incoming_messages():
            yield message

    def call_the_model(self, prompt: list[dict[str, str]]) -> tuple[str, Usage]:
        self.prompts.append(prompt)
        question = prompt[-1]["content"]
        return f"echo: {question}", Usage(input=len(question), output=len(question) + 6)

    async def call_the_model_async(self, prompt: list[dict[str, str]]) -> tuple[str, Usage]:
        return self.call_the_model(prompt)

    def send(self, channel: str, sender: str, reply: str) -> None:
        assert (channel, sender) == (self.channel, self.sender)
        self.sent.append(reply)

    async def send_async(self, channel: str, sender: str, reply: str) -> None:
        self.send(channel, sender, reply)

    @contextmanager
    def over_telegram(self) -> Iterator[FakeTelegram]:
        """A fake Telegram server that delivers these messages to a polling bot."""
        pending = list(enumerate(self.messages, start=1))

        def deliver_next() -> None:
            update_id, text = pending.pop(0)
            telegram.queue(message_update(update_id, int(self.sender), text))

        def answered(body: dict[str, Any]) -> None:
            assert int(body["chat_id"]) == int(self.sender)
            self.sent.append(str(body["text"]))
            if pending:
                deliver_next()
            else:  # the conversation is over: stop the bot as an operator would
                os.kill(os.getpid(), signal.SIGINT)

        with fake_telegram(answered) as telegram:
            deliver_next()
            yield telegram
            if telegram.delivered:
                self.consumed = True

    def names(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in PROVIDED}

    def check(self, database_url: str, logged: str) -> None:
        """What the documented handler (README.md, docs/store.md) promises for these messages."""
        hello, how, nul, _ = self.messages
        assert self.sent[:3] == [f"echo: {hello}", f"echo: {how}", f"echo: {nul}"]
        assert len(self.sent) == 4 and self.sent[3].startswith("Slow down a little: try again")
        # Each prompt holds the stored history, then the new message.
        assert [len(prompt) for prompt in self.prompts] == [1, 3, 5]
        assert self.prompts[2][:4] == [
            {"role": "user", "content": hello},
            {"role": "assistant", "content": f"echo: {hello}"},
            {"role": "user", "content": how},
            {"role": "assistant", "content": f"echo: {how}"},
        ]
        assert "not stored" in logged
        with psycopg.connect(database_url) as conn:
            stored = conn.execute(
                "SELECT m.role, m.content FROM session_messages m"
                " JOIN sessions s USING (session_id) JOIN users u ON u.user_id = s.user_id"
                " WHERE u.channel = %s AND u.channel_user_id = %s ORDER BY m.seq",
                (self.channel, self.sender),
            ).fetchall()
            tokens = conn.execute("SELECT count(*), sum(input_tokens) FROM usage_stats").fetchone()
        assert stored == [
            ("user", hello),
            ("assistant", f"echo: {hello}"),
            ("user", how),
            ("assistant", f"echo: {how}"),
        ]
        assert tokens == (2, len(hello) + len(how))


PROVIDED = (
    "call_the_model",
    "call_the_model_async",
    "incoming_messages",
    "incoming_messages_async",
    "send",
    "send_async",
)


# -- running a block ---------------------------------------------------------------------------


def run_block(block: Block, names: dict[str, Any]) -> tuple[dict[str, Any], set[object]]:
    """Execute the block as a script; returns its namespace and the code objects that ran."""
    code = compile(block.source, block.where, "exec")
    namespace: dict[str, Any] = {"__name__": "__main__", "__file__": block.where, **names}
    ran: set[object] = set()

    def profile(frame: FrameType, event: str, arg: object) -> None:
        if event == "call" and frame.f_code.co_filename == block.where:
            ran.add(frame.f_code)

    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        exec(code, namespace)
    finally:
        sys.setprofile(previous)
    return namespace, ran


def never_called(block: Block, namespace: dict[str, Any], ran: set[object]) -> list[str]:
    defined = [
        value
        for value in namespace.values()
        if isinstance(value, FunctionType) and value.__code__.co_filename == block.where
    ]
    return [function.__name__ for function in defined if function.__code__ not in ran]


def open_pools() -> set[int]:
    pools = (ConnectionPool, AsyncConnectionPool)
    return {id(o) for o in gc.get_objects() if isinstance(o, pools) and not o.closed}


def problems_before_running(block: Block) -> list[str]:
    if block.not_run is not None:
        compile(block.source, block.where, "exec")  # a sketch must still be Python
        return [] if block.not_run else [f"{block.where}: the not-run marker gives no reason"]
    unknown = sorted(free_names(block) - set(PROVIDED))
    if unknown:
        return [
            f"{block.where} leaves {', '.join(unknown)} to the reader: define them in the block,"
            " add them to the harness in tests/integration/test_readme.py, or mark the block"
            " <!-- not-run: reason -->"
        ]
    return []


BLOCKS = [
    block
    for document in DOCUMENTS
    for block in python_blocks(document.read_text(), str(document.relative_to(ROOT)))
]


@pytest.mark.parametrize("block", BLOCKS, ids=[block.where for block in BLOCKS])
def test_documented_block_runs(
    block: Block,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    problems = problems_before_running(block)
    assert not problems, "\n".join(problems)
    if block.not_run is not None:
        return
    monkeypatch.setenv("SESSIONKEEPER_DATABASE_URL", database_url)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("SESSIONKEEPER_RATE_PER_DAY", "3")
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", TOKEN)
    # docs/whatsapp.md's bot on both channels has a chat of its own (cross_channel.py).
    conversation = CrossChannel() if CrossChannel.runs(block.source) else Conversation()
    before = open_pools()
    try:
        with conversation.over_telegram() as telegram:
            monkeypatch.setenv("TELEGRAM_API_URL", telegram.url)
            namespace, ran = run_block(block, conversation.names())
    finally:
        left_open = open_pools() - before
        store.close_database()
    assert not left_open, f"{block.where} leaves {len(left_open)} store(s) open: close them"
    uncalled = never_called(block, namespace, ran)
    assert not uncalled, f"{block.where} defines {uncalled} but never runs them"
    if "TELEGRAM_BOT_TOKEN" in block.source:  # a bot: it must have talked to the fake server
        assert conversation.consumed, f"{block.where} never fetched the Telegram updates"
    if conversation.consumed:
        conversation.check(database_url, caplog.text)


def test_the_readme_and_the_store_api_have_runnable_blocks() -> None:
    def runnable(document: str) -> int:
        return len([b for b in BLOCKS if b.document == document and b.not_run is None])

    assert runnable("README.md") >= 1  # the bot of the front door
    assert runnable("docs/store.md") >= 3  # sync, async and the module-level calls


# -- the harness's own checks can fail ---------------------------------------------------------

SAMPLE = """
Text.

```python
answer = ask_the_oracle("why?")
```

<!-- not-run: needs a framework -->

```py
import somewhere_else
```

```sh
echo not python
```

<!-- not-run: -->
```python
x = 1
```
"""


def test_blocks_and_markers_are_found() -> None:
    blocks = python_blocks(SAMPLE, "SAMPLE.md")
    assert [(b.line, b.not_run, b.source) for b in blocks] == [
        (4, None, 'answer = ask_the_oracle("why?")\n'),
        (10, "needs a framework", "import somewhere_else\n"),
        (19, "", "x = 1\n"),
    ]
    unknown, marked, no_reason = (problems_before_running(block) for block in blocks)
    assert "leaves ask_the_oracle to the reader" in unknown[0]
    assert marked == [] and "gives no reason" in no_reason[0]


def test_free_names_are_the_ones_left_to_the_reader() -> None:
    source = """
import logging
log = logging.getLogger("x")
def handler(text):
    reply = call_the_model([text])
    log.info("%s", len(reply))
    return [word for word in reply if word not in STOP_WORDS]
class Bot:
    def go(self):
        return handler(send)
"""
    assert free_names(Block("x.md", 1, source, None)) == {"call_the_model", "STOP_WORDS", "send"}


def test_a_block_that_raises_or_leaves_a_function_unused_is_caught() -> None:
    raising = Block("x.md", 1, "raise RuntimeError('documented code is wrong')\n", None)
    with pytest.raises(RuntimeError, match="documented code is wrong"):
        run_block(raising, {})
    unused = Block("x.md", 1, "def used():\n    pass\ndef unused():\n    pass\nused()\n", None)
    namespace, ran = run_block(unused, {})
    assert never_called(unused, namespace, ran) == ["unused"]


def test_a_store_left_open_is_seen(database_url: str) -> None:
    before = open_pools()
    opened = store.Store(database_url, min_size=0)
    try:
        assert len(open_pools() - before) == 1
    finally:
        opened.close()
    assert open_pools() - before == set()
