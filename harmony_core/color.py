"""Colour tools shared by the classical methods and data synthesis (pure functions of pixels).

Nothing here knows about methods, requests or the registry: `methods/classical.py` builds its
baselines on these, and `data/synth.py` recolours objects with them.
"""

from __future__ import annotations

import cv2
import numpy as np


def to_lab(pixels: np.ndarray) -> np.ndarray:
    """Nx3 uint8 RGB -> Nx3 float32 CIE Lab (L in 0..100)."""
    return cv2.cvtColor(pixels.reshape(-1, 1, 3).astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab).reshape(-1, 3)


def from_lab(lab: np.ndarray) -> np.ndarray:
    """Nx3 float Lab -> Nx3 uint8 RGB (clipped)."""
    lab = lab.astype(np.float32).copy()
    lab[:, 0] = np.clip(lab[:, 0], 0.0, 100.0)
    rgb = cv2.cvtColor(lab.reshape(-1, 1, 3), cv2.COLOR_Lab2RGB).reshape(-1, 3)
    return np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)


def reinhard_transfer(fg_lab: np.ndarray, ref_lab: np.ndarray, std_ratio_min: float = 0.5,
                      std_ratio_max: float = 2.0) -> np.ndarray:
    """Reinhard et al. 2001: the object's Lab values (Nx3) moved to the reference's (Mx3) per-channel
    mean and std; the std ratio is clamped to [std_ratio_min, std_ratio_max] so that a flat
    reference cannot erase the object's texture."""
    fg_mean, fg_std = (v.ravel() for v in cv2.meanStdDev(fg_lab.reshape(-1, 1, 3)))
    ref_mean, ref_std = (v.ravel() for v in cv2.meanStdDev(ref_lab.reshape(-1, 1, 3)))
    ratio = np.clip(ref_std / np.maximum(fg_std, 1e-6), std_ratio_min, std_ratio_max)
    return (fg_lab - fg_mean) * ratio + ref_mean


def match_cdf(values: np.ndarray, reference: np.ndarray, bins: int) -> np.ndarray:
    """Map `values` so that their distribution follows `reference` (piecewise-linear CDFs).

    Both CDFs are histograms over a shared range; each value is placed within its bin
    linearly, so the mapping is continuous and costs O(N) gathers rather than searches.
    """
    low = float(min(values.min(), reference.min()))
    high = float(max(values.max(), reference.max()))
    if high - low < 1e-6:
        return np.full_like(values, reference.mean())
    width = (high - low) / bins
    edges = low + width * np.arange(bins + 1)

    def cdf_at_edges(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        position = (x - low) / width
        index = np.clip(position.astype(np.int64), 0, bins - 1)
        counts = np.bincount(index, minlength=bins)
        cdf = np.concatenate([[0.0], np.cumsum(counts)]) / x.size
        return cdf, index, position - index

    cdf_values, index, fraction = cdf_at_edges(values)
    cdf_reference, _, _ = cdf_at_edges(reference)
    # Inverse reference CDF at each level of the values' CDF; flat stretches (empty bins) would
    # make it multivalued, so keep the first edge of every distinct level.
    levels, first = np.unique(cdf_reference, return_index=True)
    target = np.interp(cdf_values, levels, edges[first])
    return (target[index] + fraction * (target[index + 1] - target[index])).astype(values.dtype)
