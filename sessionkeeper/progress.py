"""Progress of the CLI's long work: a tqdm bar on a terminal, else a log line every few seconds.

The work itself (jobs, the legacy conversion, the export) knows nothing of this: it takes a
callback that is told the rows done so far, and the CLI passes ``Progress.update``.
"""

from __future__ import annotations

import logging
import sys
import time
from types import TracebackType
from typing import Never, Self, TextIO

from tqdm import tqdm

log = logging.getLogger("sessionkeeper")

# Seconds between two log lines when stderr is not a terminal (a log file, a CI job).
LOG_INTERVAL_SECONDS = 5.0


def write(line: str) -> None:
    """A line on stdout that does not break a bar being drawn on the terminal."""
    tqdm.write(line, file=sys.stdout)
    sys.stdout.flush()


class Progress:
    """Rows done of ``what`` (``total`` when known, for the ETA)."""

    def __init__(
        self, what: str, unit: str = "rows", total: int | None = None, stream: TextIO | None = None
    ) -> None:
        self.what, self.unit, self.total = what, unit, total
        self.done = 0
        self.stream = stream or sys.stderr
        self.started = time.monotonic()
        self._last_log = float("-inf")
        self._bar: tqdm[Never] | None = None

    def _show_bar(self) -> tqdm[Never] | None:
        """The bar on a terminal, made when there is first something to show (a command
        that turns out to have no long work shows none)."""
        if self._bar is None and self.stream.isatty():
            self._bar = tqdm(
                total=self.total,
                initial=self.done,
                desc=self.what,
                unit=f" {self.unit}",
                file=self.stream,
                dynamic_ncols=True,
            )
        return self._bar

    def set_total(self, total: int | None) -> None:
        self.total = total
        if total is not None and (bar := self._show_bar()) is not None:
            bar.total = total
            bar.refresh()

    def update(self, done: int) -> None:
        """``done`` rows so far (not an increment)."""
        step, self.done = done - self.done, done
        if (bar := self._show_bar()) is not None:
            bar.update(step)
            return
        now = time.monotonic()
        if now - self._last_log >= LOG_INTERVAL_SECONDS:
            self._last_log = now
            log.info("%s: %s", self.what, self.describe())

    def describe(self) -> str:
        """``1200/5000 rows, 400 rows/s, about 9 s left`` (what is known of it)."""
        elapsed = time.monotonic() - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        text = f"{self.done}/{self.total}" if self.total is not None else str(self.done)
        text += f" {self.unit}, {rate:.0f} {self.unit}/s"
        if self.total is not None and rate > 0:
            text += f", about {max(0, self.total - self.done) / rate:.0f} s left"
        return text

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
