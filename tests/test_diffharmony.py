"""diffharmony on tiny random components saved in the authors' archive layout (offline, CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from harmony_core.diffusion import components, tiny
from harmony_core.errors import MethodUnavailable
from harmony_core.methods.diffharmony import WEIGHTS_ENV, DiffHarmony, refine, stage1
from harmony_core.models.condition_vae import ConditionVAE
from harmony_core.models.refinement import FULL_CONFIG, RefinementUNet, stage2_input
from harmony_core.types import HarmonizationRequest

RES = 64  # working resolution: an 8x8 latent
TINY_REFINEMENT = {**FULL_CONFIG, "block_out_channels": [8, 16, 16, 16], "norm_num_groups": 8, "layers_per_block": 1}


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """base/ (9-channel tiny SD pipeline, Euler ancestral), refinement/ and condition_vae/."""
    root = tmp_path_factory.mktemp("diffharmony")
    tiny.save_tiny_sd_pipeline(root / "base", in_channels=9, seed=0, scheduler="euler_ancestral")
    tiny.seeded(lambda: RefinementUNet(**TINY_REFINEMENT), 5).save_pretrained(root / "refinement")
    return root


@pytest.fixture(scope="module")
def archive_with_cvae(tmp_path_factory, archive: Path) -> Path:
    """The same archive plus a Harmony-VAE whose decoder weights are base/vae's and whose skips are not zero."""
    import shutil

    root = tmp_path_factory.mktemp("diffharmony_cvae")
    for part in ("base", "refinement"):
        shutil.copytree(archive / part, root / part)
    cvae = tiny.seeded(lambda: ConditionVAE(**tiny.TINY_VAE, additional_in_channels=1), 7)
    cvae.load_state_dict(tiny.sd_vae("tiny", seed=1).state_dict(), strict=False)
    with torch.no_grad():
        cvae.latent_skip_conv.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    cvae.save_pretrained(root / "condition_vae")
    return root


@pytest.fixture
def request_(scene) -> HarmonizationRequest:
    _, composite, mask = scene  # 96x128, not square: the working resolution distorts and comes back
    return HarmonizationRequest(composite=composite, mask=mask, seed=3)


def _method(source: Path, **settings) -> DiffHarmony:
    settings = {"resolution": RES, "steps": 2, "device": "cpu", **settings}
    return DiffHarmony(weights=source, **settings)


# --- the pipeline math ------------------------------------------------------------------------------


def test_unet_input_is_noisy_latent_mask_composite_latent_in_that_order(archive):
    models = _method(archive).load()
    gen = torch.Generator().manual_seed(11)
    composite = torch.rand(1, 3, RES, RES, generator=gen) * 2 - 1
    mask = torch.zeros(1, 1, RES, RES)
    mask[..., 10:40, 20:50] = 0.7  # above 0.5: binarized to 1
    mask[..., 50:60, 0:10] = 0.3  # below 0.5: binarized to 0
    calls = []
    hook = models.unet.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append((args[0].clone(), kwargs["encoder_hidden_states"].clone())),
        with_kwargs=True)
    try:
        stage1(models, composite, mask, 2, torch.Generator().manual_seed(5))
    finally:
        hook.remove()
    assert len(calls) == 2
    sample, text = calls[0]
    assert sample.shape == (1, 9, RES // 8, RES // 8)

    # Replay the generator in the authors' order: initial noise, then the composite latent's sample.
    replay = torch.Generator().manual_seed(5)
    scheduler = models_scheduler(models)
    noise = torch.randn((1, 4, RES // 8, RES // 8), generator=replay) * scheduler.init_noise_sigma
    latent = models.vae.encode(composite).latent_dist.sample(generator=replay) * 0.18215
    expected_mask = torch.nn.functional.interpolate((mask >= 0.5).float(), size=(RES // 8, RES // 8), mode="nearest")
    assert torch.allclose(sample[:, :4], scheduler.scale_model_input(noise, scheduler.timesteps[0]), atol=1e-6)
    assert torch.equal(sample[:, 4:5], expected_mask)
    assert set(sample[:, 4].unique().tolist()) == {0.0, 1.0}
    assert torch.allclose(sample[:, 5:9], latent, atol=1e-5)
    assert torch.allclose(calls[1][0][:, 4:9], sample[:, 4:9])  # the condition is the same at every step

    # The text condition is CLIP's encoding of "", not zeros.
    ids = models.tokenizer([""], padding="max_length", max_length=77, return_tensors="pt").input_ids
    assert torch.allclose(text, models.text_encoder(ids)[0], atol=1e-6)
    assert text.abs().sum() > 0


def models_scheduler(models):
    from diffusers import EulerAncestralDiscreteScheduler

    scheduler = EulerAncestralDiscreteScheduler.from_config(models.scheduler_config)
    scheduler.set_timesteps(2)
    return scheduler


def test_scheduler_is_euler_ancestral_from_the_pipeline_config(archive):
    models = _method(archive).load()
    saved = json.loads((archive / "base" / "scheduler" / "scheduler_config.json").read_text())
    for key in ("beta_start", "beta_end", "beta_schedule", "num_train_timesteps"):
        assert models.scheduler_config[key] == saved[key]


def test_same_seed_same_output_other_seed_other_output(archive, scene):
    _, composite, mask = scene
    method = _method(archive)
    first = method.run(HarmonizationRequest(composite=composite, mask=mask, seed=1)).image
    again = method.run(HarmonizationRequest(composite=composite, mask=mask, seed=1)).image
    other = method.run(HarmonizationRequest(composite=composite, mask=mask, seed=2)).image
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_output_has_the_input_size_and_the_composite_background(archive, request_):
    result = _method(archive).run(request_)
    assert result.image.shape == request_.composite.shape and result.image.dtype == np.uint8
    outside = ~request_.mask
    assert np.array_equal(result.image[outside], request_.composite[outside])
    assert not np.array_equal(result.image[request_.mask], request_.composite[request_.mask])
    meta = result.metadata
    assert meta["steps"] == 2 and meta["working_resolution"] == RES and meta["seed"] == 3
    assert meta["dtype"] == "float32" and meta["refinement"] is True and meta["condition_vae"] is False
    assert str(archive) in meta["weights"] and "unet fingerprint" in meta["weights"]
    assert {"encode_s", "denoise_s", "decode_s", "refinement_s"} <= set(meta["stage_seconds"])


# --- loading --------------------------------------------------------------------------------------


def test_saved_folder_round_trips_through_the_loader(archive, monkeypatch, tmp_path):
    from diffusers import UNet2DConditionModel

    monkeypatch.setenv(WEIGHTS_ENV, str(archive))
    method = DiffHarmony(resolution=RES, device="cpu")  # weights from the environment variable
    assert method.available(), method.available().reason
    models = method.load()
    saved = tiny.sd_unet("tiny", 9, seed=0)
    for name, tensor in saved.state_dict().items():
        assert torch.equal(models.unet.state_dict()[name], tensor), name
    assert isinstance(models.refinement, RefinementUNet) and models.refinement.config.in_channels == 7
    assert models.condition_vae is None
    # The base folder itself (no archive around it) is accepted too, without the optional parts.
    direct = _method(archive / "base").load()
    assert direct.refinement is None and isinstance(direct.unet, UNet2DConditionModel)
    # set_weights switches the source and drops the loaded models.
    method.set_weights(tmp_path / "nowhere")
    assert not method.available()
    method.set_weights(None)
    assert method.available()


def test_vae_and_text_encoder_are_shared_with_identical_weights(archive, tmp_path):
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel

    models = _method(archive).load()
    twin = tiny.save_tiny_sd_pipeline(tmp_path / "sd", in_channels=4, seed=0)  # same vae/text seeds
    assert components.load(AutoencoderKL, twin, "vae", torch.float32, "cpu") is models.vae
    assert components.load(CLIPTextModel, twin, "text_encoder", torch.float32, "cpu") is models.text_encoder


def test_missing_weights_say_what_to_download_and_where(monkeypatch, tmp_path, request_):
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    state = DiffHarmony().available()
    assert not state
    for words in ("base/", "refinement/", "condition_vae/", WEIGHTS_ENV, "--weights diffharmony=",
                  "github.com/nicecv/DiffHarmony", "unet/"):
        assert words in state.reason
    with pytest.raises(MethodUnavailable, match="diffharmony cannot run here"):
        DiffHarmony().run(request_)
    incomplete = tmp_path / "incomplete"
    (incomplete / "base" / "unet").mkdir(parents=True)
    reason = DiffHarmony(weights=incomplete).available().reason
    assert "lacks" in reason and "vae/config.json" in reason
    assert "does not exist" in DiffHarmony(weights=tmp_path / "absent").available().reason


def test_a_four_channel_unet_is_refused(tmp_path):
    folder = tiny.save_tiny_sd_pipeline(tmp_path / "t2i", in_channels=4, seed=0)
    state = DiffHarmony(weights=folder).available()
    assert not state and "4 input channels" in state.reason and "9" in state.reason


# --- the refinement network ----------------------------------------------------------------------------


def test_zero_output_refinement_is_the_identity():
    model = tiny.seeded(lambda: RefinementUNet(**TINY_REFINEMENT), 0)
    with torch.no_grad():
        model.conv_out.weight.zero_()
        model.conv_out.bias.zero_()
    gen = torch.Generator().manual_seed(0)
    stage1_image = torch.rand(1, 3, 32, 32, generator=gen)
    composite = torch.rand(1, 3, 32, 32, generator=gen) * 2 - 1
    mask = (torch.rand(1, 1, 32, 32, generator=gen) > 0.5).float()
    refined = refine(model, stage1_image, composite, mask)
    assert torch.allclose(refined, stage1_image, atol=1e-6)
    # A non-zero output is a residual on the first three channels, clamped to [-1, 1].
    with torch.no_grad():
        model.conv_out.bias.fill_(5.0)
    assert torch.equal(refine(model, stage1_image, composite, mask), torch.ones_like(stage1_image))


def test_refinement_input_is_stage1_mask_composite():
    a, m, c = torch.full((1, 3, 4, 4), 0.1), torch.ones(1, 1, 4, 4), torch.full((1, 3, 4, 4), -0.5)
    x = stage2_input(a, m, c, 7)
    assert x.shape == (1, 7, 4, 4)
    assert torch.equal(x[:, :3], a) and torch.equal(x[:, 3:4], m) and torch.equal(x[:, 4:], c)
    with pytest.raises(ValueError):
        stage2_input(a, m, c, 5)


def test_refinement_loads_the_authors_config_format(tmp_path):
    """config.json as the authors' training writes it (class UNet2DCustom, their keys) + safetensors."""
    reference = tiny.seeded(lambda: RefinementUNet(**TINY_REFINEMENT), 1)
    folder = tmp_path / "refinement"
    folder.mkdir()
    config = {"_class_name": "UNet2DCustom", "_diffusers_version": "0.27.0", **TINY_REFINEMENT,
              "resnet_time_scale_shift": "default"}
    (folder / "config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()},
              str(folder / "diffusion_pytorch_model.safetensors"))
    loaded = RefinementUNet.from_pretrained(folder, local_files_only=True).eval()
    x = torch.rand(1, 7, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded(x), reference(x))
    assert not any("time" in name for name in loaded.state_dict())  # no timestep input


@pytest.mark.slow
def test_full_size_refinement_matches_the_authors_base_config():
    model = RefinementUNet(**FULL_CONFIG)
    assert model.config.in_channels == 7 and model.config.input_residual
    assert 91.0e6 < sum(p.numel() for p in model.parameters()) < 91.8e6


# --- the Harmony-VAE --------------------------------------------------------------------------------


def test_harmony_vae_with_zero_skips_decodes_like_the_plain_vae():
    vae = tiny.sd_vae("tiny", seed=1)
    cvae = ConditionVAE(**tiny.TINY_VAE, additional_in_channels=1).eval()
    assert not cvae.load_state_dict(vae.state_dict(), strict=False).unexpected_keys
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    cond = torch.rand(1, 4, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(cvae.decode_with_cond(z, cond, torch.Generator().manual_seed(0)), vae.decode(z).sample)
    assert len(cvae.conditional_encoder.down_block_skip_convs) == sum(len(b.resnets) for b in cvae.decoder.up_blocks)


def test_harmony_vae_folder_is_used_when_present(archive_with_cvae, request_):
    method = _method(archive_with_cvae)
    with_cvae = method.run(request_)
    assert with_cvae.metadata["condition_vae"] is True
    assert isinstance(method.load().condition_vae, ConditionVAE)
    method.configure(use_condition_vae=False)
    plain = method.run(request_)
    assert plain.metadata["condition_vae"] is False
    assert not np.array_equal(with_cvae.image, plain.image)  # the skip path changes the decoded image


def test_cli_weights_flag_points_the_shared_instance_at_a_folder(archive, scene, tmp_path, monkeypatch):
    from harmony_core import imaging
    from harmony_core.cli import main
    from harmony_core.registry import get_method

    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    _, composite, mask = scene
    imaging.save_image(composite, tmp_path / "c.png")
    imaging.save_image(mask, tmp_path / "m.png")
    shared = get_method("diffharmony")
    try:
        shared.configure(resolution=RES, steps=1)
        code = main(["harmonize", "--composite", str(tmp_path / "c.png"), "--mask", str(tmp_path / "m.png"),
                     "--method", "diffharmony", "--weights", f"diffharmony={archive}", "--out", str(tmp_path / "out")])
        assert code == 0
        report = json.loads((tmp_path / "out" / "results.json").read_text())
        assert str(archive) in report["results"]["diffharmony"]["metadata"]["weights"]
        assert main(["harmonize", "--composite", "c", "--mask", "m", "--method", "diffharmony",
                     "--weights", "diffharmony", "--out", str(tmp_path / "o2")]) == 2
    finally:
        shared.set_weights(None)
        shared.configure(resolution=512, steps=5)
