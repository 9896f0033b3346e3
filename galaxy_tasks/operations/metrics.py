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

prometheus_client writes the exposition and serves it: `JobMetrics` is a custom collector
whose `collect()` yields the metric families of one scrape (the `metrics` extra installs it).
"""
from __future__ import annotations

import threading
import time
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any, Callable, Iterable, Iterator
from wsgiref import simple_server

from prometheus_client import CollectorRegistry, generate_latest, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

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
#: most tool ids with series of their own: a tool id is a client's word, so the jobs of every
#: tool seen after these are counted under `tool_id="other"` (the exporter's memory and each
#: scrape stay bounded however many distinct ids clients send)
MAX_TOOLS = 200
OTHER_TOOLS = "other"

_ACTIVE = sorted(s.value for s in ACTIVE)
_TERMINAL = sorted(s.value for s in TERMINAL)


class Histogram:
    """One cumulative histogram series: its bucket counts, count and sum since the start."""

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

    def buckets(self) -> list[tuple[str, float]]:
        bounds: list[tuple[str, float]] = [(floatToGoString(b), c) for b, c in zip(self.bounds, self.counts)]
        return bounds + [("+Inf", self.count)]


class JobMetrics(Collector):
    """Reads the job database; `collect()` yields the metric families of one scrape."""

    def __init__(self, store: Store, destinations: Iterable[str] = ()) -> None:
        self.store = store
        self.destinations = sorted(set(destinations))
        self._lock = threading.Lock()
        self._ended: dict[tuple[str, str], int] = defaultdict(int)
        self._ended_after_check: dict[str, int] = defaultdict(int)
        self._wait: dict[tuple[str, str], Histogram] = {}
        self._run: dict[tuple[str, str], Histogram] = {}
        self._gaps: dict[int, float] = {}
        self._tools: set[str] = set()
        self._watermark = store.last_change_id()
        self.scrapes = 0

    # -- reading what changed since the last scrape ------------------------------------

    def _consume(self) -> None:
        now = time.monotonic()
        self._gaps = {i: seen for i, seen in self._gaps.items() if now - seen < GAP_PATIENCE_S}
        rows, newest, present = self.store.ends_after(self._watermark, list(self._gaps), READ_LIMIT)
        for row in rows:
            self._gaps.pop(row.id, None)
            key = (self._tool(row.tool_id), row.destination)
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

    def _tool(self, tool_id: str) -> str:
        """The tool id a series is labelled with: its own among the first MAX_TOOLS seen."""
        if tool_id in self._tools:
            return tool_id
        if len(self._tools) < MAX_TOOLS:
            self._tools.add(tool_id)
            return tool_id
        return OTHER_TOOLS

    # -- one scrape ------------------------------------------------------------------------

    def describe(self) -> list[Metric]:
        """Nothing up front: registering the collector must not query the database."""
        return []

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            started = time.perf_counter()
            self._consume()
            active, overdue, checked = self.store.active_counts(datetime.now(UTC))
            lease_until = self.store.lease_until("reconcile")
            destinations = sorted(set(self.destinations) | {d for _, d in active} | {d for _, d in self._ended})
            families: list[Metric] = []

            jobs = GaugeMetricFamily(f"{NAMESPACE}_jobs", "Active jobs by state and destination",
                                     labels=["state", "destination"])
            ended = CounterMetricFamily(f"{NAMESPACE}_jobs_ended",
                                        "Jobs that reached a terminal state since the exporter started",
                                        labels=["state", "destination"])
            late = GaugeMetricFamily(f"{NAMESPACE}_jobs_overdue",
                                     "Active jobs whose expected event is overdue (reconciliation will look at them)",
                                     labels=["state", "destination"])
            for state in _ACTIVE:
                for destination in destinations:
                    jobs.add_metric([state, destination], active.get((state, destination), 0))
                    late.add_metric([state, destination], overdue.get((state, destination), 0))
            for state in _TERMINAL:
                for destination in destinations:
                    ended.add_metric([state, destination], self._ended.get((state, destination), 0))
            looked = GaugeMetricFamily(f"{NAMESPACE}_jobs_reconciling", "Active jobs reconciliation has already "
                                       "looked at", labels=["destination"])
            after = CounterMetricFamily(f"{NAMESPACE}_jobs_ended_after_reconcile", "Jobs whose end came only after "
                                        "reconciliation looked at them (a late or lost event)", labels=["destination"])
            for destination in destinations:
                looked.add_metric([destination], checked.get(destination, 0))
                after.add_metric([destination], self._ended_after_check.get(destination, 0))
            families += [jobs, ended, late, looked, after]
            families.append(GaugeMetricFamily(
                f"{NAMESPACE}_reconcile_lease_until_seconds",
                "Unix time the last reconciliation pass's lease runs until (0: no pass yet)",
                value=lease_until.timestamp() if lease_until else 0))
            families.append(_histograms("job_queue_wait_seconds",
                                        "Seconds from submission to running, per tool and destination", self._wait))
            families.append(_histograms("job_run_seconds", "Seconds a job ran (ok or error), per tool and "
                                        "destination", self._run))
            self.scrapes += 1
            families.append(GaugeMetricFamily(f"{NAMESPACE}_metrics_scrape_duration_seconds",
                                              "Seconds this scrape's queries took",
                                              value=round(time.perf_counter() - started, 6)))
        yield from families


def _seconds(later: datetime | None, earlier: datetime | None) -> float:
    if later is None or earlier is None:
        return 0.0
    return (later - earlier).total_seconds()


def _histograms(name: str, help_text: str, series: dict[tuple[str, str], Histogram]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(f"{NAMESPACE}_{name}", help_text, labels=["tool_id", "destination"])
    for (tool_id, destination), histogram in sorted(series.items()):
        family.add_metric([tool_id, destination], histogram.buckets(), round(histogram.sum, 6))
    return family


def registry(metrics: JobMetrics) -> CollectorRegistry:
    """A registry of the job metrics alone (not this process's own: the exporter's CPU and
    memory are not what an operator scrapes it for)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics)
    return registry


def scrape(metrics: JobMetrics) -> str:
    """One scrape in the text exposition format."""
    return generate_latest(registry(metrics)).decode()


def app(metrics: JobMetrics) -> Callable[..., Any]:
    """The WSGI app: prometheus_client's, answering `/metrics` (and `/`); a scrape whose
    queries fail answers 503 with the kind of error, never its text (it may name the
    database's URL)."""
    serve = make_wsgi_app(registry(metrics))

    def metrics_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ.get("PATH_INFO", "/") not in ("/metrics", "/"):
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found: the metrics are at /metrics\n"]
        try:
            return serve(environ, start_response)
        except Exception as exc:  # noqa: BLE001 - a scrape reports the failure, the server stays up
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
            return [f"database unavailable: {type(exc).__name__}\n".encode()]

    return metrics_app


class _Quiet(simple_server.WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the name the base class uses
        pass


def make_server(metrics: JobMetrics, address: str, port: int) -> ThreadingWSGIServer:
    """An HTTP server of `app(metrics)` (`serve_forever()` runs it), one thread per scrape."""
    server = simple_server.make_server(address, port, app(metrics), ThreadingWSGIServer, handler_class=_Quiet)
    server.daemon_threads = True
    return server
