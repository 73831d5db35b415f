"""The request a method receives, the result it returns and its availability (the contract all methods share)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from harmony_core import imaging
from harmony_core.errors import InputError

SEED_LIMIT = 2 ** 63
SEED_RULE = f"The seed must be a whole number from 0 to {SEED_LIMIT - 1} (2^63 - 1)."
"""Every seed reaches torch.Generator.manual_seed, which takes a signed 64-bit integer."""


def parse_seed(value: Any) -> int:
    """The seed in what a user or an API client sent: an integer, a whole float or a string of
    digits in [0, 2^63); nothing (None, "") means 0. Anything else is an InputError (SEED_RULE)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return 0
    if isinstance(value, bool):
        raise InputError(SEED_RULE)
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise InputError(SEED_RULE)
        value = int(value)
    elif isinstance(value, str):
        if not re.fullmatch(r"\+?\d{1,20}", value.strip()):
            raise InputError(SEED_RULE)
        value = int(value.strip())
    elif not isinstance(value, (int, np.integer)):
        raise InputError(SEED_RULE)
    value = int(value)
    if not 0 <= value < SEED_LIMIT:
        raise InputError(SEED_RULE)
    return value


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
        self.seed = parse_seed(self.seed)
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
