"""Yielding by measurement: the pause between a job's batches, set by what the bots experience.

While a job runs, a probe statement on a connection of its own measures how long the server
takes to answer a bot-like query right now. The signal is the median of the last few readings
(each the median of a few probes: one slow answer is no trend, and a busy server answers
slowly often, not always), compared with the idle baseline measured before the first batch:
above ``baseline * (1 + budget)`` (and at least ``min_rise`` above it, so that microsecond noise
is no signal) the job is felt, and the
pause before its next batch doubles (multiplicative decrease of its pace); at or under it the
pause shrinks by one step (additive increase). Jobs call the pacer only at batch boundaries, so
a batch is never cut; a stop request still ends any pause at once (``wait``).

The probe measures CPU, disk and lock pressure as a bot's statement meets it, whatever causes
it: the job itself, a busy hour, another tenant on the host (docs/daemon.md).
"""

from __future__ import annotations

import logging
import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import psycopg

log = logging.getLogger("sessionkeeper.pacing")

# What the probe runs: an index read of the table every turn reads first, as a bot would.
PROBE = "SELECT user_id FROM users ORDER BY user_id LIMIT 1"
# Probes per reading (their median): one slow answer is no trend.
PROBES_PER_READING = 3
# Readings for the idle baseline, before the first batch.
BASELINE_READINGS = 3
# Readings the signal is the median of: the last few batch boundaries.
SIGNAL_READINGS = 5


@dataclass(frozen=True)
class YieldSettings:
    """The daemon's yield settings (Config: ``yield_*``)."""

    enabled: bool = True
    # How far the probe's latency may rise over its idle baseline, as a fraction of it.
    budget: float = 0.5
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
        self._readings: deque[float] = deque(maxlen=SIGNAL_READINGS)

    def reading(self) -> float:
        return statistics.median(self.probe() for _ in range(PROBES_PER_READING))

    def start(self) -> None:
        """Measure the idle baseline (before the job's first batch)."""
        readings = [self.reading() for _ in range(BASELINE_READINGS)]
        # They are the signal's first readings too: one slow first boundary is no trend.
        self._readings.extend(readings)
        baseline = min(readings)
        limit = max(
            baseline * (1 + self.settings.budget), baseline + self.settings.min_rise_seconds
        )
        self.state = PaceState(baseline_seconds=baseline, limit_seconds=limit)
        self._started = True
        self.on_change(self.state, 0.0)

    def __call__(self, pause_seconds: float) -> bool:
        try:
            if not self._started:
                self.start()
            signal = self.reading()
        except psycopg.Error as exc:
            # The probe's own connection failed: no signal, the pace stays as it is (a database
            # that went away fails the job's next batch anyway).
            log.debug("job %s: probe failed (%s)", self.job, exc)
            return self.wait(pause_seconds + self.state.extra_pause_seconds)
        self._readings.append(signal)
        state, settings = self.state, self.settings
        state.signal_seconds = statistics.median(self._readings)
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


def connection_probe(conninfo: str) -> tuple[Callable[[], float], Callable[[], None]]:
    """A probe on a connection of its own (never one of the jobs' pool: a probe must not wait
    for a job's connection), and the function that closes it."""
    conn = psycopg.connect(conninfo, autocommit=True, application_name="sessionkeeper-probe")

    def probe() -> float:
        started = time.perf_counter()
        conn.execute(PROBE).fetchall()
        return time.perf_counter() - started

    return probe, conn.close
