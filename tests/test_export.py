"""The paper figure and the results ZIP (harmony_core.export), from the library, the CLI and the studio."""

import io
import json
import zipfile

import numpy as np
from PIL import Image

from harmony_core import export
from harmony_core.cli import main
from harmony_core.studio import compare
from harmony_core.types import HarmonizationRequest


def test_object_box_is_square_with_margin_and_inside_the_image():
    mask = np.zeros((100, 200), bool)
    mask[40:60, 150:190] = True
    x0, y0, x1, y1 = export.object_box(mask)
    assert x1 - x0 == y1 - y0 == 52  # 40 px wide + 2 x 15%
    assert 0 <= x0 <= 150 and x1 <= 200 and y0 <= 40 and y1 >= 60
    assert export.object_box(np.zeros((10, 20), bool)) == (0, 0, 20, 10)


def test_figure_has_a_full_resolution_column_per_image_and_a_zoom_row(scene):
    real, composite, mask = scene
    columns = export.columns_of(composite, {"composite": (composite, 0.0), "reinhard": (real, 0.25)}, real)
    assert [c.title for c in columns] == ["composite", "reinhard", "ground truth"] and columns[1].caption == "0.25 s"
    plain, zoomed = export.figure(columns, mask, zoom=False), export.figure(columns, mask, zoom=True)
    h, w = composite.shape[:2]
    assert plain.shape[1] == zoomed.shape[1] == 3 * w + 4 * export.GAP and plain.dtype == np.uint8
    assert zoomed.shape[0] == plain.shape[0] + export.GAP + w
    left = export.GAP + w + export.GAP  # the second column, pixel for pixel
    assert np.array_equal(plain[export.GAP:export.GAP + h, left:left + w], real)


def test_zip_holds_every_output_the_mask_and_the_report(scene):
    real, composite, mask = scene
    data = export.results_zip(composite, mask, {"reinhard": real}, {"results": {"reinhard": {"image": "outputs/reinhard.png"}}})
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert set(archive.namelist()) == {"composite.png", "mask.png", "outputs/reinhard.png", "results.json"}
        assert np.array_equal(np.asarray(Image.open(archive.open("outputs/reinhard.png"))), real)
        assert (np.asarray(Image.open(archive.open("mask.png"))) > 127).tolist() == mask.tolist()
        assert json.loads(archive.read("results.json"))["results"]["reinhard"]["image"] == "outputs/reinhard.png"


def test_studio_export_of_a_finished_run(scene, tmp_path, monkeypatch):
    from harmony_core.studio import scratch

    monkeypatch.setattr(scratch, "SCRATCH_ROOT", tmp_path)
    real, composite, mask = scene
    request = HarmonizationRequest(composite, mask, ground_truth=real)
    *_, last = compare.run_methods(request, ["composite", "reinhard"], lambda f, m: None)
    figure, archive = compare.export_run(last.finished, zoom=True)
    assert Image.open(figure).size[0] == 3 * 128 + 4 * export.GAP
    with zipfile.ZipFile(archive) as z:
        report = json.loads(z.read("results.json"))
        assert {"composite.png", "outputs/reinhard.png", "mask.png", "figure.png"} <= set(z.namelist())
        assert report["results"]["reinhard"]["metrics"]["fMSE"] >= 0


def test_cli_harmonize_writes_the_figure(scene, tmp_path):
    real, composite, mask = scene
    for name, image in (("c.png", composite), ("m.png", mask.astype(np.uint8) * 255), ("gt.png", real)):
        Image.fromarray(image).save(tmp_path / name)
    out = tmp_path / "out"
    code = main(["harmonize", "--composite", str(tmp_path / "c.png"), "--mask", str(tmp_path / "m.png"),
                 "--ground-truth", str(tmp_path / "gt.png"), "--method", "reinhard,poisson", "--out", str(out), "--figure"])
    assert code == 0 and (out / "figure.png").is_file()
    assert Image.open(out / "figure.png").size[0] == 4 * 128 + 5 * export.GAP  # composite, 2 results, ground truth
