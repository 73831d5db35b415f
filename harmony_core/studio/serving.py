"""How the studio runs a method: `serve` runs one and returns (result or None, its status row), the
one path for Compare and Explain. The one place that knows about `spaces` (ZeroGPU).

On a ZeroGPU Space (SPACES_ZERO_GPU set and `spaces` installed) the models of the available
methods load at start-up, outside any GPU function (`preload`), and each call runs in a
`spaces.GPU` function whose arguments and results are plain picklable data (a `Job` in; progress
events and numpy arrays out), because the call crosses a pickle boundary into a GPU worker.
Everywhere else (CPU, a dedicated GPU) the shared method instance runs in this process and loads
its model lazily, once.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import queue
import sys
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from harmony_core.errors import HarmonyError
from harmony_core.profiling import measure_peak
from harmony_core.registry import Progress, get_method, method_names, weighted_methods
from harmony_core.types import HarmonizationRequest, HarmonizationResult

log = logging.getLogger(__name__)

STATUS_COLUMNS = ["method", "status", "seconds", "device", "resolution", "seed", "steps", "peak memory", "weights"]
OUT_OF_MEMORY = "out of GPU memory: try a smaller image (Compose caps the long side) or fewer steps"


def on_zero_gpu() -> bool:
    return bool(os.environ.get("SPACES_ZERO_GPU")) and importlib.util.find_spec("spaces") is not None


# --- availability -------------------------------------------------------------------------------


@dataclass(frozen=True)
class MethodStatus:
    """Whether a method can run on this server, and if not, why (the method's own words)."""

    method: str
    family: str
    runnable: bool
    reason: str = ""

    @property
    def short_reason(self) -> str:
        """The reason's first sentence (at most ~90 characters): the one line a visitor sees."""
        first = self.reason.split(". ")[0].split("; ")[0].strip().rstrip(".")
        return first if len(first) <= 90 else first[:87] + "..."


def method_statuses() -> list[MethodStatus]:
    """One typed row per registered method."""
    rows = []
    for name in method_names():
        method = get_method(name)
        state = method.available()
        rows.append(MethodStatus(name, method.family, bool(state), state.reason))
    return rows


def preload() -> list[str]:
    """On ZeroGPU, load the available model-backed methods' models now, on the CPU and outside any
    GPU function (ZeroGPU moves them to the GPU inside each call); elsewhere do nothing (lazy load
    on first use). Returns the methods loaded; one that fails to load is logged and left lazy."""
    if not on_zero_gpu():
        return []
    loaded = []
    for name in weighted_methods():
        method = get_method(name)
        if not method.available():
            continue
        try:
            method.load()
            loaded.append(name)
        except Exception:
            log.exception("preloading %s failed; it will load on first use", name)
    return loaded


# --- one call, as plain data ----------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """A method call as plain, picklable data: the method's name, the arrays, the settings."""

    method: str
    composite: np.ndarray
    mask: np.ndarray
    background: np.ndarray | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    """seed, prompt and point (the per-request settings of HarmonizationRequest)."""

    @classmethod
    def of(cls, method: str, request: HarmonizationRequest) -> "Job":
        return cls(method, request.composite, request.mask, request.background,
                   {"seed": request.seed, "prompt": request.prompt, "point": request.point})

    def request(self) -> HarmonizationRequest:
        return HarmonizationRequest(self.composite, self.mask, background=self.background, **self.settings)


def execute(job: Job, progress: Progress) -> HarmonizationResult:
    """Run the shared instance of the job's method, with its peak memory (the growth over what was
    in use before the call, profiling.measure_peak: the same number `bench` reports) in the metadata."""
    method = get_method(job.method)
    result, peak = measure_peak(lambda: method.run(job.request(), progress), method.device)
    result.metadata["peak_memory"] = f"{peak:.0f} MB"
    return result


Event = tuple[Any, ...]
"""("progress", fraction, message) while running, then ("done", image, maps, metadata)."""


def job_events(job: Job) -> Iterator[Event]:
    """The GPU function's body: progress events, then the result as numpy arrays and a dict. The
    method runs in a thread so that its progress callbacks can be yielded across the pickle
    boundary as they happen."""
    events: queue.Queue[Event] = queue.Queue()

    def work() -> None:
        try:
            result = execute(job, lambda fraction, message: events.put(("progress", fraction, message)))
            events.put(("done", result.image, result.maps, result.metadata))
        except BaseException as exc:  # re-raised below, in the caller's thread
            events.put(("error", exc))

    threading.Thread(target=work, daemon=True).start()
    while True:
        event = events.get()
        if event[0] == "error":
            raise event[1]
        yield event
        if event[0] == "done":
            return


@dataclass(frozen=True)
class GpuCost:
    """An estimate (not a measurement) of a call's GPU seconds on a ZeroGPU slice: `fixed` plus
    `per_unit` seconds per unit of work, the units read from the method's settings and, for
    methods that work at the image's own size, scaled by its megapixels."""

    fixed: float
    per_unit: float = 0.0
    units: Callable[[dict[str, Any]], float] = lambda settings: 1.0
    per_megapixel: bool = False


GPU_COSTS: dict[str, GpuCost] = {
    "composite": GpuCost(5),
    "reinhard": GpuCost(5),
    "histogram": GpuCost(5),
    "poisson": GpuCost(5, 10, per_megapixel=True),
    "ptl": GpuCost(10, 5, per_megapixel=True),
    "diffharmony": GpuCost(20, 2, lambda s: s.get("steps", 5) * (s.get("resolution", 512) / 512) ** 2),
    "hspace": GpuCost(15, 0.05, lambda s: s.get("n_inv", 50) + s.get("n_gen", 1000)),
    "freepih": GpuCost(20, 0.6, lambda s: (math.ceil(s.get("num_inference_steps", 50) * s.get("noise_level", 0.2))
                                           * (s.get("lbfgs_max_iter", 5) + 1) * (s.get("resolution", 512) / 512) ** 2)),
}
GPU_SECONDS_MAX = 240
"""The longest call ZeroGPU is asked for (a longer estimate is capped, and the call may be cut)."""


def gpu_seconds(job: Job) -> int:
    """The `duration` of the job's spaces.GPU call, from its method, settings and image size."""
    cost = GPU_COSTS[job.method]
    settings = get_method(job.method).parameters()
    units = cost.units(settings) * (job.composite.shape[0] * job.composite.shape[1] / 1e6 if cost.per_megapixel else 1)
    return int(min(GPU_SECONDS_MAX, math.ceil(cost.fixed + cost.per_unit * units)))


def _gpu_function() -> Callable[[Job], Iterator[Event]] | None:
    """spaces.GPU(job_events) on ZeroGPU (it must wrap functions at import time), else None."""
    if not on_zero_gpu():
        return None
    import spaces

    return spaces.GPU(duration=gpu_seconds)(job_events)


ON_GPU = _gpu_function()


def run(job: Job, progress: Progress) -> HarmonizationResult:
    """The job's result: through the ZeroGPU function on ZeroGPU, in this process elsewhere."""
    if ON_GPU is None:
        return execute(job, progress)
    for event in ON_GPU(job):
        if event[0] == "progress":
            progress(event[1], event[2])
        else:
            return HarmonizationResult(event[1], event[2], event[3])
    raise RuntimeError(f"the GPU call of {job.method} ended without a result")


# --- the status row -------------------------------------------------------------------------------


@dataclass(frozen=True)
class StatusRow:
    """How one method's run went: "done" (with its metadata), "not available" or "failed"."""

    method: str
    state: str
    reason: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    def cells(self) -> list[str]:
        """The row of the Status table (STATUS_COLUMNS)."""
        if self.state != "done":
            return [self.method, f"{self.state}: {self.reason}", *[""] * (len(STATUS_COLUMNS) - 2)]
        m = self.metadata
        return [self.method, "done", f"{m['seconds']:.2f}", m["device"], m["resolution"], str(m["seed"]),
                str(m.get("steps", "")), m.get("peak_memory", ""), str(m["weights"])]


def is_out_of_memory(exc: BaseException) -> bool:
    """Out of memory, by type: torch's OutOfMemoryError (CUDA) or MemoryError (the host)."""
    torch = sys.modules.get("torch")  # never imported here: a method that ran out of memory imported it
    oom = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    return isinstance(exc, MemoryError) or (oom is not None and isinstance(exc, oom))


def failure_reason(exc: BaseException) -> str:
    """What the UI says about an unexpected exception (the server log keeps the trace): out of
    memory is the one failure the user can act on, so it gets its own sentence."""
    return OUT_OF_MEMORY if is_out_of_memory(exc) else "internal error (details in the server log)"


def serve(name: str, request: HarmonizationRequest, progress: Progress) -> tuple[HarmonizationResult | None, StatusRow]:
    """Run one method: (its result, a "done" row), or (None, a row saying why not). Never raises
    for the method's own problems, so one method cannot stop the others."""
    state = get_method(name).available()
    if not state:
        return None, StatusRow(name, "not available", state.reason)
    try:
        result = run(Job.of(name, request), progress)
    except HarmonyError as exc:
        return None, StatusRow(name, "failed", str(exc))
    except Exception as exc:  # never a stack trace in the UI; the server log keeps it
        log.exception("method %s failed", name)
        return None, StatusRow(name, "failed", failure_reason(exc))
    return result, StatusRow(name, "done", metadata=result.metadata)
