"""Yielding by measurement: the pause between a job's batches, set by what the bots experience.

While a job runs, a probe on a connection of its own measures how long the server takes to
answer a bot-like read and durably commit a write right now: it reads ``users`` and rewrites
the job's row of ``job_probes`` (revision 0025). A turn's commit waits for the WAL flush, and
that wait is what a job's writes make the bots feel first (archival at the jobs benchmark's
backlog /1: the online backends' ``IO:WALSync`` share 0.03 -> 0.10, their CPU share
unchanged); an index read alone, the probe of release 0.3.0's first builds, rose 0.3 -> 0.6 ms
while the turns' p99 doubled.

The daemon probes on a thread of its own every ``sample_every`` seconds *while the job's
batches run*: a probe taken only at a batch boundary meets the server when the job has just
stopped working, and misses what the job itself does to the bots. The signal is a high
quantile (p90) of the last few dozen probes: a job is felt in the tail of the bots' latencies
first, and the p90 falls again as the job's pauses grow (more of the probes meet a server the
job leaves alone). It is compared with the same quantile of an idle baseline taken before the
job's first batch: above ``baseline * (1 + budget)`` (and at least ``min_rise`` above it, so
that microsecond noise is no signal) the job is felt, and the pause before its next batch
doubles (multiplicative decrease of its pace); at or under it the pause shrinks by one step
(additive increase). Jobs call the pacer only at batch boundaries, so a batch is never cut; a
stop request still ends any pause at once (``wait``).

The probe measures CPU, WAL flush, disk and lock pressure as a bot's statement meets it,
whatever causes it: the job itself, a busy hour, another tenant on the host (docs/daemon.md).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import psycopg

log = logging.getLogger("sessionkeeper.pacing")

# What the probe runs, as a turn does: a read of the table every turn reads first, then a write
# of one small row and its commit (autocommit). The count makes one row of the read even when
# there is no user, so that the write always happens.
PROBE = """
INSERT INTO job_probes (job, probed_at)
SELECT %s, now()
FROM (SELECT count(*) FROM (SELECT user_id FROM users ORDER BY user_id LIMIT 1) AS first) AS read
ON CONFLICT (job) DO UPDATE SET probed_at = EXCLUDED.probed_at
"""
# Probes for the idle baseline, back to back before the first batch (after one more that warms
# the connection's caches: a first statement's planning is no baseline).
BASELINE_PROBES = 20
# Probes the signal is the quantile of: about two seconds of sampling at the default rate.
SIGNAL_PROBES = 40
# The quantile: the tail, where the bots feel a job first, but not its few worst probes.
SIGNAL_QUANTILE = 0.9
# Probes taken at a batch boundary when no sampling thread runs (tests drive the pacer so).
PROBES_PER_BOUNDARY = 3


def quantile(samples: list[float], q: float = SIGNAL_QUANTILE) -> float:
    """The ``q`` quantile of ``samples`` (nearest rank: one of the samples)."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass(frozen=True)
class YieldSettings:
    """The daemon's yield settings (Config: ``yield_*``)."""

    enabled: bool = True
    # How far the probe's latency may rise over its idle baseline, as a fraction of it.
    budget: float = 0.5
    # How often the probe runs while a job runs (seconds).
    sample_every: float = 0.05
    # ...and in seconds at least: a rise under this is noise, never a signal.
    min_rise_seconds: float = 0.002
    # The first extra pause when the job is felt, and the step by which it shrinks again.
    step_seconds: float = 0.1
    # The longest extra pause between two batches.
    max_pause_seconds: float = 2.0


@dataclass
class PaceState:
    """What the metrics show of a running pacer."""

    baseline_seconds: float = 0.0
    signal_seconds: float = 0.0
    limit_seconds: float = 0.0
    extra_pause_seconds: float = 0.0
    yielded_seconds: float = 0.0


class Pacer:
    """A job's ``pause`` (``Callable[[float], bool]``) that adds the yield's extra pause.

    ``probe`` returns one probe's latency in seconds; ``wait(seconds)`` pauses and returns
    True when the run must stop; ``on_change(state, yielded)`` sees every decision (the
    metrics), with the extra pause it added. Given, so that tests can drive the pacer with a
    real probe and record its waits instead of sleeping.
    """

    def __init__(
        self,
        job: str,
        settings: YieldSettings,
        probe: Callable[[], float],
        wait: Callable[[float], bool],
        on_change: Callable[[PaceState, float], None] = lambda state, yielded: None,
    ) -> None:
        self.job = job
        self.settings = settings
        self.probe = probe
        self.wait = wait
        self.on_change = on_change
        self.state = PaceState()
        self._started = False
        self._probes: deque[float] = deque(maxlen=SIGNAL_PROBES)
        self._lock = threading.Lock()
        self._sampling = False

    def _add(self, latency: float) -> None:
        with self._lock:
            self._probes.append(latency)

    def start(self) -> None:
        """Measure the idle baseline (before the job's first batch)."""
        self.probe()
        probes = [self.probe() for _ in range(BASELINE_PROBES)]
        for latency in probes:  # the signal's first probes too: one slow batch is no trend
            self._add(latency)
        baseline = quantile(probes)
        limit = max(
            baseline * (1 + self.settings.budget), baseline + self.settings.min_rise_seconds
        )
        self.state = PaceState(baseline_seconds=baseline, limit_seconds=limit)
        self._started = True
        self.on_change(self.state, 0.0)

    @contextlib.contextmanager
    def sampling(self) -> Iterator[Pacer]:
        """Probe every ``sample_every`` seconds on a thread of its own until the block ends
        (the job's run; ``start`` first, for the baseline). A probe that fails is skipped: the
        signal is the probes that answered."""
        done = threading.Event()

        def sample() -> None:
            while not done.wait(self.settings.sample_every):
                try:
                    self._add(self.probe())
                except psycopg.Error as exc:
                    log.debug("job %s: probe failed (%s)", self.job, exc)

        thread = threading.Thread(target=sample, name=f"probe-{self.job}", daemon=True)
        thread.start()
        self._sampling = True
        try:
            yield self
        finally:
            done.set()
            thread.join()
            self._sampling = False

    def __call__(self, pause_seconds: float) -> bool:
        try:
            if not self._started:
                self.start()
            if not self._sampling:
                for _ in range(PROBES_PER_BOUNDARY):
                    self._add(self.probe())
        except psycopg.Error as exc:
            # The probe's own connection failed: no signal, the pace stays as it is (a database
            # that went away fails the job's next batch anyway).
            log.debug("job %s: probe failed (%s)", self.job, exc)
            return self.wait(pause_seconds + self.state.extra_pause_seconds)
        with self._lock:
            probes = list(self._probes)
        state, settings = self.state, self.settings
        state.signal_seconds = quantile(probes)
        before = state.extra_pause_seconds
        if state.signal_seconds > state.limit_seconds:
            state.extra_pause_seconds = min(
                settings.max_pause_seconds, max(settings.step_seconds, 2 * before)
            )
        else:
            state.extra_pause_seconds = max(0.0, before - settings.step_seconds)
        if state.extra_pause_seconds > 0 and before == 0:
            log.info(
                "job %s yields: probe %.1f ms over its budget of %.1f ms (idle %.1f ms)",
                self.job,
                state.signal_seconds * 1000,
                state.limit_seconds * 1000,
                state.baseline_seconds * 1000,
                extra={"job": self.job, "event": "yield"},
            )
        elif before > 0 and state.extra_pause_seconds == 0:
            log.info("job %s back to its pace", self.job, extra={"job": self.job})
        state.yielded_seconds += state.extra_pause_seconds
        self.on_change(state, state.extra_pause_seconds)
        return self.wait(pause_seconds + state.extra_pause_seconds)


def connection_probe(conninfo: str, job: str) -> tuple[Callable[[], float], Callable[[], None]]:
    """``job``'s probe on a connection of its own (never one of the jobs' pool: a probe must not
    wait for a job's connection), and the function that closes it."""
    conn = psycopg.connect(conninfo, autocommit=True, application_name="sessionkeeper-probe")

    def probe() -> float:
        started = time.perf_counter()
        conn.execute(PROBE, (job,), prepare=True)
        return time.perf_counter() - started

    return probe, conn.close


@dataclass(frozen=True)
class PacedRun:
    """What ``paced`` gives a job's run: the pause between its batches, and ``begin``, to call
    once the run holds its lock, just before its first batch."""

    pause: Callable[[float], bool]
    begin: Callable[[], None] = lambda: None


@contextlib.contextmanager
def paced(
    job: str,
    settings: YieldSettings,
    conninfo: str,
    wait: Callable[[float], bool],
    on_change: Callable[[PaceState, float], None] = lambda state, yielded: None,
) -> Iterator[PacedRun]:
    """The pause a job's run takes between batches: ``wait`` itself with yielding off, else a
    Pacer from the run's ``begin`` on. ``begin`` opens the probe's connection, takes the idle
    baseline and starts the sampling, so that a slot skipped on a replica (another holds the
    lock, the window is closed) probes nothing. A probe that cannot connect or answer leaves
    the run at ``wait`` (a database that went away fails the run anyway)."""
    if not settings.enabled:
        yield PacedRun(wait)
        return
    with contextlib.ExitStack() as opened:
        pacer: Pacer | None = None

        def begin() -> None:
            nonlocal pacer
            try:
                probe, close = connection_probe(conninfo, job)
            except psycopg.Error as exc:
                # Said at WARNING: yielding is on, and the operator expects it (a login without
                # the grants of job_probes would otherwise turn it off unseen).
                log.warning("job %s runs without yielding: no probe connection (%s)", job, exc)
                return
            opened.callback(close)
            started = Pacer(job, settings, probe, wait, on_change)
            try:
                started.start()
            except psycopg.Error as exc:
                log.warning("job %s runs without yielding: the probe failed (%s)", job, exc)
                return
            opened.enter_context(started.sampling())
            pacer = started

        def pause(seconds: float) -> bool:
            return wait(seconds) if pacer is None else pacer(seconds)

        yield PacedRun(pause, begin)
