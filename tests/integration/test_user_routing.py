"""Issue 16: every hot-path statement names the user (Citus's distribution column).

Users' ids are a keyed hash of their channel identity (sk_user_key), so a user is found by its
id; users from before (random ids) keep theirs; session_messages and turn_receipts carry the
user (revision 0014), written by the store and, for bots of release 0.1.0, by a trigger.
"""

from __future__ import annotations

import asyncio
import hashlib
import struct
import uuid
from typing import Any

import psycopg
import pytest
from upgrade_support import OLD, migrate_while_writing

from sessionkeeper.admin import migrate
from store import AsyncStore, NotFound, Store, Turn


def keyed(secret: bytes | None, channel: str, channel_user_id: str) -> uuid.UUID:
    """sk_user_key's formula, written out (docs/scaling.md): version 8, RFC variant."""
    material = struct.pack(">i", len(channel.encode())) + channel.encode()
    digest = bytearray(
        hashlib.sha256((secret or b"") + material + channel_user_id.encode()).digest()[:16]
    )
    digest[6] = digest[6] & 0x0F | 0x80
    digest[8] = digest[8] & 0x3F | 0x80
    return uuid.UUID(bytes=bytes(digest))


def one(conn: psycopg.Connection[Any], query: str, *params: Any) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def test_a_new_users_id_is_its_keyed_channel_identity(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    with Store(database_url) as store:
        first = store.begin_turn("telegram", "42")
        again = store.begin_turn("telegram", "42")
        other_channel = store.begin_turn("whatsapp", "42")
        seed_style = store.get_or_create_user("telegram", "43")
    assert first.user.created and not again.user.created
    assert again.user.user_id == first.user.user_id
    assert other_channel.user.user_id != first.user.user_id

    async def replica() -> tuple[uuid.UUID, uuid.UUID]:
        async with AsyncStore(database_url) as other:
            turn = await other.begin_turn("telegram", "42")
            user = await other.get_or_create_user("telegram", "43")
            return turn.user.user_id, user.user_id

    # Another replica (another client, another pool) finds the same users.
    assert asyncio.run(replica()) == (first.user.user_id, seed_style.user_id)

    secret = bytes(one(conn, "SELECT secret FROM user_key_secret"))
    assert len(secret) == 32
    for channel, sender, user_id in [
        ("telegram", "42", first.user.user_id),
        ("whatsapp", "42", other_channel.user.user_id),
        ("telegram", "43", seed_style.user_id),
    ]:
        assert user_id == keyed(secret, channel, sender)
        assert user_id.version == 8 and user_id.variant == uuid.RFC_4122
        # Without the secret, the id cannot be computed from the channel id.
        assert user_id != keyed(None, channel, sender)
        assert user_id != uuid.uuid5(uuid.NAMESPACE_URL, f"{channel}:{sender}")
    # The length prefix: ("ab", "c") and ("a", "bc") are different users.
    assert one(conn, "SELECT sk_user_key('ab', 'c') <> sk_user_key('a', 'bc')")


def test_users_with_random_ids_keep_them(database_url: str, conn: psycopg.Connection[Any]) -> None:
    # Made as before revision 0014: a random id.
    legacy = [
        one(
            conn,
            "INSERT INTO users (user_id, channel, channel_user_id, display_name, authenticated)"
            " VALUES (gen_random_uuid(), 'telegram', %s, 'Old', %s) RETURNING user_id",
            sender,
            authenticated,
        )
        for sender, authenticated in (("7", True), ("8", False))
    ]
    with Store(database_url) as store:
        turn = store.begin_turn("telegram", "7")
        renamed = store.begin_turn("telegram", "8", display_name="New")
        user = store.get_or_create_user("telegram", "7")
        store.finish_turn(turn, "hello", "hi")
        history = store.begin_turn("telegram", "7").history
    assert (turn.user.user_id, renamed.user.user_id, user.user_id) == tuple(legacy + legacy[:1])
    assert not turn.user.created and not renamed.user.created
    assert renamed.user.display_name == "New"
    assert [m.content for m in history] == ["hello", "hi"]
    assert one(conn, "SELECT count(*) FROM users") == 2
    assert one(conn, "SELECT bool_and(authenticated) FROM users")


def test_a_user_inserted_without_an_id_gets_its_key(conn: psycopg.Connection[Any]) -> None:
    # As release 0.1.0's get_or_create_user inserts (the column's random default is gone).
    old = OLD
    row = conn.execute(
        old["get_or_create_user"],
        {"channel": "telegram", "channel_user_id": "77", "display_name": None, "now": None},
    ).fetchone()
    assert row is not None
    assert row[0] == one(conn, "SELECT sk_user_key('telegram', '77')")
    given = uuid.uuid4()  # an explicit id is kept (the trigger fires only without one)
    conn.execute(
        "INSERT INTO users (user_id, channel, channel_user_id) VALUES (%s, 'x', '1')", (given,)
    )
    assert one(conn, "SELECT user_id FROM users WHERE channel = 'x'") == given


def test_a_known_user_with_nothing_new_is_not_written(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    with Store(database_url) as store:
        store.begin_turn("telegram", "1", display_name="Ann")
        before = one(conn, "SELECT xmin::text FROM users")
        store.begin_turn("telegram", "1")
        store.get_or_create_user("telegram", "1", display_name="Ann")
        assert one(conn, "SELECT xmin::text FROM users") == before
        store.begin_turn("telegram", "1", display_name="Bea")
        assert one(conn, "SELECT display_name FROM users") == "Bea"


@pytest.mark.parametrize("by", ["turn", "session id"])
def test_finish_turn_stores_the_user_on_every_row(
    database_url: str, conn: psycopg.Connection[Any], by: str
) -> None:
    with Store(database_url) as store:
        turn = store.begin_turn("telegram", "5")
        assert turn.session_id is not None
        target: Turn | uuid.UUID = turn if by == "turn" else turn.session_id
        for i in range(25):  # past the trim (20 pairs) and the receipts' expiry
            appended = store.finish_turn(target, f"q{i}", f"a{i}", input_tokens=1)
        assert appended.user_id == turn.user.user_id
        store.append_messages(turn.session_id, [{"role": "system", "content": "note"}])
        history = store.begin_turn("telegram", "5").history
    user = turn.user.user_id
    assert [m.content for m in history][-3:] == ["q24", "a24", "note"]
    # 20 pairs kept by the trim, and the note (append_messages does not trim).
    assert one(conn, "SELECT count(*) FROM session_messages") == 41
    assert one(conn, "SELECT count(*) FROM session_messages WHERE user_id = %s", user) == 41
    receipts = "SELECT count(*) FILTER (WHERE user_id = %s), count(*) FROM turn_receipts"
    counted = conn.execute(receipts, (user,)).fetchone()
    if by == "turn":
        assert counted is not None and counted[0] == counted[1] > 0
    else:
        assert counted == (0, 0), "a bare session id carries no idempotency key"
    assert one(conn, "SELECT sum(input_tokens) FROM usage_stats WHERE user_id = %s", user) == 25


def test_a_turn_of_another_user_finds_no_session(database_url: str) -> None:
    with Store(database_url) as store:
        mine = store.begin_turn("telegram", "1")
        theirs = store.begin_turn("telegram", "2")
        forged = Turn(
            user=theirs.user, rate=mine.rate, started_at=mine.started_at, session_id=mine.session_id
        )
        with pytest.raises(NotFound, match="does not exist for user"):
            store.finish_turn(forged, "q", "a")
        assert store.begin_turn("telegram", "1").history == []


def test_rows_inserted_without_the_user_get_it_from_their_session(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    with Store(database_url) as store:
        turn = store.begin_turn("telegram", "9")
    # As release 0.1.0's statements and the archival's restore insert: no user_id.
    conn.execute(
        "INSERT INTO session_messages (session_id, seq, role, content) VALUES (%s, 0, 'user', 'x')",
        (turn.session_id,),
    )
    conn.execute(
        "INSERT INTO turn_receipts (session_id, turn_id, appended, trimmed, next_seq)"
        " VALUES (%s, gen_random_uuid(), 1, 0, 1)",
        (turn.session_id,),
    )
    for table in ("session_messages", "turn_receipts"):
        # Names are constants.
        assert one(conn, f"SELECT user_id FROM {table}") == turn.user.user_id
    # Only rows without the user fire it: the store's own inserts give it and skip the call.
    triggers = conn.execute(
        "SELECT pg_get_triggerdef(oid) FROM pg_trigger WHERE tgname LIKE 'tg_%%_user_id'"
    ).fetchall()
    assert len(triggers) == 3  # users (sk_key_new_user), session_messages, turn_receipts
    assert all("BEFORE INSERT" in t and "WHEN ((new.user_id IS NULL))" in t for (t,) in triggers)
    # Validated: the next release's NOT NULL needs no scan.
    assert conn.execute(
        "SELECT conname, convalidated FROM pg_constraint WHERE conname LIKE 'ck_%%_user_id'"
        " ORDER BY 1"
    ).fetchall() == [("ck_session_messages_user_id", True), ("ck_turn_receipts_user_id", True)]
    # No session to take the user from: refused by the CHECK (before the foreign key).
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute(
            "INSERT INTO session_messages (session_id, seq, role, content)"
            " VALUES (%s, 0, 'user', 'y')",
            (uuid.uuid4(),),
        )


# -- revision 0014 on a database in use ------------------------------------------------------

SEEDED_SESSIONS = 60
SEEDED_EACH = 200  # 12 000 messages: more than one backfill batch
WRITERS = 3


@pytest.mark.slow
def test_the_revision_fills_existing_rows_while_old_bots_write(empty_database_url: str) -> None:
    url = empty_database_url
    migrate.upgrade(url, "0013")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO users (channel, channel_user_id) SELECT 'telegram', 'u' || g"
            " FROM generate_series(1, %s) g",
            (SEEDED_SESSIONS,),
        )
        conn.execute(
            "INSERT INTO sessions (user_id, next_seq) SELECT user_id, %s FROM users", (SEEDED_EACH,)
        )
        conn.execute(
            "INSERT INTO session_messages (session_id, seq, role, content)"
            " SELECT s.session_id, g, 'user', 'x' FROM sessions s, generate_series(0, %s - 1) g",
            (SEEDED_EACH,),
        )
        conn.execute(
            "INSERT INTO turn_receipts (session_id, turn_id, appended, trimmed, next_seq)"
            " SELECT s.session_id, gen_random_uuid(), 2, 0, g"
            " FROM sessions s, generate_series(2, %s, 2) g",
            (SEEDED_EACH,),
        )
        writers = [
            row[0] for row in conn.execute("SELECT session_id FROM sessions LIMIT %s", (WRITERS,))
        ]

    def turn(conn: psycopg.Connection[Any], session_id: uuid.UUID) -> None:
        # Release 0.1.0's finish_turn: its append_messages, which does not name the user.
        row = conn.execute(
            OLD["append_messages"],
            {
                "session_id": session_id,
                "roles": ["user", "assistant"],
                "contents": ["q", "a"],
                "created": [None, None],
                "now": None,
                "keep": None,
                "track_usage": False,
                "input_tokens": 0,
                "output_tokens": 0,
                "cached_tokens": 0,
            },
        ).fetchone()
        assert row is not None and row[3] == 2

    written = migrate_while_writing(url, turn, writers)
    assert migrate.current_revision(url) == migrate.head_revision()
    with psycopg.connect(url, autocommit=True) as conn:
        messages = SEEDED_SESSIONS * SEEDED_EACH + 2 * sum(written)
        assert one(conn, "SELECT count(*) FROM session_messages") == messages
        for table in ("session_messages", "turn_receipts"):
            # Every row, seeded or written during the migration, carries its session's user.
            wrong = (
                f"SELECT count(*) FROM {table} t JOIN sessions s ON s.session_id = t.session_id"
                " WHERE t.user_id IS DISTINCT FROM s.user_id"
            )
            assert one(conn, wrong) == 0, table
        assert one(
            conn,
            "SELECT bool_and(convalidated) FROM pg_constraint WHERE conname LIKE 'ck_%%_user_id'",
        )
        # Running it again (an interrupted migration finished later) finds nothing to do.
        revision = migrate.revision_module("0014_user_routing.py")
        assert revision.backfill(conn, "session_messages", ("session_id", "seq"), batch=1000) == 0
