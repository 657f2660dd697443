"""The export plans without a database: the statements in order, the fetch loop, the JSON
assembled from the rows, and the transaction ended on every path."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import pytest

import store
from store import export
from store.config import StoreConfig

from .in_memory import InMemoryDatabase, Rows, one

T0 = datetime(2026, 3, 2, 12, 0, 30, tzinfo=UTC)
USER = uuid4()


def database(messages: int, subject: Rows | None = None) -> InMemoryDatabase:
    """Every table empty but session_messages, which holds ``messages`` rows."""
    current: list[str] = []
    left = {"session_messages": messages}

    def fetch(step: Any) -> Rows:
        table = current[-1]
        n = min(export.FETCH_ROWS, left.get(table, 0))
        left[table] = left.get(table, 0) - n
        return [{"doc": json.dumps({"seq": left[table] + i})} for i in range(n)]

    def declare(table: str) -> Any:
        def answer(step: Any) -> Rows:
            current.append(table)
            return []

        return answer

    found = one(exported_at=T0, users=[USER], persons=[]) if subject is None else subject
    return InMemoryDatabase(
        export_begin=lambda step: [],
        export_time_zone=lambda step: [],
        export_subject=[found],
        export_fetch=fetch,
        export_close=lambda step: [],
        export_end=[[]],
        export_abandon=[[]],
        **{f"export_{table}": declare(table) for table in export.TABLES},
    )


def test_rows_are_fetched_in_chunks_and_written_as_one_document(config: StoreConfig) -> None:
    db, out = database(600), io.StringIO()
    done = db.call(export.export_user, config, str(USER), out)
    document = json.loads(out.getvalue())
    assert document["subject"] == {"user_id": str(USER)}
    assert list(document["tables"]) == list(export.TABLES)
    assert len(document["tables"]["session_messages"]) == 600 == done.rows["session_messages"]
    # 600 rows: fetches of 256, 256 and 88; an empty table stops at its first, short fetch.
    fetches = [step.name for step in db.sent].count("export_fetch")
    assert fetches == 3 + (len(export.TABLES) - 1)
    assert db.names()[:3] == ["export_begin", "export_time_zone", "export_subject"]
    assert db.names()[-1] == "export_end"


def test_an_unknown_subject_ends_the_transaction_and_writes_nothing(config: StoreConfig) -> None:
    db, out = database(0, subject=[]), io.StringIO()
    with pytest.raises(store.NotFound, match="does not exist"):
        db.call(export.export_person, config, USER, out)
    assert db.names()[-1] == "export_abandon" and out.getvalue() == ""


def test_a_failing_writer_ends_the_transaction(config: StoreConfig) -> None:
    class Broken:
        def write(self, text: str, /) -> int:
            raise BrokenPipeError("reader went away")

    db = database(10)
    with pytest.raises(BrokenPipeError):
        db.call(export.export_user, config, USER, Broken())
    assert db.names()[-1] == "export_abandon"


@pytest.mark.parametrize("out", [None, "file.json", 3])
def test_out_must_be_writable(config: StoreConfig, out: object) -> None:
    db = database(0)
    with pytest.raises(store.InvalidInput, match="out"):
        db.call(export.export_user, config, USER, out)  # type: ignore[arg-type]
    assert db.sent == []
