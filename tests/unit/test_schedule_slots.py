"""Every slot of a schedule gets exactly one run, jitter or not, for as long as the daemon runs.

The daemon's own trigger (``Schedule.trigger``) is replayed the way APScheduler 3 drives it
(``Job._get_run_times``: the next fire time is asked with the previous *jittered* one), over
thousands of periods, with the largest jitter the configuration allows (half the period).
APScheduler's own ``jitter=`` fails this: its jitters add up, runs drift later and, each time
the drift crosses a period, a slot goes without a run.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.interval import IntervalTrigger

from sessionkeeper.daemon.schedule import Schedule

START = datetime(2026, 12, 6, 7, 0, 7, tzinfo=UTC)
# How long a run takes before the scheduler asks for the next fire time.
RUN_TIME = timedelta(seconds=0.4)


def replay(trigger: BaseTrigger, fires: int) -> list[datetime]:
    """The fire times the scheduler would use, asking as APScheduler's Job does."""
    fire = trigger.get_next_fire_time(None, START)
    times = []
    for _ in range(fires):
        assert fire is not None
        times.append(fire)
        fire = trigger.get_next_fire_time(fire, fire + RUN_TIME)
    return times


@pytest.mark.parametrize(
    ("text", "jitter", "fires"),
    [
        ("1m", 6, 5000),  # proactive_reload's default period with its derived jitter
        ("1m", 30, 5000),  # the largest jitter allowed: half the period
        ("5m", 10, 3000),
        ("10s", 5, 5000),
        ("1h", 10, 2000),
        ("*/5 * * * *", 30, 3000),
        ("0 9 * * 1-5", 60, 600),
    ],
)
def test_every_slot_gets_one_run_within_its_jitter(text: str, jitter: int, fires: int) -> None:
    schedule = Schedule.parse(text)
    times = replay(schedule.trigger(jitter, random.Random(1)), fires)
    slots = [schedule.slot(t) for t in times]
    # Every slot from the first to the last, each exactly once, in order.
    expected = replay(schedule.trigger(0), fires)
    assert slots == expected
    assert all(
        timedelta(0) <= t - s <= timedelta(seconds=jitter)
        for t, s in zip(times, slots, strict=True)
    )


def test_two_replicas_fire_in_the_same_slots() -> None:
    schedule = Schedule.parse("1m")
    one = replay(schedule.trigger(30, random.Random(1)), 3000)
    two = replay(schedule.trigger(30, random.Random(2)), 3000)
    assert one != two  # jittered differently...
    assert [schedule.slot(t) for t in one] == [schedule.slot(t) for t in two]  # ...same slots


def test_apschedulers_own_jitter_drifts_and_skips_slots() -> None:
    # Why the daemon does not use IntervalTrigger(jitter=...): the check above fails on it.
    schedule = Schedule.parse("1m")
    random.seed(1)
    trigger = IntervalTrigger(seconds=60, start_date=datetime(2000, 1, 1, tzinfo=UTC), jitter=6)
    slots = [schedule.slot(t) for t in replay(trigger, 630)]
    missed = (slots[-1] - slots[0]) // timedelta(minutes=1) + 1 - len(set(slots))
    assert missed > 0


def test_a_daemon_started_mid_period_fires_at_the_next_slot() -> None:
    schedule = Schedule.parse("5m")
    fire = schedule.trigger(10, random.Random(3)).get_next_fire_time(None, START)
    assert fire is not None
    assert schedule.slot(fire) == datetime(2026, 12, 6, 7, 5, tzinfo=UTC)
