#!/bin/bash
# Stop the Slurm daemons that ops/slurm-up.sh started (only those with a PID file in
# $RUN_DIR, and only if that PID is still the expected daemon). Packages, configuration and
# Slurm's saved state stay, so the next slurm-up.sh is fast and remembers queued jobs.
# Jobs still running are killed by slurmd's slurmstepd only if it is stopped too; their
# records survive in /var/spool/slurmctld.
#   --keep-munge     leave munged running (used by slurm-up.sh when it must restart Slurm)
#   --only DAEMON    stop only slurmctld, slurmd or munged; `ops/slurm-up.sh` starts it
#                    again (e.g. restart the controller alone: running jobs go on, see
#                    tests/slurm/test_slurm_runner.py)
set -uo pipefail
RUN_DIR=${GT_SLURM_RUN_DIR:-/tmp/galaxy-tasks-slurm}
KEEP_MUNGE=0 ONLY=
while [ $# -gt 0 ]; do
  case "$1" in
    --keep-munge) KEEP_MUNGE=1 ;;
    --only) shift; case "${1:-}" in slurmctld|slurmd|munged) ONLY=$1 ;; *) echo "--only takes slurmctld, slurmd or munged" >&2; exit 2 ;; esac ;;
    *) echo "usage: $0 [--keep-munge] [--only slurmctld|slurmd|munged]" >&2; exit 2 ;;
  esac
  shift
done
stop() { # pidfile process-name
  local f=$RUN_DIR/$1 pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null && grep -qx "$2" "/proc/$pid/comm"; then
    echo "[slurm-down] stopping $2 ($pid)"; kill -TERM "$pid"
    for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  fi
  rm -f "$f"
}
if [ -n "$ONLY" ]; then
  [ -f "$RUN_DIR/$ONLY.pid" ] || { echo "[slurm-down] $ONLY was not started by ops/slurm-up.sh (no $RUN_DIR/$ONLY.pid)" >&2; exit 1; }
  stop "$ONLY.pid" "$ONLY"; exit 0
fi
stop slurmd.pid slurmd
stop slurmctld.pid slurmctld    # its child slurmscriptd exits with it
[ $KEEP_MUNGE = 1 ] || stop munged.pid munged
exit 0
