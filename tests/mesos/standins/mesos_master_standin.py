"""STAND-IN for `mesos-master` (no Mesos binaries exist here), for testing
ops/mesos-on-drm.py on a real queueing system: runs the Mesos master TEST DOUBLE of
tests/mesos_master with no agents of its own; stand-in agents (mesos_agent_standin.py)
join it. Standard library only, so any python3 runs it:

    python3 mesos_master_standin.py --host IP --port PORT
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repository root

from tests.mesos_master.__main__ import main  # noqa: E402

if __name__ == "__main__":
    if "--agents" not in sys.argv:
        sys.argv += ["--agents", "0"]
    main()
