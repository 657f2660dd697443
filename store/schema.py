"""The one schema: every table the store and the jobs own, as SQLAlchemy Core metadata.

Alembic revisions are checked against this module (tests/integration/test_migrations.py), so a
change here without a revision fails the test suite. Read by Alembic and the admin tools only:
``import store`` does not load it (nor SQLAlchemy). The seed's core tables keep their names and
key columns; where the seed's design was a known problem the shape differs:

* history is one row per message (``session_messages``), so an append is an INSERT and a trim is
  an index-range DELETE instead of a rewrite of a growing JSONB array;
* ``rate_limits`` windows carry their length, so minute, hour and day caps live side by side;
* idle sessions move to ``archived_sessions`` / ``archived_session_messages``: nothing is
  silently deleted;
* ``job_runs`` is the daemon's run ledger and ``usage_daily`` holds the usage rollups;
* ``rate_limits`` and ``usage_stats`` are range-partitioned by time (revision 0013): expiry drops
  whole partitions. The partitions themselves (``<table>_p<start>``, ``<table>_legacy``) are
  made by the partition_maintenance job and the revisions, not described here (``is_partition``
  tells the schema checks to leave them out). There is no DEFAULT partition since revision
  0022: the retired ``<table>_default`` stays as an empty plain table (no foreign key) for the
  statements of release 0.2.0's daemons until a later release drops it; left out too.

All timestamps are ``timestamptz``.
"""

from __future__ import annotations

import re

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, TIMESTAMP, UUID
from sqlalchemy.schema import SchemaItem

from .models import ROLES

# Names for constraints and indexes, so that Alembic revisions can refer to them reliably.
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

JOB_OUTCOMES = ("running", "success", "failure", "skipped", "stopped")

_NOW = text("now()")
# The inserting transaction's id as a bigint (xid8 has no cast to bigint).
XID_DEFAULT = "(pg_current_xact_id())::text::bigint"
_NEW_UUID = text("gen_random_uuid()")


def _tstz(name: str, *, nullable: bool = False, now_default: bool = True) -> Column[object]:
    return Column(
        name,
        TIMESTAMP(timezone=True),
        nullable=nullable,
        server_default=_NOW if now_default else None,
    )


def _cascade_fk(name: str, target: str, *, primary_key: bool = False) -> Column[object]:
    """A UUID column referencing ``target`` whose rows go when the referenced row goes."""
    return Column(
        name,
        UUID(as_uuid=True),
        ForeignKey(target, ondelete="CASCADE"),
        primary_key=primary_key,
        nullable=False,
    )


def _message_columns(session_table: str) -> list[Column[object]]:
    """The columns a history row has, online and in the archive alike."""
    return [
        _cascade_fk("session_id", f"{session_table}.session_id"),
        Column("seq", BigInteger, nullable=False),
        Column("role", Text, nullable=False),
        Column("content", Text, nullable=False),
    ]


# What a message needs beyond role and content (a tool call's id, an AI message's tool calls,
# content blocks), as one JSON object; NULL for plain text messages. Revision 0010.
def _extra() -> Column[object]:
    return Column("extra", JSONB)


_ROLE_CHECK = "role IN (" + ", ".join(f"'{r}'" for r in ROLES) + ")"

persons = Table(
    "persons",
    metadata,
    Column("person_id", UUID(as_uuid=True), primary_key=True, server_default=_NEW_UUID),
    _tstz("created_at"),
)

users = Table(
    "users",
    metadata,
    # No default: a user's id is its key, sk_user_key(channel, channel_user_id), given by the
    # store or, for an insert without one, by a trigger (revision 0014).
    Column("user_id", UUID(as_uuid=True), primary_key=True),
    Column("channel", Text, nullable=False),
    Column("channel_user_id", Text, nullable=False),
    Column("display_name", Text),
    Column("home_location", Text),
    Column("person_id", UUID(as_uuid=True), ForeignKey("persons.person_id", ondelete="SET NULL")),
    Column("authenticated", Boolean, nullable=False, server_default=text("false")),
    _tstz("created_at"),
    _tstz("updated_at"),
    Index("uq_users_channel_channel_user_id", "channel", "channel_user_id", unique=True),
    Index("ix_users_person_id", "person_id"),
)

sessions = Table(
    "sessions",
    metadata,
    Column("session_id", UUID(as_uuid=True), primary_key=True, server_default=_NEW_UUID),
    _cascade_fk("user_id", "users.user_id"),
    _tstz("created_at"),
    _tstz("last_active"),
    # Sequence number the next appended message gets; bumping it orders concurrent appends.
    Column("next_seq", BigInteger, nullable=False, server_default=text("0")),
    # When it was restored from the archive (NULL: never); archival waits idle_seconds from it.
    _tstz("restored_at", nullable=True, now_default=False),
    # The chat of the conversation (revision 0016); NULL for the user's private chat.
    Column("chat_id", Text),
    Index("ix_sessions_user_id_last_active", "user_id", text("last_active DESC")),
    Index("ix_sessions_last_active", "last_active"),
    # A group's sessions, for its shared conversation (docs/conversations.md).
    Index(
        "ix_sessions_chat_id_last_active",
        "chat_id",
        text("last_active DESC"),
        postgresql_where=text("chat_id IS NOT NULL"),
    ),
)


def _owner() -> list[SchemaItem]:
    """The session's user, copied onto a session's rows (revision 0014) so that every statement
    can name the user (the distribution column on Citus, docs/scaling.md). Nullable with a
    CHECK while bots of release 0.1.0, which do not write it, may run: a trigger
    (sk_fill_user_id) fills it for them. The next release makes it NOT NULL. Revision 0014
    also creates statistics (``st_<table>_session_user``, dependencies): the session
    determines the user, which the planner must know to keep using the primary key."""
    return [
        Column("user_id", UUID(as_uuid=True)),
        CheckConstraint("user_id IS NOT NULL", name="user_id"),
    ]


session_messages = Table(
    "session_messages",
    metadata,
    *_message_columns("sessions"),
    _tstz("created_at"),
    _extra(),
    *_owner(),
    PrimaryKeyConstraint("session_id", "seq"),
    CheckConstraint(_ROLE_CHECK, name="role"),
)

# Receipts of the turns finish_turn stored, by the idempotency key the Turn carries: a retry
# after an in-doubt error (the answer of a commit was lost) finds its receipt and returns the
# same result instead of storing the turn twice. A receipt goes when its turn's messages are
# trimmed from the history (finish_turn deletes it) or with its session (archival, erasure).
turn_receipts = Table(
    "turn_receipts",
    metadata,
    _cascade_fk("session_id", "sessions.session_id"),
    Column("turn_id", UUID(as_uuid=True), nullable=False),
    Column("appended", Integer, nullable=False),
    Column("trimmed", Integer, nullable=False),
    # The session's next_seq after the turn: the turn's messages are next_seq - appended ...
    Column("next_seq", BigInteger, nullable=False),
    *_owner(),
    PrimaryKeyConstraint("session_id", "turn_id"),
)

archived_sessions = Table(
    "archived_sessions",
    metadata,
    Column("session_id", UUID(as_uuid=True), primary_key=True),
    # No foreign key: an archive outlives nothing but is kept apart from the online tables.
    Column("user_id", UUID(as_uuid=True), nullable=False),
    Column("created_at", TIMESTAMP(timezone=True), nullable=False),
    Column("last_active", TIMESTAMP(timezone=True), nullable=False),
    Column("next_seq", BigInteger, nullable=False),
    _tstz("archived_at"),
    Column("chat_id", Text),
    Index("ix_archived_sessions_user_id", "user_id"),
    Index("ix_archived_sessions_archived_at", "archived_at"),
)

archived_session_messages = Table(
    "archived_session_messages",
    metadata,
    *_message_columns("archived_sessions"),
    Column("created_at", TIMESTAMP(timezone=True), nullable=False),
    _extra(),
    PrimaryKeyConstraint("session_id", "seq"),
)

# The partitions of the partitioned tables: the pre-0013 table (``_legacy``, covering the past)
# and the ones partition_maintenance makes (``_p20261129_0000``); and the retired DEFAULT
# partitions (``_default``, plain tables since revision 0022, kept for 0.2.0's daemons).
PARTITIONED = ("rate_limits", "usage_stats")
_PARTITION_NAME = re.compile("^(?:" + "|".join(PARTITIONED) + r")_(?:legacy|default|p\d{8}_\d{4})$")


def is_partition(name: str | None) -> bool:
    """Whether table ``name`` is a partition of one of the PARTITIONED tables."""
    return bool(name and _PARTITION_NAME.match(name))


rate_limits = Table(
    "rate_limits",
    metadata,
    _cascade_fk("user_id", "users.user_id"),
    # Window length in seconds: 60, 3600 and 86400 for the minute, hour and day caps.
    Column("window_seconds", Integer, nullable=False),
    Column("window_start", TIMESTAMP(timezone=True), nullable=False),
    Column("request_count", Integer, nullable=False, server_default=text("0")),
    # Requests of the window a cap refused (revision 0020): the first refusal is answered.
    Column("refused_count", Integer, nullable=False, server_default=text("0")),
    PrimaryKeyConstraint("user_id", "window_seconds", "window_start"),
    CheckConstraint("window_seconds > 0", name="window_seconds"),
    Index("ix_rate_limits_window_start", "window_start"),
    # Every key includes window_start, so one request's windows land in one (daily) partition.
    postgresql_partition_by="RANGE (window_start)",
)

usage_stats = Table(
    "usage_stats",
    metadata,
    Column("stat_id", UUID(as_uuid=True), nullable=False, server_default=_NEW_UUID),
    _cascade_fk("user_id", "users.user_id"),
    Column("channel", Text, nullable=False),
    Column("input_tokens", BigInteger, nullable=False, server_default=text("0")),
    Column("output_tokens", BigInteger, nullable=False, server_default=text("0")),
    Column("cached_tokens", BigInteger, nullable=False, server_default=text("0")),
    _tstz("created_at"),
    # Release 0.1.0's rollup flag, no longer written (expand/contract: dropped a release later).
    # Rows written since revision 0013 leave it NULL, so 0.1.0's rollup ("NOT rolled_up") and
    # prune ("rolled_up") never touch them; false/true: a row from before 0013 not yet / already
    # counted by the flag.
    Column("rolled_up", Boolean),
    # The inserting transaction's id (NULL: a row from before revision 0013). The rollup counts
    # rows by this key up to the oldest transaction still running, a range no new row can enter.
    Column("inserted_xid", BigInteger, server_default=text(XID_DEFAULT)),
    PrimaryKeyConstraint("stat_id", "created_at"),
    CheckConstraint(
        "input_tokens >= 0 AND output_tokens >= 0 AND cached_tokens >= 0", name="tokens"
    ),
    Index(
        "ix_usage_stats_pending",
        "created_at",
        postgresql_where=text("NOT rolled_up"),
    ),
    Index("ix_usage_stats_created_at", "created_at"),
    Index("ix_usage_stats_user_id", "user_id"),
    Index("ix_usage_stats_inserted_xid", "inserted_xid"),
    postgresql_partition_by="RANGE (created_at)",
)

# The usage rollup's progress (one row): every raw row with inserted_xid below ``watermark`` is
# in usage_daily. Advanced by the rollup and read by erasure under this row's lock.
usage_rollup_state = Table(
    "usage_rollup_state",
    metadata,
    Column("singleton", Boolean, nullable=False, server_default=text("true")),
    Column("watermark", BigInteger, nullable=False, server_default=text("0")),
    _tstz("updated_at"),
    PrimaryKeyConstraint("singleton"),
    CheckConstraint("singleton", name="singleton"),
)

# The per-database secret of sk_user_key (revision 0014): 32 random bytes, one row, never sent
# to a client. Losing or changing it changes the ids new users get: existing users would then
# be found only by their channel identity (as users from before 0014 are), and not on Citus.
user_key_secret = Table(
    "user_key_secret",
    metadata,
    Column("singleton", Boolean, primary_key=True, server_default=text("true")),
    Column("secret", LargeBinary, nullable=False),
    _tstz("created_at"),
    CheckConstraint("singleton", name="singleton"),
    CheckConstraint("octet_length(secret) >= 32", name="secret_length"),
)

usage_daily = Table(
    "usage_daily",
    metadata,
    Column("day", Date, nullable=False),
    # No foreign key: rollups are analytics and may be kept anonymised after a user is erased.
    Column("user_id", UUID(as_uuid=True), nullable=False),
    Column("channel", Text, nullable=False),
    Column("requests", BigInteger, nullable=False, server_default=text("0")),
    Column("input_tokens", BigInteger, nullable=False, server_default=text("0")),
    Column("output_tokens", BigInteger, nullable=False, server_default=text("0")),
    Column("cached_tokens", BigInteger, nullable=False, server_default=text("0")),
    _tstz("updated_at"),
    PrimaryKeyConstraint("day", "user_id", "channel"),
    # Erasure and export find a user's totals (revision 0021).
    Index("ix_usage_daily_user_id", "user_id"),
)

link_codes = Table(
    "link_codes",
    metadata,
    Column("code", Text, primary_key=True),
    _cascade_fk("user_id", "users.user_id"),
    _tstz("created_at"),
    Column("expires_at", TIMESTAMP(timezone=True), nullable=False),
    Column("used_at", TIMESTAMP(timezone=True)),
    Column("used_by", UUID(as_uuid=True)),
    Index("ix_link_codes_user_id", "user_id"),
    Index("ix_link_codes_expires_at", "expires_at"),
    # Erasure and export find the codes a user redeemed (revision 0024); most are never used.
    Index("ix_link_codes_used_by", "used_by", postgresql_where=text("used_by IS NOT NULL")),
)

# Failed redemption attempts per user, for the lock-out after too many wrong codes.
link_code_failures = Table(
    "link_code_failures",
    metadata,
    _cascade_fk("user_id", "users.user_id", primary_key=True),
    Column("window_start", TIMESTAMP(timezone=True), nullable=False),
    Column("failures", Integer, nullable=False, server_default=text("0")),
    Column("locked_until", TIMESTAMP(timezone=True)),
    # Failure times of the last 24 hours, for the daily cap (revision 0015).
    Column("recent", ARRAY(TIMESTAMP(timezone=True)), nullable=False, server_default=text("'{}'")),
)

# An erased account's failure record (revision 0015), keyed by sk_link_failure_key(user_id) and
# holding nothing else of the user, until its day and lock-out are over: erasure must not
# reset a lock-out (the user comes back under the same id).
link_code_erased_failures = Table(
    "link_code_erased_failures",
    metadata,
    Column("account_key", Text, primary_key=True),
    Column("window_start", TIMESTAMP(timezone=True), nullable=False),
    Column("failures", Integer, nullable=False, server_default=text("0")),
    Column("locked_until", TIMESTAMP(timezone=True)),
    Column("recent", ARRAY(TIMESTAMP(timezone=True)), nullable=False, server_default=text("'{}'")),
)

proactive_users = Table(
    "proactive_users",
    metadata,
    _cascade_fk("user_id", "users.user_id", primary_key=True),
    Column("chat_id", Text, nullable=False),
    _tstz("registered_at"),
    Index("ix_proactive_users_chat_id", "chat_id"),
)

# The snapshot the proactive_reload job publishes: one row per proactive user, replaced whole.
proactive_user_list = Table(
    "proactive_user_list",
    metadata,
    Column("user_id", UUID(as_uuid=True), primary_key=True),
    Column("chat_id", Text, nullable=False),
    _tstz("loaded_at"),
)

# Who proactive_user_list currently names: one row, whose version the proactive_reload job
# (and erasure) raise when the list changes, announcing it with NOTIFY (sk_publish_proactive_list
# in store/sql/functions.sql). No row yet: the list was never published.
proactive_list_state = Table(
    "proactive_list_state",
    metadata,
    Column("singleton", Boolean, primary_key=True, server_default=text("true")),
    Column("version", BigInteger, nullable=False),
    _tstz("published_at"),
    CheckConstraint("singleton", name="singleton"),
)

# aiogram's FSM (finite-state machine) storage (store/integrations/aiogram.py): one row per
# StorageKey; absent optional key parts are stored as 0 and ''. ``user_id`` links the row to the
# store's user of (channel, telegram_user_id) when that user exists; erasure removes the rows by
# either (sk_forget).
aiogram_fsm_states = Table(
    "aiogram_fsm_states",
    metadata,
    Column("bot_id", BigInteger, nullable=False),
    Column("chat_id", BigInteger, nullable=False),
    Column("telegram_user_id", BigInteger, nullable=False),
    Column("thread_id", BigInteger, nullable=False, server_default=text("0")),
    Column("business_connection_id", Text, nullable=False, server_default=text("''")),
    Column("destiny", Text, nullable=False, server_default=text("'default'")),
    Column("channel", Text, nullable=False),
    Column("user_id", UUID(as_uuid=True), ForeignKey("users.user_id", ondelete="CASCADE")),
    Column("state", Text),
    Column("data", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    _tstz("updated_at"),
    PrimaryKeyConstraint(
        "bot_id", "chat_id", "telegram_user_id", "thread_id", "business_connection_id", "destiny"
    ),
    Index("ix_aiogram_fsm_states_user_id", "user_id"),
    Index("ix_aiogram_fsm_states_channel_telegram_user_id", "channel", "telegram_user_id"),
)

# LangGraph checkpoints (store/integrations/langgraph.py). A thread is tied to a user when the
# bot says so (erasure and user retention reach it through the cascade); the rest of a thread's
# rows go with the thread. A channel whose value is a list is stored as a line of items that
# later values extend: a value is the first ``length`` items of its line, so a growing message
# list costs only its new items per checkpoint.
langgraph_threads = Table(
    "langgraph_threads",
    metadata,
    Column("thread_id", Text, primary_key=True),
    Column("user_id", UUID(as_uuid=True), ForeignKey("users.user_id", ondelete="CASCADE")),
    _tstz("created_at"),
    _tstz("updated_at"),
    Index("ix_langgraph_threads_user_id", "user_id"),
    Index("ix_langgraph_threads_updated_at", "updated_at"),
)


def _thread_fk() -> ForeignKey:
    return ForeignKey("langgraph_threads.thread_id", ondelete="CASCADE")


langgraph_checkpoints = Table(
    "langgraph_checkpoints",
    metadata,
    Column("thread_id", Text, _thread_fk(), nullable=False),
    Column("checkpoint_ns", Text, nullable=False),
    Column("checkpoint_id", Text, nullable=False),
    Column("parent_checkpoint_id", Text),
    # The checkpoint without its non-primitive channel values, as its serializer wrote it.
    Column("type", Text, nullable=False),
    Column("checkpoint", LargeBinary, nullable=False),
    # channel_versions again, readable by SQL: which blobs the checkpoint references.
    Column("versions", JSONB, nullable=False),
    Column("metadata", JSONB, nullable=False),
    _tstz("created_at"),
    PrimaryKeyConstraint("thread_id", "checkpoint_ns", "checkpoint_id"),
)

langgraph_lines = Table(
    "langgraph_lines",
    metadata,
    Column("line_id", BigInteger, primary_key=True, autoincrement=True),
    Column("thread_id", Text, _thread_fk(), nullable=False),
    # How many items the line holds: extending it is an UPDATE guarded by this count.
    Column("length", Integer, nullable=False),
    Index("ix_langgraph_lines_thread_id", "thread_id"),
)

langgraph_items = Table(
    "langgraph_items",
    metadata,
    Column(
        "line_id",
        BigInteger,
        ForeignKey("langgraph_lines.line_id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("seq", Integer, nullable=False),
    Column("type", Text, nullable=False),
    Column("data", LargeBinary),
    PrimaryKeyConstraint("line_id", "seq"),
)

# One channel value per (channel, version): either a serialized value (type, data) or, for a
# list, the first ``length`` items of line ``line_id``.
langgraph_blobs = Table(
    "langgraph_blobs",
    metadata,
    Column("thread_id", Text, _thread_fk(), nullable=False),
    Column("checkpoint_ns", Text, nullable=False),
    Column("channel", Text, nullable=False),
    Column("version", Text, nullable=False),
    Column("type", Text, nullable=False),
    Column("data", LargeBinary),
    Column("line_id", BigInteger),
    Column("length", Integer),
    PrimaryKeyConstraint("thread_id", "checkpoint_ns", "channel", "version"),
)

langgraph_writes = Table(
    "langgraph_writes",
    metadata,
    Column("thread_id", Text, nullable=False),
    Column("checkpoint_ns", Text, nullable=False),
    Column("checkpoint_id", Text, nullable=False),
    Column("task_id", Text, nullable=False),
    Column("idx", Integer, nullable=False),
    Column("channel", Text, nullable=False),
    Column("type", Text, nullable=False),
    Column("data", LargeBinary),
    Column("task_path", Text, nullable=False, server_default=text("''")),
    # A write belongs to a stored checkpoint and goes with it.
    ForeignKeyConstraint(
        ["thread_id", "checkpoint_ns", "checkpoint_id"],
        [
            "langgraph_checkpoints.thread_id",
            "langgraph_checkpoints.checkpoint_ns",
            "langgraph_checkpoints.checkpoint_id",
        ],
        ondelete="CASCADE",
    ),
    PrimaryKeyConstraint("thread_id", "checkpoint_ns", "checkpoint_id", "task_id", "idx"),
)

# python-telegram-bot's persistence (store/integrations/telegram.py): one row per user_data,
# chat_data, conversation entry, and the bot_data and callback_data of a persistence
# ``namespace``, as JSON. ``owner_ids`` are the Telegram user ids the row is about (a user's
# user_data, a private chat's chat_data, the users in a conversation key), for erasure and
# export; ``user_id`` links a row with one owner to the store's user when that user exists.
telegram_persistence = Table(
    "telegram_persistence",
    metadata,
    Column("namespace", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("name", Text, nullable=False, server_default=text("''")),
    Column("key", Text, nullable=False, server_default=text("''")),
    Column("channel", Text, nullable=False),
    Column("owner_ids", ARRAY(Text), nullable=False, server_default=text("'{}'::text[]")),
    Column("user_id", UUID(as_uuid=True), ForeignKey("users.user_id", ondelete="CASCADE")),
    Column("data", JSONB, nullable=False),
    _tstz("updated_at"),
    PrimaryKeyConstraint("namespace", "kind", "name", "key"),
    CheckConstraint(
        "kind IN ('user_data', 'chat_data', 'bot_data', 'callback_data', 'conversation')",
        name="kind",
    ),
    Index("ix_telegram_persistence_user_id", "user_id"),
    Index("ix_telegram_persistence_owner_ids", "owner_ids", postgresql_using="gin"),
)

# An erased user's record for the python-telegram-bot persistence (revision 0023): when it
# was erased, keyed by sk_telegram_erasure_key(user_id) and holding nothing else of the user.
# A bot's write of data it held from before that moment is dropped (sk_telegram_write).
telegram_persistence_erasures = Table(
    "telegram_persistence_erasures",
    metadata,
    Column("erasure_key", Text, primary_key=True),
    Column("erased_at", TIMESTAMP(timezone=True), nullable=False),
)

job_runs = Table(
    "job_runs",
    metadata,
    Column("run_id", BigInteger, primary_key=True, autoincrement=True),
    Column("job", Text, nullable=False),
    Column("replica_id", Text, nullable=False),
    _tstz("started_at"),
    Column("finished_at", TIMESTAMP(timezone=True)),
    Column("outcome", Text, nullable=False, server_default=text("'running'")),
    Column("rows", BigInteger, nullable=False, server_default=text("0")),
    Column("error", Text),
    Column("details", JSONB),
    CheckConstraint(
        "outcome IN (" + ", ".join(f"'{o}'" for o in JOB_OUTCOMES) + ")", name="outcome"
    ),
    Index("ix_job_runs_job_started_at", "job", text("started_at DESC")),
)

# The daemon's yield probe (sessionkeeper.daemon.pacing): one row per job, rewritten by every
# probe while the job runs, so that a probe commits durably as a bot's turn does and feels the
# WAL flushes a job slows. Keyed by job: two replicas never run one job at once.
job_probes = Table(
    "job_probes",
    metadata,
    Column("job", Text, primary_key=True),
    Column("probed_at", TIMESTAMP(timezone=True), nullable=False),
)

# Messages of a TypeScript-era history that break today's rules (unknown role, content that is
# not text, empty, holds NUL or is over-size), kept verbatim by the legacy conversion
# (sessionkeeper.admin.legacy) instead of being dropped. No foreign key, like the archives:
# they outlive their session's archival; erasure removes them by user.
legacy_quarantined_messages = Table(
    "legacy_quarantined_messages",
    metadata,
    Column("session_id", UUID(as_uuid=True), nullable=False),
    # The element's index in the legacy JSONB array.
    Column("array_index", Integer, nullable=False),
    Column("user_id", UUID(as_uuid=True), nullable=False),
    Column("reason", Text, nullable=False),
    Column("message", JSONB, nullable=False),
    _tstz("quarantined_at"),
    PrimaryKeyConstraint("session_id", "array_index"),
    Index("ix_legacy_quarantined_messages_user_id", "user_id"),
)

# Which release's store/sql/functions.sql the database runs (one row). ``sessionkeeper migrate``
# of an older release, e.g. a replica not yet rolled that migrates on start, then leaves the
# newer functions in place instead of putting its own older ones back (sessionkeeper.admin
# .functions).
applied_functions = Table(
    "applied_functions",
    metadata,
    Column("singleton", Boolean, nullable=False, server_default=text("true")),
    Column("release", Text, nullable=False),
    Column("sha256", Text, nullable=False),
    _tstz("applied_at"),
    PrimaryKeyConstraint("singleton"),
    CheckConstraint("singleton", name="singleton"),
)
