"""Bot-side Prometheus metrics for a ``Store`` or ``AsyncStore``.

prometheus-client is a dependency of sessionkeeper (no extra needed), but ``import store`` never
imports this module (nor prometheus_client); a bot opts in::

    registry = prometheus_client.CollectorRegistry()
    store.metrics.instrument(db, registry=registry)

``instrument`` wraps the store's operations on that one instance (it sets them as instance
attributes, shadowing the class's; other stores are untouched) and exports on ``registry``:

- ``sessionkeeper_store_operation_duration_seconds{operation}``: histogram of every call,
  failed ones included (a pool timeout shows as a slow call);
- ``sessionkeeper_store_errors_total{operation, error}``: calls that raised, by exception class;
- ``sessionkeeper_store_turns_refused_total{window_seconds}``: ``begin_turn`` refusals, by the
  rate window that refused (the configured windows exist from the start, at zero);
- ``sessionkeeper_store_refusals_dropped_total{channel}``: the refusals after the first of
  their window (``Turn.notify_refusal`` false), which the Telegram integrations drop without an
  answer (the configured ``channels`` exist from the start, at zero);
- ``sessionkeeper_store_pool_*{store}``: each store's connection pool, read from psycopg_pool
  at scrape time.

Several stores may be instrumented on one registry (the default one too): their calls add up in
the series above, and their pools are told apart by ``store``.

Labels hold only operation names, exception class names and window lengths: no user ids.
Serving the registry over HTTP is the bot's choice (``prometheus_client.start_http_server``).
"""

from __future__ import annotations

import functools
import itertools
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Self, TypeVar

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .client import AsyncStore, Op, Operations, Store
from .errors import ConfigurationError
from .models import Turn

PREFIX = "sessionkeeper_store_"
# begin_turn takes about a millisecond on a healthy database; the top buckets catch pool and
# statement timeouts (5 s by default).
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
OPERATIONS = tuple(name for name, value in vars(Operations).items() if isinstance(value, Op))
_MARK = "_sessionkeeper_metrics"
T = TypeVar("T")


class StoreMetrics:
    """The instruments of one registry, shared by every store instrumented on it: calls add up
    over the bot's stores, and the pool series carry a ``store`` label, one per store."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.duration = Histogram(
            PREFIX + "operation_duration_seconds",
            "Duration of store calls as the bot sees them (pool wait included), failed ones too.",
            ["operation"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.errors = Counter(
            PREFIX + "errors",
            "Store calls that raised, by operation and exception class.",
            ["operation", "error"],
            registry=registry,
        )
        self.refused = Counter(
            PREFIX + "turns_refused",
            "begin_turn calls refused by the rate limit, by the window that refused them.",
            ["window_seconds"],
            registry=registry,
        )
        self.dropped = Counter(
            PREFIX + "refusals_dropped",
            "Refused begin_turn calls after the first of their window: dropped without an answer.",
            ["channel"],
            registry=registry,
        )
        self._timers = {name: self.duration.labels(name) for name in OPERATIONS}
        self.pools = _PoolCollector()
        registry.register(self.pools)

    def add(self, db: Store | AsyncStore, name: str | None) -> None:
        self.pools.add(db, name)  # first: a refused name leaves the registry as it was
        windows, _ = db.config.rate_windows()
        for window in windows:
            self.refused.labels(str(window))
        for channel in db.config.channels or ():
            self.dropped.labels(channel)

    def record(
        self, operation: str, started: float, result: object, error: Exception | None
    ) -> None:
        self._timers[operation].observe(time.perf_counter() - started)
        if error is not None:
            self.errors.labels(operation, type(error).__name__).inc()
        elif isinstance(result, Turn) and not result.allowed:
            self.refused.labels(str(result.rate.refused_window)).inc()
            if not result.rate.notify:
                self.dropped.labels(result.user.channel).inc()


# One StoreMetrics per registry: registering the same series twice on a registry is an error.
_BY_REGISTRY: weakref.WeakKeyDictionary[CollectorRegistry, StoreMetrics] = (
    weakref.WeakKeyDictionary()
)
_LOCK = threading.Lock()


def instrument(
    db: Store | AsyncStore,
    *,
    registry: CollectorRegistry = REGISTRY,
    name: str | None = None,
) -> StoreMetrics:
    """Time and count every operation of ``db`` on ``registry`` (prometheus_client's default
    registry unless given). A store can be instrumented once; several stores can share a
    registry, their pools told apart by the label ``store`` (``name``, by default "1", "2", ...
    in the order they were instrumented)."""
    if getattr(db, _MARK, None) is not None:
        raise ConfigurationError("this store is instrumented already")
    with _LOCK:
        metrics = _BY_REGISTRY.get(registry)
        if metrics is None:
            metrics = _BY_REGISTRY[registry] = StoreMetrics(registry)
        metrics.add(db, name)
    wrap = _wrap_async if isinstance(db, AsyncStore) else _wrap_sync
    for operation in OPERATIONS:
        setattr(db, operation, wrap(getattr(db, operation), operation, metrics))
    setattr(db, _MARK, metrics)
    return metrics


class _Timed:
    """One call of ``operation``, timed from entering: an exception it raises is recorded on
    leaving the block (and goes on), a result by ``done``."""

    def __init__(self, metrics: StoreMetrics, operation: str) -> None:
        self.metrics = metrics
        self.operation = operation
        self.started = 0.0

    def __enter__(self) -> Self:
        self.started = time.perf_counter()
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, traceback: object) -> None:
        if isinstance(exc, Exception):
            self.metrics.record(self.operation, self.started, None, exc)

    def done(self, result: T) -> T:
        self.metrics.record(self.operation, self.started, result, None)
        return result


def _wrap_sync(call: Callable[..., Any], name: str, metrics: StoreMetrics) -> Callable[..., Any]:
    @functools.wraps(call)
    def timed(*args: Any, **kwargs: Any) -> Any:
        with _Timed(metrics, name) as timing:
            result = call(*args, **kwargs)
        return timing.done(result)

    return timed


def _wrap_async(
    call: Callable[..., Awaitable[Any]], name: str, metrics: StoreMetrics
) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(call)
    async def timed(*args: Any, **kwargs: Any) -> Any:
        with _Timed(metrics, name) as timing:
            result = await call(*args, **kwargs)
        return timing.done(result)

    return timed


class _PoolCollector(Collector):
    """The stores' connection pools, read from psycopg_pool when Prometheus scrapes. Stores are
    held weakly: a store the bot has dropped leaves the exposition."""

    GAUGES = {
        "pool_max": "Maximum connections of the bot's store pool.",
        "pool_size": "Connections in the bot's store pool (in use, idle, or being opened).",
        "pool_available": "Idle connections in the bot's store pool.",
        "requests_waiting": "Store calls waiting for a connection.",
    }
    COUNTERS = {
        "requests_errors": "Store calls that got no connection (pool_timeout or error).",
        "connections_lost": "Connections found broken and discarded.",
    }

    def __init__(self) -> None:
        self.stores: weakref.WeakValueDictionary[str, Store | AsyncStore] = (
            weakref.WeakValueDictionary()
        )
        self.added = 0

    def add(self, db: Store | AsyncStore, name: str | None) -> None:
        if name is None:  # the next ordinal no store holds
            numbers = itertools.count(self.added + 1)
            name = next(str(n) for n in numbers if str(n) not in self.stores)
        if not name or name in self.stores:
            raise ConfigurationError(f"store name {name!r} is empty or taken on this registry")
        self.stores[name] = db
        self.added += 1

    def collect(self) -> Iterable[Metric]:
        stats: dict[tuple[str, ...], dict[str, int]] = {
            (label,): db.pool_stats() for label, db in sorted(self.stores.items())
        }
        return pool_families(f"{PREFIX}pool_", self.GAUGES, self.COUNTERS, stats, ["store"])


def pool_families(
    prefix: str,
    gauges: dict[str, str],
    counters: dict[str, str],
    stats: dict[tuple[str, ...], dict[str, int]],
    labels: list[str],
) -> Iterable[Metric]:
    """psycopg_pool's ``get_stats()`` of one or more pools (keyed by their label values) as
    Prometheus families named ``prefix + key`` (``pool_`` written once: ``pool_max`` ->
    ``<prefix>max``). The store's and the daemon's pool collectors share it."""

    def name(key: str) -> str:
        return prefix + key.removeprefix("pool_")

    for key, text in gauges.items():
        gauge = GaugeMetricFamily(name(key), text, labels=labels)
        for values, pool in stats.items():
            gauge.add_metric(list(values), pool.get(key, 0))
        yield gauge
    for key, text in counters.items():
        counter = CounterMetricFamily(name(key), text, labels=labels)
        for values, pool in stats.items():
            counter.add_metric(list(values), pool.get(key, 0))
        yield counter
