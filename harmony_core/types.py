"""The request a method receives, the result it returns and its availability (the contract all methods share)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from harmony_core import imaging
from harmony_core.errors import InputError


@dataclass(frozen=True)
class Availability:
    """Whether a method can run here; when not, `reason` says why and what to do."""

    ok: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok


@dataclass
class HarmonizationRequest:
    """A composite to harmonize.

    composite: HxWx3 uint8 RGB. mask: HxW bool, True on the pasted object.
    background: the photo the object was pasted into, when known (HxWx3 RGB; hspace takes its
    style from it). ground_truth: the real photo, for metrics. point: an (x, y) pixel of interest
    for methods that explain themselves per location (ptl's contribution map for that point).
    The constructor validates once so that every method can trust its input.
    """

    composite: np.ndarray
    mask: np.ndarray
    background: np.ndarray | None = None
    prompt: str = ""
    ground_truth: np.ndarray | None = None
    seed: int = 0
    point: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        self.composite = imaging.load_rgb(self.composite, "composite")
        self.mask = imaging.load_mask(self.mask, "mask")
        imaging.validate_pair(self.composite, self.mask)
        for name in ("background", "ground_truth"):
            value = getattr(self, name)
            if value is not None:
                value = imaging.load_rgb(value, name)
                imaging.check_same_size(self.composite, value, name)
                setattr(self, name, value)
        if not isinstance(self.seed, (int, np.integer)) or isinstance(self.seed, bool):
            raise InputError(f"seed must be an integer, got {self.seed!r}")
        self.seed = int(self.seed)
        if self.point is not None:
            x, y = (int(v) for v in self.point)
            width, height = self.size
            if not (0 <= x < width and 0 <= y < height):
                raise InputError(f"point ({x}, {y}) lies outside the {width}x{height} image")
            self.point = (x, y)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height), PIL's order."""
        return self.composite.shape[1], self.composite.shape[0]


@dataclass
class HarmonizationResult:
    """A method's output: the image (composite outside the mask), optional maps, metadata."""

    image: np.ndarray
    maps: dict[str, np.ndarray] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
