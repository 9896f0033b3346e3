"""Optional signed messages with Celery's `auth` serializer.

With GALAXY_TASKS_SIGNING_KEY, _CERT and _CERT_STORE set, every message is signed and a
worker accepts only messages signed by a certificate in the store; unsigned JSON, pickle
and wrongly signed messages are refused.
"""
from __future__ import annotations

from celery import Celery

from galaxy_tasks.config import Settings


def apply(app: Celery, settings: Settings) -> None:
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
    app.setup_security()
