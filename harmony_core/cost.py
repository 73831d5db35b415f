"""What a run costs in seconds: each method's `cost` (a class attribute next to its code, read
through the registry) turns its settings and the image size into an estimate per device kind.

The estimates plan runs; they are not measurements of one. They decide which methods take a GPU
call on ZeroGPU (`Cost.gpu`), how long each call asks for, which methods Compare ticks by default,
and the estimate the UI shows before a run. CPU numbers are `bench` medians on this project's 2-core
machine with a margin; GPU numbers are conservative guesses until `device-check` measures them on a
GPU (README, "GPU device check"): each `Cost.source` says which.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

Device = Literal["cpu", "gpu"]


def one_unit(settings: dict[str, Any]) -> float:
    """A method whose work does not depend on its settings: one unit per run."""
    return 1.0


@dataclass(frozen=True)
class Rate:
    """Seconds for a run on one kind of device: `fixed` plus `per_unit` per unit of work."""

    fixed: float
    per_unit: float = 0.0


@dataclass(frozen=True)
class Cost:
    """How long a method takes: units of work from its settings (`units`), times the image's
    megapixels for methods that work at the image's own size (`per_megapixel`), priced per device.

    gpu: the method needs a GPU to be interactive. On ZeroGPU only these run inside a
    `spaces.GPU` call; the others run in the server process on the CPU and spend no quota.
    on_gpu: None = the same as `on_cpu` (a method that never uses a GPU)."""

    gpu: bool
    on_cpu: Rate
    on_gpu: Rate | None = None
    units: Callable[[dict[str, Any]], float] = one_unit
    per_megapixel: bool = False
    source: str = ""

    def seconds(self, settings: dict[str, Any], size: tuple[int, int], device: Device) -> float:
        """Estimated seconds of one run at `size` (width, height) with `settings` on `device`."""
        rate = self.on_gpu if device == "gpu" and self.on_gpu is not None else self.on_cpu
        units = self.units(settings)
        if self.per_megapixel:
            units *= size[0] * size[1] / 1e6
        return rate.fixed + rate.per_unit * units


DEFAULT_COST = Cost(gpu=True, on_cpu=Rate(600.0), on_gpu=Rate(60.0),
                    source="no cost given: a conservative default (a GPU method of one minute on a GPU)")
"""The cost of a method that declares none: treated as a slow GPU method, so it never lands on
the CPU path of a ZeroGPU Space by accident and never asks for too short a call."""


def working_scale(settings: dict[str, Any], default: int = 512) -> float:
    """(resolution / 512)^2: how work grows with a method's square working resolution."""
    return (settings.get("resolution", default) / 512) ** 2


def diffusion_steps(settings: dict[str, Any]) -> float:
    """diffharmony: Euler steps at its working resolution."""
    return settings.get("steps", 5) * working_scale(settings)


def ddpm_calls(settings: dict[str, Any]) -> float:
    """hspace: UNet calls of the inversion and the generation, plus the injection steps' extra
    decoder passes (at most n_inject)."""
    return settings.get("n_inv", 50) + settings.get("n_gen", 1000) + settings.get("n_inject", 50)


def loss_evaluations(settings: dict[str, Any]) -> float:
    """freepih: L-BFGS loss evaluations (max_iter + 1 per optimized step) plus the guided DDIM
    steps (each about 0.15 of an evaluation), at its working resolution."""
    steps = math.ceil(settings.get("num_inference_steps", 50) * settings.get("noise_level", 0.2))
    chosen = settings.get("optimized_steps")
    optimized = steps if chosen is None else min(int(chosen), steps)
    evaluations = optimized * (settings.get("lbfgs_max_iter", 5) + 1)
    return (evaluations + 0.15 * steps) * working_scale(settings)
