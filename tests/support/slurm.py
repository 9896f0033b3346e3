"""The single-node Slurm the Slurm tests run on: brought up with ops/slurm-up.sh if needed."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.support.services import unavailable

REPO = Path(__file__).resolve().parents[2]
RUN_DIR = Path(os.environ.get("GT_SLURM_RUN_DIR", "/tmp/galaxy-tasks-slurm"))
ENV_KEYS = ("SLURM_CONF", "GT_SLURM_JOBCOMP", "GT_SLURM_PARTITION", "GT_SLURM_MEMORY_ENFORCEMENT")
# A job over a 64 MB limit: `tail` keeps a line without a newline in memory, 400 MB of it, for
# 5 s (Slurm's polling samples every second: a quicker job could escape it)
MEMORY_HOG = "{ head -c 400m /dev/zero; sleep 5; } | tail > /dev/null"


def env_file_vars() -> dict[str, str]:
    """What ops/slurm-up.sh's env.sh exports."""
    env_file = RUN_DIR / "env.sh"
    if not env_file.exists():
        return {}
    out = subprocess.run(["bash", "-c", f'. "{env_file}" && env -0'], capture_output=True, text=True,
                         check=True, timeout=30).stdout
    pairs = (item.split("=", 1) for item in out.split("\0") if "=" in item)
    return {k: v for k, v in pairs if k in ENV_KEYS}


def node_state() -> str:
    try:
        return subprocess.run(["sinfo", "-h", "-n", "localhost", "-o", "%T"], capture_output=True, text=True,
                              timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def _daemons_running() -> bool:
    return all(subprocess.run(["pgrep", "-x", name], capture_output=True).returncode == 0
               for name in ("munged", "slurmctld", "slurmd"))


def slurm_up() -> dict[str, str]:
    """The environment of a running Slurm; runs ops/slurm-up.sh if it is not up (or if the
    node is not ready for jobs)."""
    env = env_file_vars()
    if not env or not _daemons_running() or not node_state().startswith(("idle", "mixed", "allocated")):
        proc = subprocess.run([str(REPO / "ops" / "slurm-up.sh")], capture_output=True, text=True, timeout=1500)
        if proc.returncode != 0:
            unavailable(f"ops/slurm-up.sh failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        env = env_file_vars()
    if not env:
        unavailable(f"ops/slurm-up.sh wrote no {RUN_DIR / 'env.sh'}")
    return env


def restart_slurmctld() -> None:
    """Stop the controller alone (ops/slurm-down.sh --only slurmctld), then start it again
    (ops/slurm-up.sh starts only what is not running)."""
    stop_slurmctld()
    start_slurm()


def stop_slurmctld() -> None:
    """Only a controller that ops/slurm-up.sh started (it has the PID file) can be stopped."""
    down = subprocess.run([str(REPO / "ops" / "slurm-down.sh"), "--only", "slurmctld"], capture_output=True,
                          text=True, timeout=120)
    if down.returncode != 0:
        unavailable(f"cannot stop slurmctld: {down.stdout}{down.stderr}")


def start_slurm() -> None:
    """ops/slurm-up.sh: starts whatever is not running, waits for the node, runs a smoke job."""
    up = subprocess.run([str(REPO / "ops" / "slurm-up.sh")], capture_output=True, text=True, timeout=600)
    assert up.returncode == 0, f"ops/slurm-up.sh failed:\n{up.stdout}\n{up.stderr}"
