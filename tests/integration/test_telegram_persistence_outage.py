"""SessionkeeperPersistence when its database goes away and comes back (issue 22): PTB's writes
that fail are kept, the newest per entry, and stored with the next write or at flush. A real
Application (fake Telegram server) and a real database that stops accepting connections (its
connections ended, ``ALLOW_CONNECTIONS false``) and then accepts them again."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from fake_telegram import TOKEN, FakeTelegram, message_update, run
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from telegram import Update
from telegram.ext import Application, ContextTypes, MessageHandler, PersistenceInput, filters

from store import AsyncStore, DatabaseUnavailable
from store.integrations.telegram import SessionkeeperPersistence

ADA = 7001
BOB = 7002
App = Application[Any, Any, Any, Any, Any, Any]


def counter_bot(telegram: FakeTelegram, db: AsyncStore, errors: list[BaseException]) -> App:
    """Counts each user's messages in user_data and answers the count; no bot_data (so that
    every write of a round is one the test asked for)."""

    async def count(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.message is not None and context.user_data is not None
        context.user_data["count"] = context.user_data.get("count", 0) + 1
        await update.message.reply_text(f"count {context.user_data['count']}")

    async def on_error(update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert context.error is not None
        errors.append(context.error)

    persistence = SessionkeeperPersistence(
        db, store_data=PersistenceInput(bot_data=False, chat_data=False, callback_data=False)
    )
    app = (
        Application.builder()
        .token(TOKEN)
        .base_url(f"{telegram.url}/bot")
        .updater(None)
        .persistence(persistence)
        .build()
    )
    app.add_handler(MessageHandler(filters.TEXT, count))
    app.add_error_handler(on_error)
    return app


def outage(admin_url: str, database_url: str) -> tuple[Callable[[], None], Callable[[], None]]:
    """``away()``: the database ends its connections and refuses new ones; ``back()``: it
    accepts them again."""
    dbname = str(conninfo_to_dict(database_url)["dbname"])
    name = sql.Identifier(dbname)

    def away() -> None:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(name))
            conn.execute(
                "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE datname = %s",
                [dbname],
            )

    def back() -> None:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(name))

    return away, back


def short_waits(database_url: str) -> AsyncStore:
    return AsyncStore(
        database_url,
        pool_timeout=1,
        connect_timeout=1,
        reconnect_delay=0.1,
        reconnect_max_delay=0.5,
    )


async def say(app: App, update_id: int, sender: int, text: str = "hi") -> None:
    await app.process_update(Update.de_json(message_update(update_id, sender, text), app.bot))


def user_data(database_url: str) -> dict[str, Any]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT key, data FROM telegram_persistence WHERE kind = 'user_data' ORDER BY key"
        ).fetchall()
    return dict(rows)


def test_a_write_that_failed_is_stored_with_the_next_one(
    admin_url: str, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="store.integrations.telegram")
    away, back = outage(admin_url, database_url)
    errors: list[BaseException] = []
    seen: dict[str, Any] = {}

    async def scenario(telegram: FakeTelegram) -> None:
        async with short_waits(database_url) as db:
            app = counter_bot(telegram, db, errors)
            async with app:
                await app.start()
                await say(app, 1, ADA)
                await app.update_persistence()
                seen["before"] = user_data(database_url)
                away()
                await say(app, 2, ADA)  # count 2, in memory
                await app.update_persistence()  # fails: kept
                seen["errors"] = list(errors)
                back()
                await db.pool.wait(timeout=30)
                await say(app, 3, BOB)
                await app.update_persistence()  # Bob's write, then Ada's kept one
                seen["after"] = user_data(database_url)
                await app.stop()

    telegram = run(scenario)

    assert telegram.texts() == ["count 1", "count 2", "count 1"]  # the bot went on meanwhile
    assert seen["before"] == {str(ADA): {"count": 1}}
    # PTB hands the failure to the error handlers, and the log says it is kept.
    assert len(seen["errors"]) == 1 and isinstance(seen["errors"][0], DatabaseUnavailable)
    assert f"user_data[{ADA}] not stored, the database is unavailable: kept" in caplog.text
    assert seen["after"] == {str(ADA): {"count": 2}, str(BOB): {"count": 1}}
    assert errors == seen["errors"]  # nothing failed once the database was back


def test_the_newest_kept_data_wins_and_flush_stores_what_is_left(
    admin_url: str, database_url: str
) -> None:
    away, back = outage(admin_url, database_url)
    errors: list[BaseException] = []
    seen: dict[str, Any] = {}

    async def scenario(telegram: FakeTelegram) -> None:
        async with short_waits(database_url) as db:
            app = counter_bot(telegram, db, errors)
            async with app:
                await app.start()
                await say(app, 1, ADA)
                await say(app, 2, BOB)
                await app.update_persistence()
                away()
                for update_id in (3, 4):  # two rounds fail: Ada's counts 2 and 3 are kept
                    await say(app, update_id, ADA)
                    await app.update_persistence()
                await say(app, 5, BOB)  # Bob's count 2: its round fails too
                await app.update_persistence()
                back()
                await db.pool.wait(timeout=30)
                await say(app, 6, ADA)  # count 4 is written; the kept 2 and 3 are stale
                await app.update_persistence()
                seen["round"] = user_data(database_url)
                await app.stop()
            # shutdown: PTB's last round (nothing marked) and flush, which stores Bob's count
        seen["end"] = user_data(database_url)

    run(scenario)

    assert len(errors) == 3 and all(isinstance(e, DatabaseUnavailable) for e in errors)
    assert seen["round"][str(ADA)] == {"count": 4}
    assert seen["end"] == {str(ADA): {"count": 4}, str(BOB): {"count": 2}}


def test_flush_logs_what_is_lost_when_the_database_stays_away(
    admin_url: str, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    away, back = outage(admin_url, database_url)
    errors: list[BaseException] = []

    async def scenario(telegram: FakeTelegram) -> None:
        async with short_waits(database_url) as db:
            app = counter_bot(telegram, db, errors)
            async with app:
                await app.start()
                away()
                await say(app, 1, ADA)
                await app.update_persistence()
                await app.stop()
            # shutdown completes (post_shutdown still runs) with the loss logged

    try:
        run(scenario)
    finally:
        back()

    assert len(errors) == 1 and isinstance(errors[0], DatabaseUnavailable)
    lost = [r for r in caplog.records if r.levelno == logging.ERROR and "are lost" in r.message]
    assert len(lost) == 1 and f"user_data[{ADA}]" in lost[0].message
    assert user_data(database_url) == {}
