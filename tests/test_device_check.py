"""`device-check --tiny` runs end to end, so the GPU command cannot rot between the rare GPU loans."""

import json

import pytest

from harmony_core import device_check
from harmony_core.cli import main
from harmony_core.registry import weighted_methods


@pytest.mark.slow
def test_tiny_device_check_writes_every_row(tmp_path, capsys):
    assert main(["device-check", "--out", str(tmp_path), "--tiny"]) == 0
    report = json.loads((tmp_path / device_check.JSON_NAME).read_text())
    assert list(report["resident_by_method"]) == weighted_methods()
    labels = [row["label"] for row in report["timings"]]
    assert labels == ["ptl @256", "ptl @512", "ptl @1024", "ptl @2048", "ptl-paper @256", "ptl-paper @1024",
                      "hspace n_gen=50", "hspace n_gen=200",
                      *[n for n in weighted_methods() if n not in device_check.SIZED + device_check.SLOW_ROWS],
                      "freepih", "hspace"]
    assert all(row["status"] == "ok" and row["median_ms"] > 0 for row in report["timings"]), report["timings"]
    assert [row["head"] for row in report["training"]] == device_check.ptl_heads()
    assert all(row["samples_per_s"] > 0 for row in report["training"])
    assert report["environment"]["torch"] and "| diffharmony | 512 | 512x512 |" in capsys.readouterr().out
    rows = {row["label"]: row for row in report["timings"]}
    # Issue 30, 7: what each row measured, said as it was.
    for label in ("hspace n_gen=50", "hspace n_gen=200", "hspace"):
        assert rows[label]["metadata"]["inversion_cache_hits"] == 0, label  # fresh composites, inversion timed
        assert rows[label]["used"]["n_gen"] == 5 and "--tiny: n_inv=5, n_gen=5" in rows[label]["note"]
    assert "(the GPU run: n_inv=default, n_gen=50)" in rows["hspace n_gen=50"]["note"]
    assert rows["freepih"]["working_px"] == "128x128" and rows["freepih"]["used"]["resolution"] == 128
    assert rows["hspace"]["working_px"] == "32x32"
    assert "no verdict" in rows["ptl @256"]["note"] and "no verdict" not in rows["ptl @512"]["note"]
    seeds = [row["first_seed"] for row in report["timings"]]
    assert len(set(seeds)) == len(seeds)


def test_a_missed_target_says_missed():
    """Issue 30, 7: "ok" stood next to ptl @256's 68 ms against a 10 ms target."""
    row = device_check.timing_row("ptl @256", "ptl", 256, {}, "float16", tiny=False)
    row.status, row.median_ms = "ok", 68.0
    device_check.judge(row, tiny=False)
    assert row.status == "missed" and row.note == ""
    row.status, row.median_ms = "ok", 9.0
    device_check.judge(row, tiny=False)
    assert row.status == "ok"
    tiny = device_check.timing_row("ptl @256", "ptl", 256, {}, "float32", tiny=True)
    tiny.status, tiny.median_ms = "ok", 68.0
    device_check.judge(tiny, tiny=True)
    assert tiny.status == "ok" and "no verdict" in tiny.note


def test_hspace_inverts_afresh_for_other_generation_settings():
    from harmony_core.bench import synthetic_request
    from harmony_core.methods.hspace import HSpace

    method = HSpace.random_weights("tiny", device="cpu", n_inv=3, n_gen=2)
    request = synthetic_request(32, 1)
    assert method.run(request).metadata["inversion_cache_hits"] == 0
    assert method.run(request).metadata["inversion_cache_hits"] == 1
    assert method.with_settings(n_gen=3).run(request).metadata["inversion_cache_hits"] == 0


def test_out_of_time_keeps_the_report(tmp_path):
    """--minutes 0 stops before the first model is built and still writes both files."""
    report = device_check.run(tmp_path, tiny=True, minutes=0)
    assert report["resident_mb"] is None
    assert all(row["status"].startswith("not run") for row in report["timings"] + report["training"])
    assert "not run (out of time)" in (tmp_path / device_check.MARKDOWN_NAME).read_text()


def test_a_run_cut_by_the_deadline_keeps_its_row_and_stops_the_check():
    """The deadline is the methods' progress callback, so it stops a run at its next step."""
    from harmony_core.registry import get_method

    row = device_check.Timing("reinhard", "reinhard", 64, {}, "float32")
    with pytest.raises(device_check.OutOfTime):
        device_check.time_method(row, get_method("reinhard"), 3, device_check.Deadline(end=0.0))
    assert row.status == "out of time after 0 of 3 runs" and row.median_ms is None


def test_each_method_is_checked_in_the_dtype_it_runs_in():
    """hspace runs in fp32 on every device (DDIM inversion accumulates rounding); so do both ptl networks."""
    import torch

    on_gpu = device_check.method_dtypes("cuda")
    assert list(on_gpu) == weighted_methods()
    assert {k: on_gpu[k] for k in ("diffharmony", "freepih", "hspace", "ptl", "ptl-paper")} == {
        "diffharmony": torch.float16, "freepih": torch.float16, "hspace": torch.float32,
        "ptl": torch.float32, "ptl-paper": torch.float32}
    assert set(device_check.method_dtypes("cpu").values()) == {torch.float32}
