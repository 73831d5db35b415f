import math

import numpy as np
import pytest

from harmony_core import metrics


def test_metrics_by_hand_at_protocol_size():
    gt = np.full((256, 256, 3), 100, np.uint8)
    pred = gt.copy()
    mask = np.zeros((256, 256), bool)
    mask[:64, :64] = True  # 1/16 of the image
    pred[mask] = 110  # error 10 on every foreground value
    m = metrics.image_metrics(pred, gt, mask)
    assert m.mse == pytest.approx(100 / 16)
    assert m.fmse == pytest.approx(100)
    assert m.psnr == pytest.approx(10 * math.log10(255**2 / (100 / 16)))
    assert m.fpsnr == pytest.approx(10 * math.log10(255**2 / 100))
    assert m.fg_ratio == pytest.approx(1 / 16) and m.bucket == "5-15%"
    assert m.bmse is None


def test_resized_to_256_and_mask_nearest():
    gt = np.full((512, 1024, 3), 50, np.uint8)
    pred = gt.copy()
    mask = np.zeros((512, 1024), bool)
    mask[:, :512] = True
    pred[mask] = 60
    m = metrics.image_metrics(pred, gt, mask, composite=pred)
    assert m.fg_ratio == pytest.approx(0.5)
    assert m.fmse == pytest.approx(100, rel=0.02)  # only the resampled seam column differs
    assert m.bmse == 0.0


def test_bmse_sees_background_changes():
    comp = np.zeros((32, 32, 3), np.uint8)
    mask = np.zeros((32, 32), bool)
    mask[8:16, 8:16] = True
    pred = comp.copy()
    pred[0, 0] = 30
    expected = 3 * 900 / (3 * (32 * 32 - 64))
    assert metrics.background_mse(pred, comp, mask) == pytest.approx(expected)


def test_identical_images_give_finite_psnr():
    img = np.zeros((8, 8, 3), np.uint8)
    mask = np.zeros((8, 8), bool)
    mask[2:4, 2:4] = True
    m = metrics.image_metrics(img, img, mask)
    assert m.mse == 0 and math.isfinite(m.psnr) and m.psnr == pytest.approx(148.13, abs=0.01)


def test_per_image_average_not_pooled():
    rows = [
        {"MSE": 10.0, "fMSE": 100.0, "PSNR": 30.0, "fPSNR": 20.0, "fg_ratio": 0.01},
        {"MSE": 30.0, "fMSE": float("nan"), "PSNR": 40.0, "fPSNR": float("nan"), "fg_ratio": 0.5},
    ]
    summary = metrics.summarize(rows)
    assert summary["MSE"] == 20.0 and summary["fMSE"] == 100.0 and summary["n"] == 2
    buckets = metrics.summarize_by_bucket(rows)
    assert list(buckets) == ["0-5%", "5-15%", "15-100%"]
    assert buckets["0-5%"]["MSE"] == 10.0 and buckets["5-15%"]["n"] == 0 and buckets["15-100%"]["PSNR"] == 40.0


@pytest.mark.parametrize("ratio,bucket", [(0.0, "0-5%"), (0.0499, "0-5%"), (0.05, "5-15%"), (0.15, "15-100%"), (1.0, "15-100%")])
def test_buckets(ratio, bucket):
    assert metrics.fg_bucket(ratio) == bucket
