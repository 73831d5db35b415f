"""Scratch folders for files a page shows or offers for download (blind copies, exports, CSVs)."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

SCRATCH_ROOT = Path(tempfile.gettempdir()) / "harmony-studio"
SCRATCH_MAX_AGE_S = 6 * 3600
"""Scratch folders older than this are removed (a vote or a download takes minutes, not hours)."""
SCRATCH_MAX_FOLDERS = 400
"""At most this many scratch folders at once: the oldest go first. A blind round writes one or
two (its images, 1.3 MB on average for the demo set's four, and their object crops), so with the per-address
quota of rounds without a vote (raters.RateLimits) no visitor can fill the disk, and all of them
together hold at most a few hundred rounds' copies here."""


def scratch_folder(prefix: str) -> Path:
    """A fresh folder. Folders past SCRATCH_MAX_AGE_S, and the oldest beyond SCRATCH_MAX_FOLDERS,
    are removed first (Gradio's copies of what it served are pruned by the app's `delete_cache`)."""
    SCRATCH_ROOT.mkdir(parents=True, exist_ok=True)
    cutoff = time.time() - SCRATCH_MAX_AGE_S
    kept = []
    for old in SCRATCH_ROOT.iterdir():  # at most SCRATCH_MAX_FOLDERS entries: a bounded walk
        try:
            mtime = old.stat().st_mtime
        except FileNotFoundError:
            continue  # removed by a concurrent request
        if mtime < cutoff:
            shutil.rmtree(old, ignore_errors=True)
        else:
            kept.append((mtime, old))
    kept.sort()
    for _, old in kept[: max(0, len(kept) - SCRATCH_MAX_FOLDERS + 1)]:
        shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=SCRATCH_ROOT))
