"""Synthetic composites: determinism, mask-only changes, rejection, training views, disk layout."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harmony_core import imaging
from harmony_core.bench import synthetic_request
from harmony_core.cli import main
from harmony_core.data import (
    TRANSFORMS,
    SynthConfig,
    SyntheticComposites,
    is_validation,
    list_photos,
    load_sample,
    read_iharmony,
    select_split,
)
from harmony_core.data.datasets import load_photo, pack_photos
from harmony_core.data.synth import covariance_map, soft_edge
from harmony_core.errors import InputError
from harmony_core.metrics import image_metrics
from tests.support import batches

REPO = Path(__file__).resolve().parents[1]
SHARED_PHOTOS = REPO.parent / "shared" / "data" / "photos-masks"


def make_photos(folder: Path, count: int = 6, size: int = 64) -> tuple[Path, Path]:
    """`count` smooth random scenes with an off-centre elliptical object, as JPEG photos + PNG masks."""
    for i in range(count):
        scene = synthetic_request(size, seed=i)
        shift = (i % 3) * size // 8
        imaging.save_image(scene.ground_truth, folder / "images" / f"photo_{i:02d}.jpg")
        imaging.save_image(np.roll(scene.mask, shift, axis=1), folder / "masks" / f"photo_{i:02d}.png")
    return folder / "images", folder / "masks"


@pytest.fixture
def photos(tmp_path):
    return list_photos(*make_photos(tmp_path))


def test_sample_depends_only_on_seed_and_index(photos):
    forward = SyntheticComposites(photos, seed=3)
    first = [forward.sample(i) for i in range(len(forward))]
    backward = SyntheticComposites(photos, seed=3)
    for i in reversed(range(len(backward))):
        again = backward.sample(i)
        assert again.transform == first[i].transform
        assert np.array_equal(again.composite, first[i].composite)
    other_seed = SyntheticComposites(photos, seed=4)
    assert any(not np.array_equal(other_seed.sample(i).composite, first[i].composite) for i in range(3))


def test_only_the_object_changes_and_visibly(photos):
    source = SyntheticComposites(photos, seed=0, length=2 * len(photos))
    for i in range(len(source)):
        s = source.sample(i)
        assert np.array_equal(s.composite[~s.mask], s.real[~s.mask])
        assert s.accepted and 100.0 <= s.fmse <= 3000.0
        assert s.fmse == pytest.approx(image_metrics(s.composite, s.real, s.mask).fmse)
    assert source.photo_of(len(photos))[1] == 2  # second pass over the photos = variant 2


def test_rejection_is_bounded_and_keeps_the_closest_draw(photos):
    impossible = SynthConfig(min_fmse=1e8, max_fmse=1e9, max_attempts=3)
    s = SyntheticComposites(photos, seed=0, config=impossible).sample(0)
    assert not s.accepted and s.attempts == 3 and s.fmse < 1e8


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_every_transform_recolours(photos, name):
    s = SyntheticComposites(photos, seed=1, config=SynthConfig(transforms=(name,), max_attempts=1)).sample(0)
    assert s.transform == name
    assert np.abs(s.composite.astype(int) - s.real.astype(int))[s.mask].mean() > 1.0


def test_validation_recipes_are_the_specifications_and_channel_mix_is_affine():
    from harmony_core.data.synth import SPEC_TRANSFORMS, channel_mix

    assert SynthConfig().transforms == SPEC_TRANSFORMS == ("reinhard", "cdf", "covariance", "tone_curve", "lut3d", "edit")
    rng = np.random.default_rng(4)
    pixels = rng.integers(0, 256, (500, 3)).astype(np.uint8)
    out = channel_mix(np.random.default_rng(5), pixels, lambda: pixels)
    design = np.c_[pixels, np.ones(len(pixels))]
    fit = design @ np.linalg.lstsq(design, out, rcond=None)[0]
    np.testing.assert_allclose(fit, out, atol=1e-6)  # one 3x4 map of the colours
    assert np.abs(out - pixels).mean() > 3


def test_covariance_map_reaches_target_mean_and_covariance():
    rng = np.random.default_rng(0)
    source = rng.normal(size=(5000, 3)) @ np.array([[30, 5, 0], [0, 20, 3], [0, 0, 10]]) + 80
    target = rng.normal(size=(4000, 3)) @ np.array([[10, 0, 4], [2, 25, 0], [0, 6, 15]]) + 150
    moved = covariance_map(source, target, floor=0.0)
    np.testing.assert_allclose(moved.mean(axis=0), target.mean(axis=0), atol=1e-6)
    np.testing.assert_allclose(np.cov(moved, rowvar=False), np.cov(target, rowvar=False), rtol=1e-6, atol=1e-6)


def test_soft_edge_fades_inside_the_mask_only():
    mask = np.zeros((20, 20), bool)
    mask[5:15, 5:15] = True
    alpha = soft_edge(mask, 1.0)
    assert (alpha[~mask] == 0).all() and alpha[10, 10] == pytest.approx(1.0, abs=1e-3)
    assert 0.5 < alpha[5, 10] < 0.9


def test_training_view_crops_flips_batches_and_tensors(photos):
    source = SyntheticComposites(photos, seed=0, length=8, size=32, augment=True)
    composite, mask, real = source[5]
    assert composite.shape == real.shape == (32, 32, 3) and mask.shape == (32, 32)
    assert 0 < mask.mean() < 1
    batch = next(batches(source, 4))
    assert [b.shape for b in batch] == [(4, 32, 32, 3), (4, 32, 32), (4, 32, 32, 3)]
    np.testing.assert_array_equal(batch[0][1], source[1][0])
    tensors = source.torch_dataset()[5]
    assert [tuple(t.shape) for t in tensors] == [(3, 32, 32), (1, 32, 32), (3, 32, 32)]
    np.testing.assert_allclose(tensors[0].numpy().transpose(1, 2, 0) * 255, composite, atol=1e-3)


@pytest.mark.slow
def test_synth_module_does_not_import_torch():
    code = "import sys, harmony_core.data; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_written_dataset_reads_back_identically(photos, tmp_path):
    source = SyntheticComposites(photos, seed=0, length=len(photos) + 2)
    listing = write_dataset_via_cli(tmp_path, n=len(photos) + 2)
    root = listing.parent
    lines = listing.read_text().split()
    assert len(lines) == len(source) and all(line.startswith("composite_images/") for line in lines)
    assert len(list((root / "real_images").iterdir())) == len(photos)
    by_name = {f.name: f for f in read_iharmony(root)}
    for i in range(len(source)):
        expected = source.sample(i)
        loaded = load_sample(by_name[f"{expected.photo}_1_{source.photo_of(i)[1]}"])
        assert np.array_equal(loaded.composite, expected.composite)  # PNG: lossless
        assert np.array_equal(loaded.mask, expected.mask) and np.array_equal(loaded.real, expected.real)


def write_dataset_via_cli(tmp_path: Path, n: int) -> Path:
    out = tmp_path / "synthetic"
    argv = ["make-dataset", "--photos", str(tmp_path / "images"), "--masks", str(tmp_path / "masks"),
            "--out", str(out), "--n", str(n), "--seed", "0"]
    assert main(argv) == 0
    return out / "synthetic_test.txt"


def test_make_dataset_reports_a_missing_folder_in_one_line(tmp_path, capsys):
    code = main(["make-dataset", "--photos", str(tmp_path / "nope"), "--masks", str(tmp_path), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "not a folder" in err


def test_split_rule_is_the_documented_hash():
    names = [f"image_{i}" for i in range(2000)]
    val = [n for n in names if is_validation(n)]
    assert 0.07 < len(val) / len(names) < 0.13
    assert is_validation("image_100636")  # int(sha1(b"image_100636").hexdigest(), 16) % 10 == 0
    assert not is_validation("image_100005")


def test_split_partitions_the_photos(photos):
    train, val = select_split(photos, "train"), select_split(photos, "val")
    assert sorted(p.name for p in train + val) == sorted(p.name for p in photos)
    assert not {p.name for p in train} & {p.name for p in val}


@pytest.mark.skipif(not SHARED_PHOTOS.is_dir(), reason=f"{SHARED_PHOTOS} is absent (shared data not checked out)")
def test_shared_photos_split_and_synthesize():
    photos = list_photos(SHARED_PHOTOS / "images", SHARED_PHOTOS / "masks")
    val = select_split(photos, "val")
    assert len(photos) == 1797 and 0.07 < len(val) / len(photos) < 0.13
    source = SyntheticComposites(val, seed=0)
    for i in range(5):
        s = source.sample(i)
        assert s.accepted and s.real.shape == (256, 256, 3)


def test_pack_photos_makes_a_smaller_copy_with_the_same_split(tmp_path):
    photos = list_photos(*make_photos(tmp_path / "src", count=4, size=96))
    out = tmp_path / "packed"
    assert main(["pack-photos", "--photos", str(photos[0].image.parent), "--masks", str(photos[0].mask.parent),
                 "--out", str(out), "--quality", "90"]) == 0
    packed = list_photos(out / "images", out / "masks")
    assert [p.name for p in packed] == [p.name for p in photos]  # names, hence the split, are kept
    for before, after in zip(photos, packed):
        (image, mask), (image2, mask2) = load_photo(before), load_photo(after)
        assert np.array_equal(mask, mask2)
        assert np.abs(image.astype(int) - image2).mean() < 3  # JPEG 4:4:4 at quality 90: colours kept
    with pytest.raises(InputError, match="passed"):
        pack_photos(photos, tmp_path / "tiny", max_mib=1e-4)
    assert len(list((tmp_path / "tiny" / "images").iterdir())) == 1  # stopped at the first photo over the limit
    with pytest.raises(InputError, match="quality"):
        pack_photos(photos, tmp_path / "bad", quality=0)
