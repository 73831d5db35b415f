"""Latency and peak-memory benchmark of the registered methods on a synthetic composite.

Timings: median of N runs after one warm-up run (which also loads models). Memory: a separate,
untimed run, measured as the studio measures every run (harmony_core.profiling: the growth over
the memory in use when it started; tracemalloc on top only with `trace_memory`).
"""

from __future__ import annotations

import ast
import statistics
import time
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from harmony_core.errors import InputError
from harmony_core.profiling import peak_memory_mb
from harmony_core.registry import Method, get_method, method_class
from harmony_core.types import HarmonizationRequest


def synthetic_request(size: int, seed: int = 0) -> HarmonizationRequest:
    """A smooth random scene with an elliptical object (about 20% of the image) recoloured."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(max(8, size // 16), max(8, size // 16), 3), dtype=np.uint8)
    real = cv2.resize(base, (size, size), interpolation=cv2.INTER_CUBIC)
    mask = np.zeros((size, size), np.uint8)
    cv2.ellipse(mask, (size // 2, size // 2), (size // 4, size // 4), 0, 0, 360, 1, -1)
    mask = mask.astype(bool)
    composite = real.copy()
    composite[mask] = np.clip(composite[mask] * np.array([1.25, 0.85, 0.9]) + 10, 0, 255).astype(np.uint8)
    return HarmonizationRequest(composite=composite, mask=mask, ground_truth=real, seed=seed)


@dataclass
class BenchRow:
    method: str
    size: int
    device: str
    median_ms: float
    min_ms: float
    peak_mb: float
    repeats: int


def parse_options(items: list[str] | None) -> dict[str, Any]:
    """KEY=VALUE strings -> settings; values are Python literals (50, 0.3, True) or else strings."""
    options: dict[str, Any] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--option expects KEY=VALUE, got '{item}'")
        try:
            options[key.strip()] = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            options[key.strip()] = text.strip()
    return options


def with_options(method: Method, options: dict[str, Any]) -> Method:
    """A copy of `method` with other settings (validated), sharing its weights and source (so
    `--weights` holds); the instance itself is never changed."""
    return method.with_settings(**options) if options else method


def split_options(names: list[str], options: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """--option values per chosen method: METHOD.KEY=VALUE goes to that method, KEY=VALUE to every
    chosen method that has KEY; a key no chosen method has is an InputError."""
    per_method: dict[str, dict[str, Any]] = {name: {} for name in names}
    for key, value in options.items():
        target, dot, field = key.partition(".")
        if dot:
            if target not in per_method:
                raise InputError(f"--option {key}: {target} is not among the chosen methods ({', '.join(names)})")
            per_method[target][field] = value
            continue
        takers = [name for name in names if key in method_class(name).option_names()]
        if not takers:
            raise InputError(f"--option {key}: none of {', '.join(names)} has that option")
        for name in takers:
            per_method[name][key] = value
    return per_method


def create_method(name: str, options: dict[str, Any] | None = None, random_weights: bool = False,
                  device: str | None = None) -> Method:
    """The instance to benchmark: the shared one (with `options`, a copy sharing its weights and
    source), or one with random full-size weights."""
    if not random_weights:
        return with_options(get_method(name), options or {})
    try:
        return method_class(name).random_weights("full", device, **(options or {}))
    except NotImplementedError as exc:
        raise InputError(f"--random-weights: {exc}") from None


def bench_method(name: str, size: int, repeats: int = 5, seed: int = 0, method: Method | None = None,
                 trace_memory: bool = False) -> BenchRow:
    """Median latency of `method` (default: the registry's shared instance of `name`)."""
    method = method or get_method(name)
    request = synthetic_request(size, seed)
    method.run(request)  # warm-up: loads weights, fills caches
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        method.run(request)
        times.append((time.perf_counter() - start) * 1000)
    peak = peak_memory_mb(lambda: method.run(request), method.device, trace_memory)
    return BenchRow(name, size, method.device, statistics.median(times), min(times), peak, repeats)


def markdown_table(rows: list[BenchRow]) -> str:
    lines = [
        "| method | size | device | median ms | min ms | peak MB | runs |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.method} | {r.size} | {r.device} | {r.median_ms:.1f} | {r.min_ms:.1f} | {r.peak_mb:.1f} | {r.repeats} |"
        )
    return "\n".join(lines)
