"""What a run leaves behind for a paper: a one-row comparison figure and a ZIP of every output.

Pure functions of arrays (no files, no UI), shared by the studio's Export and `harmonize --figure`.
The figure has one column per image (the composite, each method's result, the ground truth when
given) at full resolution, a caption under each (name, seconds), and optionally a second row with
the same zoomed crop of the object under every column (a box on the top row marks it).
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from harmony_core import __version__, imaging

ZOOM_MARGIN = 0.15
"""Context around the object's bounding box in the zoomed crop, as a fraction of its size."""
GAP = 8
BOX_COLOUR = (255, 64, 64)


@dataclass(frozen=True)
class Column:
    """One column of the figure: an image and its caption."""

    title: str
    image: np.ndarray
    caption: str = ""


def object_box(mask: np.ndarray, margin: float = ZOOM_MARGIN, min_side: int = 32) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1): the object's bounding box grown by `margin` on each side, made square
    and at least `min_side` px where the image allows, clipped to it. The same box is used for
    every image of a comparison, so zoomed crops show the same pixels."""
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    if len(xs) == 0:
        return 0, 0, w, h
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    side = int(min(max(max(x1 - x0, y1 - y0) * (1 + 2 * margin), min_side), w, h))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left = int(np.clip(round(cx - side / 2), 0, w - side))
    top = int(np.clip(round(cy - side / 2), 0, h - side))
    return left, top, left + side, top + side


def crop(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    x0, y0, x1, y1 = box
    return np.ascontiguousarray(image[y0:y1, x0:x1])


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def figure(columns: list[Column], mask: np.ndarray, zoom: bool = True) -> np.ndarray:
    """The figure as an RGB uint8 array: every column at its full resolution (all share the
    composite's size), its title and caption below, and with `zoom` the object's crop (upscaled
    to the column's width) in a second row."""
    h, w = columns[0].image.shape[:2]
    font_size = max(14, w // 28)
    font = _font(font_size)
    text_h = 2 * font_size + 3 * GAP // 2
    box = object_box(mask)
    zoom_h = w if zoom else 0  # the square crop, scaled to the column's width
    height = h + (GAP + zoom_h if zoom else 0) + text_h + GAP
    canvas = Image.new("RGB", (len(columns) * w + (len(columns) + 1) * GAP, height + GAP), "white")
    draw = ImageDraw.Draw(canvas)
    for i, column in enumerate(columns):
        left = GAP + i * (w + GAP)
        canvas.paste(Image.fromarray(imaging.load_rgb(column.image, column.title)), (left, GAP))
        y = GAP + h
        if zoom:
            x0, y0, x1, y1 = box
            draw.rectangle((left + x0, GAP + y0, left + x1 - 1, GAP + y1 - 1), outline=BOX_COLOUR, width=max(2, w // 200))
            detail = Image.fromarray(crop(column.image, box)).resize((w, w), Image.Resampling.LANCZOS)
            canvas.paste(detail, (left, y + GAP))
            y += GAP + zoom_h
        draw.text((left + w / 2, y + GAP // 2), column.title, fill="black", font=font, anchor="ma")
        if column.caption:
            draw.text((left + w / 2, y + GAP // 2 + font_size + 2), column.caption, fill=(80, 80, 80),
                      font=_font(max(12, font_size * 4 // 5)), anchor="ma")
    return np.asarray(canvas)


def columns_of(composite: np.ndarray, results: dict[str, tuple[np.ndarray, float]],
               ground_truth: np.ndarray | None = None) -> list[Column]:
    """The figure's columns: the composite, each result (name, seconds), the ground truth."""
    columns = [Column("composite", composite, "input")]
    columns += [Column(name, image, f"{seconds:.2f} s") for name, (image, seconds) in results.items() if name != "composite"]
    if ground_truth is not None:
        columns.append(Column("ground truth", ground_truth, "real photo"))
    return columns


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def output_name(method: str) -> str:
    """Where a method's output lies in the ZIP."""
    return f"outputs/{method}.png"


def results_zip(composite: np.ndarray, mask: np.ndarray, images: dict[str, np.ndarray],
                report: dict[str, Any], figure_png: bytes | None = None) -> bytes:
    """A ZIP with composite.png, mask.png, outputs/METHOD.png for every output at full resolution
    (a folder of its own: the "composite" method's output is a result too), figure.png when
    given, and results.json (the report, with the file of each result)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:  # PNGs are compressed already
        archive.writestr("composite.png", png_bytes(composite))
        archive.writestr("mask.png", png_bytes(imaging.mask_to_image(mask)))
        for name, image in images.items():
            archive.writestr(output_name(name), png_bytes(image))
        if figure_png is not None:
            archive.writestr("figure.png", figure_png)
        archive.writestr("results.json", json.dumps({"version": __version__, **report}, indent=2, default=str))
    return buffer.getvalue()
