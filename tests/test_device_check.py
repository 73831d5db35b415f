"""`device-check --tiny` runs end to end, so the GPU command cannot rot between the rare GPU loans."""

import json

import pytest

from harmony_core import device_check
from harmony_core.cli import main


def test_tiny_device_check_writes_every_row(tmp_path, capsys):
    assert main(["device-check", "--out", str(tmp_path), "--tiny"]) == 0
    report = json.loads((tmp_path / device_check.JSON_NAME).read_text())
    assert set(report["resident_by_method"]) == {"diffharmony", "freepih", "hspace", "ptl", "ptl-paper"}
    labels = [row["label"] for row in report["timings"]]
    assert labels == ["ptl @256", "ptl @512", "ptl @1024", "ptl @2048", "ptl-paper @256", "ptl-paper @1024",
                      "diffharmony", "hspace n_gen=50",
                      "hspace n_gen=200", "freepih", "hspace"]
    assert all(row["status"] == "ok" and row["median_ms"] > 0 for row in report["timings"]), report["timings"]
    assert [row["head"] for row in report["training"]] == device_check.ptl_heads()
    assert all(row["samples_per_s"] > 0 for row in report["training"])
    assert report["environment"]["torch"] and "| diffharmony | 512 |" in capsys.readouterr().out


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
    assert on_gpu == {"diffharmony": torch.float16, "freepih": torch.float16, "hspace": torch.float32,
                      "ptl": torch.float32, "ptl-paper": torch.float32}
    assert set(device_check.method_dtypes("cpu").values()) == {torch.float32}
