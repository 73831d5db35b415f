"""A fifth model-backed method, written in this file alone, reaches every place a method appears:
Compare (with its prompt box), the CLI's `methods` and `bench`, `device-check --tiny`, the ZeroGPU
cost estimate and the contract tests. Nothing else is edited to add it; it is registered only
while these tests run (the `fifth` fixture) and removed after them.

This file is also a pytest plugin (`-p test_fifth_method`): its `pytest_configure` registers the
method in a separate pytest run of the contract tests."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from harmony_core import registry
from harmony_core.cost import Cost, Rate
from harmony_core.errors import InputError
from harmony_core.model_method import ModelMethod
from harmony_core.registry import PROMPT, Progress, no_progress
from harmony_core.types import HarmonizationRequest, HarmonizationResult

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
WEIGHTS = "tint.pt"


@dataclass(frozen=True)
class TintSettings:
    strength: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.strength <= 1.0:
            raise InputError("fifth: strength must be in [0, 1]")


def network(seed: int = 0) -> torch.nn.Module:
    """A 1x1 convolution of the colours: the smallest network with weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.nn.Conv2d(3, 3, 1).eval().requires_grad_(False)


class Tint(ModelMethod):
    """Recolours the object with a 1x1 convolution; reads the prompt (recorded in the metadata)."""

    name = "fifth"
    family = "network"
    title = "Fifth method (test)"
    summary = "A 1x1 convolution of the object's colours."
    inputs = frozenset({PROMPT})
    cost = Cost(gpu=True, on_cpu=Rate(0.5, 1.0), on_gpu=Rate(3.0, 2.0), per_megapixel=True, source="a test's")
    weights_env = "HARMONY_FIFTH_WEIGHTS"
    required_files = (WEIGHTS,)
    how_to_set = "HARMONY_FIFTH_WEIGHTS or Tint(weights=...)"
    settings_class = TintSettings
    quick_settings = {"strength": 0.5}
    run_lock = threading.RLock()

    def _load(self, source: str) -> torch.nn.Module:
        model = network()
        model.load_state_dict(torch.load(Path(source) / WEIGHTS, weights_only=True))
        return model.to(self.device)

    @classmethod
    def random_weights(cls, scale: str = "full", device: str | None = None, **options: Any) -> Tint:
        method = cls(device=device, **options)
        method.adopt(network().to(method.device), f"random-{scale}")
        return method

    def harmonize(self, request: HarmonizationRequest, progress: Progress) -> HarmonizationResult:
        pixels = torch.from_numpy(request.composite).permute(2, 0, 1)[None].float().div(255)
        tinted = torch.sigmoid(self.load()(pixels))
        out = pixels + self.settings.strength * (tinted - pixels)
        image = (out[0].permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype(np.uint8)
        return HarmonizationResult(image, metadata={"prompt": request.prompt})


def pytest_configure(config: pytest.Config) -> None:
    """As a plugin: register the method for that whole pytest run."""
    registry.register(Tint)


def save_weights(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(network().state_dict(), folder / WEIGHTS)
    return folder


@pytest.fixture
def fifth(tmp_path, monkeypatch):
    """The method registered, its weights in a folder that its environment variable names; removed after."""
    monkeypatch.setenv(Tint.weights_env, str(save_weights(tmp_path / "tint")))
    registry.register(Tint)
    try:
        yield Tint
    finally:
        registry.unregister(Tint.name)


def scene(prompt: str = "a red box") -> HarmonizationRequest:
    composite = np.full((40, 48, 3), 90, np.uint8)
    composite[:, 24:] = 180
    mask = np.zeros((40, 48), bool)
    mask[10:30, 12:36] = True
    return HarmonizationRequest(composite, mask, prompt=prompt, seed=2)


def test_compare_lists_it_shows_its_prompt_box_and_runs_it(fifth):
    from harmony_core.studio import budget, compare

    names, runnable, _ = compare.method_choices()
    assert "fifth" in names and "fifth" in runnable and "fifth" in compare.weight_methods()
    assert compare.shown_inputs(["reinhard", "fifth"]) == (True, False)
    assert compare.shown_inputs(["reinhard"])[0] is False
    assert "fifth" in compare.prompt_label()
    assert "fifth" in budget.default_selection(runnable, (512, 512))  # half a second on this CPU
    states = list(compare.run_methods(scene(), ["reinhard", "fifth"], no_progress))
    result = states[-1].finished.results["fifth"]
    assert result.metadata["prompt"] == "a red box" and result.metadata["parameters"]["strength"] == 1.0


@pytest.mark.slow
def test_the_app_builds_its_prompt_box_and_choice(fifth, tmp_path):
    from app import build_app

    demo = build_app(max_side=256, votes_dir=tmp_path / "votes")
    try:
        components = {c.get("props", {}).get("elem_id"): c["props"] for c in demo.config["components"]}
        prompt, methods = components["compare-prompt"], components["compare-methods"]
        assert "fifth" in prompt["label"] and prompt["visible"] is True
        assert "fifth" in [value for _, value in methods["choices"]] and "fifth" in methods["value"]
    finally:
        demo.close()


def test_the_cli_lists_and_benchmarks_it(fifth, capsys):
    from harmony_core.cli import main

    assert main(["methods"]) == 0
    assert any(line.split()[:3] == ["fifth", "network", "yes"] for line in capsys.readouterr().out.splitlines())
    assert main(["bench", "--method", "fifth", "--size", "32", "--repeats", "1", "--option", "strength=0.25"]) == 0
    out = capsys.readouterr().out
    assert "| fifth | 32 | cpu |" in out and "options {'strength': 0.25}" in out


@pytest.mark.slow
def test_device_check_tiny_times_it(fifth, tmp_path):
    from harmony_core import device_check

    report = device_check.run(tmp_path, tiny=True)
    assert "fifth" in report["resident_by_method"]
    row = next(r for r in report["timings"] if r["method"] == "fifth")
    assert row["label"] == "fifth" and row["status"] == "ok" and row["used"] == {} and "strength=0.5" in row["note"]


def test_the_zero_gpu_estimate_comes_from_its_cost(fifth, monkeypatch):
    from harmony_core.studio import budget, serving

    monkeypatch.setattr(serving, "on_zero_gpu", lambda: True)
    monkeypatch.setattr(serving, "ON_GPU", lambda job: iter(()))  # what spaces.GPU would wrap there
    (estimate,) = budget.estimates(["fifth"], (1000, 1000))
    assert estimate.device == "gpu" and estimate.seconds == pytest.approx(3.0 + 2.0 + serving.CALL_OVERHEAD_S)
    assert estimate.gpu_seconds == math.ceil(5.0 + serving.CALL_OVERHEAD_S)
    request = HarmonizationRequest(np.zeros((1000, 1000, 3), np.uint8), np.eye(1000, dtype=bool))
    assert serving.gpu_seconds(serving.Job.of("fifth", request)) == estimate.gpu_seconds


@pytest.mark.slow
def test_the_contract_tests_check_it():
    """The contract tests, in a pytest run where this file registers the method (-p)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "test_fifth_method", "-k", "fifth",
                          "-p", "no:cacheprovider", str(HERE / "test_contract.py")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    tests = [name for name in dir(__import__("test_contract")) if name.startswith("test_")]
    assert f"{len(tests)} passed" in run.stdout, run.stdout[-2000:]
    assert "fifth" not in registry.method_names()  # registered only in that run


def test_a_module_added_to_the_methods_package_is_registered_on_first_use(tmp_path, monkeypatch):
    """Adding a method is adding one file to harmony_core/methods/: no list names it."""
    from harmony_core import methods

    (tmp_path / "sixth.py").write_text(
        "from harmony_core.registry import Method, register\n\n\n"
        "@register\nclass Sixth(Method):\n"
        "    name, family, title, summary = 'sixth', 'classical', 'Sixth', 'the composite'\n\n"
        "    def harmonize(self, request, progress):\n        return request.composite.copy()\n")
    monkeypatch.setattr(methods, "__path__", [*methods.__path__, str(tmp_path)])
    try:
        assert registry.method_names()[-1] == "sixth"
    finally:
        registry.unregister("sixth")
        sys.modules.pop("harmony_core.methods.sixth", None)
