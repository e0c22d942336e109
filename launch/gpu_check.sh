#!/usr/bin/env bash
# The GPU check (issue #26): one prepared call on a machine with one NVIDIA GPU, about
# 4 minutes with its install. What it checks: launch/gpu_check.py. Three ways to run it:
#
#   bash launch/gpu_check.sh --prepare   # here, online, once: .gpu/wheels (what that
#                                        # machine's Python 3.12 lacks) and .gpu/mnist (gz)
#   bash launch/gpu_check.sh             # there, with .gpu carried: installs, unpacks the
#                                        # data, runs the checks; $OUT/gpu_check.json
#   bash launch/gpu_check.sh --dry-run   # anywhere: the same checks on CPU and tiny data
#                                        # (CI runs it: tests/test_launch.py)
#
# The device tool's call:  run(command="bash launch/gpu_check.sh", carry=[".gpu"],
#                              timeout_s=300)
# That machine has torch, torchvision, accelerate, onnx and onnxruntime, but not wandb,
# submitit or optuna, and reaches no package registry: pip installs what is missing from
# the carried wheels, and the project itself with --no-deps. Everything carried stays
# under the tool's 64 MiB (about 45 MB: numpy is left out, the image's torch brings it).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/gpu-check-out}
mkdir -p "$OUT"
NEEDED=(tqdm filelock platformdirs wandb submitit optuna)
RAW=(train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte)

case "${1:-}" in
--prepare)
  rm -rf .gpu && mkdir -p .gpu/wheels .gpu/mnist
  # setuptools: pip builds the project in an isolated env, from these wheels only
  "$PY" -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
    --abi cp312 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .gpu/wheels "${NEEDED[@]}" "setuptools>=77"
  rm -f .gpu/wheels/numpy-*.whl
  src=${MNIST_DATA_DIR:-../shared/data}/MNIST/raw
  for f in "${RAW[@]}"; do gzip -9c "$src/$f" > ".gpu/mnist/$f.gz"; done
  du -sh .gpu
  exit 0 ;;
--dry-run)
  exec "$PY" launch/gpu_check.py --dry-run --out "$OUT" "${@:2}" ;;
"") ;;
*)
  echo "usage: bash launch/gpu_check.sh [--prepare | --dry-run]" >&2
  exit 2 ;;
esac

if [ ! -d .gpu/wheels ] || [ ! -d .gpu/mnist ]; then
  echo "no .gpu/: run 'bash launch/gpu_check.sh --prepare' where PyPI is reachable, and carry .gpu" >&2
  exit 2
fi
t0=$(date +%s)
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/nvidia-smi.csv" || true
missing=()
for pkg in "${NEEDED[@]}"; do
  "$PY" -c 'import importlib.metadata as m, sys; m.version(sys.argv[1])' "$pkg" 2>/dev/null \
    || missing+=("$pkg")
done
# An install that fails is logged, not fatal: training and bench need none of these.
{
  echo "missing before: ${missing[*]:-none}"
  "$PY" -m pip install --no-index --find-links .gpu/wheels --no-deps . \
    && if [ ${#missing[@]} -gt 0 ]; then
      "$PY" -m pip install --no-index --find-links .gpu/wheels "${missing[@]}"
    fi
} > "$OUT/install.log" 2>&1 || echo "install failed, see install.log; the checks go on"
data=/tmp/gpu-check-data
mkdir -p "$data/MNIST/raw"
for f in "${RAW[@]}"; do gunzip -c ".gpu/mnist/$f.gz" > "$data/MNIST/raw/$f"; done
echo "install and data: $(( $(date +%s) - t0 )) s"
exec "$PY" launch/gpu_check.py --out "$OUT" --data-dir "$data" "$@"
