"""The shared diffusion toolkit: UNet parts, DDIM math, hooks, the shared loader, random models."""

import math
from pathlib import Path

import pytest
import torch

from harmony_core.diffusion import components, ddim, hooks, tiny, unet_parts
from tests.support import ddim_sample, ddpm_like_unet, match_modules


@pytest.fixture(scope="module")
def unet():
    return tiny.ddpm_unet("tiny", seed=0)


# --- unet_parts ------------------------------------------------------------------------------

def test_parts_compose_exactly_to_the_unet(unet):
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    for t in (0, 417, 999):
        enc = unet_parts.encode(unet, x, t)
        assert enc.h.shape == (2, 32, 8, 8)
        assert enc.skips[0].shape == (2, 16, 32, 32)  # conv_in's output is the first skip
        assert torch.equal(unet_parts.decode(unet, enc.h, enc.skips, enc.emb), unet(x, t).sample)
        assert torch.equal(unet_parts.forward(unet, x, torch.tensor(t)), unet(x, t).sample)


def test_full_ddpm_h_is_512x8x8_at_256px():
    with torch.device("meta"):
        from diffusers import UNet2DModel

        model = UNet2DModel(**tiny.DDPM_256_UNET)
        enc = unet_parts.encode(model, torch.empty(1, 3, 256, 256), 10)
    assert tuple(enc.h.shape) == (1, 512, 8, 8)


# --- ddim ------------------------------------------------------------------------------------

def test_schedules():
    assert ddim.evenly_spaced(50)[:3] == [0, 20, 40] and ddim.evenly_spaced(50)[-1] == 999
    assert len(ddim.evenly_spaced(50)) == 50 and ddim.evenly_spaced(1000) == list(range(1000))
    assert ddim.evenly_spaced(50, kind="leading") == list(range(0, 1000, 20))
    pairs = ddim.step_pairs([0, 10, 20])
    assert pairs == [(20, 10), (10, 0), (0, -1)]
    start, steps = ddim.noise_level_to_timestep(0.2, ddim.evenly_spaced(50, kind="leading"))
    assert start == 180 and len(steps) == 10 and steps[-1] == 0
    ac = ddim.alphas_cumprod_from_betas(ddim.linear_betas())
    assert ac.dtype == torch.float64 and len(ac) == 1000
    assert ac[0].item() == pytest.approx(1 - 1e-4) and ddim.alpha_at(ac, -1) == 1.0


def test_ddim_step_matches_hand_computed_values():
    x, eps = torch.tensor([1.0], dtype=torch.float64), torch.tensor([0.5], dtype=torch.float64)
    # P = (1 - sqrt(.5) * .5) / sqrt(.5) = 0.9142135624; x' = sqrt(.8) P + sqrt(.2) * .5
    assert ddim.predict_x0(x, eps, 0.5).item() == pytest.approx(0.9142135624, abs=1e-9)
    assert ddim.ddim_step(x, eps, 0.5, 0.8).item() == pytest.approx(1.0413042663, abs=1e-9)
    # eta 1: sigma = sqrt(.2/.5) sqrt(1 - .5/.8) = 0.3872983346; direction sqrt(.2 - .15) = sqrt(.05)
    assert ddim.ddim_sigma(0.5, 0.8, 1.0) == pytest.approx(0.3872983346, abs=1e-9)
    z = torch.randn((1,), generator=torch.Generator().manual_seed(3), dtype=torch.float32).double()
    got = ddim.ddim_step(x, eps, 0.5, 0.8, eta=1.0, generator=torch.Generator().manual_seed(3))
    expected = math.sqrt(0.8) * 0.9142135624 + math.sqrt(0.05) * 0.5 + 0.3872983346 * z.item()
    assert got.item() == pytest.approx(expected, abs=1e-8)
    # asymmetric: x0 from eps~, direction from eps
    asym = ddim.ddim_step(x, torch.tensor([0.0], dtype=torch.float64), 0.5, 0.8, eps_direction=eps)
    assert asym.item() == pytest.approx(math.sqrt(0.8) * math.sqrt(2) + math.sqrt(0.2) * 0.5, abs=1e-9)
    with pytest.raises(ValueError, match="Generator"):
        ddim.ddim_step(x, eps, 0.5, 0.8, eta=1.0)


def test_ddim_sample_matches_diffusers_scheduler(unet):
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                              clip_sample=False, set_alpha_to_one=True)
    scheduler.set_timesteps(10)
    x_T = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    x = x_T
    for t in scheduler.timesteps:
        x = scheduler.step(unet(x, t).sample, t, x).prev_sample
    ac = ddim.alphas_cumprod_from_scheduler(scheduler)
    ours = ddim_sample(x_T, lambda x, t: unet(x, t).sample, ddim.evenly_spaced(10, kind="leading"), ac)
    assert torch.allclose(ours, x, atol=1e-4)


@pytest.mark.slow
def test_inversion_then_generation_reconstructs():
    unet = ddpm_like_unet(seed=0)  # a random UNet's inversion is ill-posed; see ddpm_like_unet
    image = torch.nn.functional.interpolate(torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(2)),
                                            size=32, mode="bilinear") * 2 - 1
    ac = ddim.alphas_cumprod_from_betas(ddim.linear_betas())
    steps = ddim.evenly_spaced(50)
    seen = []
    x_T = ddim.ddim_invert(image, lambda x, t: unet(x, t).sample, steps, ac, callback=lambda i, t, x: seen.append(t))
    assert seen == steps[1:]
    assert (x_T - image).abs().mean() > 0.3  # it really went to noise
    back = ddim_sample(x_T, lambda x, t: unet(x, t).sample, steps, ac)
    assert (back - image).abs().mean() < 0.02  # 0.0074 measured, in [-1, 1] units


# --- hooks -----------------------------------------------------------------------------------

def test_hooks_capture_differentiable_features_and_are_removed_after_an_error(unet):
    names = match_modules(unet, ["mid_block", "up_blocks.0.attentions.?"])
    assert names == ["up_blocks.0.attentions.0", "up_blocks.0.attentions.1", "mid_block"]  # model order
    x = torch.randn(1, 3, 32, 32, requires_grad=True)
    with hooks.capture(unet, names) as feats:
        unet(x, 10)
    assert set(feats) == set(names) and feats["mid_block"].shape == (1, 32, 8, 8)
    feats["mid_block"].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(RuntimeError, match="boom"):
        with hooks.capture(unet, names):
            raise RuntimeError("boom")
    assert all(not m._forward_hooks for m in unet.modules())
    with pytest.raises(KeyError, match="no submodule"):
        with hooks.capture(unet, ["mid_blok"]):
            pass


# --- components ------------------------------------------------------------------------------

@pytest.mark.slow
def test_cache_shares_identical_weights_across_folders(tmp_path):
    from diffusers import AutoencoderKL, UNet2DModel

    components.clear_cache()
    a = tiny.save_tiny_ddpm(tmp_path / "a", seed=0)
    b = tiny.save_tiny_ddpm(tmp_path / "b", seed=0)
    c = tiny.save_tiny_ddpm(tmp_path / "c", seed=1)
    ua = components.load(UNet2DModel, a, dtype=torch.float32, device="cpu")
    assert components.load(UNet2DModel, str(b), dtype=torch.float32, device="cpu") is ua
    assert components.load(UNet2DModel, c, dtype=torch.float32, device="cpu") is not ua
    assert not ua.training and not any(p.requires_grad for p in ua.parameters())
    # SD-style folders: the same VAE under two pipelines is one object
    p1 = tiny.save_tiny_sd_pipeline(tmp_path / "sd", in_channels=4, seed=5)
    p2 = tiny.save_tiny_sd_pipeline(tmp_path / "harmony" / "base", in_channels=9, seed=5)
    assert components.load(AutoencoderKL, p1, "vae", torch.float32, "cpu") is components.load(
        AutoencoderKL, p2, "vae", torch.float32, "cpu")
    assert components.cache_size() == 3
    components.clear_cache()


def test_loaded_tiny_pipeline_round_trips(tmp_path):
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = tiny.save_tiny_sd_pipeline(tmp_path / "p", in_channels=9)
    tok = components.load(CLIPTokenizer, folder, "tokenizer", device="cpu")
    ids = tok("", padding="max_length", max_length=77, return_tensors="pt").input_ids
    text = components.load(CLIPTextModel, folder, "text_encoder", device="cpu")(ids).last_hidden_state
    unet = components.load(UNet2DConditionModel, folder, "unet", device="cpu")
    out = unet(torch.randn(1, 9, 8, 8), 10, encoder_hidden_states=text).sample
    assert out.shape == (1, 4, 8, 8) and text.shape == (1, 77, 32)
    s1, s2 = (components.load(DDIMScheduler, folder, "scheduler") for _ in range(2))
    assert s1 is not s2 and s1.config.steps_offset == 1  # schedulers are stateful: never shared
    components.clear_cache()


def test_availability_names_what_is_missing(tmp_path, monkeypatch):
    how = "HARMONY_TEST_WEIGHTS or --weights"
    required = ("config.json", "*.safetensors|*.bin")
    state = components.check(None, required, how)
    assert not state and how in state.reason
    state = components.check(str(tmp_path / "nowhere"), required, how)
    assert not state and "does not exist" in state.reason and how in state.reason
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    state = components.check(tmp_path / "half", required, how)
    assert not state and "*.safetensors|*.bin" in state.reason and "config.json," not in state.reason
    assert components.check(tiny.save_tiny_ddpm(tmp_path / "ok"), required, how)

    calls = []
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def spy(*args, **kwargs):
        """A Hub lookup that answers like an empty local cache: nothing reaches the Hub client."""
        calls.append(kwargs)
        raise LocalEntryNotFoundError("not in the local cache (test double)")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", spy)
    state = components.check("harmony-studio-test/not-a-cached-repo", required, how, files=("config.json",))
    assert not state and "not in the local Hugging Face cache" in state.reason
    assert components.ALLOW_DOWNLOAD_ENV in state.reason and how in state.reason
    state = components.check("harmony-studio-test/not-a-cached-repo", required, how)
    assert not state and "hf download" in state.reason and components.ALLOW_DOWNLOAD_ENV not in state.reason
    assert calls and all(c["local_files_only"] for c in calls)
    monkeypatch.setenv(components.ALLOW_DOWNLOAD_ENV, "1")
    state = components.check("harmony-studio-test/not-a-cached-repo", required, how, files=("config.json",))
    assert state and "downloaded" in state.reason  # permitted, but check() itself never downloads
    state = components.check("harmony-studio-test/not-a-cached-repo", required, how)
    assert not state  # no list of exact files: nothing would be downloaded
    assert all(c["local_files_only"] for c in calls)


def test_default_device_and_dtype():
    assert components.default_dtype("cpu") == torch.float32
    assert components.default_dtype("cuda:0") == torch.float16
    assert components.default_device() in ("cpu", "cuda")


# --- full-size architectures (built on the meta device: no memory, no time) --------------------

def test_full_size_parameter_counts():
    from diffusers import AutoencoderKL, UNet2DConditionModel, UNet2DModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        assert round(tiny.parameter_count(UNet2DModel(**tiny.DDPM_256_UNET)) / 1e6, 1) == 113.7
        sd9 = UNet2DConditionModel(**{**tiny.SD15_UNET, "in_channels": 9})
        sd4 = UNet2DConditionModel(**tiny.SD15_UNET)
        assert round(tiny.parameter_count(sd9) / 1e6, 1) == 859.5
        assert round(tiny.parameter_count(sd4) / 1e6, 1) == 859.5
        assert tiny.parameter_count(sd9) - tiny.parameter_count(sd4) == 5 * 320 * 9
        assert round(tiny.parameter_count(AutoencoderKL(**tiny.SD_VAE)) / 1e6, 1) == 83.7
        assert round(tiny.parameter_count(CLIPTextModel(CLIPTextConfig(**tiny.CLIP_L14_TEXT))) / 1e6, 1) == 123.1


def test_tiny_models_are_seeded_and_leave_the_global_rng_alone():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a, b = tiny.ddpm_unet("tiny", seed=4), tiny.ddpm_unet("tiny", seed=4)
    assert torch.equal(torch.get_rng_state(), before)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_fingerprint_reads_samples_not_whole_files_and_uses_hub_etags(tmp_path, monkeypatch):
    big = tmp_path / "a" / "model.safetensors"
    big.parent.mkdir()
    data = bytearray(range(256)) * (8 * 4096)  # 8 MiB
    big.write_bytes(bytes(data))
    first = components.fingerprint(big.parent)
    copy = tmp_path / "b" / "model.safetensors"
    copy.parent.mkdir()
    copy.write_bytes(bytes(data))
    assert components.fingerprint(copy.parent) == first  # same content, another folder: one key
    data[0] ^= 1
    copy.write_bytes(bytes(data))
    assert components.fingerprint(copy.parent) != first
    # A Hub cache file links to blobs/<etag>: the etag is the key and the blob is never opened.
    blob = tmp_path / "hub" / "blobs" / ("e" * 64)
    blob.parent.mkdir(parents=True)
    blob.write_bytes(b"weights")
    snapshot = tmp_path / "hub" / "snapshots" / "main"
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").symlink_to(blob)
    import builtins

    real_open = builtins.open

    def guarded(file, *args, **kwargs):
        assert Path(file).resolve() != blob, "the blob was read"
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded)
    assert components.fingerprint(snapshot) != components.fingerprint(big.parent)


def test_fp16_variant_folders_load_with_the_variant(tmp_path):
    from diffusers import UNet2DModel

    components.clear_cache()
    folder = tiny.save_tiny_ddpm(tmp_path / "d", seed=3)
    plain = components.load(UNet2DModel, folder, dtype=torch.float32, device="cpu")
    (folder / "diffusion_pytorch_model.safetensors").rename(folder / "diffusion_pytorch_model.fp16.safetensors")
    assert components.weights_variant(folder) == "fp16"
    components.clear_cache()
    variant = components.load(UNet2DModel, folder, dtype=torch.float32, device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), variant.state_dict().values()))
    components.clear_cache()
