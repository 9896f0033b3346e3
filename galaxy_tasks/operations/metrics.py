"""`galaxy-tasks metrics`: job-level Prometheus metrics that Flower cannot know.

Flower sees tasks; the database sees jobs. Each scrape runs a few queries:

- jobs by state and destination, for the active states only (the `(state, check_at)` index
  answers it, so the cost follows the number of active jobs, not the history);
- reconciliation findings: active jobs whose expected event is overdue now, jobs that ended
  only after reconciliation had to look at them (`checks > 0`), and when the last
  reconciliation pass ran (its lease);
- what happened since the previous scrape, read from the state-change history by primary
  key: ended jobs per state and destination, and the queue wait (submitted -> running) and
  run time histograms per tool and destination.

Counters and histograms start at zero when the exporter starts, as Prometheus expects of
any exporter; `galaxy-tasks stats` answers questions about the past.
"""
from __future__ import annotations

import threading
import time
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any, Iterable

from galaxy_tasks.states import ACTIVE, TERMINAL, JobState
from galaxy_tasks.store import Store

NAMESPACE = "galaxy_tasks"
#: seconds: a job may wait from minutes to days for a cluster slot, and run as long
WAIT_BUCKETS = (1, 5, 15, 30, 60, 300, 900, 1800, 3600, 4 * 3600, 12 * 3600, 24 * 3600, 3 * 24 * 3600)
RUN_BUCKETS = (1, 10, 30, 60, 300, 900, 1800, 3600, 4 * 3600, 12 * 3600, 24 * 3600, 3 * 24 * 3600, 7 * 24 * 3600)
#: a change id missing below the newest one read may belong to a transaction that commits
#: later; it is looked for again on the following scrapes for this long
GAP_PATIENCE_S = 120.0
READ_LIMIT = 20000

_ACTIVE = sorted(s.value for s in ACTIVE)
_TERMINAL = sorted(s.value for s in TERMINAL)


class Histogram:
    """One cumulative histogram series, as the text exposition needs it."""

    def __init__(self, buckets: Iterable[float]) -> None:
        self.bounds = tuple(buckets)
        self.counts = [0] * len(self.bounds)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        value = max(value, 0.0)
        for index, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[index] += 1
        self.count += 1
        self.sum += value


class JobMetrics:
    """Reads the job database; `collect()` is what one scrape returns."""

    def __init__(self, store: Store, destinations: Iterable[str] = ()) -> None:
        self.store = store
        self.destinations = sorted(set(destinations))
        self._lock = threading.Lock()
        self._ended: dict[tuple[str, str], int] = defaultdict(int)
        self._ended_after_check: dict[str, int] = defaultdict(int)
        self._wait: dict[tuple[str, str], Histogram] = {}
        self._run: dict[tuple[str, str], Histogram] = {}
        self._gaps: dict[int, float] = {}
        self._watermark = store.last_change_id()
        self.scrapes = 0

    # -- reading what changed since the last scrape ------------------------------------

    def _consume(self) -> None:
        now = time.monotonic()
        self._gaps = {i: seen for i, seen in self._gaps.items() if now - seen < GAP_PATIENCE_S}
        rows, newest, present = self.store.ends_after(self._watermark, list(self._gaps), READ_LIMIT)
        for row in rows:
            self._gaps.pop(row.id, None)
            key = (row.tool_id, row.destination)
            if row.to_state == JobState.RUNNING.value:
                self._wait.setdefault(key, Histogram(WAIT_BUCKETS)).observe(_seconds(row.at, row.created_at))
                continue
            self._ended[(row.to_state, row.destination)] += 1
            if row.checks:
                self._ended_after_check[row.destination] += 1
            if row.running_at is not None and row.to_state != JobState.DELETED.value:
                run = row.wall_time_s if row.wall_time_s is not None else _seconds(row.finished_at, row.running_at)
                self._run.setdefault(key, Histogram(RUN_BUCKETS)).observe(run)
        if newest and newest > self._watermark:
            for missing in set(range(self._watermark + 1, newest + 1)) - present:
                self._gaps.setdefault(missing, now)
            self._watermark = newest

    # -- one scrape ------------------------------------------------------------------------

    def collect(self) -> str:
        """The text exposition format (version 0.0.4)."""
        with self._lock:
            started = time.perf_counter()
            self._consume()
            lines: list[str] = []
            active, overdue, checked = self.store.active_counts(datetime.now(UTC))
            lease_until = self.store.lease_until("reconcile")
            destinations = sorted(set(self.destinations) | {d for _, d in active} | {d for _, d in self._ended})

            _family(lines, "jobs", "gauge", "Active jobs by state and destination")
            for state in _ACTIVE:
                for destination in destinations:
                    _sample(lines, "jobs", {"state": state, "destination": destination},
                            active.get((state, destination), 0))
            _family(lines, "jobs_ended", "counter", "Jobs that reached a terminal state since the exporter started")
            for state in _TERMINAL:
                for destination in destinations:
                    _sample(lines, "jobs_ended_total", {"state": state, "destination": destination},
                            self._ended.get((state, destination), 0))
            _family(lines, "jobs_overdue", "gauge",
                    "Active jobs whose expected event is overdue (reconciliation will look at them)")
            for state in _ACTIVE:
                for destination in destinations:
                    _sample(lines, "jobs_overdue", {"state": state, "destination": destination},
                            overdue.get((state, destination), 0))
            _family(lines, "jobs_reconciling", "gauge", "Active jobs reconciliation has already looked at")
            for destination in destinations:
                _sample(lines, "jobs_reconciling", {"destination": destination}, checked.get(destination, 0))
            _family(lines, "jobs_ended_after_reconcile", "counter",
                    "Jobs whose end came only after reconciliation looked at them (a late or lost event)")
            for destination in destinations:
                _sample(lines, "jobs_ended_after_reconcile_total", {"destination": destination},
                        self._ended_after_check.get(destination, 0))
            _family(lines, "reconcile_lease_until_seconds", "gauge",
                    "Unix time the last reconciliation pass's lease runs until (0: no pass yet)")
            _sample(lines, "reconcile_lease_until_seconds", {}, lease_until.timestamp() if lease_until else 0)
            _histograms(lines, "job_queue_wait_seconds", "Seconds from submission to running, per tool and destination",
                        self._wait)
            _histograms(lines, "job_run_seconds", "Seconds a job ran (ok or error), per tool and destination",
                        self._run)
            self.scrapes += 1
            _family(lines, "metrics_scrape_duration_seconds", "gauge", "Seconds this scrape's queries took")
            _sample(lines, "metrics_scrape_duration_seconds", {}, round(time.perf_counter() - started, 6))
            return "\n".join(lines) + "\n"


def _seconds(later: datetime | None, earlier: datetime | None) -> float:
    if later is None or earlier is None:
        return 0.0
    return (later - earlier).total_seconds()


def _family(lines: list[str], name: str, kind: str, help_text: str) -> None:
    lines.append(f"# HELP {NAMESPACE}_{name} {help_text}")
    lines.append(f"# TYPE {NAMESPACE}_{name} {kind}")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _sample(lines: list[str], name: str, labels: dict[str, str], value: float) -> None:
    text = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
    lines.append(f"{NAMESPACE}_{name}{{{text}}} {_number(value)}" if text else f"{NAMESPACE}_{name} {_number(value)}")


def _number(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    return repr(float(value)) if isinstance(value, float) and not value.is_integer() else str(int(value))


def _histograms(lines: list[str], name: str, help_text: str, series: dict[tuple[str, str], Histogram]) -> None:
    _family(lines, name, "histogram", help_text)
    for (tool_id, destination), histogram in sorted(series.items()):
        labels = {"tool_id": tool_id, "destination": destination}
        for bound, count in zip(histogram.bounds, histogram.counts):
            _sample(lines, f"{name}_bucket", {**labels, "le": repr(float(bound))}, count)
        _sample(lines, f"{name}_bucket", {**labels, "le": "+Inf"}, histogram.count)
        _sample(lines, f"{name}_sum", labels, round(histogram.sum, 6))
        _sample(lines, f"{name}_count", labels, histogram.count)


def make_server(metrics: JobMetrics, address: str, port: int) -> Any:
    """An HTTP server answering `/metrics` with one scrape (`serve_forever()` runs it)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] not in ("/metrics", "/"):
                self.send_error(404)
                return
            try:
                body = metrics.collect().encode()
            except Exception as exc:  # noqa: BLE001 - a scrape reports the failure, the server stays up
                self.send_error(503, f"database unavailable: {type(exc).__name__}")
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer((address, port), Handler)
    server.daemon_threads = True
    return server
