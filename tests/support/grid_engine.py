"""The Grid Engine cell the DRMAA tests run on: brought up with ops/sge-up.sh if needed."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.support.services import unavailable

REPO = Path(__file__).resolve().parents[2]
RUN_DIR = Path(os.environ.get("GT_SGE_RUN_DIR", "/tmp/galaxy-tasks-sge"))
ENV_KEYS = ("SGE_ROOT", "SGE_CELL", "DRMAA_LIBRARY_PATH", "PATH")


def env_file_vars() -> dict[str, str]:
    """What ops/sge-up.sh's env.sh exports (SGE_ROOT, SGE_CELL, DRMAA_LIBRARY_PATH, PATH)."""
    env_file = RUN_DIR / "env.sh"
    if not env_file.exists():
        return {}
    out = subprocess.run(["bash", "-c", f'. "{env_file}" && env -0'], capture_output=True, text=True, check=True).stdout
    pairs = (item.split("=", 1) for item in out.split("\0") if "=" in item)
    return {k: v for k, v in pairs if k in ENV_KEYS}


def _qstat_works(env: dict[str, str]) -> bool:
    try:
        return subprocess.run(["qstat", "-u", "*"], env={**os.environ, **env}, capture_output=True,
                              timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def cell_env() -> dict[str, str]:
    """The environment of a running cell; starts it (ops/sge-up.sh) if it is not up."""
    env = env_file_vars()
    # qmaster answers qstat even when the execd is gone, and then jobs never start
    execd = subprocess.run(["pgrep", "-x", "sge_execd"], capture_output=True).returncode == 0
    if not env or not execd or not _qstat_works(env):
        proc = subprocess.run([str(REPO / "ops" / "sge-up.sh")], capture_output=True, text=True, timeout=1500)
        if proc.returncode != 0:
            unavailable(f"ops/sge-up.sh failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        env = env_file_vars()
    return env
