"""Refusals that do not flood (issue 23), on a real PostgreSQL: the first refusal of a rate-limit
window notifies (``turn.notify_refusal``), the later ones of that window do not, concurrent
refusals of one user notify once, and an exempt turn counts against no cap."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from prometheus_client import CollectorRegistry
from store_support import T0, count
from test_store_failover import wait_until_waiting_on_locks

import store.metrics
from store import InvalidInput, Store

SECOND = timedelta(seconds=1)


def windows(conn: psycopg.Connection[Any]) -> list[tuple[int, int, int]]:
    """(window seconds, requests, refusals) of every window, oldest and shortest first."""
    return [
        tuple(row)
        for row in conn.execute(
            "SELECT window_seconds, request_count, refused_count FROM rate_limits"
            " ORDER BY window_start, window_seconds"
        ).fetchall()
    ]


def test_the_first_refusal_of_a_window_notifies_and_the_later_ones_do_not(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    with Store(database_url, max_size=2, rate_per_minute=2) as db:
        turns = [db.begin_turn("telegram", "7", now=T0 + i * SECOND) for i in range(5)]
        assert [t.allowed for t in turns] == [True, True, False, False, False]
        assert [t.notify_refusal for t in turns] == [False, False, True, False, False]
        assert [t.rate.notify for t in turns] == [False, False, True, False, False]
        # Every refusal of the window says when to retry, notified or not.
        assert {t.rate.retry_at for t in turns[2:]} == {T0 + 30 * SECOND}
        assert windows(conn) == [(60, 2, 3)]
        # The next minute is a new window: admitted up to the cap, then one notice again.
        later = [db.begin_turn("telegram", "7", now=T0 + (40 + i) * SECOND) for i in range(4)]
        assert [t.allowed for t in later] == [True, True, False, False]
        assert [t.notify_refusal for t in later] == [False, False, True, False]
        assert windows(conn) == [(60, 2, 3), (60, 2, 2)]
        # Another user's window is its own.
        assert db.begin_turn("telegram", "8", now=T0 + 3 * SECOND).allowed


def test_check_rate_limit_says_which_refusal_notifies(database_url: str) -> None:
    with Store(database_url, max_size=2, rate_per_minute=1) as db:
        user = db.get_or_create_user("telegram", "7").user_id
        decisions = [db.check_rate_limit(user, now=T0 + i * SECOND) for i in range(3)]
    assert [(d.allowed, d.notify) for d in decisions] == [
        (True, False),
        (False, True),
        (False, False),
    ]


def test_with_several_caps_each_refusing_window_notifies_once(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    # 2 a minute and 3 an hour: the minute's cap refuses first (one notice), then, in the next
    # minute, the hour's (one notice for the hour: a new minute does not repeat it).
    with Store(database_url, max_size=2, rate_per_minute=2, rate_per_hour=3) as db:

        def decide(at: timedelta) -> tuple[bool, int | None, bool]:
            turn = db.begin_turn("telegram", "7", now=T0 + at)
            return turn.allowed, turn.rate.refused_window, turn.notify_refusal

        first_minute = [decide(i * SECOND) for i in range(4)]
        assert first_minute == [(True, None, False)] * 2 + [(False, 60, True), (False, 60, False)]
        second_minute = [decide((40 + i) * SECOND) for i in range(3)]
        assert second_minute == [(True, None, False), (False, 3600, True), (False, 3600, False)]
        third_minute = [decide((100 + i) * SECOND) for i in range(2)]
        assert third_minute == [(False, 3600, False)] * 2
        # A refused request counts against no cap; the refusing window counts the refusal.
        rows = conn.execute(
            "SELECT window_seconds, window_start, request_count, refused_count FROM rate_limits"
            " ORDER BY window_seconds, window_start"
        ).fetchall()
        minute = T0.replace(second=0)
        assert rows == [
            (60, minute, 2, 2),
            (60, minute + timedelta(minutes=1), 1, 0),
            (60, minute + timedelta(minutes=2), 0, 0),
            (3600, minute, 3, 4),
        ]
        # The next hour notifies again.
        assert decide(timedelta(hours=1)) == (True, None, False)


@pytest.mark.parametrize("call", ["begin_turn", "check_rate_limit"])
def test_concurrent_refusals_of_one_user_notify_exactly_once(
    database_url: str, conn: psycopg.Connection[Any], call: str
) -> None:
    # begin_turn also queues a user's turns on the user's row; check_rate_limit only on the
    # window's row, which its refusal counts on.
    workers = 6
    with Store(database_url, max_size=workers, rate_per_minute=1) as db:
        first = db.begin_turn("telegram", "7", now=T0)
        assert first.allowed

        def notify() -> bool:
            if call == "begin_turn":
                turn = db.begin_turn("telegram", "7", now=T0 + SECOND)
                assert not turn.allowed
                return turn.notify_refusal
            decision = db.check_rate_limit(first.user.user_id, now=T0 + SECOND)
            assert not decision.allowed
            return decision.notify

        # The window's row is held, so that every worker's refusal waits for it and all of
        # them go on at once when it is released.
        with psycopg.connect(database_url) as holder:
            holder.execute("SELECT 1 FROM rate_limits FOR UPDATE").fetchall()
            with ThreadPoolExecutor(max_workers=workers) as pool:
                futures = [pool.submit(notify) for _ in range(workers)]
                wait_until_waiting_on_locks(conn, workers)
                holder.commit()
                notified = [f.result() for f in futures]
    assert sorted(notified) == [False] * (workers - 1) + [True]
    assert windows(conn) == [(60, 1, workers)]


def test_an_exempt_turn_is_admitted_and_counted_against_no_cap(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    with Store(database_url, max_size=2, rate_per_minute=1, rate_per_hour=10) as db:
        assert db.begin_turn("telegram", "7", now=T0).allowed
        assert not db.begin_turn("telegram", "7", now=T0 + SECOND).allowed
        exempt = db.begin_turn("telegram", "7", rate_limit=False, now=T0 + 2 * SECOND)
        assert exempt.allowed and exempt.session_id is not None and not exempt.notify_refusal
        assert windows(conn) == [(60, 1, 1), (3600, 1, 0)]
        # Counted nowhere: the next counted message is still refused, quietly.
        again = db.begin_turn("telegram", "7", now=T0 + 3 * SECOND)
        assert not again.allowed and not again.notify_refusal


def test_a_bad_rate_limit_flag_is_refused_and_writes_nothing(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    with Store(database_url, max_size=1) as db:
        for bad in ("no", 0, None):
            with pytest.raises(InvalidInput, match="rate_limit") as raised:
                db.begin_turn("telegram", "7", rate_limit=bad)  # type: ignore[arg-type]
            assert raised.value.field == "rate_limit"
    assert count(conn, "users") == 0 and count(conn, "rate_limits") == 0


def test_dropped_refusals_are_counted_by_channel(database_url: str) -> None:
    registry = CollectorRegistry()
    name = "sessionkeeper_store_refusals_dropped_total"
    with Store(
        database_url, max_size=1, rate_per_minute=1, channels=frozenset({"telegram", "whatsapp"})
    ) as db:
        store.metrics.instrument(db, registry=registry)
        # The configured channels exist before any refusal, at zero.
        for channel in ("telegram", "whatsapp"):
            assert registry.get_sample_value(name, {"channel": channel}) == 0.0
        for i in range(4):
            db.begin_turn("telegram", "7", now=T0 + i * SECOND)
    assert registry.get_sample_value(name, {"channel": "telegram"}) == 2.0
    assert registry.get_sample_value(name, {"channel": "whatsapp"}) == 0.0
    refused = registry.get_sample_value(
        "sessionkeeper_store_turns_refused_total", {"window_seconds": "60"}
    )
    assert refused == 3.0
