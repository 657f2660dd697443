"""Maintenance jobs run by the sessionkeeper daemon: one module per job, plus what they share
(``base``: batching; ``locking``; ``ledger``; ``runner``: one run of one job; ``registry``: the
job list)."""

from .registry import JOB_NAMES, JOBS

__all__ = ["JOBS", "JOB_NAMES"]
