"""Reading harmonization data from disk: iHarmony4's layout, a flat folder, and source photos.

Every reader returns file paths only (cheap to list, shard and pickle); `load_sample` decodes
one sample through harmony_core.imaging and brings the mask and the real image to the
composite's size (nearest for the mask, antialiased bilinear for the image, as the metric
protocol resizes), with a warning, because methods run at the composite's native resolution.

The project's train/validation split of source photos is a stable hash of the photo's name:
a photo is in validation iff int(sha1(NAME).hexdigest(), 16) % 10 == 0 (about 10%). It does
not depend on the folder's content or order, so adding photos never moves existing ones.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from harmony_core import imaging
from harmony_core.errors import InputError

log = logging.getLogger(__name__)

COMPOSITE_DIR = "composite_images"
MASK_DIR = "masks"
REAL_DIR = "real_images"
FLAT_ROLES = ("composite", "mask", "real")
IMAGE_SUFFIXES = frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)

Split = Literal["train", "val", "all"]
VALIDATION_MODULUS = 10


@dataclass(frozen=True)
class SampleFiles:
    """One evaluation sample on disk. `name` is unique within its dataset (the composite's stem)."""

    name: str
    composite: Path
    mask: Path
    real: Path | None


@dataclass(frozen=True)
class Sample:
    name: str
    composite: np.ndarray
    mask: np.ndarray
    real: np.ndarray | None


@dataclass(frozen=True)
class Photo:
    """A real photo and its object mask: the raw material of synthetic composites."""

    name: str
    image: Path
    mask: Path


# --- split ------------------------------------------------------------------------------------

def is_validation(name: str) -> bool:
    """The project's validation rule: int(sha1(name).hexdigest(), 16) % 10 == 0."""
    return int(hashlib.sha1(name.encode("utf-8")).hexdigest(), 16) % VALIDATION_MODULUS == 0


def select_split(photos: Sequence[Photo], split: Split) -> list[Photo]:
    if split == "all":
        return list(photos)
    if split not in ("train", "val"):
        raise InputError(f"Unknown split '{split}': use train, val or all.")
    return [p for p in photos if is_validation(p.name) == (split == "val")]


# --- listing ----------------------------------------------------------------------------------

def _images_by_stem(folder: Path) -> dict[str, Path]:
    """Image files of a folder keyed by stem; two files with one stem are ambiguous."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith("."):
            if path.stem in found:
                raise InputError(f"Two images named '{path.stem}' in {folder}: {found[path.stem].name} and {path.name}.")
            found[path.stem] = path
    return found


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise InputError(f"{what} '{path}' is not a folder.")
    return path


def list_photos(photos_dir: str | Path, masks_dir: str | Path) -> list[Photo]:
    """Photos paired with the mask of the same stem, sorted by name; unpaired photos are skipped."""
    images = _images_by_stem(_require_dir(Path(photos_dir), "Photos folder"))
    masks = _images_by_stem(_require_dir(Path(masks_dir), "Masks folder"))
    missing = sorted(set(images) - set(masks))
    if missing:
        log.warning("%d photos have no mask and are skipped (first: %s)", len(missing), missing[0])
    photos = [Photo(name, images[name], masks[name]) for name in sorted(set(images) & set(masks))]
    if not photos:
        raise InputError(f"No photo in {photos_dir} has a mask of the same name in {masks_dir}.")
    return photos


def list_file(root: Path, split: str) -> Path:
    """iHarmony4's list of a split: DATASET/DATASET_{split}.txt."""
    return root / f"{root.name}_{split}.txt"


def read_iharmony(root: str | Path, split: str = "test") -> list[SampleFiles]:
    """Samples of an iHarmony4-layout folder, as listed in DATASET_{split}.txt.

    Names follow NAME_MASKID_VARIANT (composite), NAME_MASKID (mask), NAME (real). Lines may be
    'composite_images/FILE' or bare file names; extensions of masks and reals are looked up, so
    PNG and JPEG datasets read the same. Without any list file, every composite is used; a split
    the dataset has no list for, while it has others, is an error (a typo must not silently
    evaluate everything).
    """
    root = _require_dir(Path(root), "Dataset")
    masks = _images_by_stem(_require_dir(root / MASK_DIR, "Mask folder"))
    reals = _images_by_stem(_require_dir(root / REAL_DIR, "Real-image folder"))
    listing = list_file(root, split)
    if listing.is_file():
        entries = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
        composites = [root / COMPOSITE_DIR / Path(entry).name for entry in entries]
    else:
        others = sorted(p.stem[len(root.name) + 1:] for p in root.glob(f"{root.name}_*.txt"))
        if others:
            raise InputError(f"Unknown split '{split}' for {root}: no {listing.name}; its splits are {', '.join(others)}.")
        log.warning("%s not found: using every image in %s", listing.name, root / COMPOSITE_DIR)
        composites = list(_images_by_stem(_require_dir(root / COMPOSITE_DIR, "Composite folder")).values())
    samples = []
    for path in composites:
        parts = path.stem.rsplit("_", 2)
        if len(parts) != 3:
            raise InputError(f"{path.name}: iHarmony4 composites are named NAME_MASKID_VARIANT.")
        mask_stem, real_stem = f"{parts[0]}_{parts[1]}", parts[0]
        if not path.is_file():
            raise InputError(f"{listing.name} lists {path.name}, which is not in {root / COMPOSITE_DIR}.")
        if mask_stem not in masks:
            raise InputError(f"No mask {mask_stem}.* in {root / MASK_DIR} for {path.name}.")
        samples.append(SampleFiles(path.stem, path, masks[mask_stem], reals.get(real_stem)))
    return samples


def read_flat(root: str | Path) -> list[SampleFiles]:
    """Samples of a folder of X_composite.*, X_mask.* and (for metrics) X_real.* files."""
    root = _require_dir(Path(root), "Dataset")
    by_role: dict[str, dict[str, Path]] = {role: {} for role in FLAT_ROLES}
    for stem, path in _images_by_stem(root).items():
        base, _, role = stem.rpartition("_")
        if base and role.lower() in by_role:
            if base in by_role[role.lower()]:
                raise InputError(f"Two {role} files for '{base}' in {root}.")
            by_role[role.lower()][base] = path
    samples = []
    for base, composite in sorted(by_role["composite"].items()):
        if base not in by_role["mask"]:
            raise InputError(f"{composite.name} has no {base}_mask.* beside it in {root}.")
        samples.append(SampleFiles(base, composite, by_role["mask"][base], by_role["real"].get(base)))
    return samples


def read_dataset(root: str | Path, split: str = "test") -> list[SampleFiles]:
    """iHarmony4 layout when the folder has composite_images/, else the flat layout."""
    root = Path(root)
    samples = read_iharmony(root, split) if (root / COMPOSITE_DIR).is_dir() else read_flat(root)
    if not samples:
        raise InputError(f"No composites found in {root} (expected {COMPOSITE_DIR}/ or *_composite.* files).")
    return samples


# --- loading ----------------------------------------------------------------------------------

def fit_to(reference: np.ndarray, image: np.ndarray, what: str) -> np.ndarray:
    """`image` (RGB or bool mask) at the reference's size, resized as the metric protocol resizes."""
    if image.shape[:2] == reference.shape[:2]:
        return image
    h, w = reference.shape[:2]
    warnings.warn(f"{what} is {image.shape[1]}x{image.shape[0]}, resized to {w}x{h}", stacklevel=2)
    return imaging.resize_mask(image, (w, h)) if image.dtype == bool else imaging.resize_rgb(image, (w, h))


def load_sample(files: SampleFiles) -> Sample:
    composite = imaging.load_rgb(files.composite, f"composite '{files.composite}'")
    mask = fit_to(composite, imaging.load_mask(files.mask, f"mask '{files.mask}'"), f"mask {files.mask.name}")
    real = None
    if files.real is not None:
        real = fit_to(composite, imaging.load_rgb(files.real, f"real image '{files.real}'"), f"real image {files.real.name}")
    return Sample(files.name, composite, mask, real)


def load_photo(photo: Photo) -> tuple[np.ndarray, np.ndarray]:
    """(RGB, mask) of a source photo, the mask at the photo's size."""
    image = imaging.load_rgb(photo.image, f"photo '{photo.image}'")
    mask = fit_to(image, imaging.load_mask(photo.mask, f"mask '{photo.mask}'"), f"mask {photo.mask.name}")
    return image, mask


def pack_photos(photos: Iterable[Photo], out: str | Path, quality: int = 92, max_mib: float | None = 60.0) -> int:
    """Copy photos + masks to OUT/images (JPEG, 4:4:4 chroma: colour is what harmonization learns)
    and OUT/masks (PNG), small enough to upload to another machine. Names are kept, so the
    train/validation split is the same. Returns the bytes written; stops with an error as soon as
    the copy exceeds `max_mib` MiB."""
    if not 1 <= quality <= 95:
        raise InputError(f"JPEG quality must be 1..95, got {quality}.")
    out = Path(out)
    total = 0
    for photo in photos:
        image, mask = load_photo(photo)
        total += imaging.save_image(image, out / "images" / f"{photo.name}.jpg", quality=quality, subsampling=0).stat().st_size
        total += imaging.save_image(mask, out / "masks" / f"{photo.name}.png").stat().st_size
        if max_mib is not None and total > max_mib * 2**20:
            raise InputError(f"The copy in {out} passed {max_mib:g} MiB at {photo.name}: use a lower --quality.")
    return total
