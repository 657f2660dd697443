"""The shape adoption gives a TypeScript-era database: revision 0001, read from the revision.

Adoption must leave the seed's tables exactly as revision 0001 creates them, so that Alembic
can take over at 0001. Instead of a hand copy of that shape (which nothing would keep equal to
the frozen revision), ``revision_0001()`` runs the revision's own ``upgrade()`` against a
recording Alembic context: no database is touched, and every ``op.create_table`` and
``op.create_index`` comes back as the SQLAlchemy ``Table`` or ``Index`` it would create, with
0001's names, types, defaults and constraints. Adoption compares the seed tables' columns with
these, adds their constraints and indexes compiled from them, and creates 0001's other tables
from them. Running the revision in a scratch schema and reading the catalog would give the same
objects, but needs a database round and cleanup for what the revision already states.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from alembic.operations import MigrateOperation, Operations, ops
from alembic.runtime.migration import MigrationContext
from sqlalchemy import (
    CheckConstraint,
    Column,
    DefaultClause,
    ForeignKeyConstraint,
    Index,
    PrimaryKeyConstraint,
    Table,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.schema import AddConstraint, CreateIndex, CreateTable, ExecutableDDLElement

from .. import migrate

ADOPTED_REVISION = "0001_initial_schema.py"
# The tables the TypeScript store created itself, in the order adoption works and reports.
SEED_TABLES = ("persons", "users", "sessions", "rate_limits", "usage_stats", "link_codes")

_DIALECT = postgresql.dialect()  # type: ignore[no-untyped-call]


@dataclass(frozen=True)
class ColumnShape:
    name: str
    type: str  # as format_type() spells it
    nullable: bool
    default: str | None  # the server default's SQL, or None


@dataclass(frozen=True)
class Revision:
    """What a revision creates: its tables in creation order and their indexes."""

    revision: str
    tables: Mapping[str, Table]
    indexes: Mapping[str, tuple[Index, ...]]  # by table

    def columns(self, table: str) -> tuple[ColumnShape, ...]:
        return tuple(_shape(column) for column in self.tables[table].columns)

    def primary_key(self, table: str) -> PrimaryKeyConstraint:
        return self.tables[table].primary_key

    def add_constraints(self, table: str, *, primary_key: bool) -> list[str]:
        """``ALTER TABLE ... ADD CONSTRAINT`` for the table's keys and checks (its primary key
        first, if asked), then its foreign keys."""
        constraints = self.tables[table].constraints
        order = [CheckConstraint, ForeignKeyConstraint]
        if primary_key:
            order.insert(0, PrimaryKeyConstraint)
        return [
            _compile(AddConstraint(constraint))
            for kind in order
            for constraint in sorted(constraints, key=lambda c: str(c.name))
            if type(constraint) is kind
        ]

    def create_indexes(self, table: str) -> list[str]:
        return [_compile(CreateIndex(index)) for index in self.indexes.get(table, ())]

    def create_table(self, table: str) -> list[str]:
        return [_compile(CreateTable(self.tables[table])), *self.create_indexes(table)]


@functools.cache
def revision_0001() -> Revision:
    """Revision 0001's tables and indexes, recorded from its ``upgrade()``."""
    module = migrate.revision_module(ADOPTED_REVISION)
    context = MigrationContext.configure(
        dialect_name="postgresql", opts={"as_sql": True, "output_buffer": io.StringIO()}
    )
    recorded: list[MigrateOperation] = []
    with Operations.context(context) as operations:
        # Record each operation instead of running it.
        operations.invoke = recorded.append  # type: ignore[method-assign,assignment]
        module.upgrade()
    tables: dict[str, Table] = {}
    indexes: dict[str, list[Index]] = {}
    for operation in recorded:
        if isinstance(operation, ops.CreateTableOp):
            tables[operation.table_name] = operation.to_table(context)
        elif isinstance(operation, ops.CreateIndexOp):
            indexes.setdefault(operation.table_name, []).append(operation.to_index(context))
        else:
            raise AssertionError(f"revision 0001 does more than create tables: {operation!r}")
    return Revision(
        revision=module.revision,
        tables=MappingProxyType(tables),
        indexes=MappingProxyType({t: tuple(i) for t, i in indexes.items()}),
    )


def _shape(column: Column[object]) -> ColumnShape:
    default = column.server_default
    return ColumnShape(
        name=column.name,
        type=column.type.compile(dialect=_DIALECT).lower(),
        nullable=bool(column.nullable),
        default=str(default.arg) if isinstance(default, DefaultClause) else None,
    )


def _compile(statement: ExecutableDDLElement) -> str:
    return str(statement.compile(dialect=_DIALECT))
