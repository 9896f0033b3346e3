"""drmaa_wait with an error buffer of its own.

python-drmaa's `Session.wait` shares one global error buffer with every other call (its
frequent timeouts could overwrite the message of a refused submission in another thread)
and drops the job id on "no usage information" (code 24).
"""
from __future__ import annotations

from ctypes import POINTER, byref, c_char_p, c_int, c_long, c_size_t, create_string_buffer, pointer, sizeof
from types import ModuleType
from typing import Any, NamedTuple

# DRMAA 1.0 error codes (drmaa.h)
NO_ACTIVE_SESSION = 5
INVALID_JOB = 18
EXIT_TIMEOUT = 23
NO_RUSAGE = 24


class Ended(NamedTuple):
    """What wait-any returned: the DRM's id and its JobInfo (None: no usage information)."""

    external_id: str
    info: Any


class WaitError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"code {code}: {message}")
        self.code = code


class Wait:
    """`wait(timeout_s, job_id=None)`: the next job of the session to end (or `job_id`)."""

    def __init__(self, drmaa: ModuleType) -> None:
        from drmaa import helpers, wrappers

        self._drmaa, self._helpers, self._wrappers = drmaa, helpers, wrappers
        self._fn = wrappers._lib["drmaa_wait"]  # a fresh function object: own restype
        self._fn.restype = c_int
        self._fn.argtypes = [c_char_p, c_char_p, c_size_t, POINTER(c_int), c_long,
                             POINTER(POINTER(wrappers.drmaa_attr_values_t)), c_char_p, c_size_t]

    def __call__(self, timeout_s: int, job_id: str | None = None) -> Ended:
        w, h = self._wrappers, self._helpers
        jid, error, stat = create_string_buffer(128), create_string_buffer(1024), c_int()
        rusage = pointer(POINTER(w.drmaa_attr_values_t)())
        wanted = job_id.encode() if job_id else self._drmaa.Session.JOB_IDS_SESSION_ANY
        code = self._fn(wanted, jid, sizeof(jid), byref(stat),
                        timeout_s, rusage, error, sizeof(error))
        if code == NO_RUSAGE:
            return Ended(jid.value.decode(), None)
        if code != 0:
            raise WaitError(code, error.value.decode(errors="replace"))
        usage = h.adapt_rusage(rusage)
        flags = {}
        for name, fn in (("exited", w.drmaa_wifexited), ("aborted", w.drmaa_wifaborted),
                         ("signaled", w.drmaa_wifsignaled)):
            value = c_int()
            h.c(fn, byref(value), stat)
            flags[name] = bool(value.value)
        exit_status = c_int()
        h.c(w.drmaa_wexitstatus, byref(exit_status), stat)
        term = create_string_buffer(64)
        if flags["signaled"]:
            h.c(w.drmaa_wtermsig, term, sizeof(term), stat)
        info = self._drmaa.JobInfo(jid.value.decode(), flags["exited"], flags["signaled"], term.value.decode(),
                                   False, flags["aborted"], int(exit_status.value), usage)
        return Ended(info.jobId, info)
