"""`evaluate`: per-image CSV, paper-style summary, resume after a crash, data-parallel merge."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harmony_core import imaging
from harmony_core.bench import synthetic_request
from harmony_core.cli import main
from harmony_core.data import SyntheticComposites, list_photos, write_iharmony
from harmony_core.evaluate import PER_IMAGE, SUMMARY, evaluate
from harmony_core.metrics import image_metrics
from harmony_core.registry import get_method
from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[1]
SIZE = 64
TIMING_COLUMNS = ("seconds",)
"""Columns that differ from run to run (left out when two runs are compared)."""


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> list[Path]:
    """Two subsets: 'synthA' in iHarmony4 layout (synthesized), 'flatB' flat with varied object sizes."""
    root = tmp_path_factory.mktemp("data")
    for i in range(5):
        scene = synthetic_request(SIZE, seed=i)
        imaging.save_image(scene.ground_truth, root / "photos" / f"p{i}.png")
        imaging.save_image(scene.mask, root / "masks" / f"p{i}.png")
    write_iharmony(SyntheticComposites(list_photos(root / "photos", root / "masks"), seed=0), root / "synthA")
    for i, side in enumerate((8, 12, 20, 40)):  # about 1.6%, 3.5%, 10% and 39% of the image
        scene = synthetic_request(SIZE, seed=10 + i)
        mask = np.zeros((SIZE, SIZE), bool)
        mask[4 : 4 + side, 10 : 10 + side] = True
        composite = scene.ground_truth.copy()
        composite[mask] = (composite[mask] * 0.7).astype(np.uint8)
        imaging.save_image(composite, root / "flatB" / f"s{i}_composite.png")
        imaging.save_image(mask, root / "flatB" / f"s{i}_mask.png")
        imaging.save_image(scene.ground_truth, root / "flatB" / f"s{i}_real.png")
    return [root / "synthA", root / "flatB"]


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in csv.DictReader(handle)]


def without_timing(markdown: str) -> str:
    """The summary with the s/img column of its tables removed."""
    lines, drop = [], None
    for line in markdown.splitlines():
        cells = line.split(" | ") if line.startswith("|") else None
        if cells and "s/img" in cells:
            drop = cells.index("s/img")
        elif not line.startswith("|"):
            drop = None
        if drop is not None and line.startswith("|"):
            parts = line.split("|")
            line = "|".join(parts[:drop + 1] + parts[drop + 2 :])
        lines.append(line)
    return "\n".join(lines)


def test_report_has_rows_per_image_and_method_and_paper_tables(datasets, tmp_path):
    summary = evaluate(datasets, ["composite", "poisson"], tmp_path / "report")
    rows = read_csv(tmp_path / "report" / PER_IMAGE)
    assert len(rows) == 2 * (5 + 4)
    assert [(r["subset"], r["image"], r["method"]) for r in rows] == sorted((r["subset"], r["image"], r["method"]) for r in rows)
    assert all(float(r["bMSE"]) == 0.0 for r in rows)
    row = next(r for r in rows if r["image"] == "s2" and r["method"] == "composite")
    composite = imaging.load_rgb(datasets[1] / "s2_composite.png")
    expected = image_metrics(composite, imaging.load_rgb(datasets[1] / "s2_real.png"),
                             imaging.load_mask(datasets[1] / "s2_mask.png"))
    assert float(row["fMSE"]) == pytest.approx(expected.fmse) and row["bucket"] == "5-15%"
    text = summary.read_text()
    assert "| composite |" in text and "| poisson |" in text
    assert "flatB fMSE" in text and "synthA PSNR" in text and "0-5% MSE" in text
    assert "(images: 0-5%: 2, 5-15%: 1, 15-100%: 6)" in text


def test_interrupted_run_resumes_from_the_csv(datasets, tmp_path, monkeypatch):
    out = tmp_path / "report"
    evaluate(datasets, ["composite", "reinhard"], out)
    complete = read_csv(out / PER_IMAGE)
    lines = (out / PER_IMAGE).read_text().splitlines(keepends=True)
    (out / PER_IMAGE).write_text("".join(lines[:6]) + lines[6][:20])  # 5 rows + a torn line
    method = get_method("reinhard")
    calls = []
    original = method.run
    monkeypatch.setattr(method, "run", lambda request, progress=None: calls.append(1) or original(request, progress))
    evaluate(datasets, ["composite", "reinhard"], out)
    assert len(calls) == sum(1 for r in complete[5:] if r["method"] == "reinhard")
    assert read_csv(out / PER_IMAGE) == complete
    assert (out / "per_image.torn").read_text() == lines[6][:20] + "\n"  # set aside, as votes.py does


@pytest.mark.slow
def test_two_processes_under_accelerate_merge_to_the_single_process_report(datasets, tmp_path):
    methods = "composite,histogram"
    args = ["evaluate", "--data", *map(str, datasets), "--methods", methods]
    assert main([*args, "--out", str(tmp_path / "single")]) == 0
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(free_port()), "-m", "harmony_core"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*launch, *args, "--out", str(tmp_path / "parallel")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "evaluate 1/2" in done.stderr and "evaluate 2/2" in done.stderr  # really two shards
    assert read_csv(tmp_path / "parallel" / PER_IMAGE) == read_csv(tmp_path / "single" / PER_IMAGE)
    single = (tmp_path / "single" / SUMMARY).read_text()
    assert without_timing((tmp_path / "parallel" / SUMMARY).read_text()) == without_timing(single)
    assert not (tmp_path / "parallel" / "shards").exists()


def test_cli_errors_are_one_line(datasets, tmp_path, capsys):
    assert main(["evaluate", "--data", str(datasets[0]), "--methods", "nope", "--out", str(tmp_path)]) == 2
    assert "Unknown method(s): nope" in capsys.readouterr().err
    no_real = tmp_path / "noreal"
    imaging.save_image(synthetic_request(16).composite, no_real / "x_composite.png")
    imaging.save_image(synthetic_request(16).mask, no_real / "x_mask.png")
    assert main(["evaluate", "--data", str(no_real), "--methods", "composite", "--out", str(tmp_path / "r")]) == 2
    assert "no composite has a real image" in capsys.readouterr().err
