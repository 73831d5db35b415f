"""The contract every registered method keeps, checked for each one the registry holds (a method
added later is checked without a line here): model-backed methods run tiny random weights
(`random_weights("tiny")`) with their `quick_settings`."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from harmony_core.errors import InputError, MethodUnavailable
from harmony_core.registry import Method, method_class, method_names, weighted_methods
from harmony_core.types import HarmonizationRequest, HarmonizationResult

SIZES = ((64, 48), (72, 88))
"""(width, height) of the two runs: neither square nor a multiple of 64."""


def build(name: str) -> Method:
    """An instance of the registered method that runs here: tiny random weights where it takes weights."""
    cls = method_class(name)
    options = dict(cls.quick_settings)
    return cls.random_weights("tiny", "cpu", **options) if cls.takes_weights else cls(**options)


def scene(size: tuple[int, int], seed: int = 5) -> HarmonizationRequest:
    """A smooth scene with a recoloured rectangle, a point on the object and a prompt."""
    import cv2

    width, height = size
    rng = np.random.default_rng(0)
    real = cv2.resize(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8), (width, height), interpolation=cv2.INTER_CUBIC)
    mask = np.zeros((height, width), bool)
    mask[height // 4: 3 * height // 4, width // 3: 2 * width // 3] = True
    composite = real.copy()
    composite[mask] = np.clip(composite[mask] * np.array([1.3, 0.8, 0.9]) + 12, 0, 255).astype(np.uint8)
    return HarmonizationRequest(composite, mask, background=real, prompt="a box", seed=seed, point=(width // 2, height // 2))


@pytest.fixture(scope="module")
def runs():
    """name -> (instance, result at the first size): each method is built and run once for the module."""
    done: dict[str, tuple[Method, HarmonizationResult]] = {}

    def get(name: str) -> tuple[Method, HarmonizationResult]:
        if name not in done:
            method = build(name)
            done[name] = method, method.run(scene(SIZES[0]))
        return done[name]

    return get


@pytest.mark.parametrize("name", method_names())
def test_pixels_outside_the_mask_are_the_composite_and_the_metadata_is_filled(name, runs):
    method, result = runs(name)
    request = scene(SIZES[0])
    assert result.image.shape == request.composite.shape and result.image.dtype == np.uint8
    assert np.array_equal(result.image[~request.mask], request.composite[~request.mask])
    meta = result.metadata
    assert (meta["method"], meta["family"], meta["seed"], meta["resolution"]) == (name, method.family, 5, "64x48")
    assert meta["parameters"] == method.parameters() and meta["seconds"] >= 0
    assert meta["weights"] == method.weights_source and meta["device"] == method.device


@pytest.mark.parametrize("name", method_names())
def test_the_same_seed_gives_the_same_output(name, runs):
    method, result = runs(name)
    assert np.array_equal(method.run(scene(SIZES[0])).image, result.image)


@pytest.mark.parametrize("name", method_names())
def test_it_runs_at_two_sizes(name, runs):
    method, _ = runs(name)
    request = scene(SIZES[1])
    result = method.run(request)
    assert result.image.shape == request.composite.shape
    assert np.array_equal(result.image[~request.mask], request.composite[~request.mask])


@pytest.mark.parametrize("name", method_names())
def test_the_maps_are_the_declared_ones_sized_like_the_image(name, runs):
    method, result = runs(name)
    assert set(result.maps) == set(method.maps) and method.point_maps <= set(method.maps)
    for values in result.maps.values():
        assert values.shape == scene(SIZES[0]).mask.shape and 0 <= values.min() and values.max() <= 1


@pytest.mark.parametrize("name", method_names())
def test_settings_are_frozen_validated_and_copied_per_request(name, runs):
    method, _ = runs(name)
    with pytest.raises(InputError, match="has no option"):
        method.with_settings(no_such_option=1)
    assert method.with_settings().settings == method.settings
    with pytest.raises(dataclasses.FrozenInstanceError):
        method.settings.no_such_option = 1


@pytest.mark.parametrize("name", weighted_methods())
def test_missing_weights_say_why_and_parameters_never_load(name, tmp_path):
    method = method_class(name)(weights=str(tmp_path / "absent"), device="cpu")
    state = method.available()
    assert not state and state.reason
    assert method.parameters() is not None and method.loaded() is None
    with pytest.raises(MethodUnavailable, match=f"{name} cannot run here") as caught:
        method.run(scene(SIZES[0]))
    assert caught.value.reason == state.reason and method.loaded() is None


@pytest.mark.parametrize("name", method_names())
def test_the_class_declares_what_the_studio_reads(name):
    cls = method_class(name)
    assert cls.family in ("classical", "network", "diffusion") and cls.title and cls.summary
    assert cls.inputs <= {"prompt", "style"}
    assert cls.cost.seconds(dict(cls.quick_settings), SIZES[0], "cpu") > 0
    assert set(cls.quick_settings) <= set(cls.option_names())
