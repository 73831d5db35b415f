"""`ptl`: the regional-reference network (LTL + PTL + a colour-transform head), with its maps.

The network sees the composite at 256 x 256 (its fixed input size). With the affine head (the
shipped network) its per-location 3x4 colour transforms are upsampled to the input's resolution
and applied to the full-resolution composite inside the mask, so the object keeps its own texture
exactly; with the paper's residual head the predicted change (output - input at 256) is upsampled
and added instead. Either way only the smooth colour change comes from 256 px.

Contribution maps (paper fig. 5), all sized like the input, in [0, 1], zero on the object:
- "ptl background contribution": PTL's block attention averaged over foreground locations,
  each block's weight spread over the background pixels of its 16x16 footprint (128-px grid).
- "ptl point contribution": the same for the one foreground location nearest `request.point`
  (default: the object's pixel nearest its centroid).
- "ltl attention" / "ltl point attention": LTL's attention over the 32x32 background tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from harmony_core import imaging
from harmony_core.methods.classical import poisson_affine
from harmony_core.models.ptl_net import CONFIG_NAME, WEIGHTS_NAME, PTLNet, PTLOutput, apply_affine
from harmony_core.diffusion import components
from harmony_core.model_method import ModelMethod
from harmony_core.registry import Progress, register
from harmony_core.types import HarmonizationRequest, HarmonizationResult

SHIPPED_WEIGHTS = Path(__file__).resolve().parents[2] / "weights" / "ptl"
WEIGHTS_ENV = "HARMONY_PTL_WEIGHTS"
MAP_NAMES = ("ptl background contribution", "ptl point contribution", "ltl attention", "ltl point attention")


def default_point(mask: np.ndarray) -> tuple[int, int]:
    """The object's pixel nearest its centroid, as (x, y)."""
    ys, xs = np.nonzero(mask)
    nearest = np.argmin((xs - xs.mean()) ** 2 + (ys - ys.mean()) ** 2)
    return int(xs[nearest]), int(ys[nearest])


def nearest_row(rows: np.ndarray, side: int, point: tuple[float, float]) -> int:
    """Index of the foreground row (flattened side x side grid) nearest a point in grid units."""
    ys, xs = np.divmod(rows, side)
    return int(rows[np.argmin((xs + 0.5 - point[0]) ** 2 + (ys + 0.5 - point[1]) ** 2)])


def spread_blocks(weights: torch.Tensor, background: torch.Tensor, block: int, stride: int) -> torch.Tensor:
    """Per-pixel contribution of K block weights: each block's weight over its footprint's
    background pixels (H x W background weight), summed over the overlapping blocks."""
    side = background.shape[-1]
    grid = (side - block) // stride + 1
    cols = weights.view(1, 1, grid * grid).expand(1, block * block, grid * grid)
    return F.fold(cols, (side, side), block, stride=stride)[0, 0] * background


def to_map(grid: torch.Tensor, background: np.ndarray) -> np.ndarray:
    """A low-resolution map upsampled to the input, zeroed on the object, scaled to max 1."""
    h, w = background.shape
    up = F.interpolate(grid[None, None].float(), size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    out = up.clamp_min(0).cpu().numpy() * background
    peak = out.max()
    return (out / peak if peak > 0 else out).astype(np.float32)


def full_resolution(output: PTLOutput, small: torch.Tensor, composite: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The 256-px result carried to the composite's size: the upsampled transform map applied to
    the full-resolution pixels (affine head) or the upsampled change added (residual head)."""
    h, w = mask.shape
    inside = torch.from_numpy(mask)[None, None].to(small.device)
    if output.transform is not None:
        transform = F.interpolate(output.transform, size=(h, w), mode="bilinear", align_corners=False)
        pixels = torch.from_numpy(composite.transpose(2, 0, 1).copy())[None].to(small.device).float() / 255.0
        out = torch.where(inside, apply_affine(transform, pixels), pixels)[0] * 255.0
        return np.clip(np.round(out.permute(1, 2, 0).cpu().numpy()), 0, 255).astype(np.uint8)
    change = F.interpolate(output.image - small, size=(h, w), mode="bilinear", align_corners=False)[0]
    out = composite.astype(np.float32) + change.permute(1, 2, 0).cpu().numpy() * 255.0 * mask[..., None]
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


@register
class PTLMethod(ModelMethod):
    name = "ptl"
    family = "network"
    title = "Regional reference network (LTL + PTL)"
    summary = ("Each object location takes its colour statistics from content-related background regions "
               "(the shipped weights are undertrained: see weights/ptl/README.md).")
    weights_env = WEIGHTS_ENV
    default_weights = str(SHIPPED_WEIGHTS)
    required_files = (CONFIG_NAME, WEIGHTS_NAME)
    how_to_set = (f"the environment variable {WEIGHTS_ENV}, `--weights ptl=SOURCE` or PTLMethod(weights=...) "
                  "/ set_weights")
    missing_help = "Train with `python -m harmony_core train-ptl --export FOLDER` and point one of those at FOLDER"

    def default_dtype(self, device: str) -> torch.dtype:
        return torch.float32  # a small network: fp32 everywhere

    @property
    def weights(self) -> Path:
        """The configured weights folder (or Hub id)."""
        return Path(self.source())

    def _load(self, source: str) -> PTLNet:
        return PTLNet.from_pretrained(components.resolve(source), device=self.device, dtype=self.dtype)

    @property
    def model(self) -> PTLNet:
        """The network, loaded on first use."""
        return self.load()

    def parameters(self) -> dict[str, Any]:
        return {"network_size": self.model.config.image_size, "width": self.model.config.width}

    @torch.no_grad()
    def harmonize(self, request: HarmonizationRequest, progress: Progress) -> HarmonizationResult:
        model = self.model
        size = model.config.image_size
        composite, mask = request.composite, request.mask
        small = imaging.resize_rgb(composite, (size, size))
        small_mask = imaging.resize_mask(mask, (size, size))
        image = torch.from_numpy(small.transpose(2, 0, 1).copy()).float().div(255.0)[None].to(self.device)
        mask_t = torch.from_numpy(small_mask.astype(np.float32))[None, None].to(self.device)
        prior = None
        if model.config.prior == "poisson":
            progress(0.1, "ptl: Poisson colour prior at 256 px")
            prior = torch.from_numpy(poisson_affine(small, small_mask))[None].to(self.device)
        progress(0.2, "ptl: network at 256 px")
        output = model(image, mask_t, prior=prior, output_attentions=True)
        maps = self._maps(model, output, mask_t, mask, request.point or default_point(mask))
        return HarmonizationResult(image=full_resolution(output, image, composite, mask), maps=maps)

    def _maps(self, model: PTLNet, output: PTLOutput, mask_t: torch.Tensor, mask: np.ndarray,
              point: tuple[int, int]) -> dict[str, np.ndarray]:
        background = (~mask).astype(np.float32)
        h, w = mask.shape
        maps = {}
        for layer, prefix, weights in ((model.ptl, "ptl", output.ptl_attention), (model.ltl, "ltl", output.ltl_attention)):
            attention = weights[0]  # L x K
            side = int(round(attention.shape[0] ** 0.5))
            rows = attention.sum(dim=1).nonzero().squeeze(1).cpu().numpy()
            if rows.size == 0:  # no foreground location or no usable background
                overall = point_row = torch.zeros(attention.shape[1], device=attention.device)
            else:
                overall = attention[rows].mean(dim=0)
                point_row = attention[nearest_row(rows, side, (point[0] * side / w, point[1] * side / h))]
            if prefix == "ptl":
                soft_background = 1.0 - F.adaptive_avg_pool2d(mask_t, (side, side))[0, 0]
                spread = lambda weights: spread_blocks(weights, soft_background, layer.block, layer.stride)  # noqa: E731
                maps["ptl background contribution"] = to_map(spread(overall), background)
                maps["ptl point contribution"] = to_map(spread(point_row), background)
            else:
                maps["ltl attention"] = to_map(overall.view(side, side), background)
                maps["ltl point attention"] = to_map(point_row.view(side, side), background)
        return maps
