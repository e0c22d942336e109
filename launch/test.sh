#!/usr/bin/env bash
# The test command (README, and .ci/run after it has set up the venv):
#   bash launch/test.sh [pytest args]
# As root it installs SLURM when missing (local_slurm.sh install), so the real-cluster tests
# run rather than skip, then runs the whole suite with the active python.
# Cluster shapes: each real-cluster test module brings up a cluster of its own
# (tests/conftest.py own_cluster: its own SLURM_CONF, state folder and ports, started
# --fresh with an empty queue) and stops it afterwards: tests/test_slurm_cluster.py one
# node (ports 6827/6828), tests/test_multinode.py two nodes in network namespaces (ports
# 6917/6918, 10.77.1.0/24). The default cluster (a developer's sweeps) is never used: its
# queue neither delays the tests nor is touched by them.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
if [ -x launch/local_slurm.sh ] && [ "$(id -u)" = 0 ]; then
  launch/local_slurm.sh install --nodes 2  # --nodes 2: iproute2 too, for the namespaces
fi
if [ -z "${MNIST_DATA_DIR:-}" ] && [ -d ../shared/data/MNIST ]; then
  MNIST_DATA_DIR="$(cd ../shared/data && pwd)"
  export MNIST_DATA_DIR
fi
export WANDB_MODE="${WANDB_MODE:-offline}" WANDB_SILENT=true
"$PY" -m ruff check .
"$PY" -m ruff format --check .
# The docs site (mkdocs.yml): --strict fails on a broken link or a page left out of the nav.
if "$PY" -c "import mkdocs, material" 2>/dev/null; then
  # not --quiet: it hides the warnings that --strict counts, and a broken link then passes
  NO_MKDOCS_2_WARNING=1 "$PY" -m mkdocs build --strict
else
  echo "docs not built: mkdocs-material is not installed (pip install -e '.[docs]')"
fi
# -n auto: a worker per core (pytest-xdist; tests/conftest.py pins each to its cores and
# keeps tests that share a cluster or a trained run on one). The 15 slowest: CI must stay
# under 12 min. While editing: bash launch/test.sh -m "not slow"
exec "$PY" -m pytest -q -ra --durations=15 -n auto "$@"
