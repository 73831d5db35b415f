#!/usr/bin/env bash
# ptl training on a GPU machine in one call (docs/methods.md, "ptl: paper vs our choices").
# Prepare here:  python -m harmony_core pack-photos --photos ../shared/data/photos-masks/images \
#                    --masks ../shared/data/photos-masks/masks --out .cache/photos-compact --quality 85 --max-mib 40
# then run this on the GPU machine with .cache/photos-compact copied along. It goes on from the shipped
# weights (weights/ptl) for MINUTES of training and leaves the exported fp16 weights, config,
# curve and recipe in $OUT/ptl (copy them to weights/ptl to ship). Extra arguments go to train-ptl.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-ptl-gpu-run}"
MINUTES="${MINUTES:-8}"
DATA="${DATA:-.cache/photos-compact}"
[ -d "$DATA/images" ] || { echo "no packed photos in $DATA (see the comment at the top of this script)" >&2; exit 2; }
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1  # the GPU machine reaches no network
# Synthesis runs in DataLoader workers on the CPU cores; the checkpoint stays on the machine
# (only the fp16 export travels back). --max-minutes stops with an export; timeout is the backstop.
timeout 580 python3 -m harmony_core train-ptl --data "$DATA" --out /tmp/ptl-gpu-run --init weights/ptl \
    --head affine --prior poisson --width 0.5 --steps "${STEPS:-6000}" --batch-size "${BATCH:-16}" \
    --lr 2e-4 --lr-drop 0.75 --workers "${WORKERS:-$(( $(nproc) - 1 ))}" --val-every 500 --val-samples 64 \
    --max-minutes "$MINUTES" --export "$OUT/ptl" "$@" 2>&1 | tr '\r' '\n' | grep -v '^train-ptl:' | tee "$OUT/log.txt"
