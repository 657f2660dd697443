"""The schema distributed over Citus, on paper: where each table goes and the DDL that puts it
there (``sessionkeeper citus-ddl``). docs/scaling.md explains the choices.

Distribution column: ``user_id``. Every row the hot path touches belongs to one user (sessions,
their messages, rate-limit windows, usage, link codes), every hot-path function takes the user
id (``sk_check_rate_limit(p_user_id, ...)``), and a user never changes. ``person_id`` would
not do: it is NULL until a user links a second channel, and redeeming a link code re-points
users to another person, which would move rows between shards.

Placement, derived from ``store.schema`` so that a new table cannot be forgotten:

* a table with a ``user_id`` column is distributed by it, co-located with ``users``. Where the
  column is still nullable (``session_messages`` and ``turn_receipts``, revision 0014: a
  trigger fills it for bots of release 0.1.0), the DDL makes it NOT NULL (the validated CHECK
  proves it without a scan) and drops the trigger: no bot of 0.1.0 may run on Citus;
* a table without one whose foreign key leads to such a table (the archive's messages) gets
  the column, filled from its parent, and is distributed the same way;
* ``persons`` is a reference table (small, written only when a link is redeemed; ``users``
  refers to it, which Citus allows from a distributed table to a reference table), and so is
  ``usage_rollup_state`` (the rollup's one-row watermark). Note: the watermark counts rows by
  transaction id, which on Citus is per node; the rollup would need Citus's distributed
  transaction ids first (docs/partitions.md);
* ``job_runs`` (the daemon's ledger), ``job_probes`` (its yield probe), ``applied_functions``,
  ``proactive_list_state`` and ``aiogram_fsm_states`` stay plain tables on the coordinator (see
  ``COORDINATOR_TABLES``);
* any other table stops the generator until someone decides.

Users are found by their id, ``sk_user_key(channel, channel_user_id)`` (store/sql/functions.sql).
Users whose id is not their key (created before revision 0014) would not be found on Citus, so
the DDL re-keys them first (step 0): every column that holds a user id, in every table, moves
from the old id to the key, and ``user_id_rekeys`` keeps the mapping, for whoever stores user
ids outside this database (a bot's own tables, logs). A
generated step rather than a refusal: the DDL runs in a maintenance window anyway, and the
re-keying is derived from the schema like everything else here, so a new table holding user
ids cannot be forgotten.

Citus requires every primary key and unique constraint of a distributed table to contain the
distribution column, and a foreign key between two distributed tables to include it on both
sides. The DDL therefore widens those keys with ``user_id`` first. The uniqueness of
``(channel, channel_user_id)`` across users cannot be enforced across shards, and no longer
needs to be: once every user's id is its key, the primary key ``user_id`` holds it by
construction (two users of one channel identity would have one id); the index stays, plain,
for the lookups by channel identity that are left (erasure of aiogram's states).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import ForeignKeyConstraint, Table

from store import schema

DISTRIBUTION_COLUMN = "user_id"
COLOCATION_ROOT = "users"
# usage_rollup_state: the rollup's one-row watermark, read (locked) with distributed usage rows.
# user_key_secret: sk_user_key's one-row secret, read by the statement before a user's lookup.
# link_code_erased_failures: erased accounts' lock-outs, keyed by a hash (no user_id), written
# only by erasure and read by a redemption that finds no live record.
# telegram_persistence_erasures: erased users' records for the python-telegram-bot persistence,
# likewise keyed by a hash, written by erasure and read by the persistence's writes.
REFERENCE_TABLES = frozenset(
    {
        "persons",
        "usage_rollup_state",
        "user_key_secret",
        "link_code_erased_failures",
        "telegram_persistence_erasures",
    }
)
# The daemon's run ledger and the migrations' own bookkeeping: read by operators, never joined.
# proactive_list_state is one row (the published list's version). aiogram_fsm_states is keyed
# by Telegram ids and its user_id is NULL until the user exists, which a distribution column
# cannot be: it stays on the coordinator until the FSM key carries the store's user.
# The LangGraph checkpointer's tables (langgraph_*) likewise: a thread's user_id is optional
# (threads without a user), and a thread's rows are keyed by its thread id.
LANGGRAPH_TABLES = frozenset(
    {
        "langgraph_threads",
        "langgraph_checkpoints",
        "langgraph_lines",
        "langgraph_items",
        "langgraph_blobs",
        "langgraph_writes",
    }
)
COORDINATOR_TABLES = (
    frozenset(
        {
            "job_runs",
            "job_probes",
            "applied_functions",
            "proactive_list_state",
            "aiogram_fsm_states",
        }
    )
    | LANGGRAPH_TABLES
)

Kind = Literal["distributed", "reference", "coordinator"]


class PlacementUndecided(Exception):
    """A table of store.schema has no user_id, no parent that has one, and no decision."""


@dataclass(frozen=True)
class Placement:
    table: str
    kind: Kind
    # For a child table that lacks user_id: the parent it is filled from, and the join columns.
    parent: str | None = None
    parent_key: tuple[tuple[str, str], ...] = ()


def _parent(table: Table) -> ForeignKeyConstraint | None:
    for constraint in sorted(table.foreign_key_constraints, key=lambda c: str(c.name)):
        target = constraint.referred_table
        if DISTRIBUTION_COLUMN in target.c:
            return constraint
    return None


def placements() -> list[Placement]:
    """Every table of the schema, parents before children (the order DDL must follow)."""
    result = []
    for table in schema.metadata.sorted_tables:
        if table.name in REFERENCE_TABLES:
            result.append(Placement(table.name, "reference"))
        elif table.name in COORDINATOR_TABLES:
            result.append(Placement(table.name, "coordinator"))
        elif DISTRIBUTION_COLUMN in table.c:
            result.append(Placement(table.name, "distributed"))
        elif (parent := _parent(table)) is not None:
            key = tuple((e.parent.name, e.column.name) for e in parent.elements)
            result.append(Placement(table.name, "distributed", parent.referred_table.name, key))
        else:
            raise PlacementUndecided(
                f"table {table.name} has no {DISTRIBUTION_COLUMN} and no parent that has one: "
                "decide in sessionkeeper/admin/citus.py whether it is a reference table or "
                "stays on the coordinator"
            )
    # Reference tables first (distributed tables refer to them), then the co-location root,
    # then the rest in the schema's own order (parents before children).
    return sorted(result, key=lambda p: (p.kind != "reference", p.table != COLOCATION_ROOT))


# Columns that hold a user id under another name and without a foreign key (a redeemed code
# names its redeemer; it outlives nothing, so no key was wanted).
OTHER_USER_ID_COLUMNS = frozenset({("link_codes", "used_by")})


def user_id_columns() -> list[tuple[str, str]]:
    """Every (table, column) holding a user id: a ``user_id`` column, a foreign key to
    ``users.user_id``, or one of OTHER_USER_ID_COLUMNS, in the schema's order."""
    found = []
    for table in schema.metadata.sorted_tables:
        for column in table.c:
            refers = any(
                fk.column.table.name == COLOCATION_ROOT and fk.column.name == DISTRIBUTION_COLUMN
                for fk in column.foreign_keys
            )
            named = column.name == DISTRIBUTION_COLUMN
            if named or refers or (table.name, column.name) in OTHER_USER_ID_COLUMNS:
                found.append((table.name, column.name))
    return found


def _user_references() -> list[tuple[str, ForeignKeyConstraint]]:
    """The foreign keys that refer to ``users`` (dropped while users are re-keyed)."""
    return [
        (table.name, fk)
        for table in schema.metadata.sorted_tables
        for fk in sorted(table.foreign_key_constraints, key=lambda c: str(c.name))
        if fk.referred_table.name == COLOCATION_ROOT
    ]


def _foreign_key(
    table: str, fk: ForeignKeyConstraint, columns: list[str], targets: list[str]
) -> str:
    on_delete = f" ON DELETE {fk.ondelete}" if fk.ondelete else ""
    return (
        f"ALTER TABLE {table} ADD CONSTRAINT {fk.name} FOREIGN KEY ({_columns(columns)}) "
        f"REFERENCES {fk.referred_table.name} ({_columns(targets)}){on_delete};"
    )


# The re-keying's mapping (step 0). Erasure (sk_forget) deletes an erased user's rows from it
# wherever it exists.
USER_ID_REKEYS = (
    "CREATE TABLE IF NOT EXISTS user_id_rekeys (old_user_id uuid PRIMARY KEY,"
    " new_user_id uuid NOT NULL UNIQUE, rekeyed_at timestamptz NOT NULL DEFAULT now());"
)


def _rekey() -> list[str]:
    """Step 0: users whose id is not their key get it, in every table (see the module's doc)."""
    key = "sk_user_key(u.channel, u.channel_user_id)"
    out = [
        USER_ID_REKEYS,
        # Names from store.schema, not input: a script to print, never executed here.
        f"INSERT INTO user_id_rekeys (old_user_id, new_user_id) SELECT u.user_id, {key} "  # noqa: S608
        f"FROM users u WHERE u.user_id <> {key} ON CONFLICT DO NOTHING;",
    ]
    references = _user_references()
    out += [f"ALTER TABLE {table} DROP CONSTRAINT {fk.name};" for table, fk in references]
    for table, column in user_id_columns():
        out.append(
            f"UPDATE {table} AS t SET {column} = r.new_user_id FROM user_id_rekeys AS r "  # noqa: S608
            f"WHERE t.{column} = r.old_user_id;"
        )
    for table, fk in references:
        columns = [e.parent.name for e in fk.elements]
        out.append(_foreign_key(table, fk, columns, [e.column.name for e in fk.elements]))
    return out


def _columns(names: list[str]) -> str:
    return ", ".join(names)


def _widened(names: list[str]) -> list[str]:
    return names if DISTRIBUTION_COLUMN in names else [DISTRIBUTION_COLUMN, *names]


def ddl() -> str:
    """The SQL that turns a database at head into a Citus-distributed one, as one script.

    Run it on the Citus coordinator holding the migrated schema, in a maintenance window: the
    key changes rewrite indexes and ``create_distributed_table`` copies each table's rows.
    """
    plan = placements()
    tables = {t.name: t for t in schema.metadata.sorted_tables}
    distributed = {p.table for p in plan if p.kind == "distributed"}
    out = [
        "-- sessionkeeper: distribute the schema over Citus (generated by `sessionkeeper "
        "citus-ddl`).",
        f"-- Distribution column: {DISTRIBUTION_COLUMN}; co-location group of {COLOCATION_ROOT}.",
        "-- Read docs/scaling.md first. Stop every bot and daemon: step 0 changes user ids.",
        "BEGIN;",
        "",
        "-- 0. Users whose id is not their key (sk_user_key: users created before revision",
        "-- 0014) get it, in every table that holds user ids;",
        "-- user_id_rekeys keeps the mapping for ids stored outside this database.",
        *_rekey(),
        "",
        "-- The store gives every new user its id; the trigger that keys users inserted",
        "-- without one (for bots of 0.1.0) goes.",
        "DROP TRIGGER IF EXISTS tg_users_user_id ON users;",
        "",
        f"-- 1. Every distributed table carries {DISTRIBUTION_COLUMN}, NOT NULL: the column",
        "-- revision 0014 added (its validated CHECK proves it, and no bot of 0.1.0 runs any more:",
        "-- the trigger that filled it for them goes), and the archive's, filled from its parent.",
    ]
    for p in plan:
        column = tables[p.table].c.get(DISTRIBUTION_COLUMN)
        if p.kind == "distributed" and column is not None and column.nullable:
            out += [
                f"DROP TRIGGER IF EXISTS tg_{p.table}_{DISTRIBUTION_COLUMN} ON {p.table};",
                f"ALTER TABLE {p.table} ALTER COLUMN {DISTRIBUTION_COLUMN} SET NOT NULL;",
                f"ALTER TABLE {p.table} DROP CONSTRAINT IF EXISTS "
                f"ck_{p.table}_{DISTRIBUTION_COLUMN};",
            ]
    for p in plan:
        if p.parent is None:
            continue
        join = " AND ".join(f"c.{child} = p.{parent}" for child, parent in p.parent_key)
        out += [
            f"ALTER TABLE {p.table} ADD COLUMN {DISTRIBUTION_COLUMN} uuid;",
            # Names from store.schema, not input: a script to print, never executed here.
            f"UPDATE {p.table} AS c SET {DISTRIBUTION_COLUMN} = p.{DISTRIBUTION_COLUMN} "  # noqa: S608
            f"FROM {p.parent} AS p WHERE {join};",
            f"ALTER TABLE {p.table} ALTER COLUMN {DISTRIBUTION_COLUMN} SET NOT NULL;",
        ]
    out += [
        "",
        f"-- 2. Foreign keys between distributed tables must include {DISTRIBUTION_COLUMN}:",
        "-- dropped here, added back widened in step 4.",
    ]
    widened_fks = []
    for name in sorted(distributed):
        for fk in sorted(tables[name].foreign_key_constraints, key=lambda c: str(c.name)):
            columns = [e.parent.name for e in fk.elements]
            target = fk.referred_table.name
            if target in distributed and DISTRIBUTION_COLUMN not in columns:
                out.append(f"ALTER TABLE {name} DROP CONSTRAINT {fk.name};")
                widened_fks.append((name, fk))
    out += ["", f"-- 3. Primary keys and unique indexes must include {DISTRIBUTION_COLUMN}."]
    for p in plan:
        if p.kind != "distributed":
            continue
        table = tables[p.table]
        pk = [c.name for c in table.primary_key.columns]
        if DISTRIBUTION_COLUMN not in pk:
            out += [
                f"ALTER TABLE {p.table} DROP CONSTRAINT {table.primary_key.name};",
                f"ALTER TABLE {p.table} ADD CONSTRAINT {table.primary_key.name} "
                f"PRIMARY KEY ({_columns(_widened(pk))});",
            ]
        for index in sorted(table.indexes, key=lambda i: str(i.name)):
            columns = [c.name for c in index.columns]
            if index.unique and DISTRIBUTION_COLUMN not in columns:
                # Unenforceable across shards; kept as a plain index for lookups.
                plain = f"ix_{str(index.name).removeprefix('uq_')}"
                out += [
                    f"DROP INDEX {index.name};",
                    f"CREATE INDEX {plain} ON {p.table} ({_columns(columns)});",
                ]
    out += ["", "-- 4. The widened foreign keys."]
    for name, fk in widened_fks:
        columns = _widened([e.parent.name for e in fk.elements])
        out.append(_foreign_key(name, fk, columns, _widened([e.column.name for e in fk.elements])))
    out += [
        "",
        "COMMIT;",
        "",
        "-- 5. Placement: each call copies one table's rows to the workers, in its own "
        "transaction.",
        *_placement_calls(plan),
        "",
    ]
    return "\n".join(out)


def _placement_calls(plan: list[Placement]) -> Iterator[str]:
    for p in plan:
        if p.kind == "reference":
            yield f"SELECT create_reference_table('{p.table}');"
        elif p.kind == "coordinator":
            yield f"-- {p.table} stays a plain table on the coordinator."
        elif p.table == COLOCATION_ROOT:
            yield f"SELECT create_distributed_table('{p.table}', '{DISTRIBUTION_COLUMN}');"
        else:
            yield (
                f"SELECT create_distributed_table('{p.table}', '{DISTRIBUTION_COLUMN}', "
                f"colocate_with => '{COLOCATION_ROOT}');"
            )
