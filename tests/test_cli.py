import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from harmony_core.cli import main

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_methods_lists_availability(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "reinhard" in out and "classical" in out and "available" in out


def test_harmonize_writes_images_and_metadata(tmp_path):
    out = tmp_path / "out"
    code = main([
        "harmonize", "--composite", str(EXAMPLES / "cat_composite.jpg"), "--mask", str(EXAMPLES / "cat_mask.png"),
        "--ground-truth", str(EXAMPLES / "cat_real.jpg"), "--method", "composite,reinhard", "--out", str(out),
    ])
    assert code == 0
    report = json.loads((out / "results.json").read_text())
    assert set(report["results"]) == {"composite", "reinhard"}
    reinhard = report["results"]["reinhard"]
    assert reinhard["metrics"]["bMSE"] == 0.0
    assert reinhard["metrics"]["fMSE"] < report["results"]["composite"]["metrics"]["fMSE"]
    image = np.asarray(Image.open(out / "reinhard.png"))
    composite = np.asarray(Image.open(out / "composite.png"))
    mask = np.asarray(Image.open(out / "mask.png")) > 127
    assert image.shape == composite.shape and np.array_equal(image[~mask], composite[~mask])


def test_harmonize_from_background_and_foreground(tmp_path):
    code = main([
        "harmonize", "--background", str(EXAMPLES / "rocket_background.jpg"), "--foreground",
        str(EXAMPLES / "cup_foreground.png"), "--x", "0.3", "--y", "0.7", "--scale", "0.5", "--all", "--out", str(tmp_path),
    ])
    assert code == 0
    assert (tmp_path / "poisson.png").exists() and (np.asarray(Image.open(tmp_path / "mask.png")) > 0).any()


def test_bad_input_is_one_clear_line_and_writes_nothing(tmp_path):
    empty_mask = tmp_path / "empty.png"
    Image.new("L", (451, 300), 0).save(empty_mask)
    proc = subprocess.run(
        [sys.executable, "-m", "harmony_core", "harmonize", "--composite", str(EXAMPLES / "cat_composite.jpg"),
         "--mask", str(empty_mask), "--all", "--out", str(tmp_path / "out")],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1],
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: The mask is empty") and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()
    assert main(["harmonize", "--composite", str(EXAMPLES / "cat_composite.jpg"), "--mask",
                 str(EXAMPLES / "cup_rocket_mask.png"), "--all", "--out", str(tmp_path / "o2")]) == 2
    assert main(["harmonize", "--composite", str(tmp_path / "missing.png"), "--mask", str(empty_mask),
                 "--method", "reinhard", "--out", str(tmp_path / "o3")]) == 2
    assert main(["harmonize", "--composite", str(EXAMPLES / "cat_composite.jpg"), "--mask",
                 str(EXAMPLES / "cat_mask.png"), "--method", "nope", "--out", str(tmp_path / "o4")]) == 2


def test_bench_prints_a_table(capsys):
    assert main(["bench", "--size", "64", "--repeats", "2", "--method", "composite,reinhard"]) == 0
    out = capsys.readouterr().out
    assert "| method | size |" in out and "| reinhard | 64 | cpu |" in out
