#!/bin/bash
# Stop the Grid Engine daemons that ops/sge-up.sh started (only those with a PID file in
# $RUN_DIR, and only if that PID is still the expected daemon). Packages and the cell stay,
# so the next sge-up.sh is fast. Jobs still running keep their shepherds.
set -uo pipefail
RUN_DIR=${GT_SGE_RUN_DIR:-/tmp/galaxy-tasks-sge}
stop() { # pidfile process-name
  local f=$RUN_DIR/$1 pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null && grep -qx "$2" "/proc/$pid/comm"; then
    echo "[sge-down] stopping $2 ($pid)"; kill -TERM "$pid"
    for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  fi
  rm -f "$f"
}
stop execd.pid sge_execd
stop qmaster.pid sge_qmaster
