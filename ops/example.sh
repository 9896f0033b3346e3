#!/usr/bin/env bash
# Install galaxy-tasks into a virtualenv and run the embedded example (no server needed: an
# in-memory broker, SQLite under $GALAXY_TASKS_HOME, the local runner), in one command.
# Knobs: VENV (default .venv), GALAXY_TASKS_HOME (default ~/.galaxy-tasks).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e .
exec "$VENV/bin/galaxy-tasks" run examples/jobs.yml "$@"
