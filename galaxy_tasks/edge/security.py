"""Messages are JSON, and optionally signed with Celery's `auth` serializer.

Every process disables the decoders of untrusted formats (pickle, YAML, msgpack) in kombu
itself, not only in Celery's `accept_content`: a pickled message is refused before anything
is unpickled. With GALAXY_TASKS_SIGNING_KEY, _CERT and _CERT_STORE (a directory of trusted
certificates) set, every message is signed and only messages signed by a trusted
certificate are accepted; unsigned JSON is then refused too. Every signed task message
carries its freshness (galaxy_tasks/freshness.py), so a copy pushed back is refused.
"""
from __future__ import annotations

import time
import uuid
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from celery import Celery
from celery.security.certificate import Certificate, FSCertStore
from celery.security.key import PrivateKey
from celery.security.serialization import SecureSerializer
from kombu.serialization import disable_insecure_serializers, registry
from kombu.utils.encoding import bytes_to_str

from galaxy_tasks import freshness
from galaxy_tasks.config import Settings
from galaxy_tasks.context import Context
from galaxy_tasks.store import TRANSIENT_ERRORS
from galaxy_tasks.undumpable import undumpable as _close_process


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
    _register_remembering(settings)


#: the certificate id that signed the message this thread decoded last (a step's own
#: message: Celery decodes a task's arguments in the thread that runs it, just before)
_SIGNER: ContextVar[str | None] = ContextVar("galaxy_tasks_signer", default=None)


def signer() -> str | None:
    """Who signed the message of the step running now, or None when messages are unsigned."""
    return _SIGNER.get()


class _RememberingSerializer(SecureSerializer):
    """Celery's `auth` serializer that stamps each task message it signs with its freshness,
    and notes the verified signer of what it decoded."""

    ttl_s = freshness.DEFAULT_TTL_S

    def serialize(self, data: Any) -> Any:
        return super().serialize(freshness.stamp(data, self.ttl_s, time.time()))

    def deserialize(self, data: Any) -> Any:
        body = super().deserialize(data)  # raises unless a certificate of the store signed it
        _SIGNER.set(bytes_to_str(self._unpack(data)["signer"]))
        return body


def _register_remembering(settings: Settings) -> None:
    """`auth` registered again (after setup_security) with the serializer above."""
    with open(settings.signing_key) as key, open(settings.signing_cert) as cert:
        serializer = _RememberingSerializer(PrivateKey(key.read()), Certificate(cert.read()),
                                            FSCertStore(settings.signing_cert_store), "sha256", serializer="json")
    serializer.ttl_s = settings.message_ttl
    registry.register("auth", serializer.serialize, serializer.deserialize, content_type="application/data",
                      content_encoding="utf-8")


def signing(settings: Settings) -> bool:
    """Whether this deployment signs its messages (and accepts only signed ones)."""
    return bool(settings.signing_key)


def stale(ctx: Context, request: Any) -> str | None:
    """Why the signed message of the step about to run must not be acted on, or None: it
    carries no freshness, it has expired (or was sent in the future), or its id was taken
    before (a copy captured from the broker and pushed back). A copy the broker itself gives
    back (`redelivered`: the worker that held it died) may be taken again: every step is a
    compare-and-set, and a submit without an id names the job its message's id derives.
    If the database cannot record the id, the message goes on to its step, which meets the
    same database and is retried."""
    if not signing(ctx.settings) or request.called_directly or request.is_eager:
        return None
    found = freshness.read(getattr(request, freshness.KEY, None))
    if isinstance(found, str):
        return found
    too_old_or_new = freshness.problem(found, time.time())
    if too_old_or_new is not None:
        return too_old_or_new
    try:
        first = ctx.store.first_taking(found.id, datetime.fromtimestamp(found.kept_until, UTC))
    except TRANSIENT_ERRORS:
        return None
    if first or (request.delivery_info or {}).get("redelivered"):
        return None
    return f"replayed: message {found.id} was taken before (a copy pushed back to the broker)"


#: the job ids a signed submit without an id takes: the same for every copy of its message
_MESSAGE_JOBS = uuid.UUID("8f2b6c1e-4d3a-4e7b-9a15-0c6d2e8f1b47")


def message_job_id(request: Any) -> str | None:
    """The id of the job (or workflow) a signed submit without one names: derived from its
    message's freshness id, so a copy the broker gives back records nothing twice. None
    when messages are unsigned."""
    found = freshness.read(getattr(request, freshness.KEY, None))
    return None if isinstance(found, str) else str(uuid.uuid5(_MESSAGE_JOBS, found.id))


def undumpable() -> None:
    """(See galaxy_tasks.undumpable: this process's memory and /proc entries closed to its jobs.)"""
    _close_process()
