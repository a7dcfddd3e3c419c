#!/usr/bin/env bash
# The one command for a GPU machine, run from the repository root (no internet needed):
#
#     OUT=/some/dir bash benchmarks/gpu_check.sh          # extra arguments go to gpu_check.py
#
# Runs benchmarks/gpu_check.py under a 470 s timeout and leaves in $OUT: gpu_check.json (the rows),
# gpu_check.md (the table; both rewritten after every row, so a timeout keeps what was measured) and
# gpu_check.log (everything printed). Python: $GPU_CHECK_PYTHON, else the project's .venv when it imports
# torch and slidescope, else the machine's python3 with the repository on PYTHONPATH and, when a .whl/ folder
# is there, its wheels (the dependencies that machine lacks) installed into /tmp/site first. This workplace's
# device image (python 3.12 with torch, timm, tifffile, scikit-image) lacks seven (38 MB); fetch them with
#   python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl zarr numcodecs donfig google-crc32c imagecodecs openslide-python openslide-bin
# (pinned to uv.lock's versions), add /.whl/ to .git/info/exclude and carry .whl.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
PY=${GPU_CHECK_PYTHON:-.venv/bin/python}
if ! "$PY" -c "import torch, slidescope" 2>/dev/null; then
    PY=python3
    if [ -d .whl ]; then
        python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
        export PYTHONPATH=/tmp/site
    fi
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee "$OUT/gpu_check.log"
timeout -k 10 "${GPU_CHECK_TIMEOUT:-470}" "$PY" benchmarks/gpu_check.py --out "$OUT/gpu_check.json" "$@" 2>&1 \
    | tee -a "$OUT/gpu_check.log"
