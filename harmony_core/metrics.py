"""iHarmony4 metrics (MSE, fMSE, PSNR, fPSNR) under the 256-px protocol, plus bMSE.

Protocol (iHarmony4's evaluation; docs/evaluation.md, "Metrics"): prediction and ground truth are resized to 256x256
with antialiased bilinear resampling and kept as uint8; the mask is thresholded at 0.5 and
resized with nearest neighbour; values are floats in 0..255; PSNR uses the fixed peak 255.
Metrics are computed per image and averaged over images, never pooled over pixels.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from harmony_core.imaging import check_same_size, resize_mask, resize_rgb

PROTOCOL_SIZE = 256
PEAK = 255.0
MSE_FLOOR = 1e-10
"""Identical images would give an infinite PSNR; the MSE is floored here instead, which caps the
PSNR at 10 log10(255^2 / 1e-10) ~ 148.1 dB."""
BUCKETS: tuple[tuple[str, float, float], ...] = (
    ("0-5%", 0.0, 0.05),
    ("5-15%", 0.05, 0.15),
    ("15-100%", 0.15, 1.0 + 1e-9),
)
METRIC_NAMES = ("MSE", "fMSE", "PSNR", "fPSNR")


@dataclass(frozen=True)
class ImageMetrics:
    mse: float
    fmse: float
    psnr: float
    fpsnr: float
    fg_ratio: float
    bmse: float | None = None

    @property
    def bucket(self) -> str:
        return fg_bucket(self.fg_ratio)

    def as_dict(self) -> dict[str, float | str | None]:
        return {
            "MSE": self.mse, "fMSE": self.fmse, "PSNR": self.psnr, "fPSNR": self.fpsnr,
            "fg_ratio": self.fg_ratio, "bucket": self.bucket, "bMSE": self.bmse,
        }


def psnr_from_mse(mse: float) -> float:
    return 10.0 * math.log10(PEAK**2 / max(mse, MSE_FLOOR))


def fg_bucket(ratio: float) -> str:
    for name, low, high in BUCKETS:
        if low <= ratio < high:
            return name
    raise ValueError(f"foreground ratio {ratio} outside [0, 1]")


def background_mse(prediction: np.ndarray, composite: np.ndarray, mask: np.ndarray) -> float:
    """MSE outside the mask between the output and the composite, at native resolution.

    Zero for every method that pastes back. (At 256 px resampling would blend the changed
    foreground into border pixels, so this check is made before resizing.)
    """
    check_same_size(composite, prediction, "prediction")
    outside = ~mask
    if not outside.any():
        return 0.0
    diff = prediction[outside].astype(np.float64) - composite[outside].astype(np.float64)
    return float(np.mean(diff**2))


def image_metrics(
    prediction: np.ndarray,
    ground_truth: np.ndarray,
    mask: np.ndarray,
    composite: np.ndarray | None = None,
    size: int = PROTOCOL_SIZE,
) -> ImageMetrics:
    """Metrics of one prediction (HxWx3 uint8) against its ground truth, under the protocol."""
    check_same_size(ground_truth, prediction, "prediction")
    check_same_size(ground_truth, mask, "mask")
    bmse = background_mse(prediction, composite, mask) if composite is not None else None
    pred = resize_rgb(prediction, (size, size)).astype(np.float64)
    gt = resize_rgb(ground_truth, (size, size)).astype(np.float64)
    small_mask = resize_mask(mask, (size, size))
    sq = (pred - gt) ** 2
    mse = float(sq.mean())
    n_fg = int(small_mask.sum())
    fmse = float(sq[small_mask].sum() / (3 * n_fg)) if n_fg else float("nan")
    return ImageMetrics(
        mse=mse,
        fmse=fmse,
        psnr=psnr_from_mse(mse),
        fpsnr=psnr_from_mse(fmse) if n_fg else float("nan"),
        fg_ratio=n_fg / small_mask.size,
        bmse=bmse,
    )


def summarize(per_image: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Mean of each metric over images (NaN entries, e.g. a mask that vanished at 256 px, skipped)."""
    rows = list(per_image)
    summary: dict[str, float] = {"n": float(len(rows))}
    for name in METRIC_NAMES:
        values = np.array([float(row[name]) for row in rows], dtype=np.float64)
        finite = values[np.isfinite(values)]
        summary[name] = float(finite.mean()) if finite.size else float("nan")
    return summary


def summarize_by_bucket(per_image: Iterable[Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """summarize() within each foreground-ratio bucket, in the buckets' order."""
    rows = list(per_image)
    return {name: summarize([r for r in rows if fg_bucket(float(r["fg_ratio"])) == name]) for name, _, _ in BUCKETS}
