"""LangGraph checkpoints in the store's database (``pip install 'sessionkeeper[langgraph]'``).

``SessionkeeperSaver(db)`` over a ``Store`` and ``AsyncSessionkeeperSaver(db)`` over an
``AsyncStore`` are ``BaseCheckpointSaver``s with the sync and async methods: ``put``,
``put_writes``, ``get_tuple``, ``list``, ``delete_thread``, ``delete_for_runs``,
``copy_thread`` and ``prune``::

    saver = SessionkeeperSaver(db)
    graph = builder.compile(checkpointer=saver)
    turn = db.begin_turn("telegram", user_id)
    graph.invoke(inputs, thread_config(turn))

``thread_config(turn)`` names the thread after the turn's user and ties it to that user:
``forget_user``/``forget_person`` and user retention remove its checkpoints, and
``export_user`` lists them. Threads without a user (any other ``thread_id``) work the same but
no erasure reaches them.

Storage: a channel whose value is a ``list`` (LangGraph's message list) is stored in a line of
items; a later value that extends it stores only its new items, so a thread costs storage
linear in its conversation, not quadratic. The items are sealed into chunks as the line grows,
so reading a long thread decodes a few dozen rows, not one per message. Values that are plain
JSON are stored as JSON (the export shows them decoded); others as the serializer encodes them.

The ``put`` for a checkpoint and the ``put_writes`` for it may run concurrently (LangGraph saves
in the background); a saver makes ``put_writes`` wait for its own ``put`` of that checkpoint.
A write for a checkpoint that was never stored raises ``store.NotFound``; a thread id that is
not a string, or a value the serializer cannot encode, raises ``store.InvalidInput``: in both
cases nothing is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import math
import operator
import threading
import time
import weakref
import zlib
from collections import OrderedDict
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterator,
    Mapping,
    Sequence,
)
from concurrent.futures import Future
from importlib import resources
from itertools import repeat
from typing import Any, Concatenate, ParamSpec, TypeVar

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    get_serializable_checkpoint_metadata,
)
from langgraph.checkpoint.serde.base import SerializerProtocol
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from psycopg.types.json import Jsonb

from .. import core, validate
from ..client import AsyncStore, Store
from ..errors import InvalidInput, NotFound
from ..models import Turn
from ..queries import parse

__all__ = [
    "USER_KEY",
    "AsyncSessionkeeperSaver",
    "SessionkeeperSaver",
    "thread_config",
    "thread_id_for",
]


def _queries() -> dict[str, str]:
    """The statements of langgraph.sql; lg_get and lg_list each choose checkpoints, which
    lg_read reads whole (its ``{chosen}``)."""
    queries = parse(resources.files(__package__).joinpath("langgraph.sql").read_text("utf-8"))
    read = queries.pop("lg_read")
    for name in ("lg_get", "lg_list"):
        queries[name] = read.replace("{chosen}", queries[name])
    return queries


QUERIES = _queries()
# The configurable key that ties a thread to a store user (thread_config sets it).
USER_KEY = "sessionkeeper_user_id"
# Checkpoint fields stored in columns of their own rather than in the checkpoint's body.
_COLUMNS = frozenset({"id", "channel_versions", "channel_values"})
# Channel values kept inside the checkpoint row, as LangGraph's reference saver does.
_INLINE = (str, int, float, bool)
# How many (thread, namespace, channel) list values a saver remembers (see _Lines).
LINES_REMEMBERED = 256
# Values the serializer encodes (not JSON) larger than this are stored zlib-compressed, typed
# "zlib+<type>": rows this small are below PostgreSQL's own compression threshold (TOAST).
COMPRESS_OVER = 256
# A list's items are stored in rows of aligned chunks of these sizes (largest first), each
# decoded in one call, plus one row per put for the items since the last full chunk: a
# get_tuple of a long thread reads a few dozen rows, not one per message.
CHUNK_SIZES = (256, 16)
# The type of a row that holds several items: "chunk+" and the type of their list.
CHUNK = "chunk+"
# The encoder of values stored as JSON (json.dumps builds one per call with these options).
_JSON = json.JSONEncoder(ensure_ascii=False, allow_nan=False)
# How long a write may wait for the put of its checkpoint (see _Puts).
WRITES_WAIT = 10.0
T = TypeVar("T")
Key = tuple[str, str, str]
# The list rows one read decoded, by line and seq (see Plans._tuple).
Decoded = dict[tuple[int, int], list[Any]]


def thread_id_for(turn: Turn, conversation: str = "default") -> str:
    """The thread id of a user's conversation: ``sk:<user id>:<conversation>``. One thread per
    user by default; pass ``conversation=str(turn.session_id)`` for one per session, or a chat
    id for one per chat."""
    name = validate.text(conversation, "conversation")
    return f"sk:{turn.user.user_id}:{name}"


def thread_config(turn: Turn, conversation: str = "default", **configurable: Any) -> RunnableConfig:
    """The config for ``graph.invoke``: the thread of ``thread_id_for(turn, conversation)``,
    tied to the turn's user (erasure and export find it), plus ``configurable``."""
    return {
        "configurable": {
            **configurable,
            "thread_id": thread_id_for(turn, conversation),
            USER_KEY: str(turn.user.user_id),
        }
    }


def _text(value: object, field: str) -> str:
    if not isinstance(value, str):
        raise InvalidInput(
            f"{field} must be a string, not {type(value).__name__}", field=field, rule="type"
        )
    if "\x00" in value:
        raise InvalidInput(f"{field} must not hold NUL characters", field=field, rule="nul")
    return value


def _configurable(config: RunnableConfig | None) -> Mapping[str, Any]:
    if not isinstance(config, Mapping) or not isinstance(config.get("configurable"), Mapping):
        raise InvalidInput("config must be a mapping with a 'configurable' mapping", rule="shape")
    return config["configurable"]


def _optional_text(value: object, field: str) -> str | None:
    return None if value is None else _text(value, field)


def _is_json(value: object, depth: int = 0) -> bool:
    """Whether ``value`` survives a JSON round trip unchanged (exact types only; a dict that
    looks like a LangChain constructor would be revived, so it is left to the serializer).
    Leaves are checked in the loops, not by a call each: this runs on every put's checkpoint."""
    kind = type(value)
    if value is None or kind is str or kind is bool or kind is int:
        return True
    if kind is float:
        return math.isfinite(value)  # type: ignore[arg-type]
    if depth > 64:
        return False
    if kind is dict:
        if "lc" in value:  # type: ignore[operator]
            return False
        for key, item in value.items():  # type: ignore[attr-defined]
            if type(key) is not str:
                return False
            leaf = type(item)
            if not (leaf is str or leaf is int or item is None) and not _is_json(item, depth + 1):
                return False
        return True
    if kind is list:
        for item in value:  # type: ignore[attr-defined]
            leaf = type(item)
            if not (leaf is str or leaf is int or item is None) and not _is_json(item, depth + 1):
                return False
        return True
    return False


def _packed(kind: str, data: bytes | None) -> tuple[str, bytes | None]:
    """How a value is stored: compressed when the serializer's bytes are large."""
    if kind == "json" or data is None or len(data) <= COMPRESS_OVER:
        return kind, data
    return f"zlib+{kind}", zlib.compress(data, 6)


def _unpacked(kind: str, data: bytes | None) -> tuple[str, bytes | None]:
    if kind.startswith("zlib+") and data is not None:
        return kind.removeprefix("zlib+"), zlib.decompress(data)
    return kind, data


def _spans(start: int, length: int) -> Iterator[tuple[int, int]]:
    """Items ``start`` to ``length`` of a line as rows: whole aligned chunks of
    ``CHUNK_SIZES``, largest first, then the rest as one row. ``start`` is aligned to the
    smallest chunk size unless the span lies within one such chunk (see ``_rewrite_from``), so
    no row crosses the boundary of a chunk that a later put seals."""
    at = start
    while at < length:
        size = next(
            (s for s in CHUNK_SIZES if at % s == 0 and at + s <= length),
            length - at,
        )
        yield at, size
        at += size


def _rewrite_from(stored: int, length: int) -> int:
    """Where a put extending a line from ``stored`` to ``length`` items writes from: the start
    of the largest chunk it completes, whose rows it replaces by one; else its new items."""
    for size in CHUNK_SIZES:
        if stored // size < length // size:
            return stored // size * size
    return stored


class _Known:
    """A list channel value as stored: its line, and its items. Items that allow a weak
    reference (LangChain's messages do) are held by one: a bot holds them while a run uses
    them (LangGraph's reducers build each new list from them), and lets them go after it.
    Holding them kept each remembered thread's last read alive in the bot's process, many
    objects that made every full garbage collection slower (bench/RESULTS.md). Others (dicts,
    strings) are held."""

    __slots__ = ("_refs", "_weak", "length", "line")
    _refs: tuple[Any, ...]
    _weak: bool

    def __init__(self, line: int, objects: Sequence[Any], extended: _Known | None = None) -> None:
        """``extended``: a known value whose items ``objects`` starts with (its references
        are reused)."""
        self.line = line
        self.length = len(objects)
        start = extended.length if extended is not None and extended._weak else 0
        try:
            refs = tuple(map(weakref.ref, objects[start:]))
        except TypeError:
            self._refs = tuple(objects)
            self._weak = False
        else:
            self._refs = extended._refs + refs if extended is not None and start else refs
            self._weak = True

    def objects(self) -> Sequence[Any] | None:
        """The items, or None once one of them is gone (no later value can hold it)."""
        if not self._weak:
            return self._refs
        items = tuple(map(operator.call, self._refs))
        return None if any(map(operator.is_, items, repeat(None))) else items

    def gone(self) -> bool:
        """Whether its last item is gone: a value its bot no longer holds."""
        return self._weak and bool(self._refs) and self._refs[-1]() is None


class _Lines:
    """The line each recently written or read list channel is stored in, with its items: a
    value that starts with those items extends the line. LangGraph reads a thread before each
    run (``get_tuple``), which fills this for the threads being run; it holds the items of at
    most ``size`` (thread, namespace, channel) values, and forgets those whose items are gone
    (see ``_Known``). Shared by threads."""

    def __init__(self, size: int = LINES_REMEMBERED) -> None:
        self._size = size
        self._known: OrderedDict[Key, _Known] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Key) -> _Known | None:
        with self._lock:
            return self._known.get(key)

    def remember(self, key: Key, known: _Known) -> None:
        with self._lock:
            self._known[key] = known
            self._known.move_to_end(key)
            while len(self._known) > self._size:
                self._known.popitem(last=False)
            # The oldest first: lines of runs that ended, whose items their bots let go.
            while self._known and next(iter(self._known.values())).gone():
                self._known.popitem(last=False)

    def forget(self, thread_ids: Sequence[str]) -> None:
        gone = set(thread_ids)
        with self._lock:
            for key in [key for key in self._known if key[0] in gone]:
                del self._known[key]


class _ListValue:
    """A list channel value to store: how much of a known line it extends, and the rows to
    write. The items a known line holds are recognised by identity first (LangGraph's reducers
    build new lists of the same message objects), else by their encoding; on the common path
    only the new items are encoded, plus the line's last few when they fill a chunk."""

    def __init__(
        self, plans: Plans, key: Key, version: str, objects: list[Any], known: _Known | None
    ) -> None:
        self.plans = plans
        self.channel = key[2]
        self.version = version
        self.objects = objects
        self.line: int | None = None
        self.start = 0
        # The known value whose very items this one starts with (its references are reused).
        self.same: _Known | None = None
        if known and self._extends(known):
            self.line, self.start = known.line, known.length
        self.rows = self._rows()

    def _extends(self, known: _Known) -> bool:
        if known.length > len(self.objects):
            return False
        stored = known.objects()
        if stored is None:
            return False  # the bot let its items go: this value was not built from them
        if all(map(operator.is_, stored, self.objects)):
            self.same = known
            return True
        what = f"channel {self.channel}"
        dump = self.plans.dump
        head = self.objects[: len(stored)]
        return all(dump(a, what) == dump(b, what) for a, b in zip(stored, head, strict=True))

    def _rows(self) -> list[tuple[int, str, bytes | None]]:
        """The rows from where this put writes: one item as it is encoded, several as one
        list typed ``chunk+<type>`` (decoded in one call)."""
        rows = []
        what = f"channel {self.channel}"
        for at, size in _spans(_rewrite_from(self.start, len(self.objects)), len(self.objects)):
            if size == 1:
                kind, data = _packed(*self.plans.dump(self.objects[at], what))
            else:
                kind, data = _packed(*self._chunk(self.objects[at : at + size], what))
                kind = CHUNK + kind
            rows.append((at, kind, data))
        return rows

    def _chunk(self, items: list[Any], what: str) -> tuple[str, bytes]:
        try:
            return self.plans.dump(items, what)
        except InvalidInput:
            for item in items:  # the error names the item that cannot be encoded
                self.plans.dump(item, what)
            raise

    def anew(self) -> None:
        """Store the whole value on a new line (the line to extend was forked or collected)."""
        self.line, self.start, self.same = None, 0, None
        self.rows = self._rows()


class Plans:
    """The checkpointer's operations as store plans (see store/core.py): every decision and
    encoding is here, shared by the sync and the async saver, which only run the plans."""

    def __init__(self, serde: SerializerProtocol) -> None:
        self.serde = serde
        # Plain JSON is stored as JSON only under LangGraph's own serializer (which reads it
        # back): a custom one (encryption...) sees every value.
        self.json = type(serde) is JsonPlusSerializer
        self.lines = _Lines()

    # -- encoding --------------------------------------------------------------------------

    def dump(self, value: object, what: str) -> tuple[str, bytes]:
        if self.json and _is_json(value):
            try:
                text = _JSON.encode(value)
                if "\\u0000" not in text:  # jsonb (the export) refuses NUL
                    return "json", text.encode()
            except (ValueError, UnicodeEncodeError, RecursionError):
                pass
        try:
            kind, data = self.serde.dumps_typed(value)
        except Exception as exc:
            raise InvalidInput(
                f"{what}: the serializer cannot encode {type(value).__name__} ({exc});"
                " nothing was written",
                field=what,
                rule="type",
            ) from None
        return kind, bytes(data)

    def load(self, kind: str, data: bytes | None) -> Any:
        kind, data = _unpacked(kind, data)
        if kind == "json":
            return json.loads(data or b"null")
        return self.serde.loads_typed((kind, data or b""))

    def _metadata(self, config: RunnableConfig, metadata: CheckpointMetadata) -> str:
        document = get_serializable_checkpoint_metadata(config, metadata)
        try:
            text = json.dumps(document, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InvalidInput(
                f"checkpoint metadata must be JSON: {exc}", field="metadata", rule="json"
            ) from None
        if "\\u0000" in text:
            raise InvalidInput(
                "checkpoint metadata must not hold NUL characters", field="metadata", rule="nul"
            )
        return text

    # -- the operations ----------------------------------------------------------------------

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> core.Plan[RunnableConfig]:
        conf = _configurable(config)
        thread_id = _text(conf.get("thread_id"), "thread_id")
        ns = _text(conf.get("checkpoint_ns", ""), "checkpoint_ns")
        parent_id = _optional_text(conf.get("checkpoint_id"), "checkpoint_id")
        checkpoint_id = _text(checkpoint.get("id"), "checkpoint id")
        user_id = conf.get(USER_KEY)
        user = None if user_id is None else validate.uuid(user_id, USER_KEY)
        values = checkpoint["channel_values"]
        inline = {k: v for k, v in values.items() if v is None or type(v) in _INLINE}
        # Its id and channel_versions are columns of their own: not stored twice.
        head = {k: v for k, v in checkpoint.items() if k not in _COLUMNS}
        kind, data = self.dump({**head, "channel_values": inline}, "checkpoint")
        plain: list[tuple[str, str, str, bytes | None]] = []
        lists: list[_ListValue] = []
        for channel, version in new_versions.items():
            if channel in inline:
                continue
            if channel not in values:
                continue  # no value at this version: no row, read back as absent
            if type(values[channel]) is list:
                key = (thread_id, ns, channel)
                known = self.lines.get(key)
                lists.append(_ListValue(self, key, str(version), values[channel], known))
            else:
                packed = _packed(*self.dump(values[channel], channel))
                plain.append((channel, str(version), *packed))
        params = {
            "thread_id": thread_id,
            "checkpoint_ns": ns,
            "checkpoint_id": checkpoint_id,
            "parent_id": parent_id,
            "user_id": user,
            "type": kind,
            "checkpoint": data,
            "versions": json.dumps(dict(checkpoint["channel_versions"])),
            "metadata": self._metadata(config, metadata),
            **_arrays(plain, "channels", "channel_versions", "types", "data"),
        }
        rows = yield core.Step("lg_put", {**params, **_list_params(lists)}, queries=QUERIES)
        if any(row["line_id"] is None for row in rows):
            # A line was extended by another checkpoint (a fork) or collected: nothing was
            # written; those values go to new lines.
            failed = {row["channel"] for row in rows}
            for value in lists:
                if value.channel in failed:
                    value.anew()
            rows = yield core.Step("lg_put", {**params, **_list_params(lists)}, queries=QUERIES)
        line_of = {row["channel"]: row["line_id"] for row in rows}
        for value in lists:
            known = _Known(line_of[value.channel], value.objects, value.same)
            self.lines.remember((thread_id, ns, value.channel), known)
        return {
            "configurable": {
                "thread_id": thread_id,
                "checkpoint_ns": ns,
                "checkpoint_id": checkpoint_id,
            }
        }

    def put_writes(self, params: Mapping[str, Any]) -> core.Plan[None]:
        """Writes encoded by ``writes_params`` (the saver encodes them before it waits)."""
        rows = yield core.Step("lg_put_writes", params, queries=QUERIES)
        if not rows[0]["found"]:
            raise NotFound(
                f"checkpoint {params['checkpoint_id']!r} of thread {params['thread_id']!r}"
                f" (namespace {params['checkpoint_ns']!r}) is not stored: nothing was written"
            )

    def writes_params(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str,
    ) -> dict[str, Any]:
        conf = _configurable(config)
        encoded = [
            (
                WRITES_IDX_MAP.get(channel, idx),
                _text(channel, "channel"),
                *_packed(*self.dump(value, channel)),
            )
            for idx, (channel, value) in enumerate(writes)
        ]
        return {
            "thread_id": _text(conf.get("thread_id"), "thread_id"),
            "checkpoint_ns": _text(conf.get("checkpoint_ns", ""), "checkpoint_ns"),
            "checkpoint_id": _text(conf.get("checkpoint_id"), "checkpoint_id"),
            "task_id": _text(task_id, "task_id"),
            "task_path": _text(task_path, "task_path"),
            "idxs": [w[0] for w in encoded],
            "channels": [w[1] for w in encoded],
            "types": [w[2] for w in encoded],
            "data": [w[3] for w in encoded],
        }

    def get_tuple(self, config: RunnableConfig) -> core.Plan[CheckpointTuple | None]:
        conf = _configurable(config)
        params = {
            "thread_id": _text(conf.get("thread_id"), "thread_id"),
            "checkpoint_ns": _text(conf.get("checkpoint_ns", ""), "checkpoint_ns"),
            "checkpoint_id": _optional_text(conf.get("checkpoint_id"), "checkpoint_id"),
        }
        rows = yield core.Step("lg_get", params, queries=QUERIES)
        return self._tuple(rows[0], {}, remember=True) if rows else None

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: Mapping[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> core.Plan[list[CheckpointTuple]]:
        conf = _configurable(config) if config is not None else {}
        before_id = None
        if before is not None:
            before_id = _optional_text(_configurable(before).get("checkpoint_id"), "before")
        try:
            wanted = json.dumps(dict(filter or {}), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"filter must be JSON: {exc}", field="filter") from None
        if limit is not None and (type(limit) is not int or limit < 0):
            raise InvalidInput("limit must be a non-negative integer", field="limit")
        params = {
            "thread_id": _optional_text(conf.get("thread_id"), "thread_id"),
            "checkpoint_ns": _optional_text(conf.get("checkpoint_ns"), "checkpoint_ns"),
            "checkpoint_id": _optional_text(conf.get("checkpoint_id"), "checkpoint_id"),
            "before": before_id,
            "filter": Jsonb(None, dumps=lambda _: wanted),
            "limit": limit,
        }
        rows = yield core.Step("lg_list", params, queries=QUERIES)
        # The checkpoints of a thread share their line's rows: each is decoded once.
        decoded: Decoded = {}
        return [self._tuple(row, decoded, remember=False) for row in rows]

    def delete_threads(self, thread_ids: Sequence[str]) -> core.Plan[None]:
        ids = _thread_ids(thread_ids)
        self.lines.forget(ids)
        yield core.Step("lg_delete_threads", {"thread_ids": ids}, queries=QUERIES)

    def delete_for_runs(self, run_ids: Sequence[str]) -> core.Plan[None]:
        ids = [_text(run_id, "run_id") for run_id in _sequence(run_ids, "run_ids")]
        rows = yield core.Step("lg_delete_runs", {"run_ids": ids}, queries=QUERIES)
        threads = rows[0]["thread_ids"]
        if threads:
            yield core.Step("lg_collect", {"thread_ids": threads}, queries=QUERIES)

    def copy_thread(self, source: str, target: str) -> core.Plan[None]:
        params = {"source": _text(source, "source_thread_id"), "target": _text(target, "target")}
        yield core.Step("lg_copy_thread", params, queries=QUERIES)

    def prune(self, thread_ids: Sequence[str], strategy: str) -> core.Plan[None]:
        ids = _thread_ids(thread_ids)
        if strategy == "delete":
            yield from self.delete_threads(ids)
        elif strategy == "keep_latest":
            if ids:
                yield core.Step("lg_keep_latest", {"thread_ids": ids}, queries=QUERIES)
                yield core.Step("lg_collect", {"thread_ids": ids}, queries=QUERIES)
        else:
            raise InvalidInput(
                f"unknown prune strategy {strategy!r}: use 'keep_latest' or 'delete'",
                field="strategy",
            )

    # -- decoding ----------------------------------------------------------------------------

    def _tuple(
        self,
        row: Mapping[str, Any],
        decoded: Decoded,
        *,
        remember: bool,
    ) -> CheckpointTuple:
        """A checkpoint from its row; ``decoded`` holds the list rows decoded so far (by line
        and seq), whose items the checkpoints of one ``list`` share, as they share the rows."""
        thread_id, ns = row["thread_id"], row["checkpoint_ns"]
        checkpoint = self.load(row["type"], row["checkpoint"])
        checkpoint["id"] = row["checkpoint_id"]
        checkpoint["channel_versions"] = row["versions"]
        values = checkpoint["channel_values"] = dict(checkpoint.get("channel_values") or {})
        lists: dict[str, list[Any]] = {}
        lines: dict[str, int] = {}
        for channel, kind, data, seq, line, length in zip(
            row["v_channels"] or (),
            row["v_types"] or (),
            row["v_data"] or (),
            row["v_seqs"] or (),
            row["v_lines"] or (),
            row["v_lengths"] or (),
            strict=True,
        ):
            if seq == -1:
                if kind != "empty":
                    values[channel] = self.load(kind, data)
                continue
            items = lists.setdefault(channel, [])
            lines[channel] = line
            if seq is None:
                continue  # an empty list
            found = decoded.get((line, seq))
            if found is None:
                if kind.startswith(CHUNK):
                    found = self.load(kind.removeprefix(CHUNK), data)
                else:
                    found = [self.load(kind, data)]
                decoded[line, seq] = found
            items.extend(found)
            # A chunk may hold items a later checkpoint added to the line.
            del items[length:]
        values.update(lists)
        if remember:
            for channel, line in lines.items():
                self.lines.remember((thread_id, ns, channel), _Known(line, lists[channel]))
        writes = [
            (task, channel, self.load(kind, data))
            for task, channel, kind, data in zip(
                row["w_tasks"] or (),
                row["w_channels"] or (),
                row["w_types"] or (),
                row["w_data"] or (),
                strict=True,
            )
        ]
        parent = row["parent_checkpoint_id"]
        return CheckpointTuple(
            config=_config(thread_id, ns, row["checkpoint_id"]),
            checkpoint=checkpoint,
            metadata=row["metadata"],
            parent_config=_config(thread_id, ns, parent) if parent else None,
            pending_writes=writes,
        )


def _config(thread_id: str, ns: str, checkpoint_id: str) -> RunnableConfig:
    return {
        "configurable": {
            "thread_id": thread_id,
            "checkpoint_ns": ns,
            "checkpoint_id": checkpoint_id,
        }
    }


def _sequence(values: object, field: str) -> Sequence[Any]:
    if isinstance(values, str | bytes) or not isinstance(values, Sequence):
        raise InvalidInput(
            f"{field} must be a sequence of strings, not a single value", field=field
        )
    return values


def _thread_ids(thread_ids: object) -> list[str]:
    if isinstance(thread_ids, str):
        return [_text(thread_ids, "thread_id")]
    return [_text(t, "thread_id") for t in _sequence(thread_ids, "thread_ids")]


def _arrays(rows: Sequence[tuple[Any, ...]], *names: str) -> dict[str, list[Any] | None]:
    """The fields of ``rows`` as parallel arrays, by name; NULL when there are none, which
    ``sk_langgraph_put`` reads as empty: psycopg adapts each array it is given anew (its
    element type is found by scanning it), a share of a put's client time."""
    if not rows:
        return dict.fromkeys(names)
    return dict(zip(names, map(list, zip(*rows, strict=True)), strict=True))


def _list_params(lists: Sequence[_ListValue]) -> dict[str, Any]:
    values = [(v.channel, v.version, v.line, v.start, len(v.objects)) for v in lists]
    rows = [(k, *row) for k, value in enumerate(lists, start=1) for row in value.rows]
    return {
        **_arrays(values, "list_channels", "list_versions", "list_lines", "list_from", "list_to"),
        **_arrays(rows, "item_lists", "item_seqs", "item_types", "item_data"),
    }


class _Puts:
    """This saver's puts, for ``put_writes``: LangGraph saves a checkpoint in the background
    and may send the writes for it before that put even started (it waits for the put before
    it). A write the database refuses for want of its checkpoint waits, at most
    ``WRITES_WAIT`` seconds, for this saver's put of it when a put of the same thread and
    namespace is running or just ran, then tries again; otherwise the refusal stands. The
    caller holds its lock (a ``threading`` or an ``asyncio`` condition) or runs on the one
    event loop."""

    def __init__(self) -> None:
        self.running: dict[tuple[object, object], int] = {}
        self.finished: OrderedDict[tuple[object, object, object], float] = OrderedDict()

    def start(self, key: tuple[object, object, object]) -> None:
        self.running[key[:2]] = self.running.get(key[:2], 0) + 1

    def finish(self, key: tuple[object, object, object]) -> None:
        left = self.running[key[:2]] - 1
        if left:
            self.running[key[:2]] = left
        else:
            del self.running[key[:2]]
        self.finished[key] = time.monotonic()
        self.finished.move_to_end(key)
        while len(self.finished) > LINES_REMEMBERED:
            self.finished.popitem(last=False)

    def may_come(self, key: tuple[object, object, object]) -> bool:
        """Whether a put of ``key`` has come or may still come: its thread is being saved."""
        if key in self.finished or key[:2] in self.running:
            return True
        recent = time.monotonic() - WRITES_WAIT
        return any(k[:2] == key[:2] and at > recent for k, at in reversed(self.finished.items()))

    def done(self, key: tuple[object, object, object]) -> bool:
        return key in self.finished


class _Saver(BaseCheckpointSaver[str]):
    """What both savers share: the plans, and ``put_writes`` waiting for this saver's ``put``
    of the same checkpoint (LangGraph runs them concurrently)."""

    def __init__(self, *, serde: SerializerProtocol | None = None) -> None:
        super().__init__(serde=serde)
        self.plans = Plans(self.serde)

    @staticmethod
    def _key(config: RunnableConfig) -> tuple[object, object, object]:
        conf = config.get("configurable") or {}
        return conf.get("thread_id"), conf.get("checkpoint_ns", ""), conf.get("checkpoint_id")


P = ParamSpec("P")


def _in_thread(
    method: Callable[Concatenate[SessionkeeperSaver, P], T],
) -> Callable[Concatenate[SessionkeeperSaver, P], Coroutine[Any, Any, T]]:
    """The async twin of a sync saver method: the method, run in a worker thread. Looked up
    by name on each call, as ``self.put`` would be (a subclass may override it)."""

    async def twin(self: SessionkeeperSaver, /, *args: P.args, **kwargs: P.kwargs) -> T:
        bound: Callable[P, T] = getattr(self, method.__name__)
        return await asyncio.to_thread(bound, *args, **kwargs)

    return functools.wraps(method)(twin)


def _on_loop(
    method: Callable[Concatenate[AsyncSessionkeeperSaver, P], Awaitable[T]],
) -> Callable[Concatenate[AsyncSessionkeeperSaver, P], T]:
    """The sync twin of an async saver method: the method, run on the saver's event loop
    (looked up by name on each call, as ``_in_thread``'s)."""

    def twin(self: AsyncSessionkeeperSaver, /, *args: P.args, **kwargs: P.kwargs) -> T:
        bound: Callable[P, Awaitable[T]] = getattr(self, method.__name__)
        return self._block(lambda: bound(*args, **kwargs))

    return functools.wraps(method)(twin)


class SessionkeeperSaver(_Saver):
    """A LangGraph checkpointer on a ``store.Store``. Its async methods run the sync ones in a
    worker thread (``asyncio.to_thread``); an asyncio bot uses ``AsyncSessionkeeperSaver``."""

    def __init__(self, db: Store, *, serde: SerializerProtocol | None = None) -> None:
        if not isinstance(db, Store):
            raise InvalidInput(
                f"SessionkeeperSaver needs a store.Store (got {type(db).__name__});"
                " use AsyncSessionkeeperSaver with an AsyncStore"
            )
        super().__init__(serde=serde)
        self.db = db
        self._puts = _Puts()
        self._puts_changed = threading.Condition()

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        plan = self.plans.put(config, checkpoint, metadata, new_versions)
        key = (*self._key(config)[:2], checkpoint.get("id"))
        with self._puts_changed:
            self._puts.start(key)
        try:
            return self.db.execute(plan)
        finally:
            with self._puts_changed:
                self._puts.finish(key)
                self._puts_changed.notify_all()

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        key = self._key(config)
        params = self.plans.writes_params(config, writes, task_id, task_path)
        try:
            self.db.execute(self.plans.put_writes(params))
            return
        except NotFound:
            with self._puts_changed:
                if not self._puts.may_come(key):
                    raise
                self._puts_changed.wait_for(lambda: self._puts.done(key), timeout=WRITES_WAIT)
        self.db.execute(self.plans.put_writes(params))

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return self.db.execute(self.plans.get_tuple(config))

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        plan = self.plans.list(config, filter=filter, before=before, limit=limit)
        yield from self.db.execute(plan)

    def delete_thread(self, thread_id: str) -> None:
        self.db.execute(self.plans.delete_threads([thread_id]))

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        self.db.execute(self.plans.delete_for_runs(run_ids))

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        self.db.execute(self.plans.copy_thread(source_thread_id, target_thread_id))

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        self.db.execute(self.plans.prune(thread_ids, strategy))

    # The async methods: the sync ones, run in a worker thread.
    aput = _in_thread(put)
    aput_writes = _in_thread(put_writes)
    aget_tuple = _in_thread(get_tuple)
    adelete_thread = _in_thread(delete_thread)
    adelete_for_runs = _in_thread(delete_for_runs)
    acopy_thread = _in_thread(copy_thread)
    aprune = _in_thread(prune)

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        plan = self.plans.list(config, filter=filter, before=before, limit=limit)
        for item in await asyncio.to_thread(self.db.execute, plan):
            yield item


class AsyncSessionkeeperSaver(_Saver):
    """A LangGraph checkpointer on a ``store.AsyncStore``. Its sync methods (``graph.invoke``
    from another thread) run the async ones on the event loop the saver was first used on;
    called from that loop's own thread they would deadlock, and raise ``InvalidInput``."""

    def __init__(self, db: AsyncStore, *, serde: SerializerProtocol | None = None) -> None:
        if not isinstance(db, AsyncStore):
            raise InvalidInput(
                f"AsyncSessionkeeperSaver needs a store.AsyncStore (got {type(db).__name__});"
                " use SessionkeeperSaver with a Store"
            )
        super().__init__(serde=serde)
        self.db = db
        self._puts = _Puts()
        self._puts_changed: asyncio.Condition | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    async def _run(self, plan: core.Plan[T]) -> T:
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
        return await self.db.execute(plan)

    def _block(self, call: Callable[[], Awaitable[T]]) -> T:
        loop = self.loop
        if loop is None or loop.is_closed():
            raise InvalidInput(
                "the sync methods of AsyncSessionkeeperSaver run on its event loop: use the"
                " async ones (ainvoke) first, or SessionkeeperSaver with a Store"
            )
        try:
            if asyncio.get_running_loop() is loop:
                raise InvalidInput(
                    "a sync method of AsyncSessionkeeperSaver was called on its own event"
                    " loop: use the async method (ainvoke, aget_tuple...)"
                )
        except RuntimeError:
            pass  # no loop in this thread: the normal case

        async def run() -> T:
            return await call()

        future: Future[T] = asyncio.run_coroutine_threadsafe(run(), loop)
        return future.result()

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        plan = self.plans.put(config, checkpoint, metadata, new_versions)
        key = (*self._key(config)[:2], checkpoint.get("id"))
        self._puts.start(key)  # one event loop: no lock needed to count
        try:
            return await self._run(plan)
        finally:
            self._puts.finish(key)
            async with self._changed():
                self._changed().notify_all()

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        key = self._key(config)
        params = self.plans.writes_params(config, writes, task_id, task_path)
        try:
            await self._run(self.plans.put_writes(params))
            return
        except NotFound:
            if not self._puts.may_come(key):
                raise
        async with self._changed():
            # On timeout the checkpoint is still missing, and the plan says so again.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._changed().wait_for(lambda: self._puts.done(key)), WRITES_WAIT
                )
        await self._run(self.plans.put_writes(params))

    def _changed(self) -> asyncio.Condition:
        if self._puts_changed is None:
            self._puts_changed = asyncio.Condition()
        return self._puts_changed

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return await self._run(self.plans.get_tuple(config))

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        plan = self.plans.list(config, filter=filter, before=before, limit=limit)
        for item in await self._run(plan):
            yield item

    async def adelete_thread(self, thread_id: str) -> None:
        await self._run(self.plans.delete_threads([thread_id]))

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        await self._run(self.plans.delete_for_runs(run_ids))

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        await self._run(self.plans.copy_thread(source_thread_id, target_thread_id))

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        await self._run(self.plans.prune(thread_ids, strategy))

    # The sync methods: the async ones, run on the saver's event loop (see _block).
    put = _on_loop(aput)
    put_writes = _on_loop(aput_writes)
    get_tuple = _on_loop(aget_tuple)
    delete_thread = _on_loop(adelete_thread)
    delete_for_runs = _on_loop(adelete_for_runs)
    copy_thread = _on_loop(acopy_thread)
    prune = _on_loop(aprune)

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        plan = self.plans.list(config, filter=filter, before=before, limit=limit)
        yield from self._block(lambda: self._run(plan))
