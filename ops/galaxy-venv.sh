#!/usr/bin/env bash
# A venv holding a real Galaxy 26.1.x, bioblend and this project (so Galaxy can load
# galaxy_tasks.galaxy.runner from job_conf.yml). It lives outside the repo, in a cache that
# CI runs and worktrees share, and is reused when a marker says it was made from the same
# requirements. Prints the venv's path, and nothing else, on stdout; progress goes to stderr.
#
#   GALAXY_TASKS_GALAXY_VENV   where the venv lives (default ~/.cache/galaxy-tasks/galaxy-26.1)
#   GALAXY_TASKS_GALAXY_PYTHON the Python that creates it (default python3; 3.11+)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${GALAXY_TASKS_GALAXY_VENV:-$HOME/.cache/galaxy-tasks/galaxy-26.1}
PYTHON=${GALAXY_TASKS_GALAXY_PYTHON:-python3}
GALAXY_REQ="galaxy>=26.1,<26.2"
BIOBLEND_REQ="bioblend>=1.5"
# TPV, which most sites route Galaxy's jobs with (docs/galaxy.md#tpv); 3.x supports Galaxy 26.1
TPV_REQ="total-perspective-vortex>=3.3,<4"
MARKER="$VENV/.galaxy-tasks-ready"

say() { echo "galaxy-venv: $*" >&2; }
quiet() { grep -v "^WARNING: Location '" || true; }   # a local index that lacks a package

# What a complete venv was made from: the requirements and this project's dependencies. Not
# the checkout's path: every clone and worktree shares the venv, and the tests put their own
# checkout first on Galaxy's PYTHONPATH (tests/galaxy/server.py).
wanted() {
  printf '%s\n' "$GALAXY_REQ" "$BIOBLEND_REQ" "$TPV_REQ" "$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
}

ready() {
  [ -f "$MARKER" ] && [ -x "$VENV/bin/galaxy-web" ] && [ "$(cat "$MARKER")" = "$(wanted)" ]
}

if ready; then
  echo "$VENV"
  exit 0
fi

mkdir -p "$(dirname "$VENV")"
exec 9>"$VENV.lock"
flock 9                                   # a second caller waits, then finds it ready
if ready; then
  echo "$VENV"
  exit 0
fi

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  say "$PYTHON is missing or older than 3.11"; exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
  if ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      say "installing python3-venv"
      apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >&2
    else
      say "$PYTHON cannot create venvs (Debian: apt-get install python3-venv)"; exit 1
    fi
  fi
  say "creating $VENV"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip 2>&1 | quiet >&2
fi

# One resolution for Galaxy and this project, so pip can never satisfy one by breaking the
# other; a conflict between Galaxy's requirements and ours stops here with pip's message.
say "installing $GALAXY_REQ, $BIOBLEND_REQ, $TPV_REQ and $ROOT (takes minutes the first time)"
"$VENV/bin/python" -m pip install -q "$GALAXY_REQ" "$BIOBLEND_REQ" "$TPV_REQ" -e "$ROOT" 2>&1 | quiet >&2
"$VENV/bin/python" -m pip check >&2 || say "pip check reports the conflicts above"
"$VENV/bin/python" "$ROOT/ops/galaxy-pins.py" >&2 || true

wanted >"$MARKER"
say "ready: $("$VENV/bin/python" -c 'from importlib.metadata import version; print("galaxy", version("galaxy"))')"
echo "$VENV"
