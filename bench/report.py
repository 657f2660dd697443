"""Records: JSON lines as measured, medians over runs, and plain-text / Markdown tables."""

from __future__ import annotations

import json
import os
import platform
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO


class Recorder:
    """Appends every record to a JSON-lines file and keeps it for the summary."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.records: list[dict[str, Any]] = []
        self._file: TextIO = path.open("a", encoding="utf-8")

    def add(self, section: str, **fields: Any) -> dict[str, Any]:
        record = {"section": section, **fields}
        self.records.append(record)
        self._file.write(json.dumps(record, default=str) + "\n")
        self._file.flush()
        return record

    def section(self, name: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r["section"] == name]

    def close(self) -> None:
        self._file.close()


def medians(
    records: Iterable[dict[str, Any]], keys: Sequence[str], values: Sequence[str]
) -> list[dict[str, Any]]:
    """One row per distinct ``keys``, each of ``values`` the median over the records."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault(tuple(record[k] for k in keys), []).append(record)
    rows = []
    for group_key, group in groups.items():
        row: dict[str, Any] = dict(zip(keys, group_key, strict=True))
        row["runs"] = len(group)
        for value in values:
            numbers = [r[value] for r in group if isinstance(r.get(value), int | float)]
            row[value] = statistics.median(numbers) if numbers else None
        rows.append(row)
    return rows


def mean_waits(
    records: Iterable[dict[str, Any]], keys: Sequence[str], field: str = "waits"
) -> dict[tuple[Any, ...], str]:
    """Per distinct ``keys``: the wait events' mean over the records (the ``field`` of each),
    largest first, as text."""
    groups: dict[tuple[Any, ...], list[dict[str, float]]] = {}
    for record in records:
        groups.setdefault(tuple(record[k] for k in keys), []).append(record.get(field) or {})
    described = {}
    for group_key, waits in groups.items():
        names = {name for w in waits for name in w}
        means = {name: sum(w.get(name, 0.0) for w in waits) / len(waits) for name in names}
        top = sorted(means.items(), key=lambda item: -item[1])[:4]
        described[group_key] = ", ".join(f"{name} {mean:.2f}" for name, mean in top)
    return described


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """A Markdown table (readable as plain text too) of ``columns`` (key, heading)."""
    cells = [[_cell(row.get(key)) for key, _ in columns] for row in rows]
    headings = [heading for _, heading in columns]
    widths = [
        max(len(h), *(len(c[i]) for c in cells)) if cells else len(h)
        for i, h in enumerate(headings)
    ]
    lines = [
        "| " + " | ".join(h.ljust(w) for h, w in zip(headings, widths, strict=True)) + " |",
        "| " + " | ".join("-" * w for w in widths) + " |",
    ]
    for row_cells in cells:
        lines.append(
            "| " + " | ".join(c.rjust(w) for c, w in zip(row_cells, widths, strict=True)) + " |"
        )
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    """What the figures depend on: CPU, memory, load, kernel, Python."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        total_kb = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f"{total_kb / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory": memory,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "kernel": platform.release(),
        "python": platform.python_version(),
    }
