#!/usr/bin/env bash
# The test command (README, and .ci/run after it has set up the venv):
#   bash launch/test.sh [pytest args]
# Starts the local single-node SLURM cluster when we can (root), so the real-cluster tests
# run rather than skip, then runs the whole suite with the active python.
# Cluster shapes: tests/test_slurm_cluster.py submits to this default one-node cluster;
# tests/test_multinode.py brings up a second, two-node cluster of its own
# (local_slurm.sh start --nodes 2, with its own SLURM_CONF, state folder, ports 6917/6918
# and namespaces on 10.77.1.0/24) for its module and stops it afterwards; it skips, saying
# why, when not root or when namespaces cannot be made.
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
exec "$PY" -m pytest -q -ra --durations=15 "$@"  # the 15 slowest: CI must stay under 25 min
