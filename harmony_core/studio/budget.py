"""Time and GPU quota before a run: which methods Compare ticks by default (those estimated to
finish within TIME_BUDGET_S on this server), each method's estimate in its label, and the
selection's estimate, with a warning on ZeroGPU when it asks for more GPU time than a visitor
without a Hugging Face account has in a day. Estimates come from each method's cost
(harmony_core.cost) through serving, which knows where the method runs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from harmony_core.cost import Device
from harmony_core.errors import InputError
from harmony_core.registry import resolve_methods
from harmony_core.studio import serving

TIME_BUDGET_S = 30.0
"""Compare ticks by default the runnable methods estimated to finish within this many seconds
each, at the largest image the studio works at; the others are one click away."""
FREE_GPU_S = 120
"""ZeroGPU's daily GPU quota of a visitor who is not signed in (Hub docs, "Usage tiers": 2 minutes;
a free account has 3.5, PRO 25)."""
SIGNED_IN_GPU_S = 210
DURATION_FACTOR = 1.5
"""spaces scales the requested duration by up to this much on current ZeroGPU hardware before
checking it against the quota (spaces 0.51.3, zero/configs.json: 1.0 on H200, 1.5 on RTX Pro 6000)."""


@dataclass(frozen=True)
class Estimate:
    """One method's estimate: seconds on this server and, for a ZeroGPU call, the duration it asks for."""

    method: str
    seconds: float
    gpu_seconds: int | None
    device: Device

    def label(self) -> str:
        """The method's choice label: its name and the estimate ("hspace (~81 s on the GPU)")."""
        return f"{self.method} ({_seconds(self.seconds)} on the {self.device.upper()})"


def _seconds(value: float) -> str:
    if value < 1:
        return "under 1 s"
    if value < 120:
        return f"~{value:.0f} s"
    return f"~{value / 60:.0f} min"


def estimates(names: Sequence[str], size: tuple[int, int]) -> list[Estimate]:
    """The estimate of each method at `size` (width, height), in the given order."""
    return [Estimate(name, serving.estimate_seconds(name, size),
                     serving.gpu_seconds_for(name, size) if serving.in_gpu_call(name) else None,
                     serving.device_kind(name)) for name in names]


def default_selection(runnable: Sequence[str], size: tuple[int, int]) -> list[str]:
    """The runnable methods estimated to finish within TIME_BUDGET_S each at `size`."""
    return [e.method for e in estimates(runnable, size) if e.seconds <= TIME_BUDGET_S]


def choices(names: Sequence[str], size: tuple[int, int]) -> list[tuple[str, str]]:
    """(label with the estimate, method name) for each method: the Methods checkbox's choices."""
    return [(e.label(), e.method) for e in estimates(names, size)]


def image_size(path: str | Path | None, max_side: int) -> tuple[int, int]:
    """(width, height) the studio works at for an image file, from its header: its long side
    capped at `max_side`, as Compose caps it; a square of `max_side` when there is no readable image."""
    if path is None:
        return max_side, max_side
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (OSError, ValueError, Image.DecompressionBombError):
        return max_side, max_side
    scale = min(1.0, max_side / max(width, height, 1))
    return max(1, round(width * scale)), max(1, round(height * scale))


def selection_note(names: Sequence[str] | None, size: tuple[int, int]) -> str:
    """Markdown: the selection's estimated time on this server, and on ZeroGPU the GPU seconds it
    asks for, with a warning when that exceeds a visitor's daily quota (names are validated)."""
    if not names:
        return "No method ticked."
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise InputError("The methods must be a list of method names.")
    found = estimates(resolve_methods(list(names)), size)
    total = sum(e.seconds for e in found)
    text = f"Estimated time for {len(found)} method(s) at {size[0]}x{size[1]}: {_seconds(total)} (estimates, not measurements)."
    requested = sum(e.gpu_seconds or 0 for e in found)
    if not serving.on_zero_gpu():
        return text
    if not requested:
        return text + " None of them uses the GPU quota."
    charged = round(requested * DURATION_FACTOR)
    text += (f" GPU time requested: {requested} s (ZeroGPU may count up to {charged} s of your daily quota; "
             "the CPU methods count none).")
    if charged > FREE_GPU_S:
        text += (f"\n\n**More than a visitor who is not signed in has in a day ({FREE_GPU_S} s; {SIGNED_IN_GPU_S} s "
                 "signed in to Hugging Face).** Sign in, or tick fewer GPU methods.")
    return text
