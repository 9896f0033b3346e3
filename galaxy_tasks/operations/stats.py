"""`galaxy-tasks stats`: which tools users run, jobs per state, how long jobs queue and run.

Plain SQL aggregates over the jobs created in a window (the `created_at` index bounds the
scan), the same on PostgreSQL and SQLite. Queue wait is submission -> running; run time is
the runner's wall time (or running -> finished when the runner measured none), for jobs that
ended ok or error.
"""
from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any, Sequence

from galaxy_tasks.render import table
from galaxy_tasks.states import JobState
from galaxy_tasks.store import Store
from galaxy_tasks.store.reports import GROUPS

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """`24h`, `90m`, `7d`, `2w`, `30s`, or an ISO date/time (UTC unless it says otherwise)."""
    now = now or datetime.now(UTC)
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text)
    if match:
        return now - timedelta(seconds=float(match[1]) * _UNITS[match[2]])
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--since: {text!r} is neither a duration (24h, 7d, 30m) nor an ISO date") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def parse_by(text: str) -> list[str]:
    keys = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in keys if k not in GROUPS]
    if not keys or unknown:
        named = ", ".join(unknown) if unknown else repr(text)
        raise ValueError(f"--by: {named} is not one of {', '.join(GROUPS)} (or several, comma-separated)")
    return list(dict.fromkeys(keys))


def stats(store: Store, since: datetime, by: Sequence[str] = ("tool",), limit: int = 50,
          until: datetime | None = None) -> dict[str, Any]:
    """Jobs created in [since, until): counts per state, and one row per group."""
    until = until or datetime.now(UTC)
    states, rows = store.job_stats(since, until, by, limit)
    groups = []
    for row in rows:
        item = {key: row[key] for key in by}
        item.update({name: int(row[name] or 0) for name in ("jobs", "ok", "error", "deleted", "active")})
        if "user" not in by:
            item["users"] = int(row["users"])
        if "tool" not in by:
            item["tools"] = int(row["tools"])
        for name in ("queue_avg_s", "queue_max_s", "run_avg_s", "run_max_s", "core_s"):
            item[name] = None if row[name] is None else round(float(row[name]), 3)
        groups.append(item)
    return {
        "since": since.isoformat(),
        "until": until.isoformat(),
        "by": list(by),
        "states": {state.value: int(states.get(state.value, 0)) for state in JobState},
        "jobs": int(sum(states.values())),
        "groups": groups,
    }


def duration(seconds: float | None) -> str:
    """`0.4s`, `12s`, `3m05s`, `2h10m`, `3d04h`: short enough for a table column."""
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.1f}s"
    seconds = int(round(seconds))
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def render(result: dict[str, Any]) -> str:
    by = result["by"]
    lines = [f"jobs created {result['since'][:19]} .. {result['until'][:19]} UTC: {result['jobs']}",
             "  ".join(f"{state} {count}" for state, count in result["states"].items()), ""]
    header = [*by, "jobs", "ok", "error", "deleted", "active"]
    extra = [name for name in ("users", "tools") if result["groups"] and name in result["groups"][0]]
    header += extra + ["queue avg", "queue max", "run avg", "run max", "core-h"]
    rows = []
    for group in result["groups"]:
        core_h = "-" if group["core_s"] is None else f"{group['core_s'] / 3600:.2f}"
        rows.append([*("-" if group[k] is None else group[k] for k in by),
                     group["jobs"], group["ok"], group["error"], group["deleted"], group["active"],
                     *(group[name] for name in extra),
                     duration(group["queue_avg_s"]), duration(group["queue_max_s"]),
                     duration(group["run_avg_s"]), duration(group["run_max_s"]), core_h])
    lines.append(table(header, rows) if rows else "(no jobs in this window)")
    return "\n".join(lines)
