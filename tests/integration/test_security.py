"""Safe by default: pickle refused, optional signed messages, secrets never shown."""
from __future__ import annotations

import datetime
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

PICKLE_ATTACK = textwrap.dedent(
    """
    import os, sys
    from celery import Celery

    class Exploit:
        def __reduce__(self):
            return (os.system, ("touch " + sys.argv[2],))

    app = Celery(broker=sys.argv[1])
    app.conf.accept_content = ["pickle", "json"]
    app.send_task("galaxy_tasks.prepare_job", args=[Exploit()], serializer="pickle", queue="galaxy_tasks")
    """
)


def test_a_pickled_message_is_refused_and_never_executed(deployment, tmp_path):
    deployment.worker()
    marker = tmp_path / "pwned"
    subprocess.run([sys.executable, "-c", PICKLE_ATTACK, deployment.env["GALAXY_TASKS_BROKER_URL"], str(marker)],
                   check=True, timeout=60, cwd="/")
    deployment.wait_until(lambda: "pickle" in deployment.logs().lower() and "refus" in deployment.logs().lower(),
                          timeout=20, what="refusal logged")
    time.sleep(1)
    assert not marker.exists(), "the pickled payload was executed"
    # the worker is still serving jobs
    job_id = deployment.submit("echo still here")
    [job] = deployment.wait_terminal([job_id])
    assert job.state == "ok"


def _certificate(directory: Path, name: str) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30)).sign(key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    key_path, cert_path = directory / f"{name}.key", directory / f"{name}.pem"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def _signed_deployment(make_deployment: Any, tmp_path: Path, **env: str) -> tuple[Any, Path, Path, Path]:
    """A deployment that signs its messages with a new certificate, its store trusting only
    that one (and `env`'s settings): the deployment, the key, the certificate and the store."""
    key, cert = _certificate(tmp_path / "trusted", "galaxy")
    store = tmp_path / "store"
    store.mkdir()
    (store / "galaxy.pem").write_bytes(cert.read_bytes())
    deployment = make_deployment(GALAXY_TASKS_SIGNING_KEY=str(key), GALAXY_TASKS_SIGNING_CERT=str(cert),
                                 GALAXY_TASKS_SIGNING_CERT_STORE=str(store), **env)
    return deployment, key, cert, store


def test_signed_messages_only_when_signing_is_on(make_deployment, tmp_path):
    deployment, key, cert, _store = _signed_deployment(make_deployment, tmp_path)
    deployment.worker(None, "signer@%h")
    signed = deployment.submit("echo signed", "signed")
    [job] = deployment.wait_terminal([signed])
    assert job.state == "ok", "a signed job runs"
    health = deployment.cli("health", "--node", "signer@%h", "--timeout", "10")
    assert health.returncode == 0, health.stderr + health.stdout  # control messages work signed too
    follow = deployment.cli("wait", signed, "--timeout", "30")
    assert follow.returncode == 0, follow.stderr  # and the job events wait hears

    # unsigned JSON, and a message signed by a key the workers do not trust
    rogue_key, rogue_cert = _certificate(tmp_path / "rogue", "rogue")
    rogue_store = tmp_path / "rogue-store"
    rogue_store.mkdir()
    (rogue_store / "rogue.pem").write_bytes(rogue_cert.read_bytes())
    broker = deployment.env["GALAXY_TASKS_BROKER_URL"]
    unsigned = textwrap.dedent(
        """
        import sys
        from celery import Celery
        app = Celery(broker=sys.argv[1])
        app.send_task("galaxy_tasks.submit_job", kwargs={"id": "unsigned-1", "tool_id": "t", "command": "true"},
                      queue="galaxy_tasks")
        """
    )
    subprocess.run([sys.executable, "-c", unsigned, broker], check=True, timeout=60, cwd="/")
    rogue_env = dict(deployment.env, GALAXY_TASKS_SIGNING_KEY=str(rogue_key), GALAXY_TASKS_SIGNING_CERT=str(rogue_cert),
                     GALAXY_TASKS_SIGNING_CERT_STORE=str(rogue_store))
    rogue = textwrap.dedent(
        """
        from galaxy_tasks.edge.app import app
        app.send_task("galaxy_tasks.submit_job", kwargs={"id": "rogue-1", "tool_id": "t", "command": "true"},
                      queue="galaxy_tasks")
        """
    )
    subprocess.run([sys.executable, "-c", rogue], env=rogue_env, check=True, timeout=60)
    again = deployment.submit("echo still signed", "signed")
    assert deployment.wait_terminal([again])[0].state == "ok", "the worker still serves signed jobs"
    deployment.wait_until(lambda: "Unknown certificate" in deployment.logs(), timeout=20, what="rogue refused")
    logs = deployment.logs()
    assert "Refusing to deserialize untrusted content of type json" in logs
    ids = {j.id for j in deployment.jobs()}
    assert "unsigned-1" not in ids and "rogue-1" not in ids


def test_passwords_never_appear_in_logs_or_output(make_deployment, tmp_path):
    from tests.support.redis_server import RedisServer

    redis = RedisServer(tmp_path)
    redis.start_args = ["--requirepass", "br0ker-s3cret"]
    redis.start()
    try:
        base = make_deployment(broker=redis.url.replace("redis://", "redis://:br0ker-s3cret@"))
        # PostgreSQL here trusts local connections, so any password is accepted: it must still never show
        url = base.database_url.replace("postgres@", "postgres:db-s3cret@")
        base.env["GALAXY_TASKS_DATABASE_URL"] = url
        base.worker()
        job_id = base.submit("echo $GALAXY_TASKS_JOB_ID; env")
        [job] = base.wait_terminal([job_id])
        assert job.state == "ok"
        outputs = [base.cli(*args) for args in (["status", job_id], ["status", job_id, "--json"], ["list"],
                                                ["config"], ["db", "upgrade"])]
        text = base.logs() + "".join(r.stdout + r.stderr for r in outputs) + job.stdout_tail
        assert "br0ker-s3cret" not in text and "db-s3cret" not in text
        assert "***" in next(r.stdout for r in outputs if "GALAXY_TASKS_BROKER_URL" in r.stdout)
    finally:
        redis.kill()


CAPTURE = textwrap.dedent(
    """
    import json, sys
    from galaxy_tasks.edge.app import app
    for spec in json.loads(sys.argv[1]):
        app.send_task("galaxy_tasks.submit_job", kwargs=spec, queue="captured")
    """
)

REPLAY = textwrap.dedent(
    """
    import sys
    from kombu import Connection
    with Connection(sys.argv[1]) as conn:
        captured = conn.SimpleQueue("captured")
        producer = conn.Producer()
        for _ in range(int(sys.argv[2])):
            message = captured.get(timeout=10)
            for _ in range(int(sys.argv[3])):
                producer.publish(message.body, routing_key="galaxy_tasks", exchange="", headers=message.headers,
                                 content_type=message.content_type, content_encoding=message.content_encoding)
            message.ack()
    """
)


def test_a_captured_signed_submit_replayed_without_a_key_runs_once(make_deployment, tmp_path):
    """The issue's case: a signed submit_job without an id, captured from the broker and
    pushed back by a client with no key, four copies in all. Each copy carries the same
    freshness id inside what is signed: the first is taken, the three others are refused as
    replays (logged, the worker serves on), and the command runs once. The same for a submit
    with an id."""
    deployment, key, cert, _store = _signed_deployment(make_deployment, tmp_path)
    deployment.worker(None, "signer@%h")
    runs = tmp_path / "runs"
    specs = [{"tool_id": "no_id", "command": f"echo no-id >> {runs}"},
             {"id": "replayed-1", "tool_id": "with_id", "command": f"echo with-id >> {runs}"}]
    import json
    subprocess.run([sys.executable, "-c", CAPTURE, json.dumps(specs)], env=deployment.env, check=True, timeout=60)
    # a client with no key: the captured bytes, each pushed four times
    plain_env = {k: v for k, v in deployment.env.items() if "SIGNING" not in k}
    subprocess.run([sys.executable, "-c", REPLAY, deployment.env["GALAXY_TASKS_BROKER_URL"], "2", "4"],
                   env=plain_env, check=True, timeout=60, cwd="/")
    deployment.wait_until(lambda: len(deployment.jobs()) == 2, timeout=30, what="both jobs recorded")
    ended = deployment.wait_terminal([job.id for job in deployment.jobs()])
    assert sorted((job.tool_id, job.state) for job in ended) == [("no_id", "ok"), ("with_id", "ok")]
    deployment.wait_until(lambda: deployment.logs().count("event=message_not_fresh") >= 6, timeout=30,
                          what="three copies of each submit refused")
    refusals = [line for line in deployment.logs().splitlines() if "event=message_not_fresh" in line]
    assert len(refusals) == 6 and all("task=galaxy_tasks.submit_job" in line and "replayed: message" in line
                                      for line in refusals), refusals
    time.sleep(1)
    assert len(deployment.jobs()) == 2, "exactly one job per captured submit"
    assert sorted(runs.read_text().splitlines()) == ["no-id", "with-id"], "each command ran once"
    again = deployment.submit("echo still serving", "after")
    assert deployment.wait_terminal([again])[0].state == "ok", "the worker still serves signed jobs"


STAMPED_AT = textwrap.dedent(
    """
    import sys, time
    from galaxy_tasks import freshness
    from galaxy_tasks.edge.app import app
    signed_at = freshness.stamp
    freshness.stamp = lambda body, ttl_s, now: signed_at(body, ttl_s, now + float(sys.argv[3]))
    app.send_task("galaxy_tasks.submit_job", queue="galaxy_tasks",
                  kwargs={"id": sys.argv[1], "tool_id": "t", "command": f"echo {sys.argv[1]} >> {sys.argv[2]}"})
    """
)


def test_an_expired_or_future_signed_message_is_refused_within_the_clock_skew_it_is_taken(make_deployment, tmp_path):
    """A signed message whose expiry has passed (sent 1,000 s ago, living 600 s), or one sent
    a minute ahead of the worker's clock, is refused with the reason logged and runs nothing;
    one sent 3 s ahead (clocks may differ by 5 s) is taken."""
    deployment, key, cert, _store = _signed_deployment(make_deployment, tmp_path)
    deployment.worker(None, "signer@%h")
    runs = tmp_path / "runs"
    for job_id, shift in (("expired-1", -1000), ("future-1", 60), ("skewed-1", 3)):
        subprocess.run([sys.executable, "-c", STAMPED_AT, job_id, str(runs), str(shift)], env=deployment.env,
                       check=True, timeout=60)
    deployment.wait_until(lambda: deployment.store.job("skewed-1") is not None, timeout=30, what="the skewed job")
    assert deployment.wait_terminal(["skewed-1"])[0].state == "ok"
    deployment.wait_until(lambda: deployment.logs().count("event=message_not_fresh") >= 2, timeout=30,
                          what="the expired and the future message refused")
    logs = deployment.logs()
    assert re.search(r"event=message_not_fresh task=galaxy_tasks.submit_job .*expired 4\d\d s ago", logs), logs[-3000:]
    assert "s in the future by its signer's clock" in logs
    assert deployment.store.job("expired-1") is None and deployment.store.job("future-1") is None
    assert runs.read_text().splitlines() == ["skewed-1"]


def test_a_signed_message_the_broker_gives_back_after_its_worker_died_is_taken_again(make_deployment, tmp_path):
    """The pool process is SIGKILLed in the middle of each job's prepare: the broker gives
    the signed message back (late acknowledgement), its id already taken. That copy is not
    a replay: it is taken again, and every job (submitted without an id) ends once."""
    from tests.faults.checks import assert_exactly_once, ledger_command

    deployment, *_ = _signed_deployment(make_deployment, tmp_path, GALAXY_TASKS_CRASH_POINTS="prepare",
                                        GALAXY_TASKS_CRASH_DIR=str(tmp_path), GALAXY_TASKS_RECONCILE_INTERVAL="2",
                                        GALAXY_TASKS_CHECK_AFTER="10")
    ledger = tmp_path / "ledger"
    deployment.worker(None, "signer@%h")
    # A pool process killed in one job's prepare may have been following another job that it
    # launched: that job's end is then found by reconciliation, as in production. A copy
    # refused as a replay would still show in the logs, which the test reads below.
    deployment.beat()
    ids = [deployment.submit(ledger_command(ledger, "sleep 0.2"), "crash_prepare") for _ in range(3)]
    deployment.wait_terminal(ids, timeout=120)
    assert len(list(tmp_path.glob("crashed-prepare-*"))) == len(ids), "each prepare was killed once"
    assert "event=message_not_fresh" not in deployment.logs()
    assert_exactly_once(deployment, ids, ledger, "signed, SIGKILL during prepare")
