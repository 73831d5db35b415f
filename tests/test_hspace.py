"""hspace: h-space content injection, on a tiny UNet2DModel (no weights, nothing downloaded)."""


import numpy as np
import pytest
import torch

from harmony_core.bench import create_method, parse_options
from harmony_core.diffusion import components, ddim, tiny, unet_parts
from harmony_core.diffusion.pixels import to_uint8
from harmony_core.errors import InputError
from harmony_core.methods import hspace
from harmony_core.methods.hspace import HSpace
from harmony_core.types import HarmonizationRequest
from tests.support import ddim_sample, ddpm_like_unet


@pytest.fixture(scope="module")
def unet():
    return ddpm_like_unet(seed=0)


def make(unet, **options) -> HSpace:
    return HSpace(unet=unet, device="cpu", **{"n_inv": 10, "n_gen": 20, "n_inject": 10, **options})


def smooth_image(seed: int, size: int = 32) -> np.ndarray:
    import cv2

    rng = np.random.default_rng(seed)
    return cv2.resize(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8), (size, size), interpolation=cv2.INTER_CUBIC)


def full_mask(shape) -> torch.Tensor:
    return torch.ones((1, 1) + shape)


# --- math ----------------------------------------------------------------------------------------

def test_slerp_keeps_the_norm_and_handles_identical_vectors():
    g = torch.Generator().manual_seed(0)
    h, c = torch.randn(2, 8, 4, 4, generator=g), 3 * torch.randn(2, 8, 4, 4, generator=g)
    c_matched = hspace.norm_match(c, h)
    assert torch.allclose(c_matched.flatten(1).norm(dim=1), h.flatten(1).norm(dim=1))
    for gamma in (0.0, 0.3, 1.0):
        out = hspace.slerp(h, c_matched, gamma)
        assert torch.allclose(out.flatten(1).norm(dim=1), h.flatten(1).norm(dim=1), rtol=1e-5)
    assert torch.allclose(hspace.slerp(h, c_matched, 1.0), c_matched, atol=1e-5)
    same = hspace.slerp(h, h.clone(), 0.3)
    assert torch.isfinite(same).all() and torch.allclose(same, h)
    opposite = hspace.slerp(h, -h, 0.3)  # cosine clamped at -1: finite
    assert torch.isfinite(opposite).all()


def test_mask_confines_the_change_in_h():
    g = torch.Generator().manual_seed(1)
    h, c = torch.randn(1, 8, 4, 4, generator=g), torch.randn(1, 8, 4, 4, generator=g)
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2, :] = 1.0
    mask[..., 2, 0] = 0.5
    out = hspace.inject(h, c, 0.3, mask)
    assert torch.equal(out[..., 3, :], h[..., 3, :]) and torch.equal(out[..., 2, 1:], h[..., 2, 1:])
    assert (out[..., :2, :] - h[..., :2, :]).abs().amin(dim=1).gt(0).all()
    half = (out[..., 2, 0] - h[..., 2, 0]).norm()
    full = (hspace.inject(h, c, 0.3, torch.ones_like(mask))[..., 2, 0] - h[..., 2, 0]).norm()
    assert half == pytest.approx(0.5 * full.item(), rel=1e-5)


def test_mask_grid_is_an_area_average():
    mask = np.zeros((64, 64), bool)
    mask[:16, :16] = True  # one full cell of an 8x8 grid is 8x8 px: 4 full cells
    mask[16:20, :8] = True  # half a cell
    grid = hspace.mask_grid(mask, (8, 8))
    assert grid[:2, :2].min() == 1.0 and grid[2, 0] == pytest.approx(0.5) and grid.sum() == pytest.approx(4.5)


def test_schedule_steps_pick_the_evenly_spaced_timesteps():
    generation = ddim.evenly_spaced(1000)
    assert hspace.schedule_steps(generation, 50) == set(ddim.evenly_spaced(50))
    assert len(hspace.schedule_steps(ddim.evenly_spaced(200), 50)) == 50
    assert hspace.schedule_steps(ddim.evenly_spaced(20), 50) == set(ddim.evenly_spaced(20))


# --- inversion, generation, injection -------------------------------------------------------------

@pytest.mark.slow
def test_gamma_zero_reproduces_plain_ddim_generation(unet):
    method = make(unet, gamma=0.0, t_boost=-1)
    content, _ = method.invert(smooth_image(1))
    style, _ = method.invert(smooth_image(2))
    out, change, injections = method.generate(style, content, full_mask((8, 8)), seed=0)
    plain = ddim_sample(style.x_T, lambda x, t: unet(x, t).sample, ddim.evenly_spaced(20),
                             ddim.alphas_cumprod_from_betas(ddim.linear_betas()))
    assert injections > 0 and change.abs().max() == 0
    assert torch.equal(out, plain)


@pytest.mark.slow
def test_injection_changes_the_generation_and_only_where_h_changed(unet):
    method = make(unet, t_boost=-1)
    content, _ = method.invert(smooth_image(1))
    style, _ = method.invert(smooth_image(2))
    base, _, _ = method.generate(style, content, torch.zeros(1, 1, 8, 8), seed=0)
    injected, change, injections = method.generate(style, content, full_mask((8, 8)), seed=0)
    assert injections == len([t for t in ddim.evenly_spaced(10) if t >= 400])
    assert change.min() > 0 and (injected - base).abs().mean() > 1e-4


@pytest.mark.slow
def test_inversion_then_generation_reconstructs_the_input(unet):
    method = make(unet, n_inv=50, n_gen=50, gamma=0.0, t_boost=-1)
    image = smooth_image(3)
    inv, _ = method.invert(image)
    assert set(inv.h) == set(ddim.evenly_spaced(50)) and inv.h[999].shape == (1, 32, 8, 8)
    out, _, _ = method.generate(inv, inv, torch.zeros(1, 1, 8, 8), seed=0)
    error = np.abs(to_uint8(out).astype(int) - image.astype(int)).mean()  # generated at 32 px
    assert error < 3.0  # grey levels (measured ~1)


@pytest.mark.slow
def test_calibration_path_runs_and_differs(unet):
    content, _ = make(unet).invert(smooth_image(1))
    style, _ = make(unet).invert(smooth_image(2))
    plain, _, _ = make(unet, t_boost=-1).generate(style, content, full_mask((8, 8)), seed=0)
    calibrated, _, _ = make(unet, t_boost=-1, omega=0.5).generate(style, content, full_mask((8, 8)), seed=0)
    assert torch.isfinite(calibrated).all() and not torch.equal(plain, calibrated)


@pytest.mark.slow
def test_inversion_cache_by_bytes_not_names(unet):
    method = make(unet)
    image = smooth_image(4)
    first, hit = method.invert(image)
    assert not hit
    again, hit = method.invert(image.copy())
    assert hit and again is first
    changed = image.copy()
    changed[0, 0, 0] ^= 1
    assert not method.invert(changed)[1]
    other_steps = make(unet, n_inv=12)
    other_steps._cache = method._cache  # same store, different parameters: must miss
    assert not other_steps.invert(image)[1]
    for seed in range(10):
        method.invert(smooth_image(100 + seed))
    assert len(method._cache) == hspace.CACHE_ENTRIES


# --- the method end to end -----------------------------------------------------------------------

@pytest.fixture
def request_():
    composite = smooth_image(5, 48)[:, :40].copy()  # 40x48: not square, not the working size
    mask = np.zeros((48, 40), bool)
    mask[10:30, 8:24] = True
    background = smooth_image(6, 48)[:, :40].copy()
    return HarmonizationRequest(composite=composite, mask=mask, background=background, seed=3)


@pytest.mark.slow
def test_run_keeps_size_and_background_and_gives_maps(unet, request_):
    method = make(unet)
    steps = []
    result = method.run(request_, lambda f, m: steps.append(f))
    assert result.image.shape == request_.composite.shape
    assert np.array_equal(result.image[~request_.mask], request_.composite[~request_.mask])
    assert set(result.maps) == {"hspace injection mask", "hspace |h~-h|"}
    for values in result.maps.values():
        assert values.shape == request_.mask.shape and values.min() >= 0 and values.max() <= 1
    assert result.maps["hspace |h~-h|"].max() == 1.0
    assert result.metadata["style"] == "background" and result.metadata["parameters"]["n_gen"] == 20
    assert steps == sorted(steps) and len(steps) > 20
    again = method.run(request_)
    assert again.metadata["inversion_cache_hits"] == 2


def test_progress_counts_each_phase_and_the_fraction_covers_the_run(unet, request_):
    """Issue 30, 5: "hspace: generating 80/1049 - 69.2%" mixed a count of the whole run into a phase."""
    seen = []
    make(unet, n_inv=5, n_gen=8).run(request_, lambda f, m: seen.append((f, m)))
    messages = [m for _, m in seen]
    assert "hspace: inverting the composite 4/4" in messages and "hspace: inverting the style image 4/4" in messages
    assert "hspace: generating 1/8" in messages and "hspace: generating 8/8" in messages
    generating = [f for f, m in seen if "generating" in m]
    assert generating[0] > 0.5 and generating == sorted(generating)  # 8 of the run's 16 UNet steps come last


@pytest.mark.slow
def test_same_seed_same_output_different_seed_differs(unet, request_):
    method = make(unet, n_gen=50)  # boosting (eta 1) at schedule steps with t <= 200 draws noise
    a, b = method.run(request_).image, method.run(request_).image
    assert np.array_equal(a, b)
    request_.seed = 4
    c = method.run(request_).image
    assert not np.array_equal(a, c)


def test_availability_when_weights_are_missing(tmp_path, monkeypatch):
    state = HSpace(weights=tmp_path / "nowhere").available()
    assert not state and "does not exist" in state.reason and hspace.WEIGHTS_ENV in state.reason
    state = HSpace().available()  # default Hub id, not in this machine's cache
    assert not state and hspace.DEFAULT_WEIGHTS in state.reason and components.ALLOW_DOWNLOAD_ENV in state.reason
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv(hspace.WEIGHTS_ENV, str(tmp_path / "empty"))
    state = HSpace().available()
    assert not state and "config.json" in state.reason
    with pytest.raises(Exception, match="cannot run here"):
        HSpace().run(HarmonizationRequest(composite=smooth_image(0), mask=np.eye(32, dtype=bool)))


def test_loads_a_weights_folder_through_the_shared_loader(tmp_path, request_):
    folder = tiny.save_tiny_ddpm(tmp_path / "ddpm", seed=0)
    method = HSpace(device="cpu", n_inv=5, n_gen=5, n_inject=5)
    method.set_weights(folder)
    assert method.available() and method.weights_source == str(folder)
    assert method.run(request_).image.shape == request_.composite.shape
    components.clear_cache()


@pytest.mark.slow
def test_loads_an_sdedit_injectfusion_ckpt(tmp_path, request_):
    """A researcher's DDPM .ckpt (the original PyTorch layout) runs as it is, converted on load."""
    from tests.test_ddpm_ckpt import ddpm_state_dict

    path = tmp_path / "church_outdoor.ckpt"
    missing = HSpace(weights=path).available()
    assert not missing and "does not exist" in missing.reason
    # 256 px like InjectFusion's models; attention only at 32 px keeps the tiny network cheap.
    torch.save(ddpm_state_dict(seed=4, mult=(1, 1, 1, 1), attn_levels={3}), path)
    method = HSpace(weights=path, device="cpu", n_inv=3, n_gen=3, n_inject=3)
    assert method.available()
    result = method.run(request_)
    assert result.image.shape == request_.composite.shape and result.metadata["working_size"] == 256
    assert method.weights_source == str(path) and method.unet().config.block_out_channels[0] == 32
    (tmp_path / "bad.ckpt").write_bytes(b"junk")
    with pytest.raises(Exception, match="hspace cannot use"):
        HSpace(weights=tmp_path / "bad.ckpt", device="cpu", n_inv=3, n_gen=3).run(request_)


def test_options_random_weights_and_bench_helpers():
    assert parse_options(["n_gen=50", "gamma=0.4", "x=abc"]) == {"n_gen": 50, "gamma": 0.4, "x": "abc"}
    with pytest.raises(InputError, match="no option"):
        HSpace(n_gen_typo=3)
    with pytest.raises(InputError, match="n_gen"):
        HSpace(n_gen=0)
    small = HSpace.random_weights("tiny", "cpu", n_gen=7)
    assert small.settings.n_gen == 7 and small.available() and "random" in small.weights_source
    assert create_method("hspace", {"n_gen": 9}).settings.n_gen == 9
    with pytest.raises(InputError, match="random-weight"):
        create_method("composite", random_weights=True)


def test_parts_are_used_exactly(unet):
    """The decoder receives the same skips for h and h~: with h~ = h the eps are identical."""
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    enc = unet_parts.encode(unet, x, 600)
    assert torch.equal(unet_parts.decode(unet, hspace.inject(enc.h, enc.h, 0.0, full_mask((8, 8))), enc.skips, enc.emb),
                       unet(x, 600).sample)
