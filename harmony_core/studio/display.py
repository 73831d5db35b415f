"""Display files: every image the studio shows is written once, as a file, and handed to the UI
by path, so no later update re-encodes it (a UI that gets arrays re-encodes all of them on every
streamed update).

The format is PNG at zlib level 1: lossless, so the displayed pixels are the output's. Measured
on the cat example at 1024-4096 px (`bench-studio --encoders`; docs/benchmarks.md, "Compare in the
studio"): PNG level 1 encodes 4-6x faster than Pillow's default level 6 and 1.2-1.5x faster than
lossless WebP at its fastest (method 0), for files 33-40% larger than WebP's.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from harmony_core.studio.scratch import scratch_folder

PNG_LEVEL = 1
FOLDER_NAME = "harmony-display"
"""The folder, under the root the app gives (its UI's file cache), that holds the runs' folders."""


def write_png(image: np.ndarray, path: Path) -> Path:
    """`image` (HxW or HxWx3/4 uint8) as a lossless PNG at the fast level."""
    Image.fromarray(np.ascontiguousarray(image)).save(path, format="PNG", compress_level=PNG_LEVEL)
    return path


class DisplayFiles:
    """One fresh folder of display files (one per run or view): `show` writes each image once and
    returns its path; the names are the caller's own (method names, map labels), never a client's."""

    def __init__(self, root: Path | str | None = None, prefix: str = "run-") -> None:
        """root: the UI's file cache (files there are served as they are, never copied); None: a
        scratch folder."""
        if root is None:
            self.folder = scratch_folder(prefix)
        else:
            (Path(root) / FOLDER_NAME).mkdir(parents=True, exist_ok=True)
            self.folder = Path(tempfile.mkdtemp(prefix=prefix, dir=Path(root) / FOLDER_NAME))
        self._count = 0

    def show(self, image: np.ndarray, name: str) -> str:
        """Write `image` to a new file in the folder; its path (a string, as UIs take it)."""
        self._count += 1
        safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in name)[:60]
        return str(write_png(image, self.folder / f"{self._count:02d}-{safe}.png"))
