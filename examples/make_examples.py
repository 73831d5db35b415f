"""Rebuild the example images from scikit-image's public-domain / CC0 samples.

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


def ellipse_mask(shape: tuple[int, int], centre: tuple[int, int], axes: tuple[int, int]) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    cv2.ellipse(mask, centre, axes, 0, 0, 360, 255, -1)
    return mask


def main() -> None:
    # 1. A warm espresso cup cut out of a CC0 photo and placed in a public-domain twilight scene.
    coffee = skimage.data.coffee()
    alpha = cv2.GaussianBlur(ellipse_mask(coffee.shape[:2], (278, 222), (204, 160)), (0, 0), 1.5)
    ys, xs = np.nonzero(alpha)
    cup = np.dstack([coffee, alpha])[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    rocket = skimage.data.rocket()
    Image.fromarray(rocket).save(HERE / "rocket_background.jpg", quality=90)
    Image.fromarray(cup, "RGBA").resize((cup.shape[1] // 2, cup.shape[0] // 2), Image.LANCZOS).save(HERE / "cup_foreground.png", optimize=True)
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


if __name__ == "__main__":
    main()
