"""`ptl` and `ptl-paper`: the regional-reference network (LTL + PTL + an output head), with its maps.

`ptl` is our variant (affine head, Poisson prior, weights/ptl); `ptl-paper` is the network as the
paper describes it (eq. 7's residual output, no prior, weights/ptl-paper). One class runs both:
the config saved with the weights picks the head and the prior.

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

import functools
import json
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from harmony_core import imaging
from harmony_core.cost import Cost, Rate
from harmony_core.diffusion import components
from harmony_core.methods.classical import poisson_affine
from harmony_core.model_method import ModelMethod
from harmony_core.models.ptl_net import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    PTLConfig,
    PTLNet,
    PTLOutput,
    apply_affine,
    config_from_dict,
)
from harmony_core.registry import Progress, register
from harmony_core.types import Availability, HarmonizationRequest, HarmonizationResult

SHIPPED_WEIGHTS = Path(__file__).resolve().parents[2] / "weights" / "ptl"
WEIGHTS_ENV = "HARMONY_PTL_WEIGHTS"
PAPER_WEIGHTS = SHIPPED_WEIGHTS.parent / "ptl-paper"
PAPER_WEIGHTS_ENV = "HARMONY_PTL_PAPER_WEIGHTS"
PAPER_VARIANT = {"head": "residual", "prior": "none"}
"""What makes a PTLConfig the paper's network (the `ptl-paper` method accepts no other)."""
MAP_NAMES = ("ptl background contribution", "ptl point contribution", "ltl attention", "ltl point attention")
POINT_MAPS = frozenset({"ptl point contribution", "ltl point attention"})


def default_point(mask: np.ndarray) -> tuple[int, int]:
    """The object's pixel nearest its centroid, as (x, y)."""
    ys, xs = np.nonzero(mask)
    nearest = np.argmin((xs - xs.mean()) ** 2 + (ys - ys.mean()) ** 2)
    return int(xs[nearest]), int(ys[nearest])


def nearest_row(rows: np.ndarray, side: int, point: tuple[float, float]) -> int:
    """Position in `rows` (flat indices on a side x side grid) of the one nearest a point in grid units."""
    ys, xs = np.divmod(rows, side)
    return int(np.argmin((xs + 0.5 - point[0]) ** 2 + (ys + 0.5 - point[1]) ** 2))


def spread_blocks(weights: torch.Tensor, background: torch.Tensor, block: int, stride: int) -> torch.Tensor:
    """Per-pixel contribution of K block weights: each block's weight over its footprint's
    background pixels (H x W background weight), summed over the overlapping blocks."""
    side = background.shape[-1]
    grid = (side - block) // stride + 1
    cols = weights.view(1, 1, grid * grid).expand(1, block * block, grid * grid)
    return F.fold(cols, (side, side), block, stride=stride)[0, 0] * background


def to_map(grid: torch.Tensor, background: np.ndarray) -> np.ndarray:
    """A low-resolution map upsampled to the input, zeroed on the object, scaled to max 1.

    OpenCV's bilinear resize uses the same half-pixel centres as F.interpolate(align_corners=False)
    and is several times faster at full resolution."""
    h, w = background.shape
    up = cv2.resize(grid.float().cpu().numpy(), (w, h), interpolation=cv2.INTER_LINEAR)
    out = np.maximum(up, 0.0) * background
    peak = out.max()
    return (out / peak if peak > 0 else out).astype(np.float32)


def resize_window(grid: torch.Tensor, size: tuple[int, int], rows: slice, cols: slice) -> torch.Tensor:
    """The window [rows, cols] of grid (C x h x w) resized bilinearly to size (H, W), exactly as
    F.interpolate(align_corners=False) would compute those pixels, without the rest of the image."""
    def taps(n_in: int, n_out: int, window: slice) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        centres = torch.arange(window.start, window.stop, device=grid.device) + 0.5
        position = (centres * n_in / n_out - 0.5).clamp_min(0)
        low = position.floor().long().clamp_max(n_in - 1)
        return low, (low + 1).clamp_max(n_in - 1), (position - low).to(grid.dtype)

    low, high, weight = taps(grid.shape[1], size[0], rows)
    grid = torch.lerp(grid[:, low], grid[:, high], weight[:, None])
    low, high, weight = taps(grid.shape[2], size[1], cols)
    return torch.lerp(grid[:, :, low], grid[:, :, high], weight)


def full_resolution(output: PTLOutput, small: torch.Tensor, composite: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The 256-px result carried to the composite's size: the upsampled transform map applied to
    the full-resolution pixels (affine head) or the upsampled change added (residual head)."""
    h, w = mask.shape
    if output.transform is not None:
        ys, xs = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
        if ys.size == 0:
            return composite.copy()
        # Only the object's bounding box is transformed (the rest is the composite as it is).
        rows, cols = slice(int(ys[0]), int(ys[-1]) + 1), slice(int(xs[0]), int(xs[-1]) + 1)
        transform = resize_window(output.transform[0], (h, w), rows, cols)[None]
        pixels = torch.from_numpy(composite[rows, cols].transpose(2, 0, 1).copy())[None].to(small.device) / 255.0
        inside = torch.from_numpy(mask[rows, cols])[None, None].to(small.device)
        window = torch.where(inside, apply_affine(transform, pixels), pixels)[0] * 255.0
        out = composite.copy()
        out[rows, cols] = np.clip(np.round(window.permute(1, 2, 0).cpu().numpy()), 0, 255).astype(np.uint8)
        return out
    change = F.interpolate(output.image - small, size=(h, w), mode="bilinear", align_corners=False)[0]
    out = composite.astype(np.float32) + change.permute(1, 2, 0).cpu().numpy() * 255.0 * mask[..., None]
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


@register
class PTLMethod(ModelMethod):
    name = "ptl"
    family = "network"
    maps = MAP_NAMES
    point_maps = POINT_MAPS
    variant: ClassVar[Mapping[str, str]] = {}
    """The PTLConfig fields that make this method's network (`random_weights` builds it)."""
    run_lock = threading.RLock()
    """ptl's network is its own (no hooks, no shared components): its runs never wait behind a diffusion run."""
    title = "Regional reference network (LTL + PTL)"
    summary = ("A colour map per object location, from content-related background regions, that corrects "
               "one fitted to the Poisson blend (model card: weights/ptl/README.md).")
    cost = Cost(gpu=False, on_cpu=Rate(0.5, 0.5), on_gpu=Rate(0.05, 0.02), per_megapixel=True,
                source="CPU: bench at 256-2048 px under load (0.27-1.9 s); GPU: a guess (device-check's target: 10 ms at 256 px)")
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
        """The dtype, and the network's size and width once it is loaded (never loads it)."""
        model = self.loaded()
        network = {} if model is None else {"network_size": model.config.image_size, "width": model.config.width}
        return {**super().parameters(), **network}

    @classmethod
    def random_weights(cls, scale: str = "full", device: str | None = None, **options: Any) -> PTLMethod:
        """This method's network with random weights (seed 0): the paper's width 1.0 ("full") or the
        tests' 0.25 ("tiny"), in fp32 on `device`."""
        from harmony_core.diffusion.tiny import seeded

        config = PTLConfig(width=1.0 if scale == "full" else 0.25, ptl_write="add", **cls.variant)
        method = cls(device=device, **options)
        method.adopt(seeded(lambda: PTLNet(config), 0, method.device, method.dtype), f"random-{scale}")
        return method

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
        for layer, prefix, attentions in ((model.ptl, "ptl", output.ptl_attention), (model.ltl, "ltl", output.ltl_attention)):
            attention = attentions[0]
            side, weights = attention.side, attention.weights
            rows = attention.rows.cpu().numpy()
            if rows.size == 0 or weights.shape[1] == 0:  # no foreground location or no usable background
                overall = point_row = weights.new_zeros(attention.key_count)
            else:
                nearest = nearest_row(rows, side, (point[0] * side / w, point[1] * side / h))
                overall = attention.over_all_keys(weights.mean(dim=0))
                point_row = attention.over_all_keys(weights[nearest])
            if prefix == "ptl":
                soft_background = 1.0 - F.adaptive_avg_pool2d(mask_t, (side, side))[0, 0]
                spread = functools.partial(spread_blocks, background=soft_background, block=layer.block, stride=layer.stride)
                maps["ptl background contribution"] = to_map(spread(overall), background)
                maps["ptl point contribution"] = to_map(spread(point_row), background)
            else:
                maps["ltl attention"] = to_map(overall.view(side, side), background)
                maps["ltl point attention"] = to_map(point_row.view(side, side), background)
        return maps


@register
class PTLPaperMethod(PTLMethod):
    """`ptl-paper`: ptl's network and code with the paper's output (eq. 7's residual, no prior), so the
    studio shows the method as published beside our variant. Only its weights and their check differ."""

    name = "ptl-paper"
    variant = PAPER_VARIANT
    title = "Regional reference network, as in the paper (LTL + PTL, residual output)"
    summary = ("The paper's network: each object location takes colour statistics from content-related "
               "background regions and the decoder predicts the change in RGB (model card: weights/ptl-paper/README.md).")
    weights_env = PAPER_WEIGHTS_ENV
    default_weights = str(PAPER_WEIGHTS)
    how_to_set = (f"the environment variable {PAPER_WEIGHTS_ENV}, `--weights ptl-paper=SOURCE` or "
                  "PTLPaperMethod(weights=...) / set_weights")
    missing_help = ("Train with `python -m harmony_core train-ptl --head residual --prior none --export FOLDER` "
                    "and point one of those at FOLDER")

    def _check(self, folder: Path, found: Availability) -> Availability:
        """The folder must hold the paper's variant: an affine network here would be ptl under another name."""
        try:
            config = config_from_dict(json.loads((folder / CONFIG_NAME).read_text()))
        except (OSError, ValueError, TypeError) as exc:
            return Availability(False, f"'{folder}' has an unreadable {CONFIG_NAME} ({type(exc).__name__}). {self.missing_help}")
        if {"head": config.head, "prior": config.prior} != PAPER_VARIANT:
            return Availability(False, f"'{folder}' holds a network with head {config.head!r} and prior {config.prior!r}, "
                                       f"not the paper's (head 'residual', prior 'none'); use it as ptl. {self.missing_help}")
        return found
