"""The Compose tab: three ways to get a (composite, mask) pair, each validated the same way."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from harmony_core import imaging
from harmony_core.errors import InputError

DEFAULT_MAX_SIDE = 1024
"""Long side the studio works at; larger uploads are shrunk (and the user is told)."""


@dataclass
class Composed:
    composite: np.ndarray
    mask: np.ndarray
    notes: list[str]
    background: np.ndarray | None = None
    """The background the object was placed on (path b), at the composite's size: hspace's style image."""

    @property
    def overlay(self) -> np.ndarray:
        return imaging.mask_overlay(self.composite, self.mask)

    @property
    def mask_image(self) -> np.ndarray:
        return imaging.mask_to_image(self.mask)

    @property
    def message(self) -> str:
        h, w = self.mask.shape
        share = 100.0 * self.mask.mean()
        lines = [f"Ready: {w}x{h}, the object covers {share:.1f}% of the image."] + self.notes
        if share > 50:
            lines.append("The mask covers more than half of the image. If the object is the small part, use **Invert mask**.")
        return "\n\n".join(lines)


def finish(composite: np.ndarray, mask: np.ndarray, max_side: int, notes: list[str] | None = None,
           background: np.ndarray | None = None) -> Composed:
    """Match the mask to the composite, cap the size, validate: the one exit of every path."""
    notes = list(notes or [])
    if mask.shape != composite.shape[:2]:
        h, w = composite.shape[:2]
        mh, mw = mask.shape
        mask = imaging.resize_mask(mask, (w, h))
        notes.append(f"The mask was {mw}x{mh}; it was resized to the composite's {w}x{h}.")
    h, w = composite.shape[:2]
    if max(h, w) > max_side:
        composite = imaging.cap_long_side(composite, max_side)
        mask = imaging.cap_long_side(mask, max_side)
        background = None if background is None else imaging.cap_long_side(background, max_side)
        nh, nw = composite.shape[:2]
        notes.append(f"The image was {w}x{h}; the studio works at most {max_side} px on the long side, "
                     f"so it was resized to {nw}x{nh}.")
    imaging.validate_pair(composite, mask)
    return Composed(composite, mask, notes, background)


def missing_upload(composite, mask) -> str | None:
    """What to say when "Use this composite" is pressed before both images are there, else None."""
    if composite is None:
        return "Upload a composite image first."
    if mask is None:
        return "Upload the object's mask (white = pasted object), or paint it in the Paint tab."
    return None


def from_upload(composite, mask, max_side: int = DEFAULT_MAX_SIDE) -> Composed:
    """(a) A composite and its mask, as uploaded (any mode, any mask encoding)."""
    if missing := missing_upload(composite, mask):
        raise InputError(missing)
    return finish(imaging.load_rgb(composite, "composite"), imaging.load_mask(mask, "mask"), max_side)


def from_layers(background, foreground, foreground_mask=None, x: float = 0.5, y: float = 0.5,
                scale: float = 1.0, max_side: int = DEFAULT_MAX_SIDE) -> Composed:
    """(b) A background and a foreground with transparency (or with its own mask), placed."""
    if background is None or foreground is None:
        raise InputError("Upload a background and a foreground (a PNG with transparency, or add its mask).")
    rgba = imaging.load_rgba(foreground, "foreground")
    if foreground_mask is None and rgba[:, :, 3].min() == 255:
        raise InputError("The foreground has no transparency: upload a PNG with an alpha channel, or its mask.")
    background = imaging.load_rgb(background, "background")
    composite, mask = imaging.place_foreground(background, rgba, x, y, scale, foreground_mask)
    return finish(composite, mask, max_side, background=background)


def from_painting(editor_value: dict | None, max_side: int = DEFAULT_MAX_SIDE) -> Composed:
    """(c) A mask painted over the composite in the image editor (any non-transparent stroke)."""
    if not editor_value or editor_value.get("background") is None:
        raise InputError("Upload the composite into the editor, then paint over the pasted object.")
    composite = imaging.load_rgb(editor_value["background"], "composite")
    mask = np.zeros(composite.shape[:2], dtype=bool)
    for layer in editor_value.get("layers") or []:
        if layer is None:
            continue
        layer = imaging.load_array(layer, "painted layer")
        if layer.ndim == 3 and layer.shape[2] == 4:
            painted = imaging.load_mask(np.ascontiguousarray(layer[:, :, 3]), "painted layer")
        else:
            painted = imaging.load_mask(layer, "painted layer")
        if painted.shape != mask.shape:
            painted = imaging.resize_mask(painted, (mask.shape[1], mask.shape[0]))
        mask |= painted
    if not mask.any():
        raise InputError("Nothing is painted yet: paint over the pasted object with the brush.")
    return finish(composite, mask, max_side)


def invert(composite, mask, max_side: int = DEFAULT_MAX_SIDE, background: np.ndarray | None = None) -> Composed:
    """The same composite with the mask inverted (a placed composite keeps its background)."""
    if composite is None or mask is None:
        raise InputError("Compose a composite and its mask first, then invert the mask.")
    return finish(imaging.load_rgb(composite, "composite"), ~imaging.load_mask(mask, "mask"), max_side,
                  ["The mask was inverted."], background)
