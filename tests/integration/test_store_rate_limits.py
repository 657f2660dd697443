"""Rate limits: minute, hour and day caps in one statement; a refusal counts against none."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from store_support import T0, count

from store import RateLimited, Store


def window_counts(conn: psycopg.Connection[Any]) -> dict[int, int]:
    rows = conn.execute(
        "SELECT window_seconds, sum(request_count) FROM rate_limits GROUP BY 1"
    ).fetchall()
    return {seconds: int(total) for seconds, total in rows}


def test_seed_default_is_fifteen_per_minute(database_url: str) -> None:
    with Store(database_url) as store:
        user = store.get_or_create_user("telegram", "u").user_id
        decisions = [store.check_rate_limit(user, now=T0) for _ in range(16)]
        next_minute = store.check_rate_limit(user, now=T0 + timedelta(seconds=30))
    assert [bool(d) for d in decisions] == [True] * 15 + [False]
    refused = decisions[-1]
    assert refused.refused_window == 60
    assert refused.retry_at == datetime(2026, 3, 2, 12, 1, tzinfo=UTC)
    assert next_minute.allowed  # T0 is 12:00:30; 12:01:00 starts a new minute


def test_one_cap_counts_admitted_requests_only(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    with Store(database_url, rate_per_minute=2) as store:
        user = store.get_or_create_user("telegram", "u").user_id
        assert [store.check_rate_limit(user, now=T0).allowed for _ in range(4)] == [
            True,
            True,
            False,
            False,
        ]
    assert window_counts(conn) == {60: 2}


def test_refused_request_counts_against_no_window_and_says_when_to_retry(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    with Store(database_url, rate_per_minute=3, rate_per_hour=5, rate_per_day=6) as store:
        user = store.get_or_create_user("telegram", "u").user_id
        minute = [store.check_rate_limit(user, now=T0).allowed for _ in range(5)]
        assert minute == [True, True, True, False, False]
        assert window_counts(conn) == {60: 3, 3600: 3, 86400: 3}
        later = T0 + timedelta(minutes=1)
        assert [store.check_rate_limit(user, now=later).allowed for _ in range(3)] == [
            True,
            True,
            False,
        ]
        refused = store.check_rate_limit(user, now=later)
        assert refused.refused_window == 3600
        assert refused.retry_at == datetime(2026, 3, 2, 13, tzinfo=UTC)
        next_hour = datetime(2026, 3, 2, 13, 0, 5, tzinfo=UTC)
        assert store.check_rate_limit(user, now=next_hour).allowed
        day_refusal = store.check_rate_limit(user, now=next_hour)
        with pytest.raises(RateLimited) as caught:
            day_refusal.raise_if_refused()
    assert day_refusal.refused_window == 86400
    assert caught.value.retry_at == datetime(2026, 3, 3, tzinfo=UTC)
    assert caught.value.window_seconds == 86400
    # Six admitted in all (the day's cap); the refusals left no trace in any window.
    assert window_counts(conn) == {60: 6, 3600: 6, 86400: 6}


def test_refused_turn_opens_no_session(database_url: str, conn: psycopg.Connection[Any]) -> None:
    with Store(database_url, rate_per_minute=1) as store:
        admitted = store.begin_turn("telegram", "u", now=T0)
        store.finish_turn(admitted, "q", "a", now=T0)
        refused = store.begin_turn("telegram", "u", now=T0 + timedelta(seconds=10))
        with pytest.raises(Exception, match="refused by the rate limit"):
            store.finish_turn(refused, "q", "a")
    assert admitted.allowed and not refused.allowed
    assert refused.session_id is None and refused.history == []
    assert refused.rate.retry_at == datetime(2026, 3, 2, 12, 1, tzinfo=UTC)
    assert count(conn, "sessions") == 1 and count(conn, "session_messages") == 2


def test_rate_limits_can_be_turned_off(database_url: str) -> None:
    with Store(database_url, rate_per_minute=None) as store:
        user = store.get_or_create_user("telegram", "u").user_id
        assert all(store.check_rate_limit(user, now=T0) for _ in range(50))
