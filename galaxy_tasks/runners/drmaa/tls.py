"""Grid Engine's libdrmaa (Debian's build) links jemalloc, whose thread-local storage does
not fit the static TLS block glibc reserves by default: `import drmaa` then fails with
"cannot allocate memory in static TLS block". glibc reads its tunables only when a process
starts, so a process that will load DRMAA starts itself again with the tunable set. Entry
points call this (the DRMAA worker, the test suite), never the library on its own."""
from __future__ import annotations

import os
import sys

TUNABLE = "glibc.rtld.optional_static_tls=4096"


def has_static_tls(environ: dict[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return TUNABLE in env.get("GLIBC_TUNABLES", "").split(":")


def restart_with_static_tls() -> None:
    """Re-execute this very command line with GLIBC_TUNABLES set, unless it already is."""
    if has_static_tls() or not sys.platform.startswith("linux"):
        return
    current = os.environ.get("GLIBC_TUNABLES")
    os.environ["GLIBC_TUNABLES"] = f"{current}:{TUNABLE}" if current else TUNABLE
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])  # noqa: S606 - this very command line
