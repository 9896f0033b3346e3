"""Grid Engine through DRMAA, in one module per concern (as Pulsar's util/drmaa does):

- `runner`: the DrmaaRunner and its params: submission (idempotent), cancel, status, recovery;
- `session`: the process's one DRMAA session and its wait-any thread, the event source;
- `wait`: drmaa_wait with an error buffer of its own;
- `records`: what Grid Engine remembers (`qstat`, the accounting file);
- `ends`: a job's end, from wait-any or a record, as a Completion;
- `native`: a job's resources as Grid Engine options.

DRMAA allows one session per process, and a session does not survive fork(): the drmaa
queues are served by `workers.drmaa`, a worker whose process holds the session.
"""
from galaxy_tasks.runners.drmaa.native import native_specification
from galaxy_tasks.runners.drmaa.runner import SUBMIT_MARKER, DrmaaParams, DrmaaRunner

__all__ = ["SUBMIT_MARKER", "DrmaaParams", "DrmaaRunner", "native_specification"]
