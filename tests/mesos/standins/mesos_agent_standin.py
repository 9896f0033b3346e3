"""STAND-IN for `mesos-agent` (no Mesos binaries exist here), for testing
ops/mesos-on-drm.py on a real queueing system: registers one simulated agent with the
Mesos master TEST DOUBLE (`POST /control/add_agent`; the double runs its tasks), stays up
until it is terminated, then deregisters it. Standard library only:

    python3 mesos_agent_standin.py --master HOST:PORT [--cpus N] [--mem MB] [--hostname H]
"""
from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
import urllib.request


def control(master: str, name: str, **kwargs: object) -> object:
    request = urllib.request.Request(f"http://{master}/control/{name}", data=json.dumps(kwargs).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response).get("result")


def main() -> None:
    parser = argparse.ArgumentParser(description="mesos-agent STAND-IN (not Mesos)")
    parser.add_argument("--master", required=True)
    parser.add_argument("--cpus", type=float, default=2.0)
    parser.add_argument("--mem", type=float, default=1024.0)
    parser.add_argument("--hostname", default=socket.gethostname())
    args = parser.parse_args()
    agent_id = control(args.master, "add_agent", hostname=args.hostname, cpus=args.cpus, mem=args.mem)
    print(f"stand-in agent {agent_id} ({args.cpus} cpus, {args.mem} MB) joined {args.master}", flush=True)

    def leave(signum: int, _frame: object) -> None:
        try:
            control(args.master, "lose_agent", agent_id=agent_id)
        except OSError:
            pass  # the master is gone already
        sys.exit(0)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2):
        signal.signal(sig, leave)
    while True:
        signal.pause()


if __name__ == "__main__":
    main()
