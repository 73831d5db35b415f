import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harmony_core.cli import main
from harmony_core.types import SEED_RULE

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


@pytest.mark.slow
def test_harmonize_from_background_and_foreground(tmp_path):
    code = main([
        "harmonize", "--background", str(EXAMPLES / "rocket_background.jpg"), "--foreground",
        str(EXAMPLES / "cup_foreground.png"), "--x", "0.3", "--y", "0.7", "--scale", "0.5", "--all", "--out", str(tmp_path),
    ])
    assert code == 0
    assert (tmp_path / "poisson.png").exists() and (np.asarray(Image.open(tmp_path / "mask.png")) > 0).any()


@pytest.mark.slow
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


def _harmonize(*extra: str, composite: str = str(EXAMPLES / "cat_composite.jpg"), mask: str = str(EXAMPLES / "cat_mask.png")):
    return subprocess.run(
        [sys.executable, "-m", "harmony_core", "harmonize", "--composite", composite, "--mask", mask, *extra],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1],
    )


@pytest.mark.slow
def test_harmonize_never_writes_over_its_inputs(tmp_path):
    rgba = np.zeros((60, 80, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 128  # an alpha channel that a rewrite would lose
    soft = np.zeros((60, 80), np.uint8)
    soft[20:40, 20:50] = 180  # a soft mask that a rewrite would binarize
    Image.fromarray(rgba).save(tmp_path / "composite.png")
    Image.fromarray(soft).save(tmp_path / "mask.png")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    proc = _harmonize("--method", "reinhard", "--out", str(tmp_path), composite=str(tmp_path / "composite.png"),
                      mask=str(tmp_path / "mask.png"))
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "holds the input" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = _harmonize("--method", "reinhard", "--out", str(tmp_path), "--overwrite",
                      composite=str(tmp_path / "composite.png"), mask=str(tmp_path / "mask.png"))
    assert proc.returncode == 2 and "holds the input" in proc.stderr  # --overwrite never covers inputs
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


@pytest.mark.slow
def test_harmonize_refuses_the_inputs_folder_whatever_the_names(tmp_path):
    """Its help says "never one holding the inputs": differently named inputs are refused too."""
    shutil.copy(EXAMPLES / "cat_composite.jpg", tmp_path / "cat.jpg")
    shutil.copy(EXAMPLES / "cat_mask.png", tmp_path / "cat_mask.png")
    proc = _harmonize("--method", "reinhard", "--out", str(tmp_path), composite=str(tmp_path / "cat.jpg"),
                      mask=str(tmp_path / "cat_mask.png"))
    assert proc.returncode == 2 and "holds the input cat.jpg" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat.jpg", "cat_mask.png"]


@pytest.mark.slow
def test_a_folder_as_composite_is_named_a_folder(tmp_path):
    proc = _harmonize("--method", "reinhard", "--out", str(tmp_path / "out"), composite=str(tmp_path))
    assert proc.returncode == 2 and "is a folder, not an image file" in proc.stderr and "no such file" not in proc.stderr


@pytest.mark.slow
def test_a_second_run_needs_overwrite_and_replaces_the_first(tmp_path):
    out = tmp_path / "run"
    assert _harmonize("--method", "reinhard,histogram", "--out", str(out)).returncode == 0
    proc = _harmonize("--method", "poisson", "--out", str(out))
    assert proc.returncode == 2 and "another run" in proc.stderr and "--overwrite" in proc.stderr
    assert _harmonize("--method", "poisson", "--out", str(out), "--overwrite").returncode == 0
    assert sorted(p.name for p in out.iterdir()) == ["composite.png", "mask.png", "poisson.png", "results.json"]
    assert set(json.loads((out / "results.json").read_text())["results"]) == {"poisson"}


@pytest.mark.slow
def test_bad_out_values_are_one_error_line(tmp_path):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    data = tmp_path / "data"
    data.mkdir()
    for out in (str(a_file), "/proc/harmony-x", "/dev/null/x"):
        proc = _harmonize("--method", "reinhard", "--out", out)
        assert proc.returncode == 2, out
        assert proc.stderr.startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        proc = subprocess.run([sys.executable, "-m", "harmony_core", "evaluate", "--data", str(data), "--methods",
                               "reinhard", "--out", out], capture_output=True, text=True)
        assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    assert a_file.read_text() == "x"


def test_evaluate_fails_when_no_sample_can_be_read(tmp_path):
    data = tmp_path / "broken"
    data.mkdir()
    for name in ("a", "b"):
        (data / f"{name}_composite.png").write_bytes(b"not an image")
        Image.new("L", (8, 8), 255).save(data / f"{name}_mask.png")
        Image.new("RGB", (8, 8)).save(data / f"{name}_real.png")
    assert main(["evaluate", "--data", str(data), "--methods", "reinhard", "--out", str(tmp_path / "report")]) == 2
    assert not (tmp_path / "report" / "summary.md").exists()


def test_an_unknown_split_is_an_error(tmp_path, capsys):
    root = tmp_path / "HAdobe5k"
    for folder in ("composite_images", "masks", "real_images"):
        (root / folder).mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "real_images" / "a.jpg")
    Image.new("L", (8, 8), 255).save(root / "masks" / "a_1.png")
    Image.new("RGB", (8, 8)).save(root / "composite_images" / "a_1_1.jpg")
    (root / "HAdobe5k_test.txt").write_text("a_1_1.jpg\n")
    assert main(["evaluate", "--data", str(root), "--methods", "reinhard", "--split", "tset",
                 "--out", str(tmp_path / "r")]) == 2
    assert "Unknown split 'tset'" in capsys.readouterr().err


def test_sixteen_bit_images_scale_by_bit_depth(tmp_path):
    from harmony_core import imaging

    values = np.linspace(0, 200, 80 * 60).reshape(60, 80).astype(np.uint16)  # 0..200 of 65535: nearly black
    Image.fromarray(values).save(tmp_path / "dark16.png")
    assert Image.open(tmp_path / "dark16.png").mode == "I;16"
    assert imaging.load_rgb(tmp_path / "dark16.png").max() <= 1


def test_progress_is_a_bar_in_a_terminal_and_plain_lines_otherwise():
    import io

    from harmony_core.cli import method_progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    for stream in (io.StringIO(), Terminal()):
        with method_progress("hspace", stream) as progress:
            for i in range(101):
                progress(i / 100, f"hspace: step {i}/100")
        text = stream.getvalue()
        assert "/s" not in text and "hspace" in text  # no rate (a pipe showed "162948.87%/s")
    lines = io.StringIO()
    with method_progress("hspace", lines) as progress:
        for i in range(101):
            progress(i / 100, f"step {i}")
    plain = lines.getvalue().splitlines()
    assert plain[0] == "hspace:   0% step 0" and plain[-1] == "hspace: 100% step 100" and len(plain) <= 12


def test_map_files_are_named_without_spaces():
    from harmony_core.cli import map_file_names

    names = map_file_names("ptl", {"ltl attention": 0, "ptl point contribution": 0})
    assert names == {"ltl attention": "ptl_ltl-attention.png", "ptl point contribution": "ptl_ptl-point-contribution.png"}
    assert map_file_names("hspace", {"hspace |h~-h|": 0, "hspace injection mask": 0})["hspace |h~-h|"] == "hspace_hspace-h-h.png"
    assert len(set(map_file_names("x", {"a b": 0, "a-b": 0}).values())) == 2


@pytest.mark.slow
def test_explain_agreement_compares_two_networks_point_maps(tmp_path, capsys):
    """ptl and ptl-paper pointed at one tiny residual network: every point map agrees exactly."""
    import shutil

    import torch

    from harmony_core.models.ptl_net import PTLConfig, PTLNet
    from harmony_core.registry import get_method

    data = tmp_path / "data"
    data.mkdir()
    for role, name in (("composite", "cat_composite.jpg"), ("mask", "cat_mask.png"), ("real", "cat_real.jpg")):
        shutil.copy(EXAMPLES / name, data / f"cat_{role}{Path(name).suffix}")
    torch.manual_seed(6)
    PTLNet(PTLConfig(width=0.25, head="residual", prior="none")).save_pretrained(tmp_path / "net")
    try:
        assert main(["explain-agreement", "--data", str(data), "--weights", f"ptl={tmp_path / 'net'}",
                     "--weights", f"ptl-paper={tmp_path / 'net'}"]) == 0
    finally:
        for name in ("ptl", "ptl-paper"):
            get_method(name).set_weights(None)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["image", "point", "pair", "map", "correlation"]
    pairs = [line.split() for line in lines if "ptl vs ptl-paper" in line]
    assert len(pairs) == 6 and all(row[-1] == "1.00" for row in pairs)  # 3 points x 2 point maps
    assert sum("left vs right" in line for line in lines) == 4
    assert main(["explain-agreement", "--data", str(data), "--methods", "ptl"]) == 2  # needs two methods


@pytest.mark.parametrize("seed", ["18446744073709551616", "nan"])
@pytest.mark.slow
def test_a_bad_seed_is_one_error_line_and_no_traceback(tmp_path, seed):
    """Issue 30, 3: `harmonize --seed 18446744073709551616` printed a traceback."""
    proc = _harmonize("--method", "reinhard", "--seed", seed, "--out", str(tmp_path / "run"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: {SEED_RULE}"]
    assert not (tmp_path / "run").exists()


@pytest.fixture
def tiny_ddpm(tmp_path):
    from harmony_core.diffusion.tiny import save_tiny_ddpm
    from harmony_core.registry import get_method

    folder = save_tiny_ddpm(tmp_path / "ddpm", seed=0)
    yield folder
    get_method("hspace").set_weights(None)


def test_harmonize_takes_each_methods_options(tmp_path, tiny_ddpm):
    """Issue 30, 8: steps, n_gen or optimized_steps could not be set per run."""
    out = tmp_path / "run"
    assert main(["harmonize", "--composite", str(EXAMPLES / "cat_composite.jpg"), "--mask", str(EXAMPLES / "cat_mask.png"),
                 "--method", "hspace,reinhard", "--weights", f"hspace={tiny_ddpm}", "--option", "n_gen=3",
                 "--option", "hspace.n_inv=3", "--option", "std_ratio_max=1.5", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())["results"]
    assert results["hspace"]["metadata"]["parameters"]["n_gen"] == 3
    assert results["hspace"]["metadata"]["parameters"]["n_inv"] == 3
    assert results["reinhard"]["metadata"]["parameters"]["std_ratio_max"] == 1.5
    assert str(tiny_ddpm) in results["hspace"]["metadata"]["weights"]
    from harmony_core.registry import get_method

    assert get_method("hspace").settings.n_gen == 1000  # the shared instance keeps its defaults


@pytest.mark.parametrize("option, message", [("nope=1", "none of reinhard has that option"),
                                             ("hspace.n_gen=3", "hspace is not among the chosen methods"),
                                             ("ring_fraction=abc", "reinhard")])
def test_a_bad_option_is_one_error_line(tmp_path, capsys, option, message):
    assert main(["harmonize", "--composite", str(EXAMPLES / "cat_composite.jpg"), "--mask", str(EXAMPLES / "cat_mask.png"),
                 "--method", "reinhard", "--option", option, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and not (tmp_path / "run").exists()


def test_bench_honours_weights_with_options(tiny_ddpm, capsys, monkeypatch):
    """Issue 30, 8: `bench --weights hspace=DIR --option n_gen=5` ignored --weights."""
    monkeypatch.delenv("HARMONY_HSPACE_WEIGHTS", raising=False)
    assert main(["bench", "--method", "hspace", "--weights", f"hspace={tiny_ddpm}", "--option", "n_gen=2",
                 "--option", "n_inv=2", "--size", "32", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert f"weights: {tiny_ddpm}" in out and "'n_gen': 2" in out and "| hspace |" in out


def test_bench_and_harmonize_take_a_classical_methods_options(tmp_path, capsys):
    """Issue 27: `bench --method reinhard --option std_ratio_min=0.3` said the method took no options."""
    assert main(["bench", "--method", "reinhard", "--option", "std_ratio_min=0.3", "--size", "32", "--repeats", "1"]) == 0
    assert "reinhard: device cpu, weights: none, options {'std_ratio_min': 0.3}" in capsys.readouterr().out
    out = tmp_path / "run"
    assert main(["harmonize", "--composite", str(EXAMPLES / "cat_composite.jpg"), "--mask", str(EXAMPLES / "cat_mask.png"),
                 "--method", "reinhard", "--option", "std_ratio_min=0.3", "--out", str(out)]) == 0
    parameters = json.loads((out / "results.json").read_text())["results"]["reinhard"]["metadata"]["parameters"]
    assert parameters["std_ratio_min"] == 0.3
    assert main(["bench", "--method", "reinhard", "--option", "std_ratio_min=3.0", "--size", "32"]) == 2
    assert "std_ratio_min must be positive and at most std_ratio_max" in capsys.readouterr().err
