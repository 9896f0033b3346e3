#!/usr/bin/env bash
# The variant-calling workflow example (examples/workflows/variants.yml) in embedded mode,
# in one command: no server (an in-memory broker, SQLite under $GALAXY_TASKS_HOME, the local
# runner). Needs Debian's bwa, samtools and bcftools (ops/ci-packages.sh installs them).
# Prints the workflow's steps, then the variants each sweep element called.
# Knobs: VENV (default .venv), GALAXY_TASKS_HOME (default: a new temporary directory).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
for tool in bwa samtools bcftools wgsim; do
  command -v "$tool" >/dev/null || { echo "$tool is missing: run ops/ci-packages.sh" >&2; exit 2; }
done
[ -x "$VENV/bin/galaxy-tasks" ] || { python3 -m venv "$VENV"; "$VENV/bin/python" -m pip install -q -e .; }
export GALAXY_TASKS_HOME=${GALAXY_TASKS_HOME:-$(mktemp -d)}
"$VENV/bin/galaxy-tasks" workflow run examples/workflows/variants.yml "$@"
for vcf in "$GALAXY_TASKS_HOME"/jobs/*/working/calls.vcf; do
  echo "== $vcf"
  grep -v '^#' "$vcf" | cut -f1,2,4,5
done
