"""The names a job goes by: its id, the Unix user it may run as, and the name an external
system (a scheduler, Mesos) knows it by. Standard library only, so the privileged helper,
which starts for every job run as its user, checks them without loading the spec's
validator."""
from __future__ import annotations

import re

#: a job id: what a client may choose, and all a job directory's name may be
JOB_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,35}"
#: a Unix user name a job may run as (the portable POSIX form, as useradd takes it)
USER_NAME_PATTERN = r"^[a-z_][a-z0-9_-]{0,31}"
JOB_ID = re.compile(JOB_ID_PATTERN + r"\Z")
USER_NAME = re.compile(USER_NAME_PATTERN + r"\Z")


def external_name(job_id: str, attempt: int = 1) -> str:
    """`gt-<id>`, and `gt-<id>.a<n>` for a later attempt (`.` is in no job id)."""
    return f"gt-{job_id}" if attempt <= 1 else f"gt-{job_id}.a{attempt}"


def job_id_of(name: str) -> str | None:
    """The job id in a name `external_name` made; None for a name it did not make."""
    if not name.startswith("gt-"):
        return None
    job_id, _, attempt = name[3:].partition(".a")
    return job_id if job_id and (not attempt or attempt.isdigit()) else None
