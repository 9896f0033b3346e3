"""A destination's `staging:` block: how files travel between the submitter's host and a
worker that shares no filesystem with it (`shared_filesystem: false`).

Declared once, as runner params are (`runners.params`): the job_conf is checked against
these fields when it loads, and the docs' table and the published schema follow from them.
"""
from __future__ import annotations

import os
import urllib.parse
from dataclasses import dataclass, fields

from galaxy_tasks.runners.params import param


def _absolute(value: str) -> str | None:
    return None if os.path.isabs(value) else f"{value!r} must be an absolute path"


def _host(value: str) -> str | None:
    bad = not value or value.startswith("-") or any(c.isspace() or c in "@:/'\"\\" for c in value)
    return f"{value!r} is not a host name or address" if bad else None


def _url(value: str) -> str | None:
    parsed = urllib.parse.urlsplit(value)
    bad = parsed.scheme not in ("http", "https") or not parsed.hostname or parsed.query or parsed.fragment \
        or parsed.username or parsed.password
    return None if not bad else f"{value!r} is not an http:// or https:// URL (no user, query or fragment)"


def _user(value: str) -> str | None:
    bad = not value or value.startswith("-") or not all(c.isalnum() or c in "._-" for c in value)
    return f"{value!r} is not a user name" if bad else None


#: how files may travel: one module per transfer (`rsync`, `http`)
TRANSFERS = ("rsync", "http")


@dataclass(frozen=True)
class StagingSettings:
    transfer: str = param("rsync", choices=TRANSFERS, doc="how files travel: `rsync` over ssh, or `http` from the "
                                                         "submitter's `galaxy-tasks staging-server`")
    host: str = param("", check=_host, doc="rsync: the submitter's host, as the worker reaches it (required)")
    user: str | None = param(None, check=_user, doc="rsync: the ssh user on the submitter's host (default: ssh's own)")
    port: int = param(22, minimum=1, doc="rsync: the submitter's ssh port")
    identity_file: str = param("", check=_absolute, doc="rsync: the private key the worker's ssh uses, read by the "
                                                        "worker only; never in a job's environment (required)")
    known_hosts: str | None = param(None, check=_absolute, doc="rsync: the known_hosts file that holds the submitter's "
                                                              "host key (default: ssh's own); host keys are always "
                                                              "checked")
    root: str = param("", check=_absolute, doc="the worker's local directory for staged jobs (required)")
    max_bytes: int = param(0, minimum=1, doc="the most bytes the staged jobs under `root` may hold; a job that "
                                             "would pass it waits, one larger than it is refused (required)")
    rsync: str = param("rsync", doc="rsync: the rsync program on the worker")
    ssh: str = param("ssh", doc="rsync: the ssh program on the worker")
    connect_timeout_s: int = param(10, minimum=1, doc="seconds the worker waits to connect to the submitter's host")
    url: str = param("", check=_url, doc="http: the submitter's staging server, as the worker reaches it "
                                         "(`https://galaxy.example.org:8443`) (required)")
    ca_file: str | None = param(None, check=_absolute, doc="http: the CA certificates (PEM) that check an https "
                                                           "server's certificate (default: the system's)")

    def missing(self) -> list[str]:
        """The required settings not given (they depend on the transfer)."""
        needed = ("url", "root") if self.transfer == "http" else ("host", "identity_file", "root")
        return [name for name in needed if not getattr(self, name)] + (["max_bytes"] if self.max_bytes < 1 else [])

    def misplaced(self) -> list[str]:
        """The settings given that the chosen transfer does not use."""
        given = {f.name for f in fields(self) if getattr(self, f.name) != f.default}
        return sorted(given & _ONLY[next(other for other in TRANSFERS if other != self.transfer)])


#: the settings one transfer uses and the other does not
_ONLY = {"rsync": frozenset({"host", "user", "port", "identity_file", "known_hosts", "rsync", "ssh"}),
         "http": frozenset({"url", "ca_file"})}
