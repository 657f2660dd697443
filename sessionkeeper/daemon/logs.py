"""Log set-up: plain text or one JSON object per line, and the one line logged per job run."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

from sessionkeeper.jobs.runner import RunReport

log = logging.getLogger("sessionkeeper.jobs")
# Attributes a record may carry (``extra=``) that the JSON format writes as fields.
FIELDS = ("job", "outcome", "rows", "duration_seconds", "run_id", "replica_id", "error")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in FIELDS:
            if hasattr(record, key):
                data[key] = getattr(record, key)
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


def setup_logging(level: str, log_format: str) -> None:
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The daemon logs runs, misses and overlaps itself (daemon/service.py), one line each.
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
    logging.getLogger("apscheduler.executors").setLevel(logging.CRITICAL)
    # Alembic's "Running upgrade a -> b" lines say what migrate does; the two lines it logs
    # whenever it only reads the revision (status, readiness) say nothing to an operator.
    migration = logging.getLogger("alembic.runtime.migration")
    if not any(isinstance(f, _AlembicPreamble) for f in migration.filters):
        migration.addFilter(_AlembicPreamble())


class _AlembicPreamble(logging.Filter):
    PREAMBLE = ("Context impl ", "Will assume ")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.PREAMBLE)


def log_run(report: RunReport, replica_id: str | None = None, *, level: int | None = None) -> None:
    """One line for a run: WARNING for a failure, else INFO (or ``level``)."""
    if level is None:
        level = logging.WARNING if report.outcome == "failure" else logging.INFO
    reason = report.details.get("reason")  # a stopped run's, when not a stop request
    log.log(
        level,
        "job %s %s rows=%d duration=%.3fs%s%s",
        report.job,
        report.outcome,
        report.rows,
        report.duration_seconds,
        f" reason={reason}" if reason else "",
        f" error={report.error}" if report.error else "",
        extra={
            "job": report.job,
            "outcome": report.outcome,
            "rows": report.rows,
            "duration_seconds": round(report.duration_seconds, 6),
            "run_id": report.run_id,
            "replica_id": replica_id,
            "error": report.error,
        },
    )


class RunLog:
    """``log_run`` for a daemon's runs, once per closed window: a job skipped outside its
    window says so at INFO at the first slot of the closed period and at DEBUG at the others (a
    1-minute schedule with a 3-hour night window has 1,260 such slots a day, per replica), as
    the ledger keeps one row per closed period."""

    def __init__(self, replica_id: str) -> None:
        self.replica_id = replica_id
        self._closed: dict[str, str] = {}  # per job, when the closed period said opens

    def __call__(self, report: RunReport) -> None:
        opens = report.details.get("window_opens") if report.outcome == "skipped" else None
        said = opens is not None and self._closed.get(report.job) == opens
        if opens is None:
            self._closed.pop(report.job, None)
        else:
            self._closed[report.job] = opens
        log_run(report, self.replica_id, level=logging.DEBUG if said else None)
