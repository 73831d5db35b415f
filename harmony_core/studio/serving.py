"""How the studio runs a method: `serve` runs one and returns (result or None, its status row), the
one path for Compare and Explain. The one place that knows about `spaces` (ZeroGPU).

On a ZeroGPU Space (SPACES_ZERO_GPU set and `spaces` installed) the models of the available
methods load at start-up, outside any GPU function (`preload`). A method whose cost says it needs a
GPU (`Method.cost.gpu`: hspace, diffharmony, freepih) runs in its own `spaces.GPU` call, whose
duration comes from the cost model (`gpu_seconds`) and whose arguments and results are plain
picklable data (a `Job` in; progress events and numpy arrays out), because the call crosses a
pickle boundary into a GPU worker. The others (the classical methods, ptl) run in this process on
the CPU and never spend a visitor's GPU quota. Everywhere else (CPU, a dedicated GPU) the shared
method instance runs in this process and loads its model lazily, once; the GPU methods take turns
(`GPU_SLOT`), the others run alongside them.

One run passes through layers that each add one thing: `serve` (the availability check, once per
run, and every failure as a status row), `run` (where: a ZeroGPU call, the GPU slot or this
process), `execute` (peak memory, `profiling.measure_peak`), `ModelMethod.run` (the model's run
lock) and `Method.run` (paste-back and metadata).

Stopping: `serve_stream` runs a method in a worker thread and streams its events; closing that
generator (Gradio closes a handler's generator when its event is cancelled or its client
disconnects) sets the run's cancel flag, and the method stops at its next step
(`registry.checked`). On ZeroGPU the GPU call's generator is closed too, which ends the call.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import importlib.util
import logging
import math
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from harmony_core import config
from harmony_core.cost import Device
from harmony_core.errors import Cancelled, HarmonyError, MethodUnavailable
from harmony_core.profiling import measure_peak
from harmony_core.registry import Method, Progress, checked, get_method, method_names, weighted_methods
from harmony_core.types import HarmonizationRequest, HarmonizationResult

log = logging.getLogger(__name__)

STATUS_COLUMNS = ["method", "status", "seconds", "device", "resolution", "seed", "steps", "peak memory", "weights"]
OUT_OF_MEMORY = "out of GPU memory: try a smaller image (Compose caps the long side) or fewer steps"


def on_zero_gpu() -> bool:
    return config.current().zero_gpu and importlib.util.find_spec("spaces") is not None


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
    on first use). The methods that run outside GPU calls are first pinned to the CPU: in this
    process ZeroGPU's torch reports a GPU that exists only inside a call. Returns the methods
    loaded; one that fails to load is logged and left lazy."""
    if not on_zero_gpu():
        return []
    loaded = []
    for name in weighted_methods():
        method = get_method(name)
        if not method.cost.gpu:
            method.use_device("cpu")  # type: ignore[attr-defined]  (every weighted method is a ModelMethod)
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
    def of(cls, method: str, request: HarmonizationRequest) -> Job:
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
"""("progress", fraction, message) while running, then ("done", image, maps, metadata), or from
a GPU call ("failed", reason)."""


def job_events(job: Job) -> Iterator[Event]:
    """A method's run as events: progress, then the result as numpy arrays and a dict. The
    method runs in a thread so that its progress callbacks can be yielded across the pickle
    boundary as they happen. Closing the generator (the caller stopped) stops the method at its
    next step."""
    events: queue.Queue[Event] = queue.Queue()
    cancel = threading.Event()

    def work() -> None:
        try:
            result = execute(job, checked(lambda fraction, message: events.put(("progress", fraction, message)), cancel))
            events.put(("done", result.image, result.maps, result.metadata))
        except BaseException as exc:  # re-raised below, in the caller's thread
            events.put(("error", exc))

    threading.Thread(target=work, daemon=True).start()
    try:
        while True:
            event = events.get()
            if event[0] == "error":
                raise event[1]
            yield event
            if event[0] == "done":
                return
    finally:
        cancel.set()


def worker_events(job: Job) -> Iterator[Event]:
    """The body of the ZeroGPU call: `job_events`, with the method's own failures turned into a
    last ("failed", reason) event. Inside a GPU worker an exception reaches the server only as
    its class name ("ZeroGPU worker error: InputError"), so the reason is worded here, where the
    exception still is (out of memory included)."""
    try:
        yield from job_events(job)
    except HarmonyError as exc:
        yield ("failed", str(exc))
    except Exception as exc:
        log.exception("method %s failed in the GPU call", job.method)
        yield ("failed", failure_reason(exc))


# --- what a call costs ----------------------------------------------------------------------------

GPU_SECONDS_MAX = 240
"""The longest call ZeroGPU is asked for (a longer estimate is capped, and the call may be cut)."""
CALL_OVERHEAD_S = 10.0
"""Added to each GPU call's estimate: starting or reusing the GPU worker and moving the method's
weights onto the GPU (a conservative guess, not measured on ZeroGPU)."""


def settings_of(method: Method) -> dict[str, Any]:
    """A method's settings as a dict, without loading its model: what its cost reads."""
    return dataclasses.asdict(method.settings)


def in_gpu_call(name: str) -> bool:
    """Whether the method runs in a ZeroGPU call here: on ZeroGPU, when its cost needs a GPU."""
    return ON_GPU is not None and get_method(name).cost.gpu


def device_kind(name: str) -> Device:
    """Where the method runs on this server: the GPU in a ZeroGPU call or on a visible CUDA device."""
    method = get_method(name)
    if on_zero_gpu():
        return "gpu" if method.cost.gpu else "cpu"
    return "gpu" if str(method.device).startswith("cuda") else "cpu"


def estimate_seconds(name: str, size: tuple[int, int]) -> float:
    """A run's estimated seconds at `size` (width, height) on this server, GPU calls' overhead included."""
    method = get_method(name)
    seconds = method.cost.seconds(settings_of(method), size, device_kind(name))
    return seconds + (CALL_OVERHEAD_S if in_gpu_call(name) else 0.0)


def gpu_seconds_for(name: str, size: tuple[int, int]) -> int:
    """The `duration` a ZeroGPU call of the method asks for at `size`: its GPU estimate plus the
    call's overhead, in whole seconds, at most GPU_SECONDS_MAX."""
    method = get_method(name)
    seconds = method.cost.seconds(settings_of(method), size, "gpu") + CALL_OVERHEAD_S
    return int(min(GPU_SECONDS_MAX, math.ceil(seconds)))


def gpu_seconds(job: Job) -> int:
    """The `duration` of the job's spaces.GPU call (spaces calls it with the call's arguments)."""
    height, width = job.composite.shape[:2]
    return gpu_seconds_for(job.method, (width, height))


def _gpu_function() -> Callable[[Job], Iterator[Event]] | None:
    """spaces.GPU(worker_events) on ZeroGPU (it must wrap functions at import time), else None."""
    if not on_zero_gpu():
        return None
    import spaces

    return spaces.GPU(duration=gpu_seconds)(worker_events)


ON_GPU = _gpu_function()
GPU_SLOT = threading.Lock()
"""Outside ZeroGPU, the GPU methods run one at a time in this process (the memory bound of one
GPU, or of the host's RAM on a CPU server); the other methods do not wait for it."""


# --- ZeroGPU's own errors -------------------------------------------------------------------------

ZERO_GPU_ADVICE = {
    "ZeroGPU quota exceeded": "Sign in to Hugging Face for more daily GPU time, wait for your quota to refill, "
                              "or tick fewer GPU methods (composite, reinhard, histogram, poisson and ptl need none).",
    "ZeroGPU illegal duration": "This method's settings ask for a longer GPU call than ZeroGPU allows: "
                                "the Space's organiser can lower its steps.",
    "ZeroGPU queue timeout": "Every GPU is busy: try again in a few minutes.",
    "ZeroGPU pending credits exceeded": "Wait until your other GPU runs have finished.",
}
ZERO_GPU_OTHER = "Try again in a minute; if it happens again, tick only the CPU methods."


class ZeroGpuRefused(HarmonyError):
    """ZeroGPU refused or ended a call (quota, queue, worker): its own message, then what to do."""


def zero_gpu_error(exc: BaseException) -> HarmonyError:
    """What the user reads when `spaces` raised: ZeroGPU's gr.Error verbatim (title and message)
    with what to do; a worker that died of out-of-memory says so. Anything else is unexpected."""
    message = getattr(exc, "message", None)
    if message is None:
        log.error("the ZeroGPU call failed", exc_info=exc)
        return ZeroGpuRefused(f"The GPU call failed. {ZERO_GPU_OTHER}")
    title = str(getattr(exc, "title", "") or "ZeroGPU")
    if "OutOfMemory" in str(message):
        return ZeroGpuRefused(OUT_OF_MEMORY)
    return ZeroGpuRefused(f"{title}: {message} {ZERO_GPU_ADVICE.get(title, ZERO_GPU_OTHER)}")


def run(job: Job, progress: Progress) -> HarmonizationResult:
    """The job's result: through a ZeroGPU call for a GPU method on ZeroGPU, else in this process
    (a GPU method after taking GPU_SLOT)."""
    if in_gpu_call(job.method):
        return _run_in_gpu_call(job, progress)
    if not get_method(job.method).cost.gpu:
        return execute(job, progress)
    if not GPU_SLOT.acquire(blocking=False):
        progress(0.0, f"{job.method}: waiting for the GPU (another run is using it)")
        GPU_SLOT.acquire()
    try:
        return execute(job, progress)
    finally:
        GPU_SLOT.release()


def _run_in_gpu_call(job: Job, progress: Progress) -> HarmonizationResult:
    """The job through ON_GPU, its events read to the end (so that spaces ends the call normally);
    what spaces itself raises becomes `zero_gpu_error`, since worker_events never raises."""
    assert ON_GPU is not None
    last = None
    with contextlib.closing(ON_GPU(job)) as events:  # closed when progress raises Cancelled: the GPU call ends
        while True:
            try:
                event = next(events, None)
            except Exception as exc:
                raise zero_gpu_error(exc) from exc
            if event is None:
                break
            if event[0] == "progress":
                progress(event[1], event[2])
            else:
                last = event
    if last is None:
        raise RuntimeError(f"the GPU call of {job.method} ended without a result")
    if last[0] == "failed":
        raise HarmonyError(last[1])
    return HarmonizationResult(last[1], last[2], last[3])


# --- the status row -------------------------------------------------------------------------------


def public_value(value: Any) -> Any:
    """A metadata value as a reply or a results file may show it: a local path (absolute, relative
    or `~`, or anything that exists on this disk) becomes its last part (a weights folder's name),
    in nested dicts and lists too; a Hub id ("org/name") and every other value pass unchanged."""
    if isinstance(value, dict):
        return {k: public_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(public_value(v) for v in value)
    if isinstance(value, os.PathLike) or (isinstance(value, str) and value and (
            os.path.isabs(value) or value.startswith(("./", "../", "~")) or os.path.exists(value))):
        return os.path.basename(os.path.normpath(os.fspath(value))) or "."
    return value


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
                _count(m.get("steps", "")), m.get("peak_memory", ""), str(public_value(m["weights"]))]


def _count(steps: Any) -> str:
    """The steps cell: a count (a method that records a per-step log there shows its length)."""
    return str(len(steps)) if isinstance(steps, (list, tuple, dict)) else str(steps)


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
    try:
        get_method(name).require_available()  # before any wait or GPU call; the run's own checks reuse it
    except MethodUnavailable as exc:
        return None, StatusRow(name, "not available", exc.reason)
    try:
        result = run(Job.of(name, request), progress)
    except Cancelled:
        return None, StatusRow(name, "stopped", "the run was stopped")
    except HarmonyError as exc:
        return None, StatusRow(name, "failed", str(exc))
    except Exception as exc:  # never a stack trace in the UI; the server log keeps it
        log.exception("method %s failed", name)
        return None, StatusRow(name, "failed", failure_reason(exc))
    return result, StatusRow(name, "done", metadata=result.metadata)


Served = tuple[HarmonizationResult | None, StatusRow]
TICK_SECONDS = 1.0
"""How often `serve_stream` yields while a method reports nothing (a long load, one slow step)."""


class serve_stream:
    """`serve` in a worker thread, started at once, as events: ("progress", fraction, message) as
    the method reports, ("tick",) every TICK_SECONDS it is silent, then ("done", result, row).
    The consumer must close the stream when it stops listening (module docstring), read or not:
    the method then stops at its next step, and the lock of model-backed runs keeps the next run
    out until it has. Starting at once lets a caller start the next method before it handles the
    last one's result (Compare writes a display file while the next method runs)."""

    def __init__(self, name: str, request: HarmonizationRequest) -> None:
        self._events: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self._cancel = threading.Event()

        def work() -> None:
            progress = checked(lambda fraction, message: self._events.put(("progress", fraction, message)), self._cancel)
            self._events.put(("done", *serve(name, request, progress)))

        # In the caller's context, so a UI's request (ZeroGPU's quota is the visitor's) stays attached.
        threading.Thread(target=contextvars.copy_context().run, args=(work,), daemon=True, name=f"harmony-{name}").start()

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        while not self._cancel.is_set():
            try:
                event = self._events.get(timeout=TICK_SECONDS)
            except queue.Empty:
                event = ("tick",)
            yield event
            if event[0] == "done":
                return

    def close(self) -> None:
        self._cancel.set()


def eta_text(seconds: float) -> str:
    """'about 40 s left' / 'about 3 min left' / 'about 1 h 5 min left'."""
    seconds = max(0, round(seconds))
    if seconds < 90:
        return f"about {seconds} s left"
    minutes = round(seconds / 60)
    return f"about {minutes} min left" if minutes < 60 else f"about {minutes // 60} h {minutes % 60} min left"


@dataclass
class MethodProgress:
    """The progress of one method in a run of several: its own fraction, and an ETA from the pace
    measured since it started (shown once it has done 2% and run a second)."""

    index: int
    count: int
    start: float = field(default_factory=time.monotonic)

    def describe(self, fraction: float, message: str) -> str:
        if fraction <= 0:  # starting or waiting for the run before: the pace is measured from here
            self.start = time.monotonic()
        elapsed = time.monotonic() - self.start
        parts = [message, f"method {self.index + 1} of {self.count}"]
        if 0.02 <= fraction < 1 and elapsed >= 1:
            parts.append(eta_text(elapsed * (1 - fraction) / fraction))
        return " · ".join(parts)
