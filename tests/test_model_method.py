"""The one lifecycle of model-backed methods (harmony_core/model_method.py), the same for all four."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from harmony_core import imaging, registry
from harmony_core.cli import main
from harmony_core.diffusion import ddim, tiny
from harmony_core.errors import InputError
from harmony_core.methods.diffharmony import DiffHarmony
from harmony_core.methods.freepih import FreePIH
from harmony_core.methods.hspace import HSpace, scheduler_config
from harmony_core.methods.ptl import PAPER_WEIGHTS, PAPER_WEIGHTS_ENV, PTLMethod, PTLPaperMethod
from harmony_core.methods.ptl import WEIGHTS_ENV as PTL_ENV
from harmony_core.model_method import ModelMethod
from harmony_core.models.ptl_net import PTLConfig, PTLNet
from harmony_core.registry import get_method, method_class, method_names, weighted_methods
from harmony_core.types import HarmonizationRequest


def test_the_methods_that_take_weights_are_the_model_methods():
    """`takes_weights` is what the registry reads; it must mean the ModelMethod lifecycle."""
    assert weighted_methods() == [name for name in method_names() if isinstance(get_method(name), ModelMethod)]
    assert {"ptl", "hspace", "freepih"} <= set(weighted_methods()) and "reinhard" not in weighted_methods()


@pytest.mark.parametrize("name", method_names())
def test_an_unknown_option_is_an_input_error_everywhere(name):
    with pytest.raises(InputError, match="has no option"):
        method_class(name)(no_such_option=3)


@pytest.mark.parametrize("name", method_names())
def test_every_method_takes_settings_and_weights_by_keyword_only(name):
    cls = method_class(name)
    with pytest.raises(TypeError):
        cls(cls.settings_class())  # positional: neither settings nor weights
    assert cls(settings=cls.settings_class()).settings == cls.settings_class()


def test_bad_values_are_input_errors_and_settings_are_frozen():
    with pytest.raises(InputError, match="resolution"):
        DiffHarmony(resolution=100)
    with pytest.raises(InputError, match="steps"):
        DiffHarmony().with_settings(steps=0)
    method = DiffHarmony(steps=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        method.settings.steps = 3  # frozen


def test_with_settings_is_a_copy_sharing_the_loaded_model(tmp_path):
    folder = tmp_path / "ptl"
    torch.manual_seed(0)
    PTLNet(PTLConfig(width=0.25)).save_pretrained(folder)
    shared = HSpace.random_weights("tiny", "cpu", n_gen=7)
    copy = shared.with_settings(n_gen=3)
    assert shared.settings.n_gen == 7 and copy.settings.n_gen == 3  # the shared instance is unchanged
    assert copy.unet() is shared.unet() and copy.weights_source == shared.weights_source
    ptl = PTLMethod(weights=folder, device="cpu")
    other = ptl.with_settings()
    assert other.model is ptl.model  # loaded once, for both
    ptl.set_weights(tmp_path / "nowhere")  # the organiser's override reaches the copies too
    assert not other.available() and "does not exist" in other.available().reason


def test_set_weights_releases_the_old_model_from_the_shared_cache(tmp_path):
    """The docstring said the old UNet is dropped; components' cache kept it resident."""
    import gc
    import weakref

    from harmony_core.diffusion import components

    first, second = tiny.save_tiny_ddpm(tmp_path / "a", seed=0), tiny.save_tiny_ddpm(tmp_path / "b", seed=1)
    method = HSpace(weights=first, device="cpu")
    old = weakref.ref(method.unet())
    assert any(value is old() for value in components._MODELS.values())
    method.set_weights(second)
    assert not any(value is old() for value in components._MODELS.values())
    gc.collect()
    assert old() is None  # nothing holds the old UNet: its memory is released
    assert method.unet() is not None and method.weights_source == str(second)


def test_parameters_never_load_and_a_run_checks_the_files_once(tmp_path, monkeypatch):
    from harmony_core.diffusion import components
    from harmony_core.studio import serving

    folder = tmp_path / "ptl"
    PTLNet(PTLConfig(width=0.25)).save_pretrained(folder)
    method = PTLMethod(weights=folder, device="cpu")
    assert "network_size" not in method.parameters() and method.loaded() is None
    checks = []
    check = components.check
    monkeypatch.setattr(components, "check", lambda *args: checks.append(args) or check(*args))
    monkeypatch.setitem(registry._INSTANCES, "ptl", method)
    composite = np.full((32, 32, 3), 128, np.uint8)
    result, row = serving.serve("ptl", HarmonizationRequest(composite, np.eye(32, dtype=bool)), lambda f, m: None)
    assert row.state == "done" and len(checks) == 1  # serve's check; run and load reuse its answer
    assert result.metadata["parameters"]["network_size"] == 256


def test_weights_source_order_argument_then_environment_then_default(tmp_path, monkeypatch):
    monkeypatch.delenv(PTL_ENV, raising=False)
    assert PTLMethod().source() == PTLMethod.default_weights
    monkeypatch.setenv(PTL_ENV, str(tmp_path / "env"))
    assert PTLMethod().source() == str(tmp_path / "env")
    method = PTLMethod(weights=tmp_path / "arg")
    assert method.source() == str(tmp_path / "arg")
    method.set_weights(tmp_path / "override")
    assert method.source() == str(tmp_path / "override")
    method.set_weights(None)
    assert method.source() == str(tmp_path / "env")
    reason = method.available().reason
    assert PTL_ENV in reason and "--weights ptl=" in reason and "train-ptl" in reason


def test_cli_weights_flag_works_for_ptl(tmp_path, monkeypatch):
    from tests.conftest import ROOT

    folder = tmp_path / "ptl"
    torch.manual_seed(1)
    PTLNet(PTLConfig(width=0.25)).save_pretrained(folder)
    shared = get_method("ptl")
    try:
        code = main(["harmonize", "--composite", str(ROOT / "examples" / "cat_composite.jpg"), "--mask",
                     str(ROOT / "examples" / "cat_mask.png"), "--method", "ptl", "--weights", f"ptl={folder}",
                     "--out", str(tmp_path / "out")])
        assert code == 0
        report = json.loads((tmp_path / "out" / "results.json").read_text())
        assert report["results"]["ptl"]["metadata"]["weights"] == str(folder)
        assert report["results"]["ptl"]["metadata"]["parameters"]["width"] == 0.25
    finally:
        shared.set_weights(None)
    assert main(["harmonize", "--composite", "c", "--mask", "m", "--method", "reinhard",
                 "--weights", f"reinhard={folder}", "--out", str(tmp_path / "o2")]) == 2


def test_ptl_paper_has_its_own_weights_and_the_same_lifecycle(tmp_path, monkeypatch):
    """ptl-paper: its own folder and variable, only the paper's variant (residual head, no prior),
    `--weights ptl-paper=DIR` on the command line; ptl's instance is not touched."""
    from tests.conftest import ROOT

    paper, ours = tmp_path / "paper", tmp_path / "ours"
    torch.manual_seed(2)
    PTLNet(PTLConfig(width=0.25, head="residual", prior="none")).save_pretrained(paper)
    PTLNet(PTLConfig(width=0.25)).save_pretrained(ours)
    monkeypatch.delenv(PAPER_WEIGHTS_ENV, raising=False)
    assert PTLPaperMethod().source() == str(PAPER_WEIGHTS) != PTLMethod().source()
    monkeypatch.setenv(PAPER_WEIGHTS_ENV, str(paper))
    method = PTLPaperMethod()
    assert method.available() and method.model.config.head == "residual"
    assert method.run(HarmonizationRequest(np.full((40, 50, 3), 90, np.uint8), _box_mask())).metadata["weights"] == str(paper)
    method.set_weights(ours)  # an affine network is ptl, not the paper's
    state = method.available()
    assert not state and "'affine'" in state.reason and "the paper's" in state.reason
    (ours / "config.json").write_text("{not json")
    assert "readable" in method.available().reason  # "not readable JSON", in the words of every ModelMethod
    method.set_weights(tmp_path / "nowhere")
    reason = method.available().reason
    assert PAPER_WEIGHTS_ENV in reason and "--weights ptl-paper=" in reason and "--head residual" in reason
    monkeypatch.delenv(PAPER_WEIGHTS_ENV)
    shared, ptl = get_method("ptl-paper"), get_method("ptl")
    try:
        code = main(["harmonize", "--composite", str(ROOT / "examples" / "cat_composite.jpg"), "--mask",
                     str(ROOT / "examples" / "cat_mask.png"), "--method", "ptl-paper", "--weights",
                     f"ptl-paper={paper}", "--out", str(tmp_path / "out")])
        assert code == 0
        result = json.loads((tmp_path / "out" / "results.json").read_text())["results"]["ptl-paper"]
        assert result["metadata"]["weights"] == str(paper) and result["metadata"]["parameters"]["width"] == 0.25
        assert "ptl-paper_ptl-point-contribution.png" in result["maps"].values()
        assert ptl.source() == PTLMethod.default_weights  # the other network keeps its weights
    finally:
        shared.set_weights(None)


def _box_mask() -> np.ndarray:
    mask = np.zeros((40, 50), bool)
    mask[10:30, 15:35] = True
    return mask


def test_hspace_reads_the_beta_schedule_from_the_checkpoint(tmp_path):
    folder = tiny.save_tiny_ddpm(tmp_path / "ddpm", seed=0)
    config = scheduler_config(folder)
    assert config["beta_schedule"] == "linear"
    linear = ddim.alphas_cumprod_from_betas(ddim.linear_betas())
    assert torch.equal(ddim.alphas_cumprod_from_config(config), linear)  # google/ddpm-*: unchanged
    assert torch.equal(ddim.alphas_cumprod_from_config(None), linear)
    method = HSpace(weights=folder, device="cpu", n_inv=5, n_gen=5, n_inject=5)
    assert torch.equal(method.load().alphas_cumprod, linear)
    scaled = {**config, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
    (folder / "scheduler_config.json").write_text(json.dumps(scaled))
    other = HSpace(weights=folder, device="cpu", n_inv=5, n_gen=5, n_inject=5)
    from diffusers import DDPMScheduler

    expected = DDPMScheduler(**{k: scaled[k] for k in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule")})
    assert torch.allclose(other.load().alphas_cumprod, expected.alphas_cumprod.double(), atol=1e-6)
    request = imaging.load_rgb(np.full((32, 32, 3), 120, np.uint8))
    from harmony_core.types import HarmonizationRequest

    mask = np.zeros((32, 32), bool)
    mask[8:20, 8:20] = True
    assert other.run(HarmonizationRequest(composite=request, mask=mask)).image.shape == (32, 32, 3)


@pytest.mark.slow
def test_ptlnet_saves_and_loads_like_diffusers_models(tmp_path):
    from dataclasses import asdict

    from diffusers import ConfigMixin, ModelMixin
    from safetensors.torch import load_file, save_file

    from harmony_core.methods.ptl import SHIPPED_WEIGHTS

    shipped = PTLNet.from_pretrained(SHIPPED_WEIGHTS)
    assert isinstance(shipped, ModelMixin) and isinstance(shipped, ConfigMixin)
    assert shipped.config == PTLConfig(correction_scale=0.5) and not shipped.training
    # A folder whose config.json predates head / prior (the weights shipped before the affine head).
    (tmp_path / "legacy").mkdir()
    legacy = {k: v for k, v in asdict(PTLConfig()).items() if k not in ("head", "prior", "correction_scale")}
    (tmp_path / "legacy" / "config.json").write_text(json.dumps(legacy))
    residual = PTLNet(PTLConfig(head="residual", prior="none"))
    save_file({k: v.half().contiguous() for k, v in residual.state_dict().items()}, tmp_path / "legacy" / "model.safetensors")
    assert PTLNet.from_pretrained(tmp_path / "legacy").config == PTLConfig(width=0.5, head="residual", prior="none")
    shipped.save_pretrained(tmp_path / "new")
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["config.json", "model.safetensors"]
    saved = json.loads((tmp_path / "new" / "config.json").read_text())
    assert saved["_class_name"] == "PTLNet" and {k: saved[k] for k in asdict(shipped.config)} == asdict(shipped.config)
    assert {v.dtype for v in load_file(tmp_path / "new" / "model.safetensors").values()} <= {torch.float16, torch.int64}
    again = PTLNet.from_pretrained(tmp_path / "new")
    assert again.config == shipped.config
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), shipped.state_dict().values()))
    # A folder written by the save_pretrained before this one: plain json of every PTLConfig field.
    torch.manual_seed(2)
    net = PTLNet(PTLConfig(width=0.25))
    (tmp_path / "old").mkdir()
    save_file({k: v.half().contiguous() for k, v in net.state_dict().items()}, tmp_path / "old" / "model.safetensors")
    (tmp_path / "old" / "config.json").write_text(json.dumps(asdict(net.config), indent=2))
    old = PTLNet.from_pretrained(tmp_path / "old")
    assert old.config == PTLConfig(width=0.25) and old.config.head == "affine" and old.config.prior == "poisson"
    assert PTLNet.from_config(saved).config == shipped.config


# --- honest availability (issue 30, 2) ----------------------------------------------------------


@pytest.fixture(scope="module")
def sd_pipeline(tmp_path_factory):
    return tiny.save_tiny_sd_pipeline(tmp_path_factory.mktemp("sd") / "pipeline", seed=0)


def cut_short(path) -> None:
    """Keep the safetensors header and half of the tensors, as an interrupted download would."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_hspace_pointed_at_a_text_to_image_pipeline_is_not_runnable(sd_pipeline):
    state = HSpace(weights=str(sd_pipeline)).available()
    assert not state
    assert state.reason.startswith(f"the weights at {sd_pipeline} could not be loaded: ")
    assert "UNet2DConditionModel, not the UNet2DModel" in state.reason


def test_a_truncated_weights_file_is_found_without_loading(sd_pipeline, tmp_path):
    import shutil

    folder = shutil.copytree(sd_pipeline, tmp_path / "pipeline")
    assert FreePIH(weights=str(folder)).available()
    weights = next((folder / "unet").glob("*.safetensors"))
    cut_short(weights)
    state = FreePIH(weights=str(folder)).available()
    assert not state and f"the weights at {folder} could not be loaded: unet/{weights.name} is cut short" in state.reason
    weights.write_bytes(b"\x00" * 4)
    assert "is cut short or is not a safetensors file" in FreePIH(weights=str(folder)).available().reason


def test_freepih_refuses_an_inpainting_unet(tmp_path):
    folder = tiny.save_tiny_sd_pipeline(tmp_path / "inpainting", in_channels=9, seed=0)
    state = FreePIH(weights=str(folder)).available()
    assert not state and "unet/config.json has in_channels = 9, not 4" in state.reason


def test_a_load_failure_is_reported_in_words_and_remembered(tmp_path, monkeypatch, capsys):
    """What the checks cannot see fails in the load: the run says so, the listing too, until the
    weights are changed."""
    from harmony_core.studio import serving

    folder = tiny.save_tiny_ddpm(tmp_path / "ddpm", seed=0)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "block_out_channels": [8, 8]}))
    monkeypatch.setenv("HARMONY_HSPACE_WEIGHTS", str(folder))
    method = get_method("hspace")
    method.set_weights(None)
    try:
        assert method.available()
        composite = np.full((32, 32, 3), 128, np.uint8)
        mask = np.zeros((32, 32), bool)
        mask[8:20, 8:20] = True
        from harmony_core.types import HarmonizationRequest

        result, row = serving.serve("hspace", HarmonizationRequest(composite, mask), lambda f, m: None)
        assert result is None and row.state == "failed"
        assert f"the weights at {folder} could not be loaded: " in row.reason and "internal error" not in row.reason
        assert not method.available() and method.available().reason in row.reason
        assert main(["methods"]) == 0
        assert f"the weights at {folder} could not be loaded" in capsys.readouterr().out
        method.set_weights(None)  # a new source (here: the same one, repaired or not) is checked afresh
        assert method.available()
    finally:
        method.set_weights(None)
