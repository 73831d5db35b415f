"""How the studio runs a method: under ZeroGPU's `spaces.GPU` when on a ZeroGPU Space, with the
run's peak memory measured. The one place that knows about `spaces`."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import psutil

from harmony_core.registry import Method, Progress
from harmony_core.types import HarmonizationRequest, HarmonizationResult

GPU_SECONDS = 120
"""Longest a ZeroGPU call may hold the GPU (diffusion methods at 1024 px need about this)."""
SCRATCH_ROOT = Path(tempfile.gettempdir()) / "harmony-studio"
SCRATCH_MAX_AGE_S = 6 * 3600
"""Scratch folders older than this are removed (a vote or a download takes minutes, not hours)."""


def scratch_folder(prefix: str) -> Path:
    """A fresh folder for files a page shows or offers for download. Older folders are removed
    first (Gradio's copies of them are pruned by the app's `delete_cache`)."""
    SCRATCH_ROOT.mkdir(parents=True, exist_ok=True)
    cutoff = time.time() - SCRATCH_MAX_AGE_S
    for old in SCRATCH_ROOT.iterdir():
        try:
            if old.stat().st_mtime < cutoff:
                shutil.rmtree(old, ignore_errors=True)
        except FileNotFoundError:
            pass  # removed by a concurrent request
    return Path(tempfile.mkdtemp(prefix=prefix, dir=SCRATCH_ROOT))


def on_zero_gpu() -> bool:
    return bool(os.environ.get("SPACES_ZERO_GPU")) and importlib.util.find_spec("spaces") is not None


def gpu(fn: Callable[..., Any]) -> Callable[..., Any]:
    """spaces.GPU on ZeroGPU (it must wrap functions at import time), the function itself elsewhere."""
    if not on_zero_gpu():
        return fn
    import spaces

    return spaces.GPU(duration=GPU_SECONDS)(fn)


def _torch_cuda():
    """torch, if a method already imported it and CUDA is up; never imports torch itself."""
    torch = sys.modules.get("torch")
    return torch if torch is not None and torch.cuda.is_available() else None


@gpu
def _run(method: Method, request: HarmonizationRequest, progress: Progress) -> tuple[HarmonizationResult, str]:
    torch = _torch_cuda()
    if torch is not None:
        torch.cuda.reset_peak_memory_stats()
    rss = psutil.Process().memory_info().rss
    result = method.run(request, progress)
    torch = torch or _torch_cuda()
    if torch is not None:
        peak = f"{torch.cuda.max_memory_allocated() / 2**20:.0f} MB CUDA peak"
    else:
        peak = f"{max(0, psutil.Process().memory_info().rss - rss) / 2**20:.0f} MB RSS growth"
    return result, peak


def failure_reason(exc: BaseException) -> str:
    """What the UI says about an unexpected exception (the server log keeps the trace): out of GPU
    memory is the one failure the user can act on, so it gets its own sentence."""
    if type(exc).__name__ == "OutOfMemoryError":
        return "out of GPU memory: try a smaller image (Compose caps the long side) or fewer steps"
    return "internal error (details in the server log)"


def run_method(method: Method, request: HarmonizationRequest, progress: Progress) -> HarmonizationResult:
    """method.run with result.metadata['peak_memory'] set (CUDA peak on a GPU, else RSS growth)."""
    result, peak = _run(method, request, progress)
    result.metadata["peak_memory"] = peak
    return result
