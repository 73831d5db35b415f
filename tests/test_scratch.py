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


def test_scratch_folders_are_bounded_in_number(tmp_path, monkeypatch):
    monkeypatch.setattr(serving, "SCRATCH_ROOT", tmp_path / "scratch")
    monkeypatch.setattr(serving, "SCRATCH_MAX_FOLDERS", 3)
    made = []
    for i in range(5):
        made.append(serving.scratch_folder("blind-"))
        os.utime(made[-1], (time.time() - 100 + i, time.time() - 100 + i))
    assert sorted(p.name for p in (tmp_path / "scratch").iterdir()) == sorted(p.name for p in made[-3:])
