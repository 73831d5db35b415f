"""Scratch folders for files a page shows or offers for download (blind copies, exports, CSVs)."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

SCRATCH_ROOT = Path(tempfile.gettempdir()) / "harmony-studio"
SCRATCH_MAX_AGE_S = 6 * 3600
"""Scratch folders older than this are removed (a vote or a download takes minutes, not hours)."""


def scratch_folder(prefix: str) -> Path:
    """A fresh folder. Older folders are removed first (Gradio's copies of them are pruned by the
    app's `delete_cache`), so the disk holds at most a few hours of them."""
    SCRATCH_ROOT.mkdir(parents=True, exist_ok=True)
    cutoff = time.time() - SCRATCH_MAX_AGE_S
    for old in SCRATCH_ROOT.iterdir():
        try:
            if old.stat().st_mtime < cutoff:
                shutil.rmtree(old, ignore_errors=True)
        except FileNotFoundError:
            pass  # removed by a concurrent request
    return Path(tempfile.mkdtemp(prefix=prefix, dir=SCRATCH_ROOT))
