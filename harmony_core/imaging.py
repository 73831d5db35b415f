"""Image and mask I/O, validation and conversion used by every entry point.

Everything that enters the library passes through here once: files of any PIL mode become HxWx3
uint8 RGB arrays, masks become HxW bool arrays (thresholded explicitly at 0.5, never dithered),
and every problem becomes one InputError whose message names it.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from harmony_core.atomic import atomic_open
from harmony_core.errors import InputError

ImageSource = str | os.PathLike | bytes | BinaryIO | Image.Image | np.ndarray

MAX_PIXELS = 50_000_000
"""Largest image accepted (width x height); bigger files are refused before decoding."""
MAX_SIDE = 20_000
MASK_THRESHOLD = 0.5

__all__ = [
    "InputError", "MAX_PIXELS", "open_image", "load_array", "load_rgb", "load_mask", "load_rgba",
    "validate_pair", "check_same_size",
    "place_foreground", "paste_back", "resize_rgb", "resize_mask", "cap_long_side",
    "save_image", "mask_to_image", "mask_overlay",
]


def _describe(source: ImageSource) -> str:
    if isinstance(source, (str, os.PathLike)):
        return f"'{os.fspath(source)}'"
    return "the uploaded image"


def _check_dimensions(width: int, height: int, what: str) -> None:
    if width <= 0 or height <= 0:
        raise InputError(f"{what} has zero size ({width}x{height}).")
    if width * height > MAX_PIXELS or max(width, height) > MAX_SIDE:
        raise InputError(
            f"{what} is {width}x{height} pixels, larger than the {MAX_PIXELS // 1_000_000} MP / "
            f"{MAX_SIDE} px per side this studio accepts (decompression-bomb guard). "
            "Downscale it first."
        )


def open_image(source: ImageSource, what: str | None = None) -> Image.Image:
    """Open and fully decode an image, with EXIF orientation applied and sizes checked."""
    what = what or _describe(source)
    if isinstance(source, Image.Image):
        _check_dimensions(*source.size, what)
        return source
    if isinstance(source, np.ndarray):
        raise InputError(f"{what}: expected a file or PIL image, got an array")
    if isinstance(source, (str, os.PathLike)) and Path(source).is_dir():
        raise InputError(f"Could not read {what}: it is a folder, not an image file.")
    if isinstance(source, (str, os.PathLike)) and not Path(source).is_file():
        raise InputError(f"Could not read {what}: no such file.")
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(stream)
            _check_dimensions(*image.size, what)
            image.load()
    except InputError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        if isinstance(exc, UnidentifiedImageError):
            raise InputError(f"Could not read {what}: not an image file, or a format PIL cannot decode.") from None
        raise InputError(
            f"{what} is larger than the {MAX_PIXELS // 1_000_000} MP this studio accepts "
            "(decompression-bomb guard). Downscale it first."
        ) from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise InputError(f"Could not read {what}: the file is truncated or corrupt ({exc}).") from None
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # a broken EXIF block must not make a readable image unusable
        pass
    return image


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Scale any numeric pixel array to uint8 (16-bit and 32-bit integer, float in [0,1]).

    16-bit data is scaled by its bit depth (0..65535 -> 0..255), never by its own maximum: a dark
    16-bit image must stay dark."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if array.dtype == np.uint16:
        return np.round(array * (255.0 / 65535)).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        finite = np.nan_to_num(array.astype(np.float64), nan=0.0, posinf=1.0, neginf=0.0)
        scale = 255.0 if finite.max(initial=0.0) <= 1.0 else 1.0
        return np.clip(np.round(finite * scale), 0, 255).astype(np.uint8)
    wide = array.astype(np.int64)
    peak = wide.max(initial=0)
    if peak > 255:  # 32-bit "I" data holding 16-bit values -> 8 bits
        top = 65535 if peak <= 65535 else peak
        return np.clip(np.round(wide * (255.0 / top)), 0, 255).astype(np.uint8)
    return np.clip(wide, 0, 255).astype(np.uint8)


def _pil_to_array(image: Image.Image) -> np.ndarray:
    """An HxW or HxWxC array of the image's own channels, without PIL's lossy mode conversions."""
    if image.mode in ("P", "PA"):
        image = image.convert("RGBA")
    elif image.mode == "CMYK":
        image = image.convert("RGB")
    elif image.mode in ("YCbCr", "LAB", "HSV"):
        image = image.convert("RGB")
    elif image.mode.startswith("I;16"):
        return _to_uint8(np.asarray(image).astype(np.uint16))
    return _to_uint8(np.asarray(image))


def load_array(source: ImageSource, what: str = "image") -> np.ndarray:
    """HxW or HxWxC uint8 with the image's own channels (an array is only scaled to uint8)."""
    return _to_uint8(source) if isinstance(source, np.ndarray) else _pil_to_array(open_image(source, what))


def load_rgb(source: ImageSource, what: str = "image") -> np.ndarray:
    """HxWx3 uint8 RGB from a file, PIL image or array (gray is replicated, alpha dropped)."""
    array = load_array(source, what)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4):
        raise InputError(f"{what} must be an HxW or HxWxC image, got shape {array.shape}")
    _check_dimensions(array.shape[1], array.shape[0], what)
    if array.shape[2] in (1, 2):  # L or LA
        array = np.repeat(array[:, :, :1], 3, axis=2)
    return np.ascontiguousarray(array[:, :, :3])


def load_rgba(source: ImageSource, what: str = "foreground") -> np.ndarray:
    """HxWx4 uint8; images without alpha get a fully opaque alpha channel."""
    array = load_array(source, what)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.shape[2] == 2:  # LA
        array = np.concatenate([np.repeat(array[:, :, :1], 3, axis=2), array[:, :, 1:]], axis=2)
    if array.shape[2] == 3:
        array = np.concatenate([array, np.full(array.shape[:2] + (1,), 255, np.uint8)], axis=2)
    return np.ascontiguousarray(array[:, :, :4])


def load_mask(source: ImageSource, what: str = "mask", threshold: float = MASK_THRESHOLD) -> np.ndarray:
    """HxW bool mask, True on the object.

    A mask with a non-trivial alpha channel is read from the alpha (painted strokes on a
    transparent layer); otherwise from the brightest channel. Values are compared with
    `threshold` times the full scale, so JPEG ringing and anti-aliased edges never dither.
    """
    if isinstance(source, np.ndarray) and source.dtype == bool:
        array = source
        if array.ndim == 3:
            array = array.any(axis=2)
        if array.ndim != 2:
            raise InputError(f"{what} must be HxW, got shape {source.shape}")
        _check_dimensions(array.shape[1], array.shape[0], what)
        return np.ascontiguousarray(array)
    if isinstance(source, np.ndarray):
        array = _to_uint8(source)
    else:
        image = open_image(source, what)
        if image.mode == "1":
            return np.asarray(image, dtype=bool).copy()
        array = _pil_to_array(image)
    if array.ndim == 3:
        if array.shape[2] in (2, 4) and array[:, :, -1].min() < 255:
            array = array[:, :, -1]
        else:
            array = array[:, :, : (1 if array.shape[2] <= 2 else 3)].max(axis=2)
    if array.ndim != 2:
        raise InputError(f"{what} must be an HxW image, got shape {array.shape}")
    _check_dimensions(array.shape[1], array.shape[0], what)
    return array > threshold * 255


def check_same_size(reference: np.ndarray, other: np.ndarray, what: str) -> None:
    if reference.shape[:2] != other.shape[:2]:
        h, w = reference.shape[:2]
        oh, ow = other.shape[:2]
        raise InputError(f"Size mismatch: the composite is {w}x{h} but the {what} is {ow}x{oh}.")


MIN_SIDE = 2
"""The shortest side a request may have: smaller images cannot hold an object and a background."""


def validate_pair(composite: np.ndarray, mask: np.ndarray) -> None:
    """The checks every request passes: same size, a mask that is neither empty nor everything."""
    check_same_size(composite, mask, "mask")
    h, w = mask.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise InputError(f"The image is {w}x{h} pixels: too small to harmonize (at least {MIN_SIDE} px on each side).")
    count = int(mask.sum())
    if count == 0:
        raise InputError("The mask is empty: mark the pasted object in white (255) on black (0).")
    if count == mask.size:
        raise InputError(
            "The mask covers the whole image, so there is no background to harmonize against. "
            "Is it inverted? The object should be white on black."
        )


def resize_rgb(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize to (width, height); PIL antialiases when shrinking."""
    if (image.shape[1], image.shape[0]) == tuple(size):
        return image
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize to (width, height), so the mask stays binary."""
    if (mask.shape[1], mask.shape[0]) == tuple(size):
        return mask
    image = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(image.resize(size, Image.Resampling.NEAREST)) > 127


def cap_long_side(image: np.ndarray, max_side: int) -> np.ndarray:
    """Shrink so that the longer side is at most `max_side` (aspect kept); no-op when smaller."""
    h, w = image.shape[:2]
    if max(h, w) <= max_side:
        return image
    factor = max_side / max(h, w)
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    if image.dtype == bool:
        return resize_mask(image, size)
    return resize_rgb(image, size)


def paste_back(output: np.ndarray, composite: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The output inside the mask, the composite's exact pixels outside it."""
    check_same_size(composite, output, "output")
    result = composite.copy()
    np.copyto(result, output, where=mask[:, :, None], casting="unsafe")
    return result


def place_foreground(
    background: np.ndarray,
    foreground: np.ndarray,
    x: float = 0.5,
    y: float = 0.5,
    scale: float = 1.0,
    foreground_mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Paste an RGBA foreground (or RGB + mask) onto a background; returns (composite, mask).

    x, y: the foreground's centre as a fraction of the background's width and height.
    scale: factor applied to the foreground's own size. The composite blends the soft alpha;
    the returned mask is the alpha thresholded at 0.5. Parts outside the background are cropped.
    """
    background = load_rgb(background, "background")
    rgba = load_rgba(foreground, "foreground")
    if foreground_mask is not None:
        fg_mask = load_mask(foreground_mask, "foreground mask")
        check_same_size(rgba, fg_mask, "foreground mask")
        rgba[:, :, 3] = fg_mask.astype(np.uint8) * 255
    if not np.isfinite(scale) or scale <= 0:
        raise InputError(f"scale must be positive, got {scale}")
    if not (np.isfinite(x) and np.isfinite(y)):
        raise InputError("x and y must be finite numbers")
    fh, fw = rgba.shape[:2]
    new_w, new_h = max(1, round(fw * scale)), max(1, round(fh * scale))
    _check_dimensions(new_w, new_h, "the scaled foreground")
    if (new_w, new_h) != (fw, fh):
        rgba = np.asarray(Image.fromarray(rgba, "RGBA").resize((new_w, new_h), Image.Resampling.BILINEAR))
    bh, bw = background.shape[:2]
    left = round(x * bw - new_w / 2)
    top = round(y * bh - new_h / 2)
    # Intersection of the placed foreground with the background.
    x0, y0 = max(left, 0), max(top, 0)
    x1, y1 = min(left + new_w, bw), min(top + new_h, bh)
    composite = background.copy()
    mask = np.zeros((bh, bw), dtype=bool)
    if x1 > x0 and y1 > y0:
        patch = rgba[y0 - top : y1 - top, x0 - left : x1 - left].astype(np.float32)
        alpha = patch[:, :, 3:] / 255.0
        region = composite[y0:y1, x0:x1].astype(np.float32)
        composite[y0:y1, x0:x1] = np.round(patch[:, :, :3] * alpha + region * (1 - alpha)).astype(np.uint8)
        mask[y0:y1, x0:x1] = alpha[:, :, 0] > MASK_THRESHOLD
    if not mask.any():
        raise InputError(
            "The placed foreground does not cover any background pixel (is it fully transparent, "
            "or placed outside the background?)."
        )
    validate_pair(composite, mask)
    return composite, mask


def mask_to_image(mask: np.ndarray) -> np.ndarray:
    return mask.astype(np.uint8) * 255


def mask_overlay(image: np.ndarray, mask: np.ndarray, color: tuple[int, int, int] = (255, 64, 160)) -> np.ndarray:
    """The image with the masked region tinted, for showing a mask to a person."""
    tinted = image.astype(np.float32)
    tinted[mask] = 0.55 * tinted[mask] + 0.45 * np.asarray(color, np.float32)
    return tinted.astype(np.uint8)


def save_image(image: np.ndarray, path: str | os.PathLike, **options: Any) -> Path:
    """Write atomically (temporary file + rename): a crash never leaves a half-written image.
    `options` go to PIL's encoder (e.g. quality=92, subsampling=0 for JPEG)."""
    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise InputError(f"Unknown image extension '{path.suffix}' for {path}")
    pil = Image.fromarray(mask_to_image(image) if image.dtype == bool else image)
    with atomic_open(path, "wb") as handle:
        pil.save(handle, format=fmt, **options)
    return path
