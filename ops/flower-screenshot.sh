#!/usr/bin/env bash
# Regenerate docs/flower-tasks.png, the picture of Flower's tasks page the docs show, by running
# the Flower browser test (real workers, real Flower, headless Chromium) with its screenshot
# pointed at the docs. Needs what ops/test.sh sets up (services, Chromium, the venv).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
GT_FLOWER_SCREENSHOT="$PWD/docs/flower-tasks.png" "$PY" -m pytest -q tests/operations/test_flower.py -k browser
echo "wrote docs/flower-tasks.png"
