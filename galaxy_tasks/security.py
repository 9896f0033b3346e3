"""Messages are JSON, and optionally signed with Celery's `auth` serializer.

Every process disables the decoders of untrusted formats (pickle, YAML, msgpack) in kombu
itself, not only in Celery's `accept_content`: a pickled message is refused before anything
is unpickled. With GALAXY_TASKS_SIGNING_KEY, _CERT and _CERT_STORE (a directory of trusted
certificates) set, every message is signed and only messages signed by a trusted
certificate are accepted; unsigned JSON is then refused too.
"""
from __future__ import annotations

from celery import Celery
from kombu.serialization import disable_insecure_serializers

from galaxy_tasks import closed
from galaxy_tasks.config import Settings


def apply(app: Celery, settings: Settings) -> None:
    disable_insecure_serializers(["json"])
    parts = (settings.signing_key, settings.signing_cert, settings.signing_cert_store)
    if not any(parts):
        return
    if not all(parts):
        raise ValueError("message signing needs GALAXY_TASKS_SIGNING_KEY, _SIGNING_CERT and _SIGNING_CERT_STORE")
    app.conf.update(
        security_key=settings.signing_key,
        security_certificate=settings.signing_cert,
        security_cert_store=settings.signing_cert_store,
        security_digest="sha256",
        task_serializer="auth",
        event_serializer="auth",
        accept_content=["auth"],
    )
    app.setup_security(allowed_serializers=["json"], digest="sha256")


def undumpable() -> None:
    """(See galaxy_tasks.closed: this process's memory and /proc entries closed to its jobs.)"""
    closed.undumpable()
