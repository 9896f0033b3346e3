"""Safe by default: pickle refused, optional signed messages, secrets never shown."""
from __future__ import annotations

import datetime
import subprocess
import sys
import textwrap
import time
from pathlib import Path

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


def test_signed_messages_only_when_signing_is_on(make_deployment, tmp_path):
    key, cert = _certificate(tmp_path / "trusted", "galaxy")
    store = tmp_path / "store"
    store.mkdir()
    (store / "galaxy.pem").write_bytes(cert.read_bytes())
    deployment = make_deployment(GALAXY_TASKS_SIGNING_KEY=str(key), GALAXY_TASKS_SIGNING_CERT=str(cert),
                                 GALAXY_TASKS_SIGNING_CERT_STORE=str(store))
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
        from galaxy_tasks.celery import app
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
