#!/usr/bin/env python3
"""Baseline for the DRMAA destination: N trivial jobs (/bin/true) through a bare
python-drmaa loop on the same Grid Engine cell, then wait-any until all have ended.
Prints one JSON object. The project's own DRMAA path is measured against this.

    . /tmp/galaxy-tasks-sge/env.sh   # ops/sge-up.sh writes it; GLIBC_TUNABLES must be set
    python ops/bench/bare_drmaa.py --jobs 100
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=50)
    args = parser.parse_args()
    if "optional_static_tls" not in os.environ.get("GLIBC_TUNABLES", ""):
        sys.exit("set the environment of ops/sge-up.sh's env.sh first (GLIBC_TUNABLES, DRMAA_LIBRARY_PATH, SGE_ROOT)")
    import drmaa

    session = drmaa.Session()
    session.initialize()
    try:
        template = session.createJobTemplate()
        template.remoteCommand = "/bin/true"
        template.outputPath = ":/dev/null"
        template.joinFiles = True
        started = time.perf_counter()
        pending = set()
        for number in range(args.jobs):
            template.jobName = f"bare-{number}"
            pending.add(session.runJob(template))
        submitted = time.perf_counter()
        failed = 0
        while pending:
            info = session.wait(drmaa.Session.JOB_IDS_SESSION_ANY, drmaa.Session.TIMEOUT_WAIT_FOREVER)
            pending.discard(info.jobId)
            failed += not (info.hasExited and info.exitStatus == 0)
        ended = time.perf_counter()
        session.deleteJobTemplate(template)
    finally:
        session.exit()
    print(json.dumps({
        "benchmark": "bare_drmaa", "jobs": args.jobs, "failed": failed,
        "submit_s": round(submitted - started, 3), "total_s": round(ended - started, 3),
        "jobs_per_s": round(args.jobs / (ended - started), 2),
        "drm_calls_per_job": 2,  # one runJob and one wait per job
    }))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
