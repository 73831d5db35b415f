#!/usr/bin/env bash
# Rebuild the blind-study set examples/study/ from the composites in examples/study-inputs/ with the
# methods and weights of this checkout (rerun it after new ptl or ptl-paper weights). Built in a new folder
# and swapped in at the end, so an interrupted run leaves the old set in place. Sources and
# licences: examples/SOURCES.md; the inputs themselves come from examples/make_examples.py.
set -euo pipefail
cd "$(dirname "$0")/.."
METHODS="${STUDY_METHODS:-composite,reinhard,histogram,poisson,ptl-paper,ptl}"
rm -rf examples/study.new
python -m harmony_core prepare-study --inputs examples/study-inputs --methods "$METHODS" \
    --out examples/study.new --max-side 512 --format jpg
rm -rf examples/study
mv examples/study.new examples/study
du -sh examples/study
