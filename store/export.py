"""Access export (GDPR articles 15 and 20), the counterpart of erasure: ``export_user`` and
``export_person`` write one JSON document of everything the store holds about a user, or about
a person and all its users: the same tables ``sk_forget`` erases (a test holds the two lists
and the database's catalog together).

The document is written as it is read, so its size does not matter: the plan opens a
read-only REPEATABLE READ transaction (one snapshot for the whole document), declares one
server-side cursor per table and fetches 256 rows at a time, each rendered as JSON by
PostgreSQL (``row_to_json``, timestamps in UTC) and written to ``out`` at once. A user with a
million messages costs the memory of one fetch.

Like every operation these are plans (see core.py), run by ``Store``/``AsyncStore`` methods
and by the module-level functions of the default store. ``out`` is written synchronously,
also from an ``AsyncStore``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol
from uuid import UUID

from . import core, errors, validate
from .config import StoreConfig

FORMAT = "sessionkeeper-export/1"
# Rows per fetch: ``FETCH FORWARD 256`` in queries.sql (export_fetch).
FETCH_ROWS = 256
# Every table about users or persons, in the order the document lists them; each is read by
# the named query ``export_<table>``.
TABLES = (
    "persons",
    "users",
    "sessions",
    "session_messages",
    "turn_receipts",
    "archived_sessions",
    "archived_session_messages",
    "legacy_quarantined_messages",
    "link_codes",
    "link_code_failures",
    "rate_limits",
    "aiogram_fsm_states",
    "telegram_persistence",
    "usage_stats",
    "usage_daily",
    "proactive_users",
    "proactive_user_list",
    "langgraph_threads",
    "langgraph_checkpoints",
    "langgraph_writes",
    "langgraph_blobs",
    "langgraph_lines",
    "langgraph_items",
)


class TextSink(Protocol):
    """Where the document goes: a text file, ``sys.stdout``, ``io.StringIO``..."""

    def write(self, text: str, /) -> object: ...


@dataclass(frozen=True)
class Exported:
    """What an export wrote: rows per table (every table is listed, empty ones with 0)."""

    rows: Mapping[str, int]


def export_user(config: StoreConfig, user_id: UUID | str, out: TextSink) -> core.Plan[Exported]:
    """Write everything the store holds about one user to ``out``, as one JSON document:
    the user, its person, sessions and archived sessions with every message, link codes,
    usage, rate-limit windows and proactive registration."""
    checked = validate.uuid(user_id, "user_id")
    subject = {"user_id": checked, "person_id": None}
    return _export(subject, validate.writer(out, "out"), f"user {checked} does not exist")


def export_person(config: StoreConfig, person_id: UUID | str, out: TextSink) -> core.Plan[Exported]:
    """Write everything the store holds about a person and every user linked to it to ``out``,
    as one JSON document (see ``export_user``)."""
    checked = validate.uuid(person_id, "person_id")
    subject = {"user_id": None, "person_id": checked}
    return _export(subject, validate.writer(out, "out"), f"person {checked} does not exist")


def _export(subject: Mapping[str, UUID | None], out: TextSink, missing: str) -> core.Plan[Exported]:
    yield core.Step("export_begin", {})
    try:
        yield core.Step("export_time_zone", {})
        found = yield core.Step("export_subject", subject)
        if not found:
            raise errors.NotFound(missing)
        head = {
            "format": FORMAT,
            "exported_at": found[0]["exported_at"].isoformat(),
            "subject": {key: str(value) for key, value in subject.items() if value is not None},
        }
        out.write(json.dumps(head, indent=1)[:-2] + ',\n "tables": {')
        users, persons = found[0]["users"], found[0]["persons"]
        rows: dict[str, int] = {}
        for i, table in enumerate(TABLES):
            out.write(f"{',' if i else ''}\n  {json.dumps(table)}: [")
            rows[table] = 0
            scope = {"persons": persons} if table == "persons" else {"users": users}
            yield core.Step(f"export_{table}", scope)
            while fetched := (yield core.Step("export_fetch", {})):
                for row in fetched:
                    out.write(f"{',' if rows[table] else ''}\n   {row['doc']}")
                    rows[table] += 1
                if len(fetched) < FETCH_ROWS:
                    break
            yield core.Step("export_close", {})
            out.write("\n  ]" if rows[table] else "]")
        out.write("\n }\n}\n")
    except GeneratorExit:  # the shell gave up on the plan (its database call failed)
        raise
    except BaseException:
        # The writer or the plan failed: end the transaction before the connection goes back.
        yield core.Step("export_abandon", {})
        raise
    yield core.Step("export_end", {})
    return Exported(rows)
