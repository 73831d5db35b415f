#!/usr/bin/env bash
# The GPU device check in one call (docs/benchmarks.md, "On a GPU: device-check"): installs from .whl/
# what the GPU machine lacks (diffusers; it has torch and transformers), runs
# `device-check` within the tool's 10-minute limit and leaves the report and the log under $OUT.
# Produce .whl/ first (see docs/benchmarks.md) and copy it along. Extra arguments
# go to device-check (`--tiny` tries the script on a CPU machine).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-device-check-report}"
MINUTES="${MINUTES:-8}"
mkdir -p "$OUT"
if ! python3 -c "import diffusers" 2>/dev/null; then
    ls .whl/*.whl >/dev/null 2>&1 || { echo "diffusers missing and no wheels in .whl/ (see docs/benchmarks.md)" >&2; exit 2; }
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/nvidia-smi.txt" || true
# --minutes stops the measurements cleanly; timeout is the backstop below the tool's 600 s.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1  # the GPU machine reaches no network
timeout 580 python3 -m harmony_core device-check --out "$OUT" --minutes "$MINUTES" "$@" 2>&1 | tee "$OUT/log.txt"
