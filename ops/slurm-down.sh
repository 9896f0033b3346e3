#!/bin/bash
# Stop the Slurm daemons that ops/slurm-up.sh started (only those with a PID file in
# $RUN_DIR, and only if that PID is still the expected daemon). Packages, configuration and
# Slurm's saved state stay, so the next slurm-up.sh is fast and remembers queued jobs.
# Jobs still running are killed by slurmd's slurmstepd only if it is stopped too; their
# records survive in /var/spool/slurmctld.
#   --keep-munge   leave munged running (used by slurm-up.sh when it must restart Slurm)
set -uo pipefail
RUN_DIR=${GT_SLURM_RUN_DIR:-/tmp/galaxy-tasks-slurm}
KEEP_MUNGE=0
for arg in "$@"; do
  case "$arg" in
    --keep-munge) KEEP_MUNGE=1 ;;
    *) echo "usage: $0 [--keep-munge]" >&2; exit 2 ;;
  esac
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
stop slurmd.pid slurmd
stop slurmctld.pid slurmctld    # its child slurmscriptd exits with it
[ $KEEP_MUNGE = 1 ] || stop munged.pid munged
exit 0
