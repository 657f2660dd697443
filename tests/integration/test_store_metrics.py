"""Bot-side metrics (store.metrics) on a real store: what a bot's /metrics would show."""

from __future__ import annotations

import asyncio
import urllib.request
from datetime import timedelta

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, start_http_server
from prometheus_client.parser import text_string_to_metric_families
from store_support import T0

import store
import store.metrics
from store import AsyncStore, ConfigurationError, Store

DURATION = "sessionkeeper_store_operation_duration_seconds"


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_a_sync_store_counts_turns_refusals_and_errors(database_url: str) -> None:
    registry = CollectorRegistry()
    with Store(database_url, max_size=2, rate_per_minute=2, rate_per_hour=10) as db:
        store.metrics.instrument(db, registry=registry)
        # The configured windows exist before any refusal, at zero.
        for window in ("60", "3600"):
            assert (
                registry.get_sample_value(
                    "sessionkeeper_store_turns_refused_total", {"window_seconds": window}
                )
                == 0.0
            )
        turn = db.begin_turn("telegram", "7", now=T0)
        db.finish_turn(turn, "hi", "hello", now=T0)
        db.begin_turn("telegram", "7", now=T0 + timedelta(seconds=1))
        refused = db.begin_turn("telegram", "7", now=T0 + timedelta(seconds=2))
        assert not refused.allowed
        with pytest.raises(store.InvalidInput):
            db.finish_turn(turn, "bad \x00", "reply")
        with pytest.raises(store.NotFound):
            db.get_linked_users("00000000-0000-0000-0000-000000000001")

        assert sample(registry, DURATION + "_count", operation="begin_turn") == 3
        assert sample(registry, DURATION + "_count", operation="finish_turn") == 2
        assert sample(registry, DURATION + "_sum", operation="begin_turn") > 0
        refusals = "sessionkeeper_store_turns_refused_total"
        assert sample(registry, refusals, window_seconds="60") == 1
        assert sample(registry, refusals, window_seconds="3600") == 0
        errors = "sessionkeeper_store_errors_total"
        assert sample(registry, errors, operation="finish_turn", error="InvalidInput") == 1
        assert sample(registry, errors, operation="get_linked_users", error="NotFound") == 1
        assert sample(registry, errors, operation="begin_turn", error="InvalidInput") == 0

        pool = {
            name: sample(registry, f"sessionkeeper_store_pool_{name}", store="1")
            for name in ("max", "size")
        }
        assert pool["max"] == 2 and 1 <= pool["size"] <= 2


def test_an_async_store_is_timed_on_its_own_registry(database_url: str) -> None:
    registry = CollectorRegistry()

    async def scenario() -> None:
        async with AsyncStore(database_url, max_size=2) as db:
            store.metrics.instrument(db, registry=registry)
            turn = await db.begin_turn("telegram", "8", now=T0)
            await db.finish_turn(turn, "ping", "pong", now=T0)
            with pytest.raises(store.InvalidInput):
                await db.begin_turn("Not A Channel", "8")

    asyncio.run(scenario())
    assert sample(registry, DURATION + "_count", operation="begin_turn") == 2
    assert sample(registry, DURATION + "_count", operation="finish_turn") == 1
    assert (
        sample(
            registry,
            "sessionkeeper_store_errors_total",
            operation="begin_turn",
            error="InvalidInput",
        )
        == 1
    )


def test_instrumenting_twice_is_refused_and_other_stores_stay_plain(database_url: str) -> None:
    with Store(database_url, max_size=1) as db, Store(database_url, max_size=1) as other:
        store.metrics.instrument(db, registry=CollectorRegistry())
        with pytest.raises(ConfigurationError):
            store.metrics.instrument(db, registry=CollectorRegistry())
        assert "begin_turn" in vars(db) and "begin_turn" not in vars(other)


def test_several_stores_share_the_default_registry(database_url: str) -> None:
    """Two stores instrumented on prometheus_client's default registry (what a bot serving
    ``start_http_server(port)`` exposes): both are measured, their calls adding up and their
    pools apart by ``store``; a name taken on the registry is refused."""
    count = DURATION + "_count"
    before = sample(REGISTRY, count, operation="begin_turn")
    with (
        Store(database_url, max_size=1) as first,
        Store(database_url, max_size=3, rate_per_minute=7) as second,
    ):
        store.metrics.instrument(first, name="chats")
        store.metrics.instrument(second, name="admin")
        first.begin_turn("telegram", "m1", now=T0)
        second.begin_turn("telegram", "m2", now=T0)
        second.begin_turn("telegram", "m2", now=T0)
        assert sample(REGISTRY, count, operation="begin_turn") == before + 3
        # The second store's own rate window exists too.
        refused = "sessionkeeper_store_turns_refused_total"
        assert REGISTRY.get_sample_value(refused, {"window_seconds": "60"}) is not None
        assert sample(REGISTRY, "sessionkeeper_store_pool_max", store="chats") == 1
        assert sample(REGISTRY, "sessionkeeper_store_pool_max", store="admin") == 3
        with Store(database_url, max_size=1) as third:
            with pytest.raises(ConfigurationError):
                store.metrics.instrument(third, name="chats")
            assert "begin_turn" not in vars(third)
            # Unnamed stores are numbered; both stay measured.
            store.metrics.instrument(third)
            third.begin_turn("telegram", "m3", now=T0)
            assert sample(REGISTRY, count, operation="begin_turn") == before + 4
            numbered = {
                s.labels["store"]
                for family in REGISTRY.collect()
                if family.name == "sessionkeeper_store_pool_max"
                for s in family.samples
            } - {"chats", "admin"}
            assert len(numbered) >= 1 and all(label.isdigit() for label in numbered)


def test_the_exposition_has_only_bounded_labels(database_url: str) -> None:
    """Scraped over HTTP as Prometheus would: every series is prefixed, and no label holds a
    user id, channel user id or session id."""
    registry = CollectorRegistry()
    with Store(database_url, max_size=1, rate_per_minute=1) as db:
        store.metrics.instrument(db, registry=registry)
        turn = db.begin_turn("telegram", "secret-user-4242", now=T0)
        db.finish_turn(turn, "hi", "hello", now=T0)
        db.begin_turn("telegram", "secret-user-4242", now=T0)
        server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
        try:
            port = server.server_address[1]
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
                text = answer.read().decode()
        finally:
            server.shutdown()
            thread.join(timeout=5)
    families = list(text_string_to_metric_families(text))
    assert families and all(f.name.startswith("sessionkeeper_store_") for f in families)
    labels = {key for f in families for s in f.samples for key in s.labels}
    assert labels <= {"operation", "error", "window_seconds", "le", "store"}
    assert "secret-user-4242" not in text and str(turn.user.user_id) not in text
    assert str(turn.session_id) not in text
