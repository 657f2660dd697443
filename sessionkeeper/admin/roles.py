"""The database roles, and every privilege each has: the one place grants are declared.

Four group roles (NOLOGIN), named ``<prefix>_<kind>`` (prefix ``sessionkeeper`` unless
SESSIONKEEPER_ROLE_PREFIX says otherwise); login roles are made members of them
(docs/roles.md):

- owner: owns the tables, sequences and functions; ``sessionkeeper migrate`` runs as it
  (SET ROLE, when its login is a member). Alone reads ``user_key_secret``.
- bot: what the store's calls and the integrations need; no DDL, not the secret.
- daemon: what the jobs need. Partition DDL needs the parent table's owner (PostgreSQL has no
  privilege for it, and DETACH ... CONCURRENTLY cannot run in a function), so the daemon role
  is a NOINHERIT member of owner: its logins hold only the daemon's grants, and the partition
  job alone takes the owner role (SET ROLE) around its DDL (jobs/partitions.py).
- reader: for dashboards: counts and job tables, never message content, the secret, link codes
  or channel identities.

``sessionkeeper roles setup`` (a role with CREATEROLE; a superuser for the ownership transfer)
creates the roles, hands the existing objects to owner and applies the grants.
``sessionkeeper migrate`` re-applies the grants whenever it applies functions.sql, so a new
table or function of a release gets its grants in the same transaction that creates it.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import psycopg
from psycopg import sql

from store import settings
from store.connection import describe, secure_conninfo
from store.errors import (
    ConfigurationError,
    InvalidInput,
    PermissionDenied,
    TransactionConflict,
)
from store.schema import is_partition

log = logging.getLogger("sessionkeeper.roles")

KINDS = ("owner", "bot", "daemon", "reader")
GRANTEES = ("bot", "daemon", "reader")
DEFAULT_PREFIX = "sessionkeeper"


class Grants(NamedTuple):
    """The privileges of each role on one object ("" for none). Every role is named, so a new
    table or function cannot be declared without deciding for each."""

    bot: str
    daemon: str
    reader: str


RW = "SELECT, INSERT, UPDATE, DELETE"
# Row locks (FOR UPDATE / FOR SHARE, taken by sk_forget and the store's statements) need UPDATE.
READ_LOCK = "SELECT, UPDATE"
NONE = ""
X = "EXECUTE"

TABLES: dict[str, Grants] = {
    "persons": Grants(bot=RW, daemon="SELECT, UPDATE, DELETE", reader="SELECT"),
    "users": Grants(
        bot=RW,
        daemon="SELECT, UPDATE, DELETE",
        # Not channel_user_id (a Telegram id), display_name, home_location.
        reader="SELECT (user_id, channel, person_id, authenticated, created_at, updated_at)",
    ),
    "sessions": Grants(bot=RW, daemon=RW, reader="SELECT"),
    "session_messages": Grants(
        bot=RW, daemon=RW, reader="SELECT (user_id, session_id, seq, role, created_at)"
    ),
    "turn_receipts": Grants(bot=RW, daemon="SELECT, DELETE", reader="SELECT"),
    "archived_sessions": Grants(bot=RW, daemon=RW, reader="SELECT"),
    "archived_session_messages": Grants(
        bot=RW, daemon=RW, reader="SELECT (session_id, seq, role, created_at)"
    ),
    "rate_limits": Grants(bot=RW, daemon="SELECT, UPDATE, DELETE", reader="SELECT"),
    "usage_stats": Grants(bot=RW, daemon=RW, reader="SELECT"),
    # The former DEFAULT partitions (revision 0013; plain, empty tables since 0022), which
    # release 0.2.0's cleanup jobs still read and empty directly: kept until a later release
    # drops them. Partitions are reached through their parent only (its privileges are checked).
    "rate_limits_default": Grants(bot=NONE, daemon="SELECT, UPDATE, DELETE", reader=NONE),
    "usage_stats_default": Grants(bot=NONE, daemon="SELECT, UPDATE, DELETE", reader=NONE),
    "usage_rollup_state": Grants(bot=READ_LOCK, daemon=RW, reader="SELECT"),
    "usage_daily": Grants(bot=RW, daemon=RW, reader="SELECT"),
    # The key of sk_user_key: the owner's alone (sk_user_key is SECURITY DEFINER).
    "user_key_secret": Grants(bot=NONE, daemon=NONE, reader=NONE),
    "link_codes": Grants(bot=RW, daemon="SELECT, UPDATE, DELETE", reader=NONE),
    "link_code_failures": Grants(bot=RW, daemon="SELECT, UPDATE, DELETE", reader=NONE),
    "proactive_users": Grants(bot=RW, daemon="SELECT, UPDATE, DELETE", reader=NONE),
    "proactive_user_list": Grants(bot="SELECT, DELETE", daemon=RW, reader=NONE),
    "proactive_list_state": Grants(bot=RW, daemon=RW, reader="SELECT"),
    "aiogram_fsm_states": Grants(bot=RW, daemon="SELECT, UPDATE, DELETE", reader=NONE),
    "job_runs": Grants(bot=NONE, daemon=RW, reader="SELECT"),
    # The daemon's yield probe rewrites its job's row (revision 0025).
    "job_probes": Grants(bot=NONE, daemon=RW, reader="SELECT"),
    "legacy_quarantined_messages": Grants(
        bot="SELECT, UPDATE, DELETE", daemon="SELECT, UPDATE, DELETE", reader=NONE
    ),
    "applied_functions": Grants(bot="SELECT", daemon="SELECT", reader="SELECT"),
    "alembic_version": Grants(bot="SELECT", daemon="SELECT", reader="SELECT"),
    # Erased accounts' link-code lock-outs (docs/security.md): sk_forget moves a user's record
    # here (as the bot, or as the daemon in user_retention); redemption takes it back.
    "link_code_erased_failures": Grants(bot=RW, daemon=RW, reader=NONE),
    # The LangGraph checkpointer's tables (bot), trimmed and expired by checkpoint_retention.
    "langgraph_threads": Grants(bot=RW, daemon="SELECT, UPDATE, DELETE", reader=NONE),
    "langgraph_checkpoints": Grants(bot=RW, daemon="SELECT, UPDATE, DELETE", reader=NONE),
    "langgraph_blobs": Grants(bot=RW, daemon="SELECT, UPDATE, DELETE", reader=NONE),
    "langgraph_writes": Grants(bot=RW, daemon="SELECT, UPDATE, DELETE", reader=NONE),
    "langgraph_lines": Grants(bot=RW, daemon="SELECT, UPDATE, DELETE", reader=NONE),
    "langgraph_items": Grants(bot=RW, daemon="SELECT, UPDATE, DELETE", reader=NONE),
    # python-telegram-bot's persistence (bot); user_retention's sk_forget deletes from it.
    "telegram_persistence": Grants(bot=RW, daemon="SELECT, UPDATE, DELETE", reader=NONE),
    # Erased users' records for it (revision 0023): sk_forget writes them (as the bot, or as
    # the daemon in user_retention); the bot's writes read them.
    "telegram_persistence_erasures": Grants(bot=RW, daemon=RW, reader=NONE),
}

SEQUENCES: dict[str, Grants] = {
    "job_runs_run_id_seq": Grants(bot=NONE, daemon="USAGE, SELECT", reader=NONE),
    "langgraph_lines_line_id_seq": Grants(bot="USAGE, SELECT", daemon=NONE, reader=NONE),
}

# By name: every overload of the function. EXECUTE is checked for nested calls too (as the
# caller), so a function lists the roles of every function calling it.
FUNCTIONS: dict[str, Grants] = {
    "sk_capped_total": Grants(bot=X, daemon=X, reader=NONE),
    "sk_add_usage_daily": Grants(bot=X, daemon=X, reader=NONE),
    "sk_check_rate_limit": Grants(bot=X, daemon=NONE, reader=NONE),
    # Refusals counted per window (revision 0020).
    "sk_count_refusal": Grants(bot=X, daemon=NONE, reader=NONE),
    "sk_check_rate_limit_v2": Grants(bot=X, daemon=NONE, reader=NONE),
    # SECURITY DEFINER (functions.sql): reads the secret as owner. Never the reader's: with it,
    # keyed ids could be matched against guessed channel ids.
    "sk_user_key": Grants(bot=X, daemon=NONE, reader=NONE),
    "sk_channel_user": Grants(bot=X, daemon=NONE, reader=NONE),
    # Trigger functions: EXECUTE is checked when a trigger is created, not when it fires.
    "sk_key_new_user": Grants(bot=NONE, daemon=NONE, reader=NONE),
    "sk_fill_user_id": Grants(bot=NONE, daemon=NONE, reader=NONE),
    "sk_current_session": Grants(bot=X, daemon=NONE, reader=NONE),
    "sk_history_arrays_v2": Grants(bot=X, daemon=NONE, reader=NONE),
    "sk_history_arrays_v3": Grants(bot=X, daemon=NONE, reader=NONE),
    "sk_begin_turn_v3": Grants(bot=X, daemon=NONE, reader=NONE),
    "sk_link_code_key": Grants(bot=X, daemon=NONE, reader=NONE),
    "sk_lock_people": Grants(bot=X, daemon=X, reader=NONE),
    "sk_redeem_link_code_v2": Grants(bot=X, daemon=NONE, reader=NONE),
    "sk_redeem_link_code": Grants(bot=X, daemon=NONE, reader=NONE),
    "sk_unlink": Grants(bot=X, daemon=NONE, reader=NONE),
    "sk_proactive_candidates": Grants(bot=X, daemon=X, reader=NONE),
    "sk_publish_proactive_list": Grants(bot=X, daemon=X, reader=NONE),
    "sk_forget": Grants(bot=X, daemon=X, reader=NONE),
    # Conversations per chat (revision 0016).
    "sk_begin_turn_v5": Grants(bot=X, daemon=NONE, reader=NONE),
    "sk_current_session_v2": Grants(bot=X, daemon=NONE, reader=NONE),
    "sk_conversation_sessions": Grants(bot=X, daemon=NONE, reader=NONE),
    "sk_conversation_arrays": Grants(bot=X, daemon=NONE, reader=NONE),
    "sk_fill_archived_chat": Grants(bot=NONE, daemon=NONE, reader=NONE),
    "sk_fill_restored_chat": Grants(bot=NONE, daemon=NONE, reader=NONE),
    # Link codes: the daily cap, and the keyed record erasure keeps (docs/security.md).
    "sk_redeem_link_code_v3": Grants(bot=X, daemon=NONE, reader=NONE),
    "sk_link_failure_key": Grants(bot=X, daemon=X, reader=NONE),
    # The LangGraph checkpointer; sk_langgraph_forget and _collect run for sk_forget and
    # checkpoint_retention as the daemon too.
    "sk_langgraph_put": Grants(bot=X, daemon=NONE, reader=NONE),
    "sk_langgraph_values_v2": Grants(bot=X, daemon=NONE, reader=NONE),
    "sk_langgraph_export_items": Grants(bot=X, daemon=NONE, reader=NONE),
    "sk_langgraph_decode": Grants(bot=X, daemon=NONE, reader=NONE),
    "sk_langgraph_copy_thread": Grants(bot=X, daemon=NONE, reader=NONE),
    "sk_langgraph_collect": Grants(bot=X, daemon=X, reader=NONE),
    "sk_langgraph_forget": Grants(bot=X, daemon=X, reader=NONE),
    # python-telegram-bot persistence's erasure records (revision 0023); sk_forget runs the
    # first two as the daemon too.
    "sk_telegram_erasure_key": Grants(bot=X, daemon=X, reader=NONE),
    # A channel user id as aiogram's bigint: erasure (bot and daemon) and export find states by it.
    "sk_telegram_user_id": Grants(bot=X, daemon=X, reader=NONE),
    "sk_telegram_erased": Grants(bot=X, daemon=X, reader=NONE),
    "sk_telegram_lock": Grants(bot=X, daemon=NONE, reader=NONE),
    "sk_telegram_forget": Grants(bot=X, daemon=NONE, reader=NONE),
    "sk_telegram_write": Grants(bot=X, daemon=NONE, reader=NONE),
    # Kept for earlier releases: bots of 0.1.0 call them.
    "sk_begin_turn": Grants(bot=X, daemon=NONE, reader=NONE),
    "sk_history_arrays": Grants(bot=X, daemon=NONE, reader=NONE),
    "sk_history": Grants(bot=X, daemon=NONE, reader=NONE),
}


@dataclass(frozen=True)
class Roles:
    """The group roles' names."""

    prefix: str = DEFAULT_PREFIX

    @classmethod
    def configured(cls) -> Roles:
        return cls(os.environ.get("SESSIONKEEPER_ROLE_PREFIX") or DEFAULT_PREFIX)

    def name(self, kind: str) -> str:
        return f"{self.prefix}_{kind}"

    @property
    def owner(self) -> str:
        return self.name("owner")


# --- reading the database --------------------------------------------------------------------

_OBJECTS = """
SELECT c.relname, c.relkind FROM pg_class c
WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('r', 'p', 'S', 'v', 'm')
  AND NOT EXISTS (SELECT 1 FROM pg_depend d
                  WHERE d.objid = c.oid AND d.deptype = 'e')
"""

# sessionkeeper's functions are all named sk_*; others in the schema are another subsystem's.
_FUNCTIONS = r"""
SELECT p.proname, p.oid::regprocedure::text FROM pg_proc p
WHERE p.pronamespace = current_schema()::regnamespace AND p.proname LIKE 'sk\_%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d
                  WHERE d.objid = p.oid AND d.classid = 'pg_proc'::regclass
                    AND d.deptype = 'e')
ORDER BY 2
"""


def schema_objects(conn: psycopg.Connection[Any]) -> dict[str, str]:
    """The schema's tables, views and sequences, name -> 'table' or 'sequence'; partitions
    left out (their rows are reached through the parent, whose privileges are checked) but
    the former DEFAULT ones, which 0.2.0's jobs read directly."""
    return {
        name: "sequence" if kind == "S" else "table"
        for name, kind in conn.execute(_OBJECTS).fetchall()
        if not is_partition(name) or name.endswith("_default")
    }


def schema_functions(conn: psycopg.Connection[Any]) -> list[tuple[str, str]]:
    """(name, signature) of every function of the schema (not an extension's)."""
    return [(name, signature) for name, signature in conn.execute(_FUNCTIONS).fetchall()]


def undeclared(conn: psycopg.Connection[Any]) -> list[str]:
    """The schema's objects that have no declared grants (a new table or function)."""
    missing = [
        f"{kind} {name}"
        for name, kind in schema_objects(conn).items()
        if name not in (SEQUENCES if kind == "sequence" else TABLES)
    ]
    missing += [f"function {sig}" for name, sig in schema_functions(conn) if name not in FUNCTIONS]
    return sorted(missing)


def role_exists(conn: psycopg.Connection[Any], role: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is not None


# --- migrate: acting as owner, keeping grants current -----------------------------------------


def assume_owner(conn: psycopg.Connection[Any], roles: Roles | None = None) -> bool:
    """SET ROLE to the owner role when this database was set up for it (the owner may create
    in the schema and owns alembic_version, if any) and the connected role may become it (a
    migrate login, or a superuser), so that what migrate creates belongs to the owner.
    Returns whether it did."""
    owner = (roles or Roles.configured()).owner
    row = conn.execute(_ASSUME_OWNER, {"owner": owner}).fetchone()
    if row is None or not row[0]:
        return False
    conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(owner)))
    return True


_ASSUME_OWNER = """
SELECT current_user <> r.rolname
       AND pg_has_role(current_user, r.oid, 'MEMBER')
       AND has_schema_privilege(r.oid, current_schema(), 'CREATE')
       AND coalesce((SELECT c.relowner = r.oid FROM pg_class c
                     WHERE c.oid = to_regclass('alembic_version')), true)
FROM pg_roles r WHERE r.rolname = %(owner)s
"""


def apply_grants(conn: psycopg.Connection[Any], roles: Roles | None = None) -> bool:
    """Make every declared object's privileges exactly the declared ones, in the caller's
    transaction (revoke and grant commit together: a running bot never sees a gap). Objects
    whose privileges are already right are not touched: GRANT takes a lock on its table, which
    a migrate with nothing to change must not wait for. Skipped (False) when the roles were
    never set up."""
    roles = roles or Roles.configured()
    if not all(role_exists(conn, roles.name(kind)) for kind in KINDS):
        log.info(
            "roles %s_* not set up: grants not applied (sessionkeeper roles setup)", roles.prefix
        )
        return False
    grantees = sql.SQL(", ").join(sql.Identifier(roles.name(kind)) for kind in GRANTEES)
    names = {roles.name(kind) for kind in GRANTEES} | {"PUBLIC"}
    held = _held(conn, _ACLS, names)
    for name, kind in schema_objects(conn).items():
        declared = SEQUENCES.get(name) if kind == "sequence" else TABLES.get(name)
        if declared is None:
            # Another subsystem's, or a table of a newer release: left as it is.
            log.warning("%s %s has no declared grants: left as it is", kind, name)
            continue
        if held.get(name, set()) == _wanted(declared, roles):
            continue
        target = sql.SQL("SEQUENCE" if kind == "sequence" else "TABLE")
        conn.execute(
            sql.SQL("REVOKE ALL ON {} {} FROM PUBLIC, {}").format(
                target, sql.Identifier(name), grantees
            )
        )
        _grant(conn, target, sql.Identifier(name), declared, roles)
    held = _held(conn, _FUNCTION_ACLS, names)
    for name, signature in schema_functions(conn):
        declared = FUNCTIONS.get(name)
        if declared is not None and held.get(signature, set()) == _wanted(declared, roles):
            continue
        # The signature is regprocedure's text: quoted where needed.
        ident = sql.SQL(signature)
        conn.execute(sql.SQL("REVOKE ALL ON FUNCTION {} FROM PUBLIC, {}").format(ident, grantees))
        _grant(conn, sql.SQL("FUNCTION"), ident, declared, roles)
    return True


# Who holds what on each object (column privileges with their column), PUBLIC included.
_ACLS = """
SELECT c.relname, coalesce(r.rolname, 'PUBLIC'), a.privilege_type, NULL::name
FROM pg_class c
CROSS JOIN LATERAL aclexplode(coalesce(
    c.relacl, acldefault(CASE c.relkind WHEN 'S' THEN 's' ELSE 'r' END::"char", c.relowner))) a
LEFT JOIN pg_roles r ON r.oid = a.grantee
WHERE c.relnamespace = current_schema()::regnamespace
UNION ALL
SELECT c.relname, coalesce(r.rolname, 'PUBLIC'), a.privilege_type, t.attname
FROM pg_class c
JOIN pg_attribute t ON t.attrelid = c.oid AND t.attacl IS NOT NULL
CROSS JOIN LATERAL aclexplode(t.attacl) a
LEFT JOIN pg_roles r ON r.oid = a.grantee
WHERE c.relnamespace = current_schema()::regnamespace
"""

_FUNCTION_ACLS = """
SELECT p.oid::regprocedure::text, coalesce(r.rolname, 'PUBLIC'), a.privilege_type, NULL::name
FROM pg_proc p
CROSS JOIN LATERAL aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
LEFT JOIN pg_roles r ON r.oid = a.grantee
WHERE p.pronamespace = current_schema()::regnamespace
"""

Privilege = tuple[str, str, str | None]  # grantee, privilege, column (None: the whole object)

_PRIVILEGE = re.compile(r"([A-Z]+)\s*(?:\(([^)]*)\))?")


def _held(
    conn: psycopg.Connection[Any], query: str, grantees: set[str]
) -> dict[str, set[Privilege]]:
    held: dict[str, set[Privilege]] = {}
    for name, grantee, privilege, column in conn.execute(query).fetchall():
        if grantee in grantees:
            held.setdefault(name, set()).add((grantee, privilege, column))
    return held


def _wanted(declared: Grants, roles: Roles) -> set[Privilege]:
    """The declared privileges as aclexplode shows them."""
    wanted: set[Privilege] = set()
    for kind, privileges in zip(GRANTEES, declared, strict=True):
        for privilege, columns in _PRIVILEGE.findall(privileges):
            for column in [c.strip() for c in columns.split(",")] if columns else [None]:
                wanted.add((roles.name(kind), privilege, column))
    return wanted


def _grant(
    conn: psycopg.Connection[Any],
    target: sql.Composable,
    ident: sql.Composable,
    declared: Grants | None,
    roles: Roles,
) -> None:
    for kind, privileges in zip(GRANTEES, declared or (), strict=False):
        if privileges:
            conn.execute(
                sql.SQL("GRANT {} ON {} {} TO {}").format(
                    sql.SQL(privileges),
                    target,
                    ident,
                    sql.Identifier(roles.name(kind)),
                )
            )


def _current_schema(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute("SELECT current_schema()").fetchone()
    assert row is not None and row[0] is not None, "no schema in the search_path"
    return str(row[0])


# --- setup: creating the roles -----------------------------------------------------------------


def setup(
    conn: psycopg.Connection[Any],
    roles: Roles | None = None,
    members: Mapping[str, Iterable[str]] | None = None,
) -> list[str]:
    """Create the group roles (if missing), hand every object of the schema to the owner role,
    apply the grants and make the given logins (kind -> login names) members. ``conn`` is in
    autocommit mode: each step is its own short transaction, so the bots of a running
    deployment are never held up for long. Returns what was done, one line each; running it
    again does what is missing.

    The roles that owned the objects before become members of owner first, so bots still
    running under them keep working until they move to their own logins (docs/roles.md).
    """
    roles = roles or Roles.configured()
    logins = {kind: list(names) for kind, names in (members or {}).items()}
    # Bad input changes nothing.
    for kind, names in logins.items():
        if kind not in KINDS:
            raise InvalidInput(f"unknown role kind {kind!r}: one of {', '.join(KINDS)}")
        for login in names:
            if not role_exists(conn, login):
                raise InvalidInput(f"no role {login!r}: create the login first (docs/roles.md)")
    done: list[str] = []
    owner = sql.Identifier(roles.owner)
    with conn.transaction():
        for kind in KINDS:
            name = roles.name(kind)
            if not role_exists(conn, name):
                # NOINHERIT for daemon: see the module's docstring.
                options = "NOLOGIN NOINHERIT" if kind == "daemon" else "NOLOGIN"
                conn.execute(sql.SQL("CREATE ROLE {} " + options).format(sql.Identifier(name)))
                done.append(f"created role {name}")
        schema = sql.Identifier(_current_schema(conn))
        conn.execute(sql.SQL("GRANT USAGE, CREATE ON SCHEMA {} TO {}").format(schema, owner))
        conn.execute(sql.SQL("REVOKE CREATE ON SCHEMA {} FROM PUBLIC").format(schema))
        conn.execute(
            sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(
                schema, sql.SQL(", ").join(sql.Identifier(roles.name(k)) for k in GRANTEES)
            )
        )
        conn.execute(
            sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}").format(
                sql.Identifier(_one(conn, "SELECT current_database()")),
                sql.SQL(", ").join(sql.Identifier(roles.name(kind)) for kind in KINDS),
            )
        )
        # The daemon takes the owner role for partition DDL only (SET ROLE; NOINHERIT).
        conn.execute(sql.SQL("GRANT {} TO {}").format(owner, sql.Identifier(roles.name("daemon"))))
        changes = _ownership_changes(conn, roles)
        for old in sorted({old for _, old in changes}):
            if not _is_superuser(conn, old):
                conn.execute(sql.SQL("GRANT {} TO {}").format(owner, sql.Identifier(old)))
                done.append(f"{old} (the previous owner) made a member of {roles.owner}")
    for statement, _ in changes:
        _with_short_locks(conn, statement)
    if changes:
        done.append(f"{len(changes)} objects handed to {roles.owner}")
    with conn.transaction():
        apply_grants(conn, roles)
        done.append("grants applied")
        for kind, names in logins.items():
            for login in names:
                conn.execute(
                    sql.SQL("GRANT {} TO {}").format(
                        sql.Identifier(roles.name(kind)), sql.Identifier(login)
                    )
                )
                done.append(f"{login} made a member of {roles.name(kind)}")
    return done


def _one(conn: psycopg.Connection[Any], query: str) -> Any:
    row = conn.execute(query).fetchone()
    assert row is not None
    return row[0]


# ALTER ... OWNER TO takes an ACCESS EXCLUSIVE lock. It waits less than the server's
# deadlock_timeout (1 s by default) and tries again: a bot is then never a deadlock's victim,
# and never queues behind the hand-over for longer than this.
HAND_OVER_LOCK_TIMEOUT = "200ms"
HAND_OVER_ATTEMPTS = 50


def _with_short_locks(conn: psycopg.Connection[Any], statement: sql.Composed) -> None:
    for attempt in range(HAND_OVER_ATTEMPTS):
        try:
            with conn.transaction():
                conn.execute(f"SET LOCAL lock_timeout = '{HAND_OVER_LOCK_TIMEOUT}'")
                conn.execute(statement)
            return
        except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected):
            time.sleep(min(0.05 * (attempt + 1), 1.0))
    raise TransactionConflict(
        f"{statement.as_string(conn)}: its lock was not granted in {HAND_OVER_ATTEMPTS}"
        " attempts (the tables are busy); run `sessionkeeper roles setup` again"
    )


_OWNED = """
SELECT c.relname, c.relkind, r.rolname FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner
WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm')
  AND r.rolname <> %(owner)s
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype = 'e')
"""

_OWNED_FUNCTIONS = r"""
SELECT p.oid::regprocedure::text, r.rolname FROM pg_proc p JOIN pg_roles r ON r.oid = p.proowner
WHERE p.pronamespace = current_schema()::regnamespace AND r.rolname <> %(owner)s
  AND p.proname LIKE 'sk\_%%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d
                  WHERE d.objid = p.oid AND d.classid = 'pg_proc'::regclass AND d.deptype = 'e')
"""

_OWNED_STATISTICS = """
SELECT s.stxname, r.rolname, c.relname FROM pg_statistic_ext s
JOIN pg_roles r ON r.oid = s.stxowner JOIN pg_class c ON c.oid = s.stxrelid
WHERE s.stxnamespace = current_schema()::regnamespace AND r.rolname <> %(owner)s
"""

_ALTER = {"r": "TABLE", "p": "TABLE", "v": "VIEW", "m": "MATERIALIZED VIEW"}


def _ours(table: str) -> bool:
    """A table of sessionkeeper's (declared, or a partition of one): another subsystem's
    tables in the schema are left to their owner."""
    return table in TABLES or is_partition(table)


def _ownership_changes(
    conn: psycopg.Connection[Any], roles: Roles
) -> list[tuple[sql.Composed, str]]:
    """ALTER ... OWNER TO owner for every table of sessionkeeper's (partitions included;
    sequences and indexes follow their table), its statistics objects and sk_* functions not
    the owner's yet, each with its current owner."""
    params = {"owner": roles.owner}
    owner = sql.Identifier(roles.owner)
    changes: list[tuple[sql.Composed, str]] = []
    for name, kind, old in conn.execute(_OWNED, params).fetchall():
        if not _ours(name):
            continue
        statement = sql.SQL("ALTER {} {} OWNER TO {}").format(
            sql.SQL(_ALTER[kind]), sql.Identifier(name), owner
        )
        changes.append((statement, old))
    for name, old, table in conn.execute(_OWNED_STATISTICS, params).fetchall():
        if not _ours(table):
            continue
        statement = sql.SQL("ALTER STATISTICS {} OWNER TO {}").format(sql.Identifier(name), owner)
        changes.append((statement, old))
    for signature, old in conn.execute(_OWNED_FUNCTIONS, params).fetchall():
        statement = sql.SQL("ALTER FUNCTION {} OWNER TO {}").format(sql.SQL(signature), owner)
        changes.append((statement, old))
    return changes


def _is_superuser(conn: psycopg.Connection[Any], role: str) -> bool:
    row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
    return bool(row and row[0])


# --- the command -------------------------------------------------------------------------------


def register(commands: Any) -> None:
    """Add ``sessionkeeper roles`` to the CLI's subcommands."""
    parser = commands.add_parser("roles", help="create the database roles and apply their grants")
    actions = parser.add_subparsers(
        dest="roles_command", metavar="ACTION", parser_class=type(parser)
    )
    actions.required = True
    setup_parser = actions.add_parser(
        "setup",
        help="create the owner/bot/daemon/reader roles, hand the schema to owner, apply grants"
        " (run once as a superuser, and again after adding logins)",
    )
    for kind in KINDS:
        setup_parser.add_argument(
            f"--{kind}-login",
            dest=f"{kind}_logins",
            action="append",
            default=[],
            metavar="LOGIN",
            help=f"an existing login role to make a member of the {kind} role (repeatable)",
        )
    setup_parser.set_defaults(func=cmd_roles_setup)
    actions.add_parser(
        "check", help="list the schema's objects that have no declared grants"
    ).set_defaults(func=cmd_roles_check)


def _connect(url: str | None) -> psycopg.Connection[Any]:
    resolved = url or settings.database_url()
    if resolved is None:
        raise ConfigurationError("no database URL: set SESSIONKEEPER_DATABASE_URL or DATABASE_URL")
    return psycopg.connect(
        secure_conninfo(resolved, application_name="sessionkeeper-roles"), autocommit=True
    )


def cmd_roles_setup(args: argparse.Namespace) -> int:
    members = {kind: getattr(args, f"{kind}_logins") for kind in KINDS}
    with _connect(args.database_url) as conn:
        print(f"database {describe(conn.info.dsn)}")
        try:
            for line in setup(conn, members=members):
                print(line)
        except psycopg.errors.InsufficientPrivilege as exc:
            raise PermissionDenied(
                f"roles setup: {exc.diag.message_primary}; run it as a superuser (docs/roles.md)"
            ) from None
    return 0


def cmd_roles_check(args: argparse.Namespace) -> int:
    with _connect(args.database_url) as conn:
        missing = undeclared(conn)
    for line in missing:
        print(f"no declared grants: {line}")
    return 1 if missing else 0
