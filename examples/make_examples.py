"""Rebuild the example images from scikit-image's public-domain / CC0 samples and our own painting,
and the composites of the blind-study set (examples/study-inputs/; scripts/build-study-set.sh
turns them into examples/study/).

Needs `pip install scikit-image` (not a runtime dependency). Run from the repository root:
    PYTHONPATH=. python examples/make_examples.py
"""

from pathlib import Path

import cv2
import numpy as np
import skimage.data
from PIL import Image

from harmony_core import imaging

HERE = Path(__file__).parent
STUDY_INPUTS = HERE / "study-inputs"
STUDY_SIDE = 512
"""Long side of the study composites (the study is shown at this size)."""
RECOLOURED = {
    # name: (scikit-image sample, ellipse centre (x, y) and axes at STUDY_SIDE, RGB gain, RGB offset)
    "astronaut_face": ("astronaut", (222, 116), (42, 56), (0.85, 1.12, 0.9), (0, 8, 0)),
    "shuttle": ("astronaut", (410, 128), (30, 118), (1.25, 1.0, 0.7), (10, 0, 0)),
    "coffee_cup": ("coffee", (250, 95), (95, 75), (0.7, 0.9, 1.3), (0, 0, 15)),
    "rocket": ("rocket", (256, 205), (13, 100), (1.3, 0.95, 0.6), (20, 5, 0)),
    "camera_coat": ("camera", (100, 330), (80, 150), (1.2, 1.0, 0.75), (12, 4, 0)),
    "retina_disc": ("retina", (88, 232), (40, 44), (0.6, 1.1, 1.25), (0, 10, 25)),
}
"""Real photos with one region recoloured (iHarmony4-style): the harmonized result should undo it."""


def ellipse_mask(shape: tuple[int, int], centre: tuple[int, int], axes: tuple[int, int]) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    cv2.ellipse(mask, centre, axes, 0, 0, 360, 255, -1)
    return mask


def brush_painting(width: int = 512, height: int = 384, seed: int = 0) -> np.ndarray:
    """A procedural oil sketch of a sunset landscape, made of brush strokes (our code; output CC0).

    No installed package ships a public-domain painting (scikit-image's and matplotlib's samples
    are photographs), so the painterly background is painted here: a smooth scene (sky gradient,
    sun, hills, water reflecting the sky) covered with layers of oriented, colour-jittered
    strokes, large to small, along a swirling flow field, plus a canvas weave.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    v, u = yy / height, xx / width
    horizon, shore = 0.58, 0.72
    sky = np.stack([np.interp(v, [0, horizon], [40, 250]), np.interp(v, [0, horizon], [60, 170]),
                    np.interp(v, [0, horizon], [120, 80])], axis=-1)
    sun = np.exp(-(((u - 0.68) / 0.07) ** 2 + ((v - 0.45) / 0.09) ** 2))[..., None]
    scene = sky + sun * np.array([5, 70, 90], np.float32)
    hills = horizon - 0.08 * np.sin(u * 7 + 1.0) * np.exp(-(((u - 0.25) / 0.3) ** 2)) - 0.05 * np.sin(u * 13)
    scene = np.where((v > hills)[..., None], np.array([45, 60, 40], np.float32) + 30 * (v[..., None] - horizon), scene)
    mirrored = np.clip((2 * shore * height - yy).astype(int), 0, height - 1)
    reflection = sky[mirrored, xx.astype(int)]
    scene = np.clip(np.where((v > shore)[..., None], 0.55 * reflection + np.array([10, 30, 60], np.float32), scene), 0, 255)
    canvas = cv2.GaussianBlur(scene, (0, 0), 6)
    flow = 0.6 * np.sin(u * 9 + v * 4) + np.where(v > horizon, 0.0, 0.4 * np.cos(v * 11))
    for size, count in ((18, 1500), (10, 3500), (5, 6000)):
        for y, x in zip(rng.integers(0, height, count), rng.integers(0, width, count)):
            colour = tuple(float(c) for c in scene[y, x] + rng.normal(0, 12, 3))
            angle = float(np.degrees(flow[y, x]) + rng.normal(0, 10))
            axes = (int(size * rng.uniform(1.2, 2.2)), max(1, int(size * rng.uniform(0.25, 0.45))))
            cv2.ellipse(canvas, (int(x), int(y)), axes, angle, 0, 360, colour, -1, cv2.LINE_AA)
    weave = 6 * np.sin(xx * 1.7) * np.sin(yy * 1.7) + rng.normal(0, 3, (height, width))
    return np.clip(canvas + weave[..., None], 0, 255).astype(np.uint8)


def recolour(photo: np.ndarray, centre: tuple[int, int], axes: tuple[int, int], gain: tuple[float, ...],
               offset: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(composite, mask): the photo with a colour transform applied inside an ellipse."""
    mask = ellipse_mask(photo.shape[:2], centre, axes) > 0
    values = photo.astype(np.float32)
    values[mask] = values[mask] * np.array(gain) + np.array(offset)
    return np.clip(np.round(values), 0, 255).astype(np.uint8), mask


def sample_photo(name: str) -> np.ndarray:
    """A scikit-image sample as RGB with the long side STUDY_SIDE."""
    photo = getattr(skimage.data, name)()
    if photo.ndim == 2:
        photo = np.stack([photo] * 3, axis=-1)
    return imaging.cap_long_side(photo[..., :3], STUDY_SIDE)


def save_study_input(name: str, composite: np.ndarray, mask: np.ndarray) -> None:
    STUDY_INPUTS.mkdir(exist_ok=True)
    Image.fromarray(imaging.cap_long_side(composite, STUDY_SIDE)).save(STUDY_INPUTS / f"{name}_composite.jpg", quality=92)
    Image.fromarray(imaging.mask_to_image(imaging.cap_long_side(mask, STUDY_SIDE))).save(
        STUDY_INPUTS / f"{name}_mask.png", optimize=True)


def main() -> None:
    # 1. A warm espresso cup cut out of a CC0 photo and placed in a public-domain twilight scene.
    coffee = skimage.data.coffee()
    alpha = cv2.GaussianBlur(ellipse_mask(coffee.shape[:2], (278, 222), (204, 160)), (0, 0), 1.5)
    ys, xs = np.nonzero(alpha)
    cup = np.dstack([coffee, alpha])[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    rocket = skimage.data.rocket()
    Image.fromarray(rocket).save(HERE / "rocket_background.jpg", quality=90)
    half = (cup.shape[1] // 2, cup.shape[0] // 2)
    Image.fromarray(cup, "RGBA").resize(half, Image.LANCZOS).save(HERE / "cup_foreground.png", optimize=True)
    composite, mask = imaging.place_foreground(rocket, cup, x=0.22, y=0.78, scale=0.45)
    Image.fromarray(composite).save(HERE / "cup_rocket_composite.jpg", quality=92)
    Image.fromarray(imaging.mask_to_image(mask)).save(HERE / "cup_rocket_mask.png", optimize=True)

    # 2. A CC0 cat photo whose face was recoloured: the real photo is the ground truth.
    cat = skimage.data.chelsea()
    mask = ellipse_mask(cat.shape[:2], (250, 165), (125, 105)) > 0
    recoloured = cat.astype(np.float32)
    recoloured[mask] = recoloured[mask] * np.array([0.75, 0.95, 1.25]) + np.array([0, 5, 20])
    composite = np.clip(np.round(recoloured), 0, 255).astype(np.uint8)
    Image.fromarray(cat).save(HERE / "cat_real.jpg", quality=92)
    Image.fromarray(composite).save(HERE / "cat_composite.jpg", quality=92)
    Image.fromarray(imaging.mask_to_image(mask)).save(HERE / "cat_mask.png", optimize=True)

    # 3. Painterly (freepih): the CC0 cup photo placed in our procedural brush-stroke painting.
    painting = brush_painting()
    Image.fromarray(painting).save(HERE / "painting_background.jpg", quality=85)
    composite, mask = imaging.place_foreground(painting, cup, x=0.3, y=0.8, scale=0.4)
    Image.fromarray(composite).save(HERE / "cup_painting_composite.jpg", quality=90)
    Image.fromarray(imaging.mask_to_image(mask)).save(HERE / "cup_painting_mask.png", optimize=True)

    # 4. The blind-study composites: the three above and six recoloured real photos.
    for name in ("cup_rocket", "cat", "cup_painting"):
        save_study_input(name, imaging.load_rgb(HERE / f"{name}_composite.jpg"), imaging.load_mask(HERE / f"{name}_mask.png"))
    for name, (source, centre, axes, gain, offset) in RECOLOURED.items():
        save_study_input(name, *recolour(sample_photo(source), centre, axes, gain, offset))


if __name__ == "__main__":
    main()
