"""Peak memory of a call, cheaply enough to wrap every method run in the studio.

The number is the growth over the memory in use when the call started, never an absolute level,
so it is what the call itself needed (`bench` and the studio's status table report the same):

- CUDA: the allocator's peak counter above what was allocated before (free to read).
- CPU on Linux: the kernel's resident-set high-water mark (VmHWM), reset to the current level
  before the call (`/proc/self/clear_refs`); no sampling, no per-allocation cost, and no short
  peak is missed. Process-wide: other threads' memory counts too.
- CPU elsewhere: the resident set sampled every `interval` seconds (coarse; a peak shorter than
  that can be missed).
- `trace=True` (only when asked: it slows every Python allocation) also takes the peak of traced
  Python/NumPy allocations (tracemalloc) and reports the larger of the two.
"""

from __future__ import annotations

import threading
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import psutil

T = TypeVar("T")
SAMPLE_INTERVAL_S = 0.02
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _high_water_mark() -> int | None:
    """The process's peak resident bytes since the last reset (Linux), else None."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_high_water_mark() -> bool:
    """Set the high-water mark to the current resident set; False where the kernel does not allow it."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def measure_peak(fn: Callable[[], T], device: str = "cpu", interval: float = SAMPLE_INTERVAL_S,
                 trace: bool = False) -> tuple[T, float]:
    """(fn(), its peak memory in MB), as the module docstring describes."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        value = fn()
        torch.cuda.synchronize()
        return value, (torch.cuda.max_memory_allocated() - start) / 2**20
    process = psutil.Process()
    baseline = process.memory_info().rss
    kernel_peak = _reset_high_water_mark() and _high_water_mark() is not None
    done = threading.Event()
    sampled = baseline

    def sample() -> None:
        nonlocal sampled
        while not done.wait(interval):
            sampled = max(sampled, process.memory_info().rss)

    sampler = None if kernel_peak else threading.Thread(target=sample, daemon=True)
    if sampler is not None:
        sampler.start()
    if trace:
        tracemalloc.start()
    traced = 0
    try:
        value = fn()
        if trace:
            traced = tracemalloc.get_traced_memory()[1]
    finally:
        if trace:
            tracemalloc.stop()
        done.set()
        if sampler is not None:
            sampler.join()
    peak = (_high_water_mark() or 0) if kernel_peak else max(sampled, process.memory_info().rss)
    return value, max(traced, peak - baseline, 0) / 2**20


def peak_memory_mb(fn: Callable[[], object], device: str = "cpu", trace: bool = False) -> float:
    """Peak extra memory (MB) that `fn()` needed (`measure_peak`)."""
    return measure_peak(fn, device, trace=trace)[1]
