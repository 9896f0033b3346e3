"""Run the Mesos master TEST DOUBLE standalone, e.g. to poke a framework by hand:

    python -m tests.mesos_master --port 5050 --agents 2     (from the repository root)

Faults: `curl -XPOST 127.0.0.1:5050/control/lose_agent -d '{"agent_id": "..."}'`;
state: `curl 127.0.0.1:5050/state`.
"""
from __future__ import annotations

import argparse
import logging
import signal
import threading

from .master import FakeMesosMaster


def main() -> None:
    parser = argparse.ArgumentParser(description="Mesos master TEST DOUBLE (not Mesos)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5050)
    parser.add_argument("--agents", type=int, default=2)
    parser.add_argument("--cpus", type=float, default=2.0)
    parser.add_argument("--mem", type=float, default=1024.0)
    parser.add_argument("--heartbeat", type=float, default=15.0)
    parser.add_argument("--update-retry", type=float, default=10.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    master = FakeMesosMaster(agents=args.agents, cpus=args.cpus, mem=args.mem, host=args.host,
                             port=args.port, heartbeat_s=args.heartbeat,
                             update_retry_s=args.update_retry, control=True).start()
    print(f"fake Mesos master (TEST DOUBLE) on {master.address}", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        done.wait()
    except KeyboardInterrupt:
        pass
    master.stop()


if __name__ == "__main__":
    main()
