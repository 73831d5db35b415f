"""The Compare tab: run the chosen methods one after another and report as each finishes."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from harmony_core.errors import HarmonyError, MethodUnavailable
from harmony_core.metrics import ImageMetrics, image_metrics
from harmony_core.registry import Progress, availability_table, get_method
from harmony_core.studio.serving import failure_reason, run_method
from harmony_core.types import HarmonizationRequest, HarmonizationResult

log = logging.getLogger(__name__)

STATUS_COLUMNS = ["method", "status", "seconds", "device", "resolution", "seed", "steps", "peak memory", "weights"]
METRIC_COLUMNS = ["method", "MSE", "fMSE", "PSNR", "fPSNR", "bMSE"]


def method_choices() -> tuple[list[str], list[str], str]:
    """(all method names, the ones that can run here, a Markdown note on the ones that cannot)."""
    rows = availability_table()
    runnable = [r["method"] for r in rows if r["available"] == "yes"]
    missing = [f"- **{r['method']}**: {r['reason']}" for r in rows if r["available"] != "yes"]
    note = ("Not available here:\n" + "\n".join(missing)) if missing else "All methods can run here."
    return [r["method"] for r in rows], runnable, note


WEIGHTED_METHODS = ("diffharmony", "freepih", "hspace")
"""Methods whose weights the studio can point elsewhere (a local folder or a Hub id)."""


def set_weights(sources: dict[str, str]) -> tuple[list[str], str]:
    """Point methods at weights ("" = back to the environment variable / default) for this server
    process; returns the runnable methods and the availability note, as `method_choices`."""
    for name, source in sources.items():
        get_method(name).set_weights(source.strip() or None)
    _, runnable, note = method_choices()
    return runnable, note


@dataclass
class CompareState:
    """What the Compare tab shows; updated and yielded after each method."""

    gallery: list[tuple[np.ndarray, str]] = field(default_factory=list)
    status: list[list[str]] = field(default_factory=list)
    metrics: list[list[object]] = field(default_factory=list)
    results: dict[str, HarmonizationResult] = field(default_factory=dict)


def _status_row(name: str, result: HarmonizationResult) -> list[str]:
    m = result.metadata
    return [name, "done", f"{m['seconds']:.2f}", m["device"], m["resolution"], str(m["seed"]),
            str(m.get("steps", "")), m.get("peak_memory", ""), str(m["weights"])]


def run_methods(request: HarmonizationRequest, names: list[str], progress: Progress) -> Iterator[CompareState]:
    """Run each method, yielding the state once per method in order (the app relies on it); a
    failure is reported in its status row and never stops the others."""
    state = CompareState()
    for i, name in enumerate(names):
        method = get_method(name)

        def scaled(fraction: float, message: str, i: int = i) -> None:
            progress((i + fraction) / len(names), message)

        try:
            result = run_method(method, request, scaled)
        except MethodUnavailable as exc:
            state.status.append([name, f"not available: {exc}", *[""] * (len(STATUS_COLUMNS) - 2)])
            yield state
            continue
        except HarmonyError as exc:
            state.status.append([name, f"failed: {exc}", *[""] * (len(STATUS_COLUMNS) - 2)])
            yield state
            continue
        except Exception as exc:  # never a stack trace in the UI; the server log keeps it
            log.exception("method %s failed", name)
            state.status.append([name, f"failed: {failure_reason(exc)}", *[""] * (len(STATUS_COLUMNS) - 2)])
            yield state
            continue
        state.results[name] = result
        state.gallery.append((result.image, f"{name} · {result.metadata['seconds']:.2f} s · {result.metadata['device']}"))
        state.status.append(_status_row(name, result))
        if request.ground_truth is not None:
            values = image_metrics(result.image, request.ground_truth, request.mask, request.composite)
            state.metrics.append([name, *_metric_values(values)])
        yield state


def _metric_values(m: ImageMetrics) -> list[object]:
    return [round(m.mse, 2), round(m.fmse, 2), round(m.psnr, 2), round(m.fpsnr, 2), round(m.bmse or 0.0, 4)]
