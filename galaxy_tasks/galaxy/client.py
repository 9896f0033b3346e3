"""Sending galaxy-tasks' public tasks from inside Galaxy, without galaxy-tasks' Celery app.

A private Celery app that only publishes: it never becomes Galaxy's current app, keeps no
results, and sends JSON (or signed JSON when signing is configured), so the Galaxy process
needs none of galaxy-tasks' settings, database or runners, and Galaxy's own Celery app and
serializers are left as they are.
"""
from __future__ import annotations

import time
from typing import Any, Iterable, Mapping

from celery import Celery

from galaxy_tasks import freshness
from galaxy_tasks.galaxy.settings import RunnerSettings

SUBMIT = "galaxy_tasks.submit_job"
CANCEL = "galaxy_tasks.cancel_job"
ANNOUNCE = "galaxy_tasks.announce_jobs"
ANNOUNCE_BATCH = 500


class TaskClient:
    def __init__(self, settings: RunnerSettings) -> None:
        self.settings = settings
        self.app = Celery("galaxy_tasks_galaxy_client", broker=settings.broker_url, set_as_current=False)
        self.app.conf.update(
            task_serializer="json",
            accept_content=["json"],
            task_ignore_result=True,
            result_backend=None,
            broker_connection_retry_on_startup=True,
            task_default_queue=settings.steps_queue,
        )
        if settings.signing:
            _register_signing(settings)
            self.app.conf.update(task_serializer="auth", accept_content=["auth"])
        self._retry_policy = {"max_retries": settings.submit_retries, "interval_start": 0.5,
                              "interval_step": 1, "interval_max": 5}

    def submit(self, spec: Mapping[str, Any]) -> None:
        """Ask galaxy-tasks to run a job. Sending the same spec again is harmless: a known id
        with the same command is the same job."""
        self._send(SUBMIT, dict(spec))

    def cancel(self, job_id: str) -> None:
        self._send(CANCEL, {"job_id": job_id})

    def announce(self, job_ids: Iterable[str], queue: str) -> None:
        """Ask galaxy-tasks to publish each job's current state to its events queue (and
        `unknown` to `queue` for an id it has never recorded)."""
        ids = sorted(set(job_ids))
        for start in range(0, len(ids), ANNOUNCE_BATCH):
            self._send(ANNOUNCE, {"job_ids": ids[start:start + ANNOUNCE_BATCH], "queue": queue})

    def close(self) -> None:
        self.app.close()

    def _send(self, name: str, kwargs: dict[str, Any]) -> None:
        self.app.send_task(name, kwargs=kwargs, queue=self.settings.steps_queue, retry=True,
                           retry_policy=self._retry_policy)


def _register_signing(settings: RunnerSettings) -> None:
    """Celery's `auth` serializer (signed JSON), registered without `setup_security`: that
    would also disable every other serializer and make `auth` kombu's default for the whole
    process, Galaxy's own Celery tasks (a serializer of Galaxy's) included. Each task message
    it signs carries its freshness (galaxy_tasks/freshness.py), which workers require."""
    from celery.security.certificate import Certificate, FSCertStore
    from celery.security.key import PrivateKey
    from celery.security.serialization import SecureSerializer
    from kombu.serialization import registry

    class FreshSerializer(SecureSerializer):
        def serialize(self, data: Any) -> Any:
            return super().serialize(freshness.stamp(data, freshness.DEFAULT_TTL_S, time.time()))

    assert settings.signing_key and settings.signing_cert, "signing is on only with a key and a certificate"
    with open(settings.signing_key) as key, open(settings.signing_cert) as cert:
        signer = FreshSerializer(PrivateKey(key.read()), Certificate(cert.read()),
                                 FSCertStore(settings.signing_cert_store), "sha256", serializer="json")
    registry.register("auth", signer.serialize, signer.deserialize, content_type="application/data",
                      content_encoding="utf-8")
