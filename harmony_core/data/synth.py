"""iHarmony4-style synthetic composites: a real photo with its object recoloured.

The real photo is the ground truth; the composite is the photo with the object's colours changed
by one transform drawn at random (docs/evaluation.md describes them):

  reinhard    Lab mean/std transfer from another photo's object or whole image
  cdf         per-channel RGB histogram (CDF) matching to another photo's object or image
  covariance  linear Monge-Kantorovich transfer of another photo's RGB mean and covariance
  tone_curve  random smooth monotone tone curve, shared plus a per-channel tint
  lut3d       random smooth 3D colour lookup table (5^3 lattice, trilinear)
  edit        1-3 photo edits: exposure +-1 EV, white balance 0.8-1.25, gamma 0.7-1.4,
              contrast 0.7-1.3, saturation 0.5-1.5

Those six are the specification's (`SPEC_TRANSFORMS`, the default, which defines the validation
set). Training may add ours (`train-ptl --recipes`), to see more kinds of colour change:

  channel_mix a random 3x3 colour matrix + offset: hue rotation about the grey axis +-40 deg,
              saturation 0.6-1.4, per-channel gains 0.8-1.25, offsets +-10 levels

The change is applied inside the mask only, faded over ~1 px at the mask's edge (inside it, so
that the composite's background equals the real photo's exactly, as in iHarmony4). A draw whose
fMSE against the real photo (metric protocol) is outside [min_fmse, max_fmse] is invisible or
implausible and is redrawn, at most `max_attempts` times; after that the closest draw is kept and
flagged. Sample i draws from numpy's Generator seeded with (seed, i) and nothing else, so it is
the same whichever process, worker or order produces it. Donor photos come from the same photo
list, so a validation set never borrows colours from training photos.

One class serves both uses: `SyntheticComposites` is indexable (numpy arrays, usable with a
torch DataLoader as it is, or through `torch_dataset()` for CHW float tensors) and
`write_iharmony` writes a fixed dataset in iHarmony4's layout.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
from scipy.interpolate import PchipInterpolator
from scipy.ndimage import gaussian_filter, map_coordinates

from harmony_core import atomic, imaging
from harmony_core.color import from_lab, match_cdf, reinhard_transfer, to_lab
from harmony_core.data.datasets import COMPOSITE_DIR, MASK_DIR, REAL_DIR, Photo, list_file, load_photo
from harmony_core.errors import InputError
from harmony_core.metrics import image_metrics

if TYPE_CHECKING:
    import torch

Donor = Callable[[], np.ndarray]
"""Returns the Nx3 uint8 pixels of a donor region; called only by transforms that need one."""
Transform = Callable[[np.random.Generator, np.ndarray, Donor], np.ndarray]
"""(rng, Nx3 uint8 object pixels, donor) -> Nx3 new colours (float or uint8, 0..255)."""


# --- colour transforms ------------------------------------------------------------------------

def _partial(rng: np.random.Generator, pixels: np.ndarray, target: np.ndarray) -> np.ndarray:
    """A random 50-100% of the way to a donor's statistics: full transfers are often too strong."""
    strength = rng.uniform(0.5, 1.0)
    return pixels + strength * (target.astype(np.float64) - pixels)


def reinhard(rng: np.random.Generator, pixels: np.ndarray, donor: Donor) -> np.ndarray:
    return _partial(rng, pixels, from_lab(reinhard_transfer(to_lab(pixels), to_lab(donor()))))


def cdf(rng: np.random.Generator, pixels: np.ndarray, donor: Donor) -> np.ndarray:
    reference = donor().astype(np.float32)
    matched = np.stack(
        [match_cdf(pixels[:, c].astype(np.float32), reference[:, c], bins=256) for c in range(3)], axis=1
    )
    return _partial(rng, pixels, matched)


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


COVARIANCE_FLOOR = 25.0
"""Added to both covariances (a 5-level std) so flat regions do not blow the mapping up."""


def covariance_map(source: np.ndarray, target: np.ndarray, floor: float = COVARIANCE_FLOOR) -> np.ndarray:
    """Source pixels moved to the target's mean and covariance by the linear Monge-Kantorovich map
    x -> T (x - mu_s) + mu_t, T = S^-1/2 (S^1/2 C S^1/2)^1/2 S^-1/2 (Pitie & Kokaram 2007)."""
    regular = floor * np.eye(3)
    cov_s = np.cov(source, rowvar=False) + regular
    cov_t = np.cov(target, rowvar=False) + regular
    half = _sqrt_psd(cov_s)
    inverse_half = np.linalg.inv(half)
    mapping = inverse_half @ _sqrt_psd(half @ cov_t @ half) @ inverse_half
    return (source - source.mean(axis=0)) @ mapping.T + target.mean(axis=0)


def covariance(rng: np.random.Generator, pixels: np.ndarray, donor: Donor) -> np.ndarray:
    return _partial(rng, pixels, covariance_map(pixels.astype(np.float64), donor().astype(np.float64)))


def _monotone_curve(rng: np.random.Generator, spread: float) -> np.ndarray:
    """A 256-entry increasing tone curve (0..255) through 5 jittered knots; PCHIP keeps it monotone."""
    knots = np.linspace(0.0, 1.0, 5)
    levels = np.clip(knots + rng.normal(0.0, spread, knots.size), 0.0, 1.0)
    levels[0], levels[-1] = rng.uniform(0.0, spread), 1.0 - rng.uniform(0.0, spread)
    levels = np.maximum.accumulate(levels)
    return PchipInterpolator(knots, levels)(np.linspace(0.0, 1.0, 256)) * 255.0


def tone_curve(rng: np.random.Generator, pixels: np.ndarray, donor: Donor) -> np.ndarray:
    """A shared tone curve followed by a milder per-channel one (a tint)."""
    shared = _monotone_curve(rng, 0.10)
    out = np.empty(pixels.shape, np.float64)
    for c in range(3):
        out[:, c] = np.interp(shared[pixels[:, c]], np.arange(256), _monotone_curve(rng, 0.04))
    return out


LUT_NODES = 5


def lut3d(rng: np.random.Generator, pixels: np.ndarray, donor: Donor) -> np.ndarray:
    """Identity lattice plus a random displacement smoothed across the lattice."""
    grid = np.linspace(0.0, 255.0, LUT_NODES)
    identity = np.stack(np.meshgrid(grid, grid, grid, indexing="ij"), axis=-1)
    shift = gaussian_filter(rng.normal(0.0, 1.0, identity.shape), sigma=(1, 1, 1, 0), mode="nearest")
    shift *= rng.uniform(15.0, 45.0) / shift.std()  # RMS displacement in levels
    lut = np.clip(identity + shift, 0.0, 255.0)
    coords = pixels.T.astype(np.float64) * ((LUT_NODES - 1) / 255.0)
    return np.stack([map_coordinates(lut[..., c], coords, order=1, mode="nearest") for c in range(3)], axis=1)


def _to_linear(x: np.ndarray) -> np.ndarray:
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def _to_srgb(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * x ** (1 / 2.4) - 0.055)


_LUMA = np.array([0.299, 0.587, 0.114])


def _exposure(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    return _to_srgb(_to_linear(x) * 2.0 ** rng.uniform(-1.0, 1.0))


def _white_balance(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    return _to_srgb(_to_linear(x) * np.exp(rng.uniform(math.log(0.8), math.log(1.25), 3)))


def _gamma(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    return np.clip(x, 0.0, 1.0) ** rng.uniform(0.7, 1.4)


def _contrast(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    mean = float((x @ _LUMA).mean())
    return (x - mean) * rng.uniform(0.7, 1.3) + mean


def _saturation(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    luma = (x @ _LUMA)[:, None]
    return luma + (x - luma) * rng.uniform(0.5, 1.5)


EDITS = (_exposure, _white_balance, _gamma, _contrast, _saturation)
"""In the order a photo editor applies them; `edit` picks 1-3 and keeps this order."""


def edit(rng: np.random.Generator, pixels: np.ndarray, donor: Donor) -> np.ndarray:
    chosen = np.sort(rng.choice(len(EDITS), size=rng.integers(1, 4), replace=False))
    x = pixels / 255.0
    for index in chosen:
        x = EDITS[index](rng, x)
    return x * 255.0


def channel_mix(rng: np.random.Generator, pixels: np.ndarray, donor: Donor) -> np.ndarray:
    """Gains x saturation x a hue rotation about the grey axis (Rodrigues' formula), plus an offset."""
    axis = np.ones(3) / math.sqrt(3.0)
    cross = np.array([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
    angle = math.radians(rng.uniform(-40.0, 40.0))
    rotation = np.eye(3) + math.sin(angle) * cross + (1.0 - math.cos(angle)) * cross @ cross
    grey = np.outer(axis, axis)
    saturation = grey + rng.uniform(0.6, 1.4) * (np.eye(3) - grey)
    gains = np.diag(np.exp(rng.uniform(math.log(0.8), math.log(1.25), 3)))
    return pixels @ (gains @ saturation @ rotation).T + rng.uniform(-10.0, 10.0, 3)


TRANSFORMS: dict[str, Transform] = {
    "reinhard": reinhard, "cdf": cdf, "covariance": covariance,
    "tone_curve": tone_curve, "lut3d": lut3d, "edit": edit, "channel_mix": channel_mix,
}
SPEC_TRANSFORMS = ("reinhard", "cdf", "covariance", "tone_curve", "lut3d", "edit")
"""The specification's recipes: the default everywhere, and what `make-dataset` writes."""


# --- compositing ------------------------------------------------------------------------------

def soft_edge(mask: np.ndarray, sigma: float) -> np.ndarray:
    """Blend weight: the blurred mask, kept inside the mask (about 0.7 on its border pixels)."""
    if sigma <= 0:
        return mask.astype(np.float64)
    blurred = cv2.GaussianBlur(mask.astype(np.float64), (0, 0), sigma, borderType=cv2.BORDER_REPLICATE)
    return np.where(mask, blurred, 0.0)


def recolour(real: np.ndarray, mask: np.ndarray, alpha: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """The real photo with the object's pixels moved towards `colours` by `alpha`."""
    out = real.copy()
    old = real[mask].astype(np.float64)
    new = old + alpha[mask][:, None] * (np.asarray(colours, np.float64) - old)
    out[mask] = np.clip(np.round(new), 0, 255).astype(np.uint8)
    return out


@dataclass(frozen=True)
class SynthConfig:
    min_fmse: float = 100.0
    max_fmse: float = 3000.0
    max_attempts: int = 12
    edge_sigma: float = 1.0
    transforms: tuple[str, ...] = SPEC_TRANSFORMS
    crop_scale: tuple[float, float] = (0.5, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    min_crop_object: float = 0.01
    """A random crop must keep at least this fraction of object and of background pixels."""

    def __post_init__(self) -> None:
        unknown = set(self.transforms) - set(TRANSFORMS)
        if unknown or not self.transforms:
            raise InputError(f"Unknown transforms {sorted(unknown)}; known: {', '.join(TRANSFORMS)}")
        if not 0 <= self.min_fmse < self.max_fmse or self.max_attempts < 1:
            raise InputError("Need 0 <= min_fmse < max_fmse and max_attempts >= 1.")


@dataclass
class SynthSample:
    index: int
    photo: str
    composite: np.ndarray
    mask: np.ndarray
    real: np.ndarray
    transform: str
    fmse: float
    attempts: int
    accepted: bool
    """False when every attempt fell outside [min_fmse, max_fmse] and the closest was kept."""
    details: dict[str, str] = field(default_factory=dict)


def _distance_to_range(value: float, low: float, high: float) -> float:
    """How far outside [low, high] a value is, in log ratio (0 inside)."""
    value = max(value, 1e-6)
    return max(math.log(max(low, 1e-6) / value), math.log(value / high), 0.0)


class SyntheticComposites:
    """Sample i = photos[order[i % P]] recoloured with the Generator seeded by (seed, i).

    size: output side in pixels (square); None keeps the photos' own size. augment: random
    resized crop (area 50-100%, aspect 3/4-4/3) and horizontal flip before resizing, for training.
    length: number of samples (default one per photo); items beyond P recolour photos again with
    new draws, so a training run can ask for P * epochs distinct samples.
    """

    def __init__(
        self,
        photos: Sequence[Photo],
        seed: int = 0,
        length: int | None = None,
        size: int | None = None,
        augment: bool = False,
        config: SynthConfig = SynthConfig(),
    ) -> None:
        if len(photos) < 2:
            raise InputError("Synthesis needs at least two photos (one is the colour donor of the other).")
        if length is not None and length < 1:
            raise InputError(f"The number of samples must be positive, got {length}.")
        if augment and size is None:
            raise InputError("augment=True needs an output size.")
        self.photos = list(photos)
        self.seed = int(seed)
        self.length = len(self.photos) if length is None else int(length)
        self.size = size
        self.augment = augment
        self.config = config
        self.order = np.random.default_rng([self.seed]).permutation(len(self.photos))
        """Photos are visited in a seeded shuffle: names often group by scene category."""

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(composite HxWx3 uint8, mask HxW bool, real HxWx3 uint8)."""
        sample = self.sample(index)
        return sample.composite, sample.mask, sample.real

    def photo_of(self, index: int) -> tuple[int, int]:
        """Position in `photos` of sample `index`'s photo, and its variant (1 on the first pass)."""
        if not 0 <= index < self.length:
            raise IndexError(f"sample {index} outside 0..{self.length - 1}")
        count = len(self.photos)
        return int(self.order[index % count]), index // count + 1

    def sample(self, index: int) -> SynthSample:
        position, _ = self.photo_of(index)
        photo = self.photos[position]
        rng = np.random.default_rng([self.seed, index])
        real, mask = load_photo(photo)
        if self.size is not None:
            real, mask = self._frame(rng, real, mask)
        imaging.validate_pair(real, mask)
        c = self.config
        alpha = soft_edge(mask, c.edge_sigma)
        pixels = real[mask]
        best: SynthSample | None = None
        best_distance = math.inf
        attempts = 0
        while attempts < c.max_attempts:
            attempts += 1
            name = c.transforms[rng.integers(len(c.transforms))]
            details: dict[str, str] = {}
            colours = TRANSFORMS[name](rng, pixels, self._donor(rng, position, details))
            composite = recolour(real, mask, alpha, colours)
            fmse = image_metrics(composite, real, mask).fmse
            distance = _distance_to_range(fmse, c.min_fmse, c.max_fmse)
            if distance < best_distance:
                best_distance = distance
                best = SynthSample(index, photo.name, composite, mask, real, name, fmse, 0, distance == 0, details)
            if distance == 0:
                break
        assert best is not None
        best.attempts = attempts
        return best

    def _donor(self, rng: np.random.Generator, position: int, details: dict[str, str]) -> Donor:
        """Pixels of another photo's object or whole image (drawn only when a transform asks)."""

        def pixels() -> np.ndarray:
            other = int(rng.integers(len(self.photos) - 1))
            donor = self.photos[other + (other >= position)]
            image, mask = load_photo(donor)
            region = "object" if rng.random() < 0.5 else "image"
            details["donor"] = f"{donor.name}:{region}"
            return image[mask] if region == "object" and mask.any() else image.reshape(-1, 3)

        return pixels

    def _frame(self, rng: np.random.Generator, real: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Resize to `size`, after a random resized crop and flip when augmenting."""
        size = (self.size, self.size)
        if self.augment:
            real, mask = self._random_crop(rng, real, mask)
            if rng.random() < 0.5:
                real, mask = real[:, ::-1], mask[:, ::-1]
        real = imaging.resize_rgb(np.ascontiguousarray(real), size)
        return real, imaging.resize_mask(np.ascontiguousarray(mask), size)

    def _random_crop(self, rng: np.random.Generator, real: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """torchvision's RandomResizedCrop draw, retried until object and background both remain."""
        h, w = mask.shape
        c = self.config
        for _ in range(20):
            area = h * w * rng.uniform(*c.crop_scale)
            ratio = math.exp(rng.uniform(math.log(c.crop_ratio[0]), math.log(c.crop_ratio[1])))
            cw, ch = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
            if not (0 < cw <= w and 0 < ch <= h):
                continue
            top, left = int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))
            crop = mask[top : top + ch, left : left + cw]
            fraction = crop.mean()
            if c.min_crop_object <= fraction <= 1 - c.min_crop_object:
                return real[top : top + ch, left : left + cw], crop
        return real, mask

    def torch_dataset(self) -> TensorComposites:
        """The same samples as torch tensors (torch is imported only when an item is read)."""
        return TensorComposites(self)


class TensorComposites:
    """Map-style torch dataset over SyntheticComposites: composite and real 3xHxW float in [0, 1],
    mask 1xHxW float. A plain class (DataLoader needs only __len__ and __getitem__), so this
    module imports without torch and pickles into spawned DataLoader workers."""

    def __init__(self, source: SyntheticComposites) -> None:
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        import torch

        composite, mask, real = self.source[index]

        def image(array: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))).float() / 255.0

        return image(composite), torch.from_numpy(mask[None].astype(np.float32)), image(real)


# --- the fixed dataset ------------------------------------------------------------------------

SYNTHESIS_LOG = "synthesis.csv"
MASK_ID = 1
"""Each source photo has one mask, so every file carries mask id 1 (iHarmony4 naming)."""


def write_iharmony(
    source: SyntheticComposites,
    out: str | Path,
    split: str = "test",
    progress: Callable[[SynthSample], None] | None = None,
) -> Path:
    """Write every sample of `source` as DATASET/{composite_images,masks,real_images}/ + list file.

    Lossless PNG throughout: the composite's background stays bit-identical to the real photo
    and the metric of the unmodified composite measures the recolouring alone. (iHarmony4 uses
    JPEG; independent JPEG coding of composite and real adds block noise around the object's edge
    that no method can remove.) The list file is DATASET/DATASET_{split}.txt; synthesis.csv
    records each sample's photo, transform, donor and fMSE. Returns the list file's path.
    """
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    names: list[str] = []
    written: set[str] = set()
    with open(root / SYNTHESIS_LOG, "w", newline="") as handle:
        record = csv.writer(handle)
        record.writerow(["composite", "photo", "transform", "donor", "fMSE", "attempts", "accepted"])
        for index in range(len(source)):
            sample = source.sample(index)
            stem = f"{sample.photo}_{MASK_ID}_{source.photo_of(index)[1]}"
            if sample.photo not in written:
                imaging.save_image(sample.real, root / REAL_DIR / f"{sample.photo}.png")
                imaging.save_image(sample.mask, root / MASK_DIR / f"{sample.photo}_{MASK_ID}.png")
                written.add(sample.photo)
            imaging.save_image(sample.composite, root / COMPOSITE_DIR / f"{stem}.png")
            names.append(f"{COMPOSITE_DIR}/{stem}.png")
            record.writerow([stem, sample.photo, sample.transform, sample.details.get("donor", ""),
                             f"{sample.fmse:.2f}", sample.attempts, int(sample.accepted)])
            if progress is not None:
                progress(sample)
    listing = list_file(root, split)
    atomic.write_text(listing, "".join(f"{name}\n" for name in names))
    return listing
