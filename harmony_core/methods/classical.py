"""Classical baselines: fast on a CPU at any resolution, no weights.

composite  — the unchanged input, the reference every method must beat.
reinhard   — Lab mean/std transfer from a ring of background around the object.
histogram  — per-channel CDF matching in Lab to the same reference region.
poisson    — gradient-domain blending: keep the object's gradients, take its border from the
             surrounding background (Pérez et al. 2003); solved exactly with sparse LU up to
             `max_unknowns` object pixels, above that on a coarser grid plus an exact border band.

The colour tools (Lab conversions, CDF matching, the Reinhard transfer) are in harmony_core/color.py.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

import cv2
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.linalg import splu

from harmony_core.color import from_lab, match_cdf, reinhard_transfer, to_lab
from harmony_core.cost import Cost, Rate
from harmony_core.errors import InputError
from harmony_core.registry import Method, Progress, register
from harmony_core.types import HarmonizationRequest

Reference = Literal["ring", "background"]


# --- shared pieces ---------------------------------------------------------------------------

def reference_region(mask: np.ndarray, reference: Reference, ring_fraction: float, min_pixels: int) -> np.ndarray:
    """The background pixels whose colours the object should match.

    "ring": background within `ring_fraction * sqrt(object area)` (at least 3 px) of the object —
    the light that actually surrounds it; falls back to the whole background when the ring has
    fewer than `min_pixels` pixels. "background": every pixel outside the mask.
    """
    outside = ~mask
    if reference == "background":
        return outside
    radius = max(3.0, ring_fraction * float(np.sqrt(mask.sum())))
    distance = cv2.distanceTransform(outside.astype(np.uint8), cv2.DIST_L2, 3)
    ring = outside & (distance <= radius)
    return ring if ring.sum() >= min_pixels else outside


def require(owner: str, checks: list[tuple[bool, str]]) -> None:
    """An InputError naming the first failed check (`--option` values reach the settings unchecked)."""
    for ok, message in checks:
        if not ok:
            raise InputError(f"{owner}: {message}")


@dataclass(frozen=True)
class RegionSettings:
    reference: Reference = "ring"
    ring_fraction: float = 0.5
    min_ring_pixels: int = 64
    max_reference_pixels: int = 100_000

    def __post_init__(self) -> None:
        require(type(self).__name__, [
            (self.reference in get_args(Reference), f"reference must be one of {', '.join(get_args(Reference))}"),
            (self.ring_fraction > 0, "ring_fraction must be positive"),
            (self.min_ring_pixels >= 0, "min_ring_pixels must be at least 0"),
            (self.max_reference_pixels >= 1, "max_reference_pixels must be at least 1"),
        ])


class _ColorTransfer(Method):
    """Transfers colour statistics from a background reference region onto the object."""

    family = "classical"
    settings: RegionSettings

    @abstractmethod
    def transfer(self, fg_lab: np.ndarray, ref_lab: np.ndarray) -> np.ndarray:
        """New Lab values for the object's pixels (Nx3) given the reference pixels (Mx3)."""

    def harmonize(self, request: HarmonizationRequest, progress: Progress) -> np.ndarray:
        s = self.settings
        region = reference_region(request.mask, s.reference, s.ring_fraction, s.min_ring_pixels)
        fg_lab = to_lab(request.composite[request.mask])
        reference = request.composite[region]
        # Statistics need no more than ~100k reference pixels; a regular stride keeps them exact
        # enough and deterministic.
        ref_lab = to_lab(reference[:: max(1, reference.shape[0] // s.max_reference_pixels)])
        output = request.composite.copy()
        output[request.mask] = from_lab(self.transfer(fg_lab, ref_lab))
        return output


# --- the methods -----------------------------------------------------------------------------

CPU_BENCH = "bench medians on the 2-core CPU under load (load average ~10), 256-2048 px, with a margin"
"""Where the classical methods' costs come from (`python -m harmony_core bench --method
composite,reinhard,histogram,poisson --size 256 512 1024 2048`)."""


@register
class Composite(Method):
    name = "composite"
    family = "classical"
    title = "Composite (no change)"
    summary = "The input unchanged: the reference every method must beat."
    cost = Cost(gpu=False, on_cpu=Rate(0.01, 0.03), per_megapixel=True, source=CPU_BENCH)

    def harmonize(self, request: HarmonizationRequest, progress: Progress) -> np.ndarray:
        return request.composite.copy()


@dataclass(frozen=True)
class ReinhardSettings(RegionSettings):
    std_ratio_min: float = 0.5
    std_ratio_max: float = 2.0

    def __post_init__(self) -> None:
        super().__post_init__()
        require("reinhard", [(0 < self.std_ratio_min <= self.std_ratio_max,
                              "std_ratio_min must be positive and at most std_ratio_max")])


@register
class Reinhard(_ColorTransfer):
    name = "reinhard"
    title = "Reinhard colour transfer"
    summary = "Lab mean/std of the object matched to a ring of surrounding background (std ratio clamped)."
    cost = Cost(gpu=False, on_cpu=Rate(0.02, 0.2), per_megapixel=True, source=CPU_BENCH)
    settings_class = ReinhardSettings
    settings: ReinhardSettings

    def transfer(self, fg_lab: np.ndarray, ref_lab: np.ndarray) -> np.ndarray:
        return reinhard_transfer(fg_lab, ref_lab, self.settings.std_ratio_min, self.settings.std_ratio_max)


@dataclass(frozen=True)
class HistogramSettings(RegionSettings):
    bins: int = 1024

    def __post_init__(self) -> None:
        super().__post_init__()
        require("histogram", [(self.bins >= 2, "bins must be at least 2")])


@register
class Histogram(_ColorTransfer):
    name = "histogram"
    title = "Histogram matching"
    summary = "Per-channel CDF matching in Lab from the object to the surrounding background."
    cost = Cost(gpu=False, on_cpu=Rate(0.03, 0.25), per_megapixel=True, source=CPU_BENCH)
    settings_class = HistogramSettings
    settings: HistogramSettings

    def transfer(self, fg_lab: np.ndarray, ref_lab: np.ndarray) -> np.ndarray:
        out = np.empty_like(fg_lab)
        for c in range(3):
            out[:, c] = match_cdf(fg_lab[:, c], ref_lab[:, c], self.settings.bins)
        return out


@dataclass(frozen=True)
class PoissonSettings:
    max_unknowns: int = 40_000
    """Above this many object pixels the interior is solved at a coarser scale (the offset field
    is harmonic, hence smooth) and only a band along the border is solved at full resolution."""

    def __post_init__(self) -> None:
        require("poisson", [(self.max_unknowns >= 16, "max_unknowns must be at least 16")])


@register
class Poisson(Method):
    name = "poisson"
    family = "classical"
    title = "Poisson blending"
    summary = "Gradient-domain blending: the object's gradients, the background's colours at its border."
    cost = Cost(gpu=False, on_cpu=Rate(0.4, 1.0), per_megapixel=True, source=CPU_BENCH)
    settings_class = PoissonSettings
    settings: PoissonSettings

    def harmonize(self, request: HarmonizationRequest, progress: Progress) -> np.ndarray:
        image = request.composite.astype(np.float64)
        offset = poisson_offset(image, request.mask, self.settings.max_unknowns)
        return np.clip(np.round(image + offset), 0, 255).astype(np.uint8)


_NEIGHBOURS = ((-1, 0), (1, 0), (0, -1), (0, 1))
Crossing = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def _solve_membrane(inside: np.ndarray, unknown: np.ndarray, known: np.ndarray, crossing: Crossing) -> np.ndarray:
    """Offsets d on the `unknown` pixels of the Poisson problem (guidance = image gradients).

    inside: the object mask. For p in `unknown` and each 4-neighbour q in the image: q unknown ->
    (d_p - d_q) on the left; q inside but known -> d_q moves to the right-hand side; q outside ->
    the edge crosses the object's border, where the guidance is zero, so d_p is pulled towards
    crossing(p, q) = g_q - g_p. Image borders are natural (Neumann) boundaries, so masks touching
    them need no special case.
    """
    h, w = inside.shape
    index = np.full((h, w), -1, dtype=np.int64)
    ys, xs = np.nonzero(unknown)
    n = ys.size
    index[ys, xs] = np.arange(n)
    diagonal = np.zeros(n)
    rhs = np.zeros((n, known.shape[2]))
    rows, cols = [], []
    for dy, dx in _NEIGHBOURS:
        qy, qx = ys + dy, xs + dx
        valid = (qy >= 0) & (qy < h) & (qx >= 0) & (qx < w)
        p = np.nonzero(valid)[0]
        qy, qx = qy[valid], qx[valid]
        diagonal[p] += 1
        q_unknown = unknown[qy, qx]
        rows.append(p[q_unknown])
        cols.append(index[qy[q_unknown], qx[q_unknown]])
        q_known = inside[qy, qx] & ~q_unknown
        rhs += _sum_rows(p[q_known], known[qy[q_known], qx[q_known]], n)
        q_out = ~inside[qy, qx]
        po = p[q_out]
        rhs += _sum_rows(po, crossing(ys[po], xs[po], qy[q_out], qx[q_out]), n)
    rows_all, cols_all = np.concatenate(rows), np.concatenate(cols)
    matrix = coo_matrix(
        (np.concatenate([diagonal, -np.ones(rows_all.size)]),
         (np.concatenate([np.arange(n), rows_all]), np.concatenate([np.arange(n), cols_all]))),
        shape=(n, n),
    ).tocsc()
    return splu(matrix).solve(rhs)


def _sum_rows(index: np.ndarray, values: np.ndarray, length: int) -> np.ndarray:
    """length x C sums of `values` rows by `index` (np.add.at, but with bincount's speed)."""
    return np.stack([np.bincount(index, values[:, i], minlength=length) for i in range(values.shape[1])], axis=1)


def _image_crossing(image: np.ndarray) -> Crossing:
    return lambda py, px, qy, qx: image[qy, qx] - image[py, px]


def _seam_values(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sum of g_q - g_p over inside neighbours p, their count) for every pixel q outside."""
    total = np.zeros_like(image)
    count = np.zeros(mask.shape)
    h, w = mask.shape
    padded = np.pad(mask, 1)
    for dy, dx in _NEIGHBOURS:  # q outside with its neighbour p = q + (dy, dx) inside: one p per q
        qy, qx = np.nonzero(padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w] & ~mask)
        total[qy, qx] += image[qy, qx] - image[qy + dy, qx + dx]
        count[qy, qx] += 1
    return total, count


def poisson_offset(image: np.ndarray, mask: np.ndarray, max_unknowns: int,
                   border_band: bool = True) -> np.ndarray:
    """The additive change (HxWx3, zero outside the mask) that Poisson blending applies.

    border_band=False keeps the coarse solution everywhere (objects larger than max_unknowns
    only): smooth, without the exact band along the seam, at a fraction of the time."""
    offset = np.zeros_like(image)
    count = int(mask.sum())
    if count <= max_unknowns:
        offset[mask] = _solve_membrane(mask, mask, offset, _image_crossing(image))
        return offset
    # The offset is harmonic inside the object, so its interior is solved on a coarse grid whose
    # border values are the fine seam jumps averaged per coarse pixel; then a band along the
    # border is solved exactly at full resolution with the coarse interior as its inner boundary.
    h, w = mask.shape
    factor = float(np.sqrt(max_unknowns / count))
    size = (max(2, round(w * factor)), max(2, round(h * factor)))
    small_mask = cv2.resize(mask.astype(np.float32), size, interpolation=cv2.INTER_AREA) > 0.5
    small_offset = np.zeros((size[1], size[0], image.shape[2]))
    if small_mask.any() and not small_mask.all():
        seam_total, seam_count = _seam_values(image, mask)
        # Spread the seam values a little so that every coarse pixel next to the coarse object
        # sees some (the coarse border need not lie exactly on the fine one).
        radius = 2 * int(np.ceil(1 / factor)) + 1
        kernel = (radius, radius)
        total = cv2.resize(cv2.blur(seam_total, kernel), size, interpolation=cv2.INTER_AREA)
        weight = cv2.resize(cv2.blur(seam_count, kernel), size, interpolation=cv2.INTER_AREA)
        ghost = total / np.maximum(weight, 1e-12)[:, :, None]
        ghost[weight <= 1e-12] = seam_total.sum(axis=(0, 1)) / max(seam_count.sum(), 1)
        small_offset[small_mask] = _solve_membrane(small_mask, small_mask, small_offset, lambda py, px, qy, qx: ghost[qy, qx])
    weight = cv2.resize(small_mask.astype(np.float64), (w, h), interpolation=cv2.INTER_LINEAR)
    coarse = cv2.resize(small_offset * small_mask[:, :, None], (w, h), interpolation=cv2.INTER_LINEAR)
    coarse /= np.maximum(weight, 1e-6)[:, :, None]
    if not border_band:
        offset[mask] = coarse[mask]
        return offset
    band_width = 2 * int(np.ceil(1 / factor)) + 2
    distance = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 3)
    band = mask & ((distance <= band_width) | (weight < 0.999))
    offset[mask & ~band] = coarse[mask & ~band]
    offset[band] = _solve_membrane(mask, band, offset, _image_crossing(image))
    return offset


POISSON_AFFINE_UNKNOWNS = 1_000
"""Coarse-grid size of the prior's Poisson solve, which skips the exact border band. Measured on
300 training-split composites at 256 px with the shipped ptl network: foreground MSE 254.0 (our
recipes) / 97.9 (other recipes) against 251.2 / 99.1 with 4,000 unknowns and the band, at about
half the time (15 vs 30 ms)."""


def poisson_affine(image: np.ndarray, mask: np.ndarray, max_unknowns: int = POISSON_AFFINE_UNKNOWNS,
                   ridge: float = 1e-3, border_band: bool = False) -> np.ndarray:
    """The Poisson blend's change of the object as one global 3x4 colour map, 12 float32 numbers
    (A - I row-major, then b) acting on RGB in [0, 1].

    Least squares from the object's colours to their Poisson-blended colours, pulled towards the
    identity by `ridge` (per pixel) so that a flat-coloured object gets a well-defined map. A map of
    the colours keeps the object's texture, which the blend itself smooths away; on the training
    split it roughly halves the Poisson blend's remaining foreground error (`ptl`'s prior)."""
    if not mask.any() or mask.all():
        return np.zeros(12, np.float32)
    pixels = image.astype(np.float64)
    offset = poisson_offset(pixels, mask, max_unknowns, border_band)[mask] / 255.0
    x = np.c_[pixels[mask] / 255.0, np.ones(int(mask.sum()))]
    gram = x.T @ x + ridge * len(x) * np.eye(4)
    delta = np.linalg.solve(gram, x.T @ offset)  # 4 x 3: the change of [A^T; b]
    return np.concatenate([delta[:3].T.ravel(), delta[3]]).astype(np.float32)
