"""Scratch folders for files the studio shows or offers: fresh each time, old ones swept."""

import os
import time

from harmony_core.studio import scratch as serving


def test_scratch_folders_are_fresh_and_old_ones_are_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(serving, "SCRATCH_ROOT", tmp_path / "scratch")
    old = serving.scratch_folder("votes-")
    (old / "votes.csv").write_text("x")
    recent = serving.scratch_folder("blind-")
    assert old != recent and old.parent == recent.parent == tmp_path / "scratch"
    stale = time.time() - serving.SCRATCH_MAX_AGE_S - 60
    os.utime(old, (stale, stale))
    newest = serving.scratch_folder("votes-")
    assert not old.exists() and recent.is_dir() and newest.is_dir()
