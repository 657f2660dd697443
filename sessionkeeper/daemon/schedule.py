"""Job schedules: an interval ("300", "5m", "1h") or a five-field cron expression, in UTC."""

from __future__ import annotations

import itertools
import random
import re
import statistics
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

# Interval schedules are aligned to this instant, so that every replica fires at the same
# moments and their runs fall into the same slots.
ANCHOR = datetime(2000, 1, 1, tzinfo=UTC)
_INTERVAL = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class Schedule:
    """An interval ("300", "5m", "1h") or a five-field cron expression, in UTC."""

    text: str
    interval_seconds: int | None = None
    cron: str | None = None

    @classmethod
    def parse(cls, text: str) -> Schedule:
        match = _INTERVAL.match(text)
        if match:
            seconds = int(match[1]) * _UNITS[match[2]]
            if seconds < 1:
                raise ValueError("an interval of at least 1 second")
            return cls(text.strip(), interval_seconds=seconds)
        try:
            _cron_trigger(text)
        except ValueError as exc:
            raise ValueError(
                f"an interval (300, 90s, 5m, 1h, 1d) or a five-field cron expression ({exc})"
            ) from None
        return cls(text.strip(), cron=text.strip())

    def trigger(self, jitter_seconds: int, rng: random.Random | None = None) -> SlotTrigger:
        """The daemon's trigger: one fire time in every slot, up to ``jitter_seconds`` late."""
        return SlotTrigger(self, jitter_seconds, rng)

    def slots(self) -> BaseTrigger:
        """APScheduler's trigger for the unjittered slots."""
        if self.interval_seconds is not None:
            return IntervalTrigger(seconds=self.interval_seconds, start_date=ANCHOR, timezone=UTC)
        return _cron_trigger(self.cron)

    def describe(self) -> str:
        if self.interval_seconds is not None:
            return f"every {self.interval_seconds}s"
        return f"cron {self.cron} UTC"

    def shortest_period_seconds(self, now: datetime | None = None) -> float:
        if self.interval_seconds is not None:
            return float(self.interval_seconds)
        return min(self._cron_gaps(12, now), default=86400.0)

    def typical_period_seconds(self, now: datetime | None = None) -> float:
        """The interval, or for a cron schedule the median gap between its coming fire times.

        The median, not the next gap: "09:00 on weekdays" is a daily job whether the daemon
        starts on a Tuesday or on a Friday evening (when the next gap is three days).
        """
        if self.interval_seconds is not None:
            return float(self.interval_seconds)
        gaps = self._cron_gaps(25, now)
        return statistics.median_low(gaps) if gaps else 86400.0

    def _cron_gaps(self, fires_wanted: int, now: datetime | None) -> list[float]:
        """Seconds between the next ``fires_wanted`` fire times of the cron schedule."""
        trigger = _cron_trigger(self.cron)
        fires: list[datetime] = []
        previous: datetime | None = None
        cursor = now or datetime.now(UTC)
        for _ in range(fires_wanted):
            fire = trigger.get_next_fire_time(previous, cursor)
            if fire is None:
                break
            fires.append(fire)
            previous, cursor = fire, fire + timedelta(seconds=1)
        return [(b - a).total_seconds() for a, b in itertools.pairwise(fires)]

    def slot(self, now: datetime) -> datetime:
        """The scheduled (unjittered) fire time that a run starting at ``now`` belongs to."""
        if self.interval_seconds is not None:
            periods = (now - ANCHOR) // timedelta(seconds=self.interval_seconds)
            return ANCHOR + periods * timedelta(seconds=self.interval_seconds)
        trigger = _cron_trigger(self.cron)
        span = timedelta(minutes=2)
        while span < timedelta(days=1000):
            last: datetime | None = trigger.get_next_fire_time(None, now - span)
            if last is not None and last <= now:
                while True:
                    following: datetime | None = trigger.get_next_fire_time(
                        last, last + timedelta(seconds=1)
                    )
                    if following is None or following > now:
                        return last
                    last = following
            span *= 4
        return now


class SlotTrigger(BaseTrigger):  # type: ignore[misc]  # APScheduler 3 ships no types
    """Fires once in every slot of a schedule, at the slot plus a fresh random jitter.

    APScheduler 3 computes a trigger's next fire time from the previous *jittered* one
    (``Job._get_run_times``), so its own ``jitter=`` adds up: an interval job drifts later on
    every run and, each time the drift crosses a period, skips a slot. This trigger maps the
    previous fire time back to its slot (jitter is at most half the shortest period, so the
    mapping is exact), steps to the next slot, and jitters that afresh.
    """

    def __init__(
        self, schedule: Schedule, jitter_seconds: int, rng: random.Random | None = None
    ) -> None:
        self.schedule = schedule
        self.jitter_seconds = jitter_seconds
        self._slots = schedule.slots()
        self._rng = rng or random.Random()

    def get_next_fire_time(
        self, previous_fire_time: datetime | None, now: datetime
    ) -> datetime | None:
        if previous_fire_time is None:
            slot: datetime | None = self._slots.get_next_fire_time(None, now)
        else:
            previous = self.schedule.slot(previous_fire_time)
            slot = self._slots.get_next_fire_time(previous, previous + timedelta(microseconds=1))
        if slot is None or not self.jitter_seconds:
            return slot
        return slot + timedelta(seconds=self._rng.uniform(0, self.jitter_seconds))

    def __str__(self) -> str:
        return f"{self.schedule.describe()}, jitter {self.jitter_seconds}s"

    def __repr__(self) -> str:
        return f"SlotTrigger({self.schedule.text!r}, jitter_seconds={self.jitter_seconds})"


_DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def _cron_trigger(expression: str | None) -> CronTrigger:
    """A CronTrigger (UTC) reading the day of week as cron does: 0 and 7 are Sunday.

    APScheduler 3 numbers days from Monday = 0, so numeric days are translated to names.
    """
    fields = (expression or "").split()
    if len(fields) != 5:
        raise ValueError(f"wrong number of fields; got {len(fields)}, expected 5")
    minute, hour, day, month, day_of_week = fields
    return CronTrigger(
        minute=minute,
        hour=hour,
        day=day,
        month=month,
        day_of_week=",".join(_day_names(part) for part in day_of_week.split(",")),
        timezone=UTC,
    )


def _day_names(part: str) -> str:
    """One comma-separated part of a cron day-of-week field, with numbers as day names."""
    span, _, step_text = part.partition("/")
    if not any(c.isdigit() for c in span) and not step_text:
        return part  # *, mon, mon-fri
    if span == "*":
        first, last = 0, 6
    elif "-" in span:
        first, last = (_day_number(d) for d in span.split("-", 1))
    else:
        first = _day_number(span)
        last = 6 if step_text else first  # "1/2" means from Monday on, every second day
    step = int(step_text) if step_text else 1
    if first > last or step < 1:
        raise ValueError(f"invalid day-of-week range {part!r}")
    return ",".join(sorted({_DAY_NAMES[d % 7] for d in range(first, last + 1, step)}))


def _day_number(text: str) -> int:
    if text.lower() in _DAY_NAMES:
        return _DAY_NAMES.index(text.lower())
    if not text.isdigit() or int(text) > 7:
        raise ValueError(f"invalid day of week {text!r}")
    return int(text)
