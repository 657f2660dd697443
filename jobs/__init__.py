"""Maintenance jobs run by the sessionkeeper daemon: one module per job."""

JOB_NAMES = (
    "rate_limit_cleanup",
    "link_code_expiry",
    "session_archival",
    "proactive_reload",
    "usage_rollup",
    "user_retention",
)
