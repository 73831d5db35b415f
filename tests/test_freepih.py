"""freepih: the losses as pure functions, then the method on tiny random SD components (offline)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from transformers import CLIPTextModel

from harmony_core import imaging
from harmony_core.diffusion import components
from harmony_core.diffusion.pixels import to_tensor
from harmony_core.diffusion.tiny import save_tiny_sd_pipeline
from harmony_core.errors import MethodUnavailable
from harmony_core.methods.freepih import (
    DEFAULT_WEIGHTS,
    WEIGHTS_ENV,
    FreePIH,
    FreePIHSettings,
    StepObjective,
    content_features,
    content_loss,
    denoising_timesteps,
    encode_image,
    mask_weights,
    masked_gram,
    masked_mse,
    noised,
    optimize_delta,
    run_freepih,
    shared_noise,
    stability_loss,
    style_loss,
    style_module_names,
    working_size,
)
from harmony_core.registry import get_method, method_names
from harmony_core.types import HarmonizationRequest

# --- losses -------------------------------------------------------------------------------------


def test_masked_gram_uses_only_the_masked_positions():
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(1, 5, 6, 7, generator=gen)
    mask = torch.zeros(1, 1, 6, 7)
    mask[..., 1:4, 2:6] = 1
    selected = features[0][:, mask[0, 0].bool()]  # (C, N) at the masked positions only
    expected = selected @ selected.T / (selected.shape[1] * 5)
    assert torch.allclose(masked_gram(features, mask)[0], expected, atol=1e-6)
    # Changing features outside the mask leaves the Gram unchanged; inside, it changes it.
    outside = features.clone()
    outside[..., 0, 0] += 10
    assert torch.allclose(masked_gram(outside, mask), masked_gram(features, mask))
    inside = features.clone()
    inside[..., 2, 3] += 10
    assert not torch.allclose(masked_gram(inside, mask), masked_gram(features, mask))


def test_style_loss_is_zero_when_foreground_and_background_features_are_equal():
    gen = torch.Generator().manual_seed(1)
    pattern = torch.randn(1, 8, 4, 4, generator=gen)
    features = pattern.repeat(1, 1, 2, 1)  # the top half is repeated in the bottom half
    fg = torch.zeros(1, 1, 8, 4)
    fg[..., :4, :] = 1
    assert style_loss([features], [fg]).item() == pytest.approx(0.0, abs=1e-10)
    different = torch.cat([pattern, 3 * pattern], dim=2)
    assert style_loss([different], [fg]).item() > 0


def test_style_loss_moves_only_the_foreground():
    gen = torch.Generator().manual_seed(2)
    features = torch.randn(1, 4, 8, 8, generator=gen, requires_grad=True)
    fg = torch.zeros(1, 1, 8, 8)
    fg[..., 2:5, 2:5] = 1
    style_loss([features], [fg]).backward()
    grad_norm = features.grad.abs().sum(dim=1)[0]
    assert grad_norm[fg[0, 0].bool()].min() > 0
    assert grad_norm[~fg[0, 0].bool()].max() == 0  # background Gram detached


def test_style_loss_skips_layers_without_object_or_background():
    features = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(3))
    assert style_loss([features], [torch.zeros(1, 1, 4, 4)]).item() == 0
    assert style_loss([features], [torch.ones(1, 1, 4, 4)]).item() == 0


def test_masked_mse_content_and_stability_losses():
    a = torch.zeros(1, 2, 4, 4)
    b = torch.zeros(1, 2, 4, 4)
    b[..., 0, 0] = 2.0  # a difference at a masked position
    b[..., 3, 3] = 100.0  # and one outside the mask
    w = torch.zeros(1, 1, 4, 4)
    w[..., :2, :2] = 1
    assert masked_mse(a, b, w).item() == pytest.approx(2 * 4.0 / (4 * 2))
    assert content_loss([a, a], [b, b], [w, w]).item() == pytest.approx(2.0)
    assert stability_loss(a, b, w).item() == pytest.approx(1.0)
    assert stability_loss(b, b, w).item() == 0


def test_mask_weights_are_area_fractions():
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., :8, :4] = 1
    weights = mask_weights(mask, (2, 2))
    assert weights[0, 0].tolist() == [[0.5, 0.0], [0.0, 0.0]]


# --- the method on tiny random SD components ---------------------------------------------------

TINY = dict(resolution=64, num_inference_steps=10, noise_level=0.2, lbfgs_max_iter=2)
"""A 64-px image (8x8 latent), 2 denoising steps (t = 91, 1), 2 L-BFGS iterations: seconds on a CPU."""


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return save_tiny_sd_pipeline(tmp_path_factory.mktemp("tiny-sd") / "pipeline", seed=0)


@pytest.fixture(scope="module")
def tiny_method(tiny_folder):
    return FreePIH(weights=tiny_folder, device="cpu", **TINY)


@pytest.fixture
def request64():
    rng = np.random.default_rng(0)
    composite = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)  # resized to 64x64 internally
    mask = np.zeros((48, 64), bool)
    mask[10:30, 20:44] = True
    return HarmonizationRequest(composite, mask, prompt="a cup", seed=3)


def _inputs(method: FreePIH, request: HarmonizationRequest) -> tuple[torch.Tensor, torch.Tensor]:
    size = working_size(*request.size, method.settings.resolution)
    image = to_tensor(imaging.resize_rgb(request.composite, size))
    mask = torch.from_numpy(imaging.resize_mask(request.mask, size))[None, None].float()
    return image, mask


def test_noise_level_maps_to_the_starting_timestep():
    assert denoising_timesteps(FreePIHSettings()) == list(range(181, 0, -20))  # last 10 of 50, t ~ 0.2 T
    assert denoising_timesteps(FreePIHSettings(noise_level=0.5))[0] == 481
    assert denoising_timesteps(FreePIHSettings(num_inference_steps=10, noise_level=0.2)) == [101, 1]
    assert denoising_timesteps(FreePIHSettings(), steps_offset=0)[0] == 180


@pytest.mark.slow
def test_run_re_imposes_the_background_and_reports_steps(tiny_method, request64):
    steps: list[tuple[int, torch.Tensor, torch.Tensor]] = []
    parts = tiny_method.parts()
    image, mask = _inputs(tiny_method, request64)
    outcome = run_freepih(parts, image, mask, request64.prompt, request64.seed, tiny_method.settings,
                          lambda f, m: None, on_step=lambda i, t_prev, z, bg: steps.append((t_prev, z.clone())))
    # The expected background, computed here independently: posterior mean and seeded noise.
    with torch.no_grad():
        z0 = parts.vae.encode(image).latent_dist.mean * parts.vae.config.scaling_factor
    eps = torch.randn(z0.shape, generator=torch.Generator("cpu").manual_seed(request64.seed))
    outside = F.adaptive_avg_pool2d(mask, z0.shape[-2:]) == 0
    assert [t for t, _ in steps] == [1, -1]
    for t_prev, z in steps:
        alpha = 1.0 if t_prev < 0 else float(parts.alphas_cumprod[t_prev])
        expected = alpha ** 0.5 * z0 + (1 - alpha) ** 0.5 * eps
        assert torch.allclose(z[outside.expand_as(z)], expected[outside.expand_as(z)], atol=1e-6)
        assert not torch.allclose(z, expected, atol=1e-3)  # the object did change
    meta = outcome.metadata
    assert meta["start_timestep"] == 101 and len(meta["seconds_per_step"]) == 2
    assert all(1 <= n <= 2 for n in meta["lbfgs_iterations"])


def test_pixels_outside_the_mask_equal_the_composite_and_metadata(tiny_method, request64):
    messages: list[str] = []
    result = tiny_method.run(request64, lambda f, m: messages.append(m))
    assert result.image.shape == request64.composite.shape and result.image.dtype == np.uint8
    assert np.array_equal(result.image[~request64.mask], request64.composite[~request64.mask])
    assert not np.array_equal(result.image[request64.mask], request64.composite[request64.mask])
    meta = result.metadata
    assert meta["method"] == "freepih" and meta["working_resolution"] == "64x64" and meta["prompt"] == "a cup"
    assert meta["parameters"]["w_style"] == 1e4 and meta["parameters"]["lbfgs_max_iter"] == 2
    assert any("L-BFGS iteration 1" in m for m in messages)
    assert sum("done in" in m and "step" in m for m in messages) == 2  # one per denoising step


@pytest.mark.slow
def test_a_prompt_longer_than_the_text_encoder_reads_is_said_so(tiny_method, request64):
    """Issue 30, 5: a long prompt was cut without notice (CLIP keeps 77 tokens)."""
    assert "prompt_note" not in tiny_method.run(request64).metadata
    request64.prompt = "a white cup " * 40
    note = tiny_method.run(request64).metadata["prompt_note"]
    assert "read only its first 77" in note


def test_first_step_optimization_lowers_the_total_loss(tiny_method, request64):
    parts = tiny_method.parts()
    settings = replace(tiny_method.settings, lbfgs_max_iter=5)
    image, mask = _inputs(tiny_method, request64)
    z0 = encode_image(parts, image)
    eps = shared_noise(tuple(z0.shape), 0, torch.device("cpu"))
    t = denoising_timesteps(settings, parts.num_train_timesteps, parts.steps_offset)[0]
    alpha = float(parts.alphas_cumprod[t])
    m_lat = (mask_weights(mask, z0.shape[-2:]) > 0).float()
    cond = components.encode_prompts(parts.tokenizer, parts.text_encoder, ["a cup"])
    with torch.no_grad():
        targets = content_features(parts, image)
    objective = StepObjective(parts, settings, noised(z0, eps, alpha), t, alpha, m_lat, mask, cond, targets,
                              style_module_names(parts.unet, "all"))
    delta, report = optimize_delta(objective, settings)
    assert report.start["stab"] == 0 and report.iterations >= 1
    assert report.end["total"] < report.start["total"]
    with torch.no_grad():
        _, check = objective(delta)  # the reported end loss is the loss at the returned delta
    assert check["total"] == pytest.approx(report.end["total"], rel=1e-5)


@pytest.mark.slow
def test_same_seed_same_output_other_seed_differs(tiny_folder, request64):
    method = FreePIH(weights=tiny_folder, device="cpu", **{**TINY, "lbfgs_max_iter": 1})  # shared parts, cheaper
    first = method.run(request64).image
    assert np.array_equal(method.run(request64).image, first)
    other = HarmonizationRequest(request64.composite, request64.mask, prompt="a cup", seed=4)
    assert not np.array_equal(method.run(other).image, first)


@pytest.mark.parametrize("model, module", [("unet", "up_blocks.2.attentions.1"), ("vae", "encoder.mid_block")])
def test_hooks_are_removed_after_an_exception(tiny_method, request64, model, module):
    """An error inside a forward pass, while the feature hooks are attached, leaves no hook behind."""
    parts = tiny_method.parts()
    target = dict(getattr(parts, model).named_modules())[module]

    def explode(*_: object) -> None:
        if any(m._forward_hooks for m in getattr(parts, model).modules() if m is not target):
            raise RuntimeError("boom")  # only while freepih's feature hooks are attached

    bomb = target.register_forward_hook(explode)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            tiny_method.run(request64)
    finally:
        bomb.remove()
    for part in (parts.unet, parts.vae):
        assert all(not m._forward_hooks for m in part.modules())


def test_an_interrupted_run_leaves_no_hooks(tiny_method, request64):
    def stop(fraction: float, message: str) -> None:
        if "L-BFGS iteration 1" in message:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tiny_method.run(request64, stop)
    parts = tiny_method.parts()
    for part in (parts.unet, parts.vae):
        assert all(not m._forward_hooks for m in part.modules())


def test_style_layers_are_the_up_blocks_cross_attention_transformers(tiny_method):
    unet = tiny_method.parts().unet
    assert style_module_names(unet, "all") == ["up_blocks.1.attentions.0", "up_blocks.1.attentions.1",
                                               "up_blocks.2.attentions.0", "up_blocks.2.attentions.1"]
    assert style_module_names(unet, "last") == ["up_blocks.1.attentions.1", "up_blocks.2.attentions.1"]


def test_saved_folder_loads_through_the_real_loader_and_shares_identical_parts(tiny_folder, tmp_path):
    method = FreePIH(weights=tiny_folder, device="cpu", **TINY)
    assert method.available()
    parts = method.parts()
    assert parts.vae is components.load(AutoencoderKL, tiny_folder, "vae", torch.float32, "cpu")
    # A second folder with identical VAE / text-encoder weights (e.g. DiffHarmony's base/) shares them.
    twin = save_tiny_sd_pipeline(tmp_path / "twin", in_channels=9, seed=0)
    assert components.load(AutoencoderKL, twin, "vae", torch.float32, "cpu") is parts.vae
    assert components.load(CLIPTextModel, twin, "text_encoder", torch.float32, "cpu") is parts.text_encoder
    assert method.weights_source == str(tiny_folder)


def test_missing_weights_say_exactly_what_to_do(tmp_path, monkeypatch, tiny_folder):
    missing = tmp_path / "nowhere"
    state = FreePIH(weights=missing).available()
    assert not state and str(missing) in state.reason and WEIGHTS_ENV in state.reason
    incomplete = tmp_path / "incomplete"
    incomplete.mkdir()
    state = FreePIH(weights=incomplete).available()
    assert not state and "unet/config.json" in state.reason
    monkeypatch.setenv(WEIGHTS_ENV, str(tiny_folder))
    assert FreePIH().source() == str(tiny_folder) and FreePIH().available()
    monkeypatch.delenv(WEIGHTS_ENV)
    assert FreePIH().source() == DEFAULT_WEIGHTS
    with pytest.raises(MethodUnavailable, match="freepih cannot run here"):
        FreePIH(weights=missing).run(HarmonizationRequest(np.zeros((8, 8, 3), np.uint8), np.eye(8, dtype=bool)))


def test_registered():
    assert "freepih" in method_names()
    method = get_method("freepih")
    state = method.available()
    assert method.family == "diffusion" and (state.ok or state.reason)


def test_random_weights_instance_runs_without_files(request64):
    method = FreePIH.random_weights("tiny", device="cpu", **TINY, optimized_steps=1)
    assert method.available() and method.weights_source == "random-tiny"
    result = method.run(request64)
    assert result.metadata["weights"] == "random-tiny"
    assert result.metadata["lbfgs_iterations"][1] == 0  # only the first step is optimized
    assert "loss_end" in result.metadata["step_log"][0] and "loss_end" not in result.metadata["step_log"][1]
    assert result.metadata["steps"] == 2  # a count: the status table's cell (issue 30, 4)
