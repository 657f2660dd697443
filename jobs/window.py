"""Maintenance windows: the hours of the day, in a time zone, when a job may run.

A window is ``HH:MM-HH:MM`` in local (wall-clock) time; one that ends earlier than it starts
wraps midnight (``22:00-02:00``), and ``24:00`` ends at midnight. Wall-clock time is read
through zoneinfo, so a window keeps its local hours across daylight saving time changes: on
the night the clocks go forward it is an hour shorter, on the night they go back an hour
longer (``02:00-03:00`` happens twice, and the window is open both times).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_WINDOW = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")
DAY_MINUTES = 24 * 60
EXPECTED = "a window HH:MM-HH:MM (e.g. 02:00-05:00; 22:00-02:00 wraps midnight)"


def zone(name: str) -> ZoneInfo:
    """The time zone called ``name`` (IANA, e.g. ``Europe/Berlin``); ValueError if unknown."""
    try:
        return ZoneInfo(name.strip())
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        # ValueError: a name zoneinfo refuses outright (an absolute path, "..").
        raise ValueError(name) from None


@dataclass(frozen=True)
class Window:
    start: int  # minutes after local midnight, 0 to 1439
    end: int  # 1 to 1440 (24:00), never equal to start
    zone: ZoneInfo

    @classmethod
    def parse(cls, text: str, tz: ZoneInfo) -> Window:
        """``HH:MM-HH:MM``; ValueError saying what is accepted."""
        match = _WINDOW.match(text)
        if not match:
            raise ValueError(EXPECTED)
        start_h, start_m, end_h, end_m = (int(part) for part in match.groups())
        if start_h > 23 or end_h > 24 or start_m > 59 or end_m > 59 or (end_h == 24 and end_m):
            raise ValueError(f"{EXPECTED}, hours 00 to 23 (24:00 only as the end)")
        start, end = start_h * 60 + start_m, end_h * 60 + end_m
        if start == end % DAY_MINUTES:
            # Empty or the whole day: either way not a window worth configuring.
            raise ValueError(f"{EXPECTED}, with an end other than its start")
        return cls(start, end, tz)

    def __str__(self) -> str:
        return f"{_hhmm(self.start)}-{_hhmm(self.end)} {self.zone.key}"

    def is_open(self, now: datetime) -> bool:
        local = now.astimezone(self.zone)
        minute = local.hour * 60 + local.minute + (local.second + local.microsecond / 1e6) / 60
        if self.start < self.end:
            return self.start <= minute < self.end
        return minute >= self.start or minute < self.end  # wraps midnight

    def next_open(self, now: datetime) -> datetime:
        """When the window next opens (``now`` while it is open), in UTC."""
        if self.is_open(now):
            return now.astimezone(UTC)
        opening = self._opening(now, 0)
        if opening <= now:
            opening = self._opening(now, 1)
        return opening

    def last_opened(self, now: datetime) -> datetime:
        """When the window last opened (or opens at ``now``), in UTC."""
        opening = self._opening(now, 0)
        return opening if opening <= now else self._opening(now, -1)

    def _opening(self, now: datetime, days: int) -> datetime:
        """The window's start on the local day of ``now`` plus ``days``, in UTC.

        A start the clocks skip (02:30 the night they go forward) is read with the offset
        before the gap: 03:30, at most the gap later than the window really opens.
        """
        day = now.astimezone(self.zone).date() + timedelta(days=days)
        local = datetime(day.year, day.month, day.day, self.start // 60, self.start % 60)
        return local.replace(tzinfo=self.zone).astimezone(UTC)


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"
