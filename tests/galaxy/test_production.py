"""What a production Galaxy needs of the plugin, in a real Galaxy: a job galaxy-tasks
refuses fails in Galaxy with the reason, within seconds (never `queued` for ever); what
galaxy-tasks would refuse is refused before it is sent; with signing on, signed events end
jobs and forged unsigned ones (every state, seq 0 and huge) change no Galaxy job."""
from __future__ import annotations

import time
from typing import Iterator

import pytest
import redis
from kombu import Connection

from galaxy_tasks.galaxy import stats
from galaxy_tasks.galaxy.events import events_queue
from galaxy_tasks.states import JobState
from tests.galaxy.api import GalaxyApi
from tests.galaxy.server import REFUSED_DESTINATION, SIGNED_EVENTS_QUEUE, GalaxyServer
from tests.support.deployment import Deployment

pytestmark = pytest.mark.galaxy


@pytest.fixture(scope="module")
def history(galaxy_user: GalaxyApi) -> tuple[str, str]:
    history_id = galaxy_user.history("production")
    return history_id, galaxy_user.upload(history_id, "production input\n")


@pytest.fixture
def signed_tasks(make_deployment, galaxy: GalaxyServer) -> Iterator[Deployment]:
    """galaxy-tasks signing with the key the gt_signed runner trusts, on that runner's broker."""
    redis.Redis.from_url(galaxy.signed_broker_url).flushdb()
    keys = galaxy.signing
    deployment = make_deployment(broker=galaxy.signed_broker_url, GALAXY_TASKS_SIGNING_KEY=keys["signing_key"],
                                 GALAXY_TASKS_SIGNING_CERT=keys["signing_cert"],
                                 GALAXY_TASKS_SIGNING_CERT_STORE=keys["signing_cert_store"])
    deployment.worker("galaxy_tasks,local")
    yield deployment


def shown(user: GalaxyApi, output_id: str) -> str:
    """What Galaxy shows the user about the failed job: its output's message."""
    return user.call("GET", f"/api/datasets/{output_id}")["misc_info"] or ""


def test_a_refused_job_fails_in_galaxy_with_its_reason_within_seconds(
        galaxy: GalaxyServer, galaxy_user: GalaxyApi, history: tuple[str, str], tasks: Deployment) -> None:
    history_id, dataset_id = history
    started = time.monotonic()
    job_id, output_id = galaxy_user.run_tool(history_id, "probe_refused", dataset_id)
    galaxy.admin.wait_job(job_id, want="error", timeout=60, poll=0.1)
    seconds = time.monotonic() - started
    message = shown(galaxy_user, output_id)
    assert message.startswith("galaxy-tasks refused this job: destination: unknown destination "
                              f"{REFUSED_DESTINATION!r}"), message
    assert seconds < 20, f"the refusal took {seconds:.1f} s to fail the job in Galaxy"
    assert galaxy.task_id(job_id) not in {row.id for row in tasks.jobs()}, "a refused job is recorded nowhere"
    print(f"\nrefusal: run_tool -> Galaxy error in {seconds:.2f} s")


def test_what_galaxy_tasks_would_refuse_is_refused_before_sending(
        galaxy: GalaxyServer, galaxy_user: GalaxyApi, history: tuple[str, str], tasks: Deployment) -> None:
    history_id, dataset_id = history
    before = stats.read(galaxy.stats_file).get("refused_before_sending", 0)
    job_id, output_id = galaxy_user.run_tool(history_id, "probe_precheck", dataset_id)
    galaxy.admin.wait_job(job_id, want="error", timeout=60, poll=0.1)
    assert shown(galaxy_user, output_id).startswith("galaxy-tasks cannot run this job: cores:"), \
        shown(galaxy_user, output_id)
    assert stats.read(galaxy.stats_file).get("refused_before_sending", 0) == before + 1
    assert galaxy.task_id(job_id) not in {row.id for row in tasks.jobs()}


def forge(broker_url: str, job_id: str, state: str, seq: int) -> None:
    """Anyone who can publish to the broker, without the key: plain JSON into Galaxy's queue."""
    body = {"event": "job_state", "version": 1, "job_id": job_id, "client_id": "main", "state": state, "seq": seq,
            "exit_code": 0, "signal": None, "reason": "forged", "runner_state": "memory_limit_reached",
            "external_id": None, "destination": "local", "times": {}}
    with Connection(broker_url) as connection:
        connection.Producer().publish(body, exchange="", routing_key=SIGNED_EVENTS_QUEUE,
                                      declare=[events_queue(SIGNED_EVENTS_QUEUE)], serializer="json")


def test_forged_unsigned_events_change_no_galaxy_job_while_signing_is_on(
        galaxy: GalaxyServer, galaxy_user: GalaxyApi, history: tuple[str, str], signed_tasks: Deployment) -> None:
    history_id, dataset_id = history
    job_id, output_id = galaxy_user.run_tool(history_id, "probe_cat_signed", dataset_id)
    galaxy_user.wait_job(job_id, want="ok", timeout=90)  # signed events are applied
    assert galaxy_user.dataset_text(output_id) == "probe header\nproduction input\n"
    metrics = {(m["plugin"], m["name"]): m["raw_value"]
               for m in galaxy.admin.call("GET", f"/api/jobs/{job_id}/metrics")}
    ours = signed_tasks.job(galaxy.task_id(job_id))
    assert float(metrics[("galaxy_tasks", "runtime_seconds")]) >= 0, metrics
    if ours.max_rss_kb is not None:
        assert int(float(metrics[("galaxy_tasks", "memory_peak_bytes")])) == ours.max_rss_kb * 1024

    job_id, _ = galaxy_user.run_tool(history_id, "probe_sleep_signed", dataset_id)
    ours = galaxy.task_id(job_id)
    galaxy_user.wait_job(job_id, want="running", timeout=90)
    applied = stats.read(galaxy.signed_stats_file).get("events_applied", 0)
    for state in ("ok", "error", "deleted", "queued", "running", "unknown"):
        for seq in (0, 1, 2**40):
            forge(galaxy.signed_broker_url, ours, state, seq)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        assert galaxy.admin.job(job_id)["state"] == "running", "a forged event changed the job"
        time.sleep(0.25)
    figures = stats.read(galaxy.signed_stats_file)
    assert figures.get("events_applied", 0) == applied and figures.get("resubmitted", 0) == 0
    assert "refused an undecodable or unsigned message" in galaxy.tail(size=10**7)
    assert JobState(signed_tasks.job(ours).state) is JobState.RUNNING
    galaxy_user.cancel(job_id)
    signed_tasks.wait_until(lambda: signed_tasks.job(ours).state == "deleted", 60, "cancelled")
    # nothing of the ended and the cancelled job stays in the plugin's memory
    signed_tasks.wait_until(lambda: stats.read(galaxy.signed_stats_file).get("watching") == 0, 30,
                            "the plugin watching no job")
