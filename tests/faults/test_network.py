"""A silent network cut between a worker and its broker: the worker reaches the broker through
a proxy of the test's own that stops forwarding, in both directions, for ~25 s without
closing a socket (a half-open connection: neither side is told), then forwards again.
Halfway through, the worker is replaced, as the health-check timer does with a worker that
stops answering (ops/systemd: galaxy-tasks-health@.timer). Jobs submitted through the task
contract before, during and after the cut each run once.

Where a message goes missing: a worker that waits for work keeps a BRPOP open on Redis (1 s
at a time). The first message pushed after the cut is handed to that BRPOP, that is, written
into the silent connection, and Redis forgets it: it was never acknowledged, and it is not
in kombu's `unacked` hash either (the worker writes it there only once it has read it). When
that connection goes (here the worker that held it is replaced; in a real cut, its socket
errors), the message is gone. RabbitMQ keeps such a delivery unacknowledged and requeues it
when the connection closes. A lost submit has no row to re-drive it from: the client asks
`announce_jobs` about the ids it heard nothing of and sends the `unknown` ones again, with the
same id (docs/events.md); any other step lost this way is re-driven from its row by
reconciliation."""
from __future__ import annotations

import os
import signal
import time
from urllib.parse import urlparse

import pytest

from tests.faults.checks import assert_exactly_once, ledger_command
from tests.support.bursts import every_process_alive
from tests.support.contract import ContractClient
from tests.support.proxy import SilentProxy

pytestmark = [pytest.mark.faults, pytest.mark.both_brokers]

CUT_S = float(os.environ.get("GT_CUT_S", "25"))
RECONCILE_FAST = dict(GALAXY_TASKS_RECONCILE_INTERVAL="1", GALAXY_TASKS_CHECK_AFTER="3",
                      GALAXY_TASKS_CHECK_AFTER_MAX="6", GALAXY_TASKS_LAUNCH_LEASE="5")


def test_jobs_submitted_around_a_silent_broker_cut_each_run_once(make_broker, make_deployment, tmp_path, broker_kind):
    broker = make_broker()
    deployment = make_deployment(broker, **RECONCILE_FAST)
    target = urlparse(broker.url)
    proxy = SilentProxy(target.hostname or "127.0.0.1", target.port or 0)
    client = ContractClient(broker.url, "galaxy.cut")
    through_proxy = {"GALAXY_TASKS_BROKER_URL": proxy.url_for(broker.url)}
    ledger = tmp_path / "ledger"
    try:
        first = deployment.worker(env=through_proxy)
        deployment.beat()  # beat and the client reach the broker directly

        def submit(batch: str, count: int = 1) -> list[str]:
            return [client.submit({"id": f"cut-{batch}-{i}", "tool_id": "cut",
                                   "command": ledger_command(ledger, "sleep 0.5")}) for i in range(count)]

        before = submit("before", 4)
        def launched() -> bool:
            jobs = [deployment.store.job(j) for j in before]
            return all(j is not None and j.state not in ("new", "queued", "submitting") for j in jobs)

        deployment.wait_until(launched, what="the jobs submitted before the cut launched")
        proxy.cut()
        cut_at = time.monotonic()
        during = submit("during0")  # handed to the worker's open BRPOP (Redis), or delivered (RabbitMQ)
        time.sleep(1)
        in_flight = broker.queue_length("galaxy_tasks") == 0  # left the queue, though no one can read it
        during += submit("during1")
        time.sleep(CUT_S / 2 - 1)
        first.kill(signal.SIGKILL)  # the health-check timer replaces the worker that no longer answers
        second = deployment.worker(env=through_proxy, wait=False)
        during += submit("during2")
        time.sleep(max(0.0, CUT_S - (time.monotonic() - cut_at)))
        proxy.resume()
        second.wait_ready(timeout=60)
        after = submit("after", 4)
        ids = before + during + after
        client.settle(timeout=240)
        assert every_process_alive(deployment) == [f"worker {first.log.name} exited -9"]
        assert_exactly_once(deployment, ids, ledger, f"silent {CUT_S:.0f} s cut ({broker_kind})",
                            extra=f"in_flight_when_cut={int(in_flight)} resent_after_unknown={len(client.resent)} "
                                  f"unknown_answers={client.unknown_answers}")
    finally:
        client.close()
        proxy.close()
