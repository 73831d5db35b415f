import cv2
import numpy as np
import pytest

from harmony_core.methods.classical import Poisson, PoissonSettings, match_cdf, reference_region
from harmony_core.metrics import image_metrics
from harmony_core.registry import availability_table, get_method, method_names
from harmony_core.types import HarmonizationRequest

CLASSICAL = ["composite", "reinhard", "histogram", "poisson"]


def test_registry_lists_classical_methods():
    assert set(CLASSICAL) <= set(method_names())
    rows = {r["method"]: r for r in availability_table()}
    assert all(rows[n]["available"] is True and rows[n]["family"] == "classical" for n in CLASSICAL)
    assert get_method("reinhard") is get_method("reinhard")  # one shared instance
    with pytest.raises(KeyError, match="Unknown method"):
        get_method("nope")


@pytest.mark.parametrize("name", ["reinhard", "histogram", "poisson"])
def test_baselines_reduce_the_error_of_a_recoloured_object(name):
    # A stationary texture: the object's true colours follow the same statistics as its surroundings.
    rng = np.random.default_rng(5)
    noise = cv2.GaussianBlur(rng.normal(0, 25, (96, 128, 3)), (0, 0), 2)
    real = np.clip(np.array([120, 100, 80]) + noise, 0, 255).astype(np.uint8)
    mask = np.zeros((96, 128), bool)
    mask[30:70, 40:90] = True
    composite = real.copy()
    composite[mask] = np.clip(composite[mask] * np.array([1.3, 0.8, 0.9]) + 12, 0, 255).astype(np.uint8)
    before = image_metrics(composite, real, mask).fmse
    after = image_metrics(get_method(name).run(HarmonizationRequest(composite, mask)).image, real, mask).fmse
    assert after < 0.5 * before


def test_composite_changes_nothing(scene):
    _, composite, mask = scene
    assert np.array_equal(get_method("composite").run(HarmonizationRequest(composite, mask)).image, composite)


def test_reinhard_matches_ring_statistics():
    rng = np.random.default_rng(3)
    image = np.full((80, 80, 3), (40, 90, 160), np.uint8) + rng.integers(0, 20, (80, 80, 3), dtype=np.uint8)
    mask = np.zeros((80, 80), bool)
    mask[30:50, 30:50] = True
    image[mask] = (220, 200, 30)
    out = get_method("reinhard").run(HarmonizationRequest(image, mask)).image
    assert np.abs(out[mask].mean(axis=0) - image[~mask].mean(axis=0)).max() < 6


def test_reference_region_ring_and_fallback():
    mask = np.zeros((100, 100), bool)
    mask[40:60, 40:60] = True
    ring = reference_region(mask, "ring", 0.5, 64)
    assert not (ring & mask).any() and ring[35, 50] and not ring[0, 0]
    assert reference_region(mask, "background", 0.5, 64).sum() == 10000 - 400
    # A ring too small to trust falls back to the whole background.
    assert reference_region(mask, "ring", 0.5, 10**6).sum() == 10000 - 400


def test_match_cdf_reproduces_the_reference_distribution():
    rng = np.random.default_rng(0)
    values = rng.normal(0, 1, 20000)
    reference = rng.uniform(10, 20, 30000)
    out = match_cdf(values, reference, 1024)
    assert np.all(np.diff(out[np.argsort(values)]) >= -1e-9)  # monotone
    assert np.quantile(out, [0.1, 0.5, 0.9]) == pytest.approx([11, 15, 19], abs=0.1)
    assert np.all(match_cdf(np.full(5, 3.0), np.full(5, 3.0), 16) == 3.0)


def _poisson(image, mask, settings=None):
    return Poisson(settings=settings).run(HarmonizationRequest(image, mask)).image


def test_poisson_removes_a_constant_offset_exactly():
    # Texture inside the object, flat where it meets the background: with the object's level
    # shifted, the gradients alone determine it again.
    real = np.full((64, 64, 3), 90, np.uint8)
    y, x = np.mgrid[0:16, 0:26]
    real[22:38, 17:43] = np.dstack([90 + x, 90 + y, 90 + (x * y) % 7]).astype(np.uint8)
    mask = np.zeros((64, 64), bool)
    mask[20:40, 15:45] = True
    composite = real.copy()
    composite[mask] += 25  # same gradients inside, wrong level
    assert np.abs(_poisson(composite, mask).astype(int) - real).max() <= 1


@pytest.mark.parametrize("where", ["border", "corner", "tiny", "two-blobs"])
def test_poisson_edge_cases(where):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    mask = np.zeros((40, 50), bool)
    if where == "border":
        mask[:, :10] = True
    elif where == "corner":
        mask[:6, :6] = True
    elif where == "tiny":
        mask[20, 20] = True
    else:
        mask[5:10, 5:10] = mask[30:35, 30:40] = True
    out = _poisson(image, mask)
    assert np.array_equal(out[~mask], image[~mask])
    if where == "tiny":  # one pixel: becomes the mean of its four neighbours
        neighbours = image[[19, 21, 20, 20], [20, 20, 19, 21]].astype(float).mean(axis=0)
        assert np.abs(out[20, 20] - neighbours).max() <= 1


def test_poisson_multiscale_agrees_with_exact_solve():
    y, x = np.mgrid[0:200, 0:200]
    real = np.dstack([x + 20, y + 10, (x + y) // 2 + 30]).astype(np.uint8)
    mask = np.zeros((200, 200), bool)
    mask[40:170, 30:180] = True
    composite = real.copy()
    composite[mask] = np.clip(composite[mask].astype(int) + 20, 0, 255)
    exact = _poisson(composite, mask, PoissonSettings(max_unknowns=10**6)).astype(int)
    coarse = _poisson(composite, mask, PoissonSettings(max_unknowns=2000)).astype(int)
    assert np.abs(exact - coarse)[mask].mean() < 0.1


def test_progress_is_reported(scene):
    _, composite, mask = scene
    seen = []
    get_method("reinhard").run(HarmonizationRequest(composite, mask), lambda f, m: seen.append(f))
    assert seen[0] == 0.0 and seen[-1] == 1.0
