"""The job metrics exporter, scraped over HTTP while real workers run jobs on Redis and
PostgreSQL: jobs by state and destination, wait and run time histograms per tool and
destination, and reconciliation findings."""
from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.browser import free_port
from tests.support.deployment import ROOT
from tests.support.ledger import gated

pytestmark = pytest.mark.integration


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(url, timeout=10) as response:
        # prometheus_client's plain text format (0.0.4 unless the scraper asks for a newer one)
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        return samples_of(response.read().decode())


def samples_of(text: str) -> dict[tuple[str, tuple], float]:
    """Every sample of a scrape, read by prometheus_client's own parser (which also proves
    the exposition is well formed): (name, sorted labels) -> value."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in samples, f"sample {key} given twice"
            samples[key] = sample.value
    return samples


def families_of(text: str) -> dict[str, str]:
    """Each family's name and type."""
    return {family.name: family.type for family in text_string_to_metric_families(text)}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_job_metrics_scraped_while_jobs_run(deployment, tmp_path):
    deployment.env["GALAXY_TASKS_CHECK_AFTER"] = "1"  # a running job is overdue after 1 s
    port = free_port()
    log = open(tmp_path / "metrics.log", "wb")
    exporter = subprocess.Popen([sys.executable, "-m", "galaxy_tasks.cli", "metrics", "--port", str(port)],
                                env=deployment.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        deployment.wait_until(lambda: _answers(url), 30, "the exporter to answer")
        assert value(scrape(url), "galaxy_tasks_reconcile_lease_until_seconds") == 0
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/elsewhere", timeout=10)
        assert info.value.code == 404
        deployment.worker()
        ok = deployment.submit("echo hi", "cat1")
        failed = deployment.submit("exit 4", "failer")
        # runs 4 s at least, and on until the checks below are done, however busy the machine
        gate = tmp_path / "gate"
        slow = deployment.submit(f"sleep 4; {gated(gate)}", "sleeper")
        deployment.wait_until(lambda: deployment.job(slow).state == "running", what="sleeper running")
        deployment.wait_until(lambda: value(scrape(url), "galaxy_tasks_jobs_overdue", state="running",
                                            destination="local") == 1, 30, "the sleeper overdue after 1 s")
        samples = scrape(url)
        assert value(samples, "galaxy_tasks_jobs", state="running", destination="local") == 1
        assert value(samples, "galaxy_tasks_jobs_overdue", state="running", destination="local") == 1

        send = ("from galaxy_tasks.edge.app import app; "
                "app.send_task('galaxy_tasks.reconcile', queue='galaxy_tasks')")
        subprocess.run([sys.executable, "-c", send], env=deployment.env, cwd=ROOT, check=True, timeout=60)
        deployment.wait_until(lambda: deployment.job(slow).checks >= 1, 30, "reconciliation to look at the sleeper")
        samples = scrape(url)
        assert value(samples, "galaxy_tasks_jobs_reconciling", destination="local") == 1
        assert value(samples, "galaxy_tasks_reconcile_lease_until_seconds") > time.time()

        gate.touch()
        deployment.wait_terminal([ok, failed, slow], timeout=60)
        samples = scrape(url)
        assert value(samples, "galaxy_tasks_jobs", state="running", destination="local") == 0
        assert value(samples, "galaxy_tasks_jobs_ended_total", state="ok", destination="local") == 2
        assert value(samples, "galaxy_tasks_jobs_ended_total", state="error", destination="local") == 1
        assert value(samples, "galaxy_tasks_jobs_ended_after_reconcile_total", destination="local") == 1
        for tool in ("cat1", "failer", "sleeper"):
            labels = {"tool_id": tool, "destination": "local"}
            assert value(samples, "galaxy_tasks_job_queue_wait_seconds_count", **labels) == 1
            assert value(samples, "galaxy_tasks_job_run_seconds_count", **labels) == 1
            assert value(samples, "galaxy_tasks_job_queue_wait_seconds_bucket", le="+Inf", **labels) == 1
        sleeper = {"tool_id": "sleeper", "destination": "local"}
        ran = value(samples, "galaxy_tasks_job_run_seconds_sum", **sleeper)
        assert ran >= 4
        assert value(samples, "galaxy_tasks_job_run_seconds_bucket", le="1.0", **sleeper) == 0
        assert value(samples, "galaxy_tasks_job_run_seconds_bucket", le="10.0", **sleeper) == (1 if ran <= 10 else 0)
        assert value(samples, "galaxy_tasks_job_queue_wait_seconds_bucket", le="60.0", tool_id="cat1",
                     destination="local") == 1
        # counters only grow: a second scrape counts nothing twice
        again = scrape(url)
        assert value(again, "galaxy_tasks_jobs_ended_total", state="ok", destination="local") == 2
        assert value(again, "galaxy_tasks_job_run_seconds_count", **sleeper) == 1
    finally:
        exporter.terminate()
        exporter.wait(timeout=20)
        log.close()
    assert "postgres" not in (tmp_path / "metrics.log").read_text()


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2).read()
        return True
    except OSError:
        return False


def test_a_change_committed_late_below_the_watermark_is_still_counted(tmp_path):
    """PostgreSQL hands out ids before commit: a change with a lower id may become visible
    after one with a higher id was read. The exporter looks for such holes again."""
    from datetime import timedelta

    from sqlalchemy import insert

    from galaxy_tasks.model import jobs, state_changes, utcnow
    from galaxy_tasks.operations.metrics import JobMetrics, scrape
    from galaxy_tasks.store import Store, schema

    url = f"sqlite:///{tmp_path}/m.sqlite"
    schema.upgrade(url)
    store = Store(url)
    now = utcnow()
    with store.engine.begin() as connection:
        for n in (1, 2):
            connection.execute(insert(jobs).values(
                id=f"j{n}", tool_id="t", command="true", environment={}, inputs=[], outputs=[], cores=1,
                destination="local", queue="local", state="ok", created_at=now, updated_at=now, running_at=now,
                finished_at=now + timedelta(seconds=3), checks=0))
    metrics = JobMetrics(store, ["local"])
    with store.engine.begin() as connection:
        connection.execute(insert(state_changes).values(id=2, job_id="j2", from_state="running", to_state="ok",
                                                        at=now))
    first = samples_of(scrape(metrics))
    ok = {"state": "ok", "destination": "local"}
    assert value(first, "galaxy_tasks_jobs_ended_total", **ok) == 1
    with store.engine.begin() as connection:  # id 1 becomes visible only now
        connection.execute(insert(state_changes).values(id=1, job_id="j1", from_state="running", to_state="ok",
                                                        at=now))
    second = samples_of(scrape(metrics))
    assert value(second, "galaxy_tasks_jobs_ended_total", **ok) == 2
    assert value(second, "galaxy_tasks_job_run_seconds_count", tool_id="t", destination="local") == 2
    assert value(second, "galaxy_tasks_job_run_seconds_sum", tool_id="t", destination="local") == 6
    assert value(samples_of(scrape(metrics)), "galaxy_tasks_jobs_ended_total", **ok) == 2


def test_every_family_keeps_its_name_and_type(tmp_path):
    """The names and types the exporter had before prometheus_client wrote them: a
    dashboard or an alert written against them keeps working."""
    from galaxy_tasks.operations.metrics import JobMetrics, scrape
    from galaxy_tasks.store import Store, schema

    url = f"sqlite:///{tmp_path}/m.sqlite"
    schema.upgrade(url)
    text = scrape(JobMetrics(Store(url), ["local", "sge"]))
    assert families_of(text) == {
        "galaxy_tasks_jobs": "gauge",
        "galaxy_tasks_jobs_ended": "counter",
        "galaxy_tasks_jobs_overdue": "gauge",
        "galaxy_tasks_jobs_reconciling": "gauge",
        "galaxy_tasks_jobs_ended_after_reconcile": "counter",
        "galaxy_tasks_reconcile_lease_until_seconds": "gauge",
        "galaxy_tasks_job_queue_wait_seconds": "histogram",
        "galaxy_tasks_job_run_seconds": "histogram",
        "galaxy_tasks_metrics_scrape_duration_seconds": "gauge",
    }
    samples = samples_of(text)
    for state in ("new", "queued", "submitting", "running"):
        for destination in ("local", "sge"):
            assert value(samples, "galaxy_tasks_jobs", state=state, destination=destination) == 0
            assert ("galaxy_tasks_jobs_overdue", (("destination", destination), ("state", state))) in samples
    for state in ("ok", "error", "deleted"):
        assert ("galaxy_tasks_jobs_ended_total", (("destination", "local"), ("state", state))) in samples


def test_metrics_without_prometheus_client_says_how_to_install_it(monkeypatch, capsys):
    import sys

    from galaxy_tasks.cli import main

    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "galaxy_tasks.operations.metrics", raising=False)
    assert main(["metrics", "--once"]) == 2
    error = capsys.readouterr().err
    assert "pip install 'galaxy-tasks[metrics]'" in error and "prometheus_client" in error


def test_tool_id_series_are_bounded(tmp_path):
    """Each distinct tool id a client sends would be a series kept forever: past MAX_TOOLS
    of them, the others' jobs are counted under tool_id="other", none lost."""
    from sqlalchemy import insert

    from galaxy_tasks.model import jobs, state_changes, utcnow
    from galaxy_tasks.operations.metrics import MAX_TOOLS, JobMetrics, scrape
    from galaxy_tasks.store import Store, schema

    url = f"sqlite:///{tmp_path}/m.sqlite"
    schema.upgrade(url)
    store = Store(url)
    metrics = JobMetrics(store, ["local"])
    now = utcnow()
    count = MAX_TOOLS + 50
    with store.engine.begin() as connection:
        connection.execute(insert(jobs), [dict(
            id=f"j{n}", tool_id=f"tool{n}", command="true", environment={}, inputs=[], outputs=[], cores=1,
            destination="local", queue="local", state="ok", created_at=now, updated_at=now, running_at=now,
            finished_at=now, checks=0) for n in range(count)])
        connection.execute(insert(state_changes), [dict(job_id=f"j{n}", from_state="running", to_state="ok", at=now)
                                                   for n in range(count)])
    samples = samples_of(scrape(metrics))
    tools = {dict(labels)["tool_id"] for name, labels in samples if name == "galaxy_tasks_job_run_seconds_count"}
    assert len(tools) == MAX_TOOLS + 1 and "other" in tools
    assert value(samples, "galaxy_tasks_job_run_seconds_count", tool_id="other", destination="local") == 50
    assert sum(v for (name, _), v in samples.items() if name == "galaxy_tasks_job_run_seconds_count") == count
