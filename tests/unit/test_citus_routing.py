"""Would the hot path route to one Citus shard? Checked on the SQL text, with PostgreSQL's own
parser (pglast), against the placement in sessionkeeper/admin/citus.py.

What is checked is derived, not listed: the statements are the ones the core's ``begin_turn``
and ``finish_turn`` plans send (store/queries.sql), plus every ``sk_*`` function they call,
followed through store/sql/functions.sql, statement by statement (PL/pgSQL bodies included).
A statement routes when every distributed table it reads or writes is pinned to one value of
the distribution column: an equality with a parameter, a function argument or variable, or a
constant (WHERE or JOIN), or for an INSERT's target a value given for the column. The check is
by statement, not by scope (a pin anywhere in the statement counts for the aliases it names):
good enough to catch a new statement that forgets the column, not a proof of Citus's planner.

Today's statements that would cross shards are pinned below with the reason (docs/scaling.md,
"Every hot-path statement names the user"): the list may shrink, never grow unnoticed.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pglast
import pytest
from pglast import ast
from pglast.visitors import Visitor

from sessionkeeper.admin import citus
from sessionkeeper.admin.functions import functions_sql
from store import core, models
from store.config import StoreConfig
from store.queries import QUERIES, by_session

DISTRIBUTED = {p.table for p in citus.placements() if p.kind == "distributed"}
COLUMN = citus.DISTRIBUTION_COLUMN
# What begin_turn returns, as finish_turn is given it on the hot path.
TURN = models.Turn(
    user=models.User(uuid.uuid4(), "telegram", "1"),
    rate=models.RateDecision(True, None, None),
    started_at=datetime(2026, 11, 29, tzinfo=UTC),
    session_id=uuid.uuid4(),
)


@dataclass(frozen=True)
class Gap:
    """A distributed table a statement touches without pinning the distribution column."""

    where: str  # a queries.sql block or an sk_* function
    table: str
    statement: str  # the statement's first words


@dataclass
class Function:
    name: str
    statements: list[str]
    variables: set[str]


def _psycopg_to_params(sql: str) -> str:
    """``%(name)s`` / ``%(name)b`` placeholders as PostgreSQL's ``$n`` (pglast parses those)."""
    names: dict[str, int] = {}
    return re.sub(r"%\((\w+)\)[sb]", lambda m: f"${names.setdefault(m[1], len(names) + 1)}", sql)


def _plpgsql_queries(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if "PLpgSQL_expr" in node:
            yield node["PLpgSQL_expr"]["query"]
        for value in node.values():
            yield from _plpgsql_queries(value)
    elif isinstance(node, list):
        for item in node:
            yield from _plpgsql_queries(item)


def _plpgsql_variables(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for kind in ("PLpgSQL_var", "PLpgSQL_rec"):
            if kind in node:
                yield node[kind]["refname"]
        for value in node.values():
            yield from _plpgsql_variables(value)
    elif isinstance(node, list):
        for item in node:
            yield from _plpgsql_variables(item)


def _as_statement(query: str) -> str | None:
    """A PL/pgSQL expression as a statement pglast parses (``a := b`` keeps ``b``)."""
    for candidate in (query, f"SELECT {query}", f"SELECT {query.partition(':=')[2]}"):
        try:
            pglast.parse_sql(candidate)
            return candidate
        except pglast.parser.ParseError:
            continue
    return None


def functions() -> dict[str, Function]:
    """Every function of functions.sql: its SQL statements and its argument/variable names."""
    found = {}
    for source in pglast.split(functions_sql()):
        (raw,) = pglast.parse_sql(source)
        stmt: Any = raw.stmt
        if not isinstance(stmt, ast.CreateFunctionStmt):
            continue
        funcname: Any = stmt.funcname
        name = funcname[-1].sval
        options = {o.defname: o.arg for o in stmt.options or ()}
        language = options["language"].sval
        body = options["as"][0].sval
        if language == "plpgsql":
            tree = pglast.parse_plpgsql(source)
            queries = [q for q in map(_as_statement, _plpgsql_queries(tree)) if q]
            variables = set(_plpgsql_variables(tree))
        else:
            queries = [body]
            variables = {p.name for p in stmt.parameters or () if p.name}
        found[name] = Function(name, queries, variables)
    return found


class _Scan(Visitor):
    """Collects a statement's table references, pinned columns, function calls."""

    def __init__(self, variables: set[str]) -> None:
        super().__init__()
        self.variables = variables
        self.tables: list[tuple[str, str, int]] = []  # (table, alias or name, node id)
        self.pinned: set[tuple[str | None, str]] = set()  # (qualifier or None, column)
        self.inserts: dict[int, list[str]] = {}  # target node id -> columns given a fixed value
        self.calls: set[str] = set()

    def _fixed(self, node: Any) -> bool:
        if isinstance(node, ast.TypeCast):
            return self._fixed(node.arg)
        if isinstance(node, ast.ParamRef | ast.A_Const):
            return True
        if isinstance(node, ast.ColumnRef) and len(fields := node.fields or ()) == 1:
            return isinstance(fields[0], ast.String) and fields[0].sval in self.variables
        return False

    @staticmethod
    def _column(node: Any) -> tuple[str | None, str] | None:
        fields = node.fields or () if isinstance(node, ast.ColumnRef) else ()
        if fields and all(isinstance(f, ast.String) for f in fields):
            names = [f.sval for f in fields]
            return (names[-2] if len(names) > 1 else None, names[-1])
        return None

    def visit_RangeVar(self, ancestors: Any, node: Any) -> None:
        alias = node.alias.aliasname if node.alias else node.relname
        self.tables.append((node.relname, alias, id(node)))

    def visit_A_Expr(self, ancestors: Any, node: Any) -> None:
        if node.name and node.name[-1].sval == "=":
            for column_side, value_side in ((node.lexpr, node.rexpr), (node.rexpr, node.lexpr)):
                column = self._column(column_side)
                if column and self._fixed(value_side):
                    self.pinned.add(column)

    def visit_InsertStmt(self, ancestors: Any, node: Any) -> None:
        columns = [c.name for c in node.cols or ()]
        rows: list[Any] = []
        select: Any = node.selectStmt
        if select is not None and select.valuesLists:
            rows = [list(v) for v in select.valuesLists]
        elif select is not None and select.targetList:
            rows = [[t.val for t in select.targetList]]
        pinned = [
            name
            for i, name in enumerate(columns)
            if rows and all(i < len(row) and self._fixed(row[i]) for row in rows)
        ]
        self.inserts[id(node.relation)] = pinned

    def visit_FuncCall(self, ancestors: Any, node: Any) -> None:
        self.calls.add(node.funcname[-1].sval)


def scan(sql: str, variables: set[str] = frozenset()) -> _Scan:  # type: ignore[assignment]
    visitor = _Scan(set(variables))
    visitor(pglast.parse_sql(_psycopg_to_params(sql)))
    return visitor


def gaps_of(where: str, sql: str, variables: set[str] = frozenset()) -> tuple[list[Gap], set[str]]:  # type: ignore[assignment]
    """The statement's gaps and the functions it calls."""
    found = scan(sql, variables)
    code = [line for line in sql.splitlines() if not line.lstrip().startswith("--")]
    first_words = " ".join(" ".join(code).split()[:4])
    gaps = []
    for table, name, node in found.tables:
        if table not in DISTRIBUTED:
            continue
        if node in found.inserts:  # the INSERT's target: routed by the value it is given
            ok = COLUMN in found.inserts[node]
        else:
            ok = (name, COLUMN) in found.pinned or (None, COLUMN) in found.pinned
        if not ok:
            gaps.append(Gap(where, table, first_words))
    return gaps, found.calls


def hot_path() -> tuple[list[Gap], set[str]]:
    """Gaps of the statements begin_turn and finish_turn send, and of the functions they call;
    and the names of the statements and functions walked."""
    config = StoreConfig()
    steps = [
        next(core.begin_turn(config, "telegram", "1")),
        next(core.finish_turn(config, TURN, "hello", "hi")),
    ]
    defined = functions()
    gaps: list[Gap] = []
    pending = []
    for step in steps:
        found, calls = gaps_of(step.name, step.sql)
        gaps += found
        pending += sorted(c for c in calls if c in defined)
    seen: set[str] = set()
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        function = defined[name]
        for statement in function.statements:
            found, calls = gaps_of(name, statement, function.variables)
            gaps += found
            pending += sorted(c for c in calls if c in defined and c not in seen)
    return gaps, seen | {step.name for step in steps}


def hot_path_gaps() -> list[Gap]:
    return hot_path()[0]


# The hot path's statements that would cross shards, and why (docs/scaling.md).
KNOWN_CROSS_SHARD = {
    # The channel-identity lookup of a user whose id is not its key (sk_user_key): a user
    # created before revision 0014 (random). Reached only when the lookup
    # by key found nothing and the insert met an existing row; on Citus, after citus-ddl's
    # re-keying, only when two first messages of one user race (once per user, if ever).
    ("sk_channel_user", "users"),
    # A shared group conversation and continuity across linked users are read views over
    # several users' sessions (docs/conversations.md, "Citus"): reached only with
    # group_conversations = "shared" or linked_continuity on (see the test below); a private or
    # per-member turn never calls them.
    ("sk_conversation_sessions", "sessions"),
    ("sk_conversation_sessions", "users"),
    ("sk_conversation_arrays", "sessions"),
    ("sk_conversation_arrays", "session_messages"),
    ("sk_conversation_arrays", "users"),
}
# The functions of those read views, and the settings that lead to them.
READ_VIEWS = {"sk_conversation_sessions", "sk_conversation_arrays"}
READ_VIEW_SETTINGS = ("p_shared", "p_continuity")


def family(name: str) -> str:
    """A function's name without its version (sk_begin_turn_v2 is an sk_begin_turn)."""
    return re.sub(r"_v\d+$", "", name)


def test_every_hot_path_statement_routes_by_user_id_but_the_known_ones() -> None:
    gaps = hot_path_gaps()
    found = {(family(g.where), g.table) for g in gaps}
    assert found == KNOWN_CROSS_SHARD, "\n".join(map(str, gaps))


@pytest.mark.parametrize("name", ["sk_check_rate_limit_v2", "sk_count_refusal"])
def test_the_rate_limit_check_routes_to_one_shard(name: str) -> None:
    function = functions()[name]
    assert function.statements, f"no statement found in {name}"
    for statement in function.statements:
        assert gaps_of(name, statement, function.variables)[0] == []


def test_the_walk_reaches_every_function_of_the_hot_path() -> None:
    (entry,) = scan(QUERIES["begin_turn"]).calls & set(functions())
    calls = set()
    for statement in functions()[entry].statements:
        calls |= {family(c) for c in scan(statement).calls}
    assert {"sk_channel_user", "sk_check_rate_limit", "sk_current_session"} <= calls
    assert "sk_history_arrays" in calls
    walked = {family(name) for name in hot_path()[1]}
    assert {
        "begin_turn",
        "append_messages",
        "sk_begin_turn",
        "sk_channel_user",
        "sk_user_key",
    } <= walked
    assert {"sk_current_session", "sk_history_arrays", "sk_check_rate_limit"} <= walked


def test_finish_turn_with_a_session_id_alone_uses_the_statement_that_does_not_route() -> None:
    # The documented exception (store/queries.py, by_session): the user is read from the
    # session. It must be the only difference between the two statements.
    step = next(core.finish_turn(StoreConfig(), uuid.uuid4(), "hello", "hi"))
    assert step.name == "append_messages_by_session"
    assert {g.table for g in gaps_of(step.name, step.sql)[0]} >= {"sessions", "session_messages"}
    routed = next(core.finish_turn(StoreConfig(), TURN, "hello", "hi"))
    assert routed.name == "append_messages"
    assert QUERIES[step.name] == by_session(QUERIES[routed.name])


@pytest.mark.parametrize(
    ("sql", "routes"),
    [
        ("SELECT * FROM rate_limits r WHERE r.user_id = %(user_id)s", True),
        ("SELECT * FROM rate_limits r WHERE r.window_start < now()", False),
        ("SELECT * FROM rate_limits r WHERE r.user_id = r.user_id", False),
        ("INSERT INTO usage_stats (user_id, channel) VALUES (%(u)s, 'x')", True),
        ("INSERT INTO usage_stats (channel) VALUES ('x')", False),
        ("UPDATE sessions SET next_seq = 0 WHERE session_id = %(s)s", False),
        ("DELETE FROM sessions s WHERE s.user_id = 'ab'::uuid", True),
        ("SELECT * FROM job_runs", True),  # stays on the coordinator
    ],
)
def test_the_check_tells_a_routed_statement_from_one_that_is_not(sql: str, routes: bool) -> None:
    assert (gaps_of("t", sql)[0] == []) is routes


def _guarded(node: Any, guards: tuple[str, ...] = ()) -> Iterator[tuple[str, tuple[str, ...]]]:
    """Every SQL query of a PL/pgSQL tree with the IF conditions it runs under (an ELSE
    branch's guard is the negation: it says nothing of the settings)."""
    if isinstance(node, list):
        for item in node:
            yield from _guarded(item, guards)
    elif isinstance(node, dict):
        branch = node.get("PLpgSQL_stmt_if")
        if branch is not None:
            cond = branch["cond"]["PLpgSQL_expr"]["query"]
            yield cond, guards
            yield from _guarded(branch.get("then_body"), (*guards, cond))
            for elsif in branch.get("elsif_list") or ():
                inner = elsif["PLpgSQL_if_elsif"]
                yield from _guarded(
                    inner["stmts"], (*guards, inner["cond"]["PLpgSQL_expr"]["query"])
                )
            yield from _guarded(branch.get("else_body"), (*guards, "NOT ..."))
            return
        if "PLpgSQL_expr" in node:
            yield node["PLpgSQL_expr"]["query"], guards
        for value in node.values():
            yield from _guarded(value, guards)


def test_a_private_or_per_member_turn_never_reaches_the_read_views() -> None:
    (entry,) = scan(QUERIES["begin_turn"]).calls & set(functions())
    (source,) = (s for s in pglast.split(functions_sql()) if f"FUNCTION {entry}(" in s)
    reached = 0
    for query, guards in _guarded(pglast.parse_plpgsql(source)):
        statement = _as_statement(query)
        if statement is None or not scan(statement).calls & READ_VIEWS:
            continue
        reached += 1
        assert any(setting in guard for guard in guards for setting in READ_VIEW_SETTINGS), query
    assert reached, "the read views are no longer called from the turn"
    # A turn in a group sends the same statement, named the chat, with the settings off.
    step = next(core.begin_turn(StoreConfig(), "telegram", "1", chat=-100))
    assert step.name == "begin_turn"
    assert (step.params["chat_id"], step.params["shared"], step.params["continuity"]) == (
        "-100",
        False,
        False,
    )
