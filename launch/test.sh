#!/usr/bin/env bash
# The test command (README, and .ci/run after it has set up the venv):
#   bash launch/test.sh [pytest args]
# Starts the local single-node SLURM cluster when we can (root), so the real-cluster tests
# run rather than skip, then runs the whole suite with the active python.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
if [ -x launch/local_slurm.sh ] && [ "$(id -u)" = 0 ]; then
  launch/local_slurm.sh start
fi
if [ -z "${MNIST_DATA_DIR:-}" ] && [ -d ../shared/data/MNIST ]; then
  MNIST_DATA_DIR="$(cd ../shared/data && pwd)"
  export MNIST_DATA_DIR
fi
export WANDB_MODE="${WANDB_MODE:-offline}" WANDB_SILENT=true
"$PY" -m ruff check .
"$PY" -m ruff format --check .
exec "$PY" -m pytest -q -ra "$@"
