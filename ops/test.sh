#!/usr/bin/env bash
# Every test tier from nothing, in one command: the local services, the Debian packages the
# tests drive, a real Grid Engine cell and a real single-node Slurm, a virtualenv with the
# project and its test extras (and pymesos), then ruff, mypy and pytest. Idempotent; options
# go to pytest:
#
#     ops/test.sh                      # everything
#     ops/test.sh tests/unit -x        # one tier, stop at the first failure
#
# Tests run in GT_TEST_WORKERS pytest-xdist workers (default 4; 0 runs them in this process,
# one after the other); the tests that share a thing there is only one of (the Galaxy server,
# the Slurm, the Grid Engine cell) stay on one worker (tests/support/fixtures.py, ONE_OF_EACH).
#
# Knobs: VENV (default .venv), SKIP_SETUP=1 (reuse what an earlier run installed),
# GT_TEST_WORKERS.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
export DEBIAN_FRONTEND=noninteractive

if [ "${SKIP_SETUP:-}" != 1 ]; then
  bash ops/ci-packages.sh                    # Chromium, redis-server, rabbitmq-server, systemd-analyze, ...
  bash ops/services-up.sh                    # PostgreSQL, Redis, RabbitMQ
  bash ops/sge-up.sh                         # a single-host Grid Engine cell with DRMAA
  bash ops/slurm-up.sh                       # a single-node Slurm (munge, slurmctld, slurmd)
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -e '.[test,drmaa,flower]'
  PYTHON="$VENV/bin/python" bash ops/install-mesos-extra.sh
fi

echo "== ruff"; "$VENV/bin/python" -m ruff check .
echo "== mypy"; "$VENV/bin/python" -m mypy
echo "== pytest"; exec "$VENV/bin/python" -m pytest -n "${GT_TEST_WORKERS:-4}" --dist loadgroup "$@"
