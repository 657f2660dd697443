"""The maintenance daemon: the jobs on an APScheduler scheduler, metrics, health and logs.

``service`` wires scheduler, connection pool and events; ``config`` reads the daemon's settings
(through ``store.settings``, the one loader); ``schedule`` parses intervals and cron expressions;
``metrics`` holds the Prometheus series and ``endpoints`` serves them with the health checks;
``logs`` formats the log lines. The jobs themselves live in ``jobs/``.
"""
