"""Dataset readers: iHarmony4's layout and flat folders with mixed formats and sizes."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from harmony_core import imaging
from harmony_core.data import list_photos, load_sample, read_dataset, read_flat, read_iharmony
from harmony_core.errors import InputError


def scene(size: tuple[int, int], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)


def box_mask(size: tuple[int, int]) -> np.ndarray:
    w, h = size
    mask = np.zeros((h, w), bool)
    mask[h // 4 : 3 * h // 4, w // 4 : w // 2] = True
    return mask


def test_flat_folder_with_mixed_formats_and_sizes(tmp_path):
    size = (48, 32)
    # a: RGBA PNG composite, JPEG mask (ringing around the edge), real at twice the size.
    rgba = np.dstack([scene(size), np.full((32, 48), 200, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a_composite.png")
    Image.fromarray(imaging.mask_to_image(box_mask(size))).save(tmp_path / "a_mask.jpg", quality=60)
    imaging.save_image(scene((96, 64), 1), tmp_path / "a_real.jpg")
    # b: JPEG composite, mode-L mask at half the size, no real image.
    imaging.save_image(scene(size, 2), tmp_path / "b_composite.jpg")
    Image.fromarray(imaging.mask_to_image(box_mask((24, 16))), "L").save(tmp_path / "b_mask.png")
    (tmp_path / "notes.txt").write_text("ignored")

    samples = read_dataset(tmp_path)
    assert [s.name for s in samples] == ["a", "b"]
    assert samples[1].real is None
    with pytest.warns(UserWarning, match="resized to 48x32"):
        a = load_sample(samples[0])
    assert a.composite.shape == a.real.shape == (32, 48, 3)
    np.testing.assert_array_equal(a.composite, rgba[:, :, :3])
    np.testing.assert_array_equal(a.mask, box_mask(size))  # JPEG ringing thresholded away
    with pytest.warns(UserWarning, match="mask"):
        b = load_sample(samples[1])
    np.testing.assert_array_equal(b.mask, box_mask(size))  # nearest upscaling keeps it binary


def test_flat_folder_errors_name_the_file(tmp_path):
    imaging.save_image(scene((8, 8)), tmp_path / "x_composite.png")
    with pytest.raises(InputError, match="x_composite.png has no x_mask"):
        read_flat(tmp_path)
    imaging.save_image(scene((8, 8)), tmp_path / "x_mask.png")
    imaging.save_image(scene((8, 8)), tmp_path / "x_mask.jpg")
    with pytest.raises(InputError, match="Two images named 'x_mask'"):
        read_flat(tmp_path)


def write_iharmony_folder(root, names=("c1", "c2"), ext=".jpg"):
    for i, name in enumerate(names):
        imaging.save_image(scene((16, 16), i), root / "real_images" / f"{name}{ext}")
        imaging.save_image(box_mask((16, 16)), root / "masks" / f"{name}_1.png")
        for variant in (1, 2):
            imaging.save_image(scene((16, 16), 10 + i), root / "composite_images" / f"{name}_1_{variant}{ext}")


def test_iharmony_layout_follows_the_list_file(tmp_path):
    root = tmp_path / "HToy"
    write_iharmony_folder(root)
    (root / "HToy_test.txt").write_text("composite_images/c1_1_2.jpg\nc2_1_1.jpg\n\n")
    samples = read_iharmony(root)
    assert [(s.name, s.mask.name, s.real.name) for s in samples] == [
        ("c1_1_2", "c1_1.png", "c1.jpg"), ("c2_1_1", "c2_1.png", "c2.jpg"),
    ]
    sample = load_sample(samples[0])
    assert sample.mask.dtype == bool and sample.real.shape == (16, 16, 3)


def test_iharmony_layout_without_list_file_uses_every_composite(tmp_path, caplog):
    root = tmp_path / "HToy"
    write_iharmony_folder(root, ext=".png")
    with caplog.at_level(logging.WARNING):
        samples = read_dataset(root)
    assert len(samples) == 4 and "HToy_test.txt not found" in caplog.text


def test_iharmony_layout_errors(tmp_path):
    root = tmp_path / "HToy"
    write_iharmony_folder(root)
    (root / "HToy_test.txt").write_text("composite_images/missing_1_1.jpg\n")
    with pytest.raises(InputError, match="missing_1_1.jpg, which is not in"):
        read_iharmony(root)
    (root / "HToy_test.txt").write_text("composite_images/c1.jpg\n")
    with pytest.raises(InputError, match="NAME_MASKID_VARIANT"):
        read_iharmony(root)


def test_empty_folder_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="No composites"):
        read_dataset(tmp_path)
    with pytest.raises(InputError, match="not a folder"):
        read_dataset(tmp_path / "absent")


def test_photos_pair_with_masks_by_name(tmp_path, caplog):
    for name in ("p1", "p2", "lonely"):
        imaging.save_image(scene((8, 8)), tmp_path / "img" / f"{name}.jpg")
    for name in ("p1", "p2"):
        imaging.save_image(box_mask((8, 8)), tmp_path / "msk" / f"{name}.png")
    with caplog.at_level(logging.WARNING):
        photos = list_photos(tmp_path / "img", tmp_path / "msk")
    assert [p.name for p in photos] == ["p1", "p2"] and "lonely" in caplog.text
