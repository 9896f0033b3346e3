"""A destination's `staging:` block: how files travel between the submitter's host and a
worker that shares no filesystem with it (`shared_filesystem: false`).

Declared once, as runner params are (`runners.params`): the job_conf is checked against
these fields when it loads, and the docs' table and the published schema follow from them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from galaxy_tasks.runners.params import param


def _absolute(value: str) -> str | None:
    return None if os.path.isabs(value) else f"{value!r} must be an absolute path"


def _host(value: str) -> str | None:
    bad = not value or value.startswith("-") or any(c.isspace() or c in "@:/'\"\\" for c in value)
    return f"{value!r} is not a host name or address" if bad else None


def _user(value: str) -> str | None:
    bad = not value or value.startswith("-") or not all(c.isalnum() or c in "._-" for c in value)
    return f"{value!r} is not a user name" if bad else None


@dataclass(frozen=True)
class StagingSettings:
    transfer: str = param("rsync", choices=("rsync",), doc="how files travel: rsync over ssh")
    host: str = param("", check=_host, doc="the submitter's host, as the worker reaches it (required)")
    user: str | None = param(None, check=_user, doc="the ssh user on the submitter's host (default: ssh's own)")
    port: int = param(22, minimum=1, doc="the submitter's ssh port")
    identity_file: str = param("", check=_absolute, doc="the private key the worker's ssh uses, read by the worker "
                                                        "only; never in a job's environment (required)")
    known_hosts: str | None = param(None, check=_absolute, doc="the known_hosts file that holds the submitter's host "
                                                              "key (default: ssh's own); host keys are always checked")
    root: str = param("", check=_absolute, doc="the worker's local directory for staged jobs (required)")
    max_bytes: int = param(0, minimum=1, doc="the most bytes the staged jobs under `root` may hold; a job that "
                                             "would pass it waits, one larger than it is refused (required)")
    rsync: str = param("rsync", doc="the rsync program on the worker")
    ssh: str = param("ssh", doc="the ssh program on the worker")
    connect_timeout_s: int = param(10, minimum=1, doc="seconds ssh waits for the submitter's host")

    def missing(self) -> list[str]:
        """The required settings not given."""
        return [name for name in ("host", "identity_file", "root") if not getattr(self, name)] + \
            (["max_bytes"] if self.max_bytes < 1 else [])
