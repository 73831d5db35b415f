"""Atomic file writes: a temporary file in the target's folder, flushed, fsynced, renamed.

A crash or a full disk leaves either the old file or the new one, never half of one. Files that
grow by appends instead (CSV logs) follow one rule for the torn last line a crash can leave
(below).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

_log = logging.getLogger(__name__)


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", newline: str | None = None) -> Iterator[IO]:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, newline=newline) if "b" not in mode else os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w", newline="") as handle:
        handle.write(text)


# --- append-only line files (the votes CSV, evaluate's per-image CSV) -----------------------------
#
# One rule for a torn last line, the trace of an append that a crash interrupted: a last line
# without its newline is never a row. Readers skip it, with a warning. A writer, before it
# appends, moves its bytes to PATH.torn (appended and fsynced: nothing is thrown away) and cuts
# the file back to its last complete line, so no new row is ever glued onto it.

TORN_SUFFIX = ".torn"


def complete_lines(data: bytes, source: str | os.PathLike = "") -> bytes:
    """`data` up to its last complete line; a torn last line is skipped with a warning naming `source`."""
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) < len(data):
        _log.warning("%s: a torn last line (%d bytes) skipped", os.fspath(source) or "data", len(data) - len(complete))
    return complete


def set_aside_torn_tail(path: str | os.PathLike, complete_size: int) -> bytes:
    """For a writer: move what follows `path`'s first `complete_size` bytes (a torn last line) to
    PATH.torn and cut the file back to `complete_size`; returns the bytes moved (b"" if none)."""
    path = Path(path)
    with open(path, "rb") as handle:
        handle.seek(complete_size)
        tail = handle.read()
    if tail:
        torn_path = path.with_suffix(TORN_SUFFIX)
        _log.warning("%s: a torn last line (%d bytes, from an interrupted write) moved to %s", path, len(tail), torn_path)
        with open(torn_path, "ab") as torn:
            torn.write(tail + b"\n")
            torn.flush()
            os.fsync(torn.fileno())
        os.truncate(path, complete_size)
    return tail


def repair_torn_tail(path: str | os.PathLike) -> int:
    """For a writer about to append: the torn last line of `path` set aside (see above); returns
    the size of the complete part (0 when the file does not exist)."""
    path = Path(path)
    if not path.is_file():
        return 0
    size = len(complete_lines(path.read_bytes()))
    set_aside_torn_tail(path, size)
    return size
