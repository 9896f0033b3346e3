"""Clients and what is theirs: the job ids and events queues a client's certificate owns.

With signing on, every message is signed, but any holder of a trusted key could take
another client's job id first (its own submit is then refused) or name that client's
events queue (which then hears the intruder's events). The job_conf's `clients:` gives
each client a namespace, checked at accept against the certificate that signed the submit:

    clients:
      galaxy:
        certificate: /etc/galaxy-tasks/signing/store/galaxy.pem
        ids: ["g-main-*"]                           # exact names, or prefixes ending in *
        events_queues: ["galaxy.main", "galaxy.main.*"]

A job id or events queue inside a client's namespace is accepted only from a message
signed by that client's certificate. Without signing nothing is authenticated, so nothing
is checked (docs/security.md: an unsigned deployment trusts its whole broker); a job
submitted from this machine's own CLI or Python client (no message) is the operator's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Mapping

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from galaxy_tasks.confmodels import says
from galaxy_tasks.yamlconf import Where


@dataclass(frozen=True)
class Client:
    name: str
    signer: str  # the certificate's id as Celery's `auth` serializer names a message's signer
    ids: tuple[str, ...] = ()
    events_queues: tuple[str, ...] = ()

    def owns_id(self, job_id: str) -> bool:
        return _matches(job_id, self.ids)

    def owns_queue(self, queue: str) -> bool:
        return _matches(queue, self.events_queues)


@dataclass(frozen=True)
class Clients:
    clients: tuple[Client, ...] = ()

    def intrusion(self, signer: str | None, job_id: str | None, queue: str | None) -> tuple[str, str] | None:
        """(field, why) if a message signed by `signer` may not use this id or events queue,
        or None. `signer` None: not a signed message, nothing to check."""
        if signer is None:
            return None
        for client in self.clients:
            if client.signer == signer:
                continue
            if job_id is not None and client.owns_id(job_id):
                return "id", f"job id {job_id!r} belongs to client {client.name!r}"
            if queue is not None and client.owns_queue(queue):
                return "events.queue", f"events queue {queue!r} belongs to client {client.name!r}"
        return None


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(name.startswith(p[:-1]) if p.endswith("*") else name == p for p in patterns)


def _wildcards(names: list[str]) -> list[str]:
    if not all(name.strip("*") for name in names):
        raise ValueError("a name may be neither empty nor only *")
    if any("*" in name[:-1] for name in names):
        raise ValueError("only a trailing * is a wildcard")
    return names


_Names = Annotated[list[str], Field(min_length=1),
                   says("must be a non-empty list of names (a trailing * makes a prefix)"), AfterValidator(_wildcards)]


class ClientModel(BaseModel):
    """A client's namespace (docs/security.md)."""

    model_config = ConfigDict(extra="forbid", title="Client")

    certificate: str = Field(description="the client's signing certificate (PEM): only messages it signed may use "
                                         "these ids and events queues")
    ids: _Names = Field(description="job ids of this client's: exact, or a prefix ending in *")
    events_queues: _Names = Field(description="events queues of this client's: exact, or a prefix ending in *")


def clients_from(given: Mapping[str, ClientModel] | None, here: Where) -> Clients:
    """The job_conf's checked `clients:`; each certificate is read now, so a missing or
    unreadable one stops the start with its name."""
    return Clients(tuple(Client(name, _signer(client.certificate, here.at(name, "certificate")), tuple(client.ids),
                                tuple(client.events_queues)) for name, client in (given or {}).items()))


def _signer(path: str, here: Where) -> str:
    """The certificate's id as a signed message names its signer: Celery's `auth` envelope
    carries "<issuer's attribute values> <serial number>" (celery.security.certificate)."""
    try:
        from cryptography import x509
    except ImportError:
        raise here.error("needs the cryptography package, as message signing does") from None
    try:
        with open(path, "rb") as handle:
            cert = x509.load_pem_x509_certificate(handle.read())
    except (OSError, ValueError) as exc:
        raise here.error(f"cannot read the certificate {path!r}: {exc}") from None
    return f"{' '.join(str(attribute.value) for attribute in cert.issuer)} {cert.serial_number}"
