"""The Compare tab: run the chosen methods one after another and report as each finishes."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np

from harmony_core import imaging
from harmony_core.errors import HarmonyError, InputError, MethodUnavailable
from harmony_core.metrics import ImageMetrics, image_metrics
from harmony_core.registry import Progress, availability_table, get_method, resolve_methods
from harmony_core.studio.compose import finish
from harmony_core.studio.serving import failure_reason, run_method
from harmony_core.types import HarmonizationRequest, HarmonizationResult

log = logging.getLogger(__name__)

STATUS_COLUMNS = ["method", "status", "seconds", "device", "resolution", "seed", "steps", "peak memory", "weights"]
METRIC_COLUMNS = ["method", "MSE", "fMSE", "PSNR", "fPSNR", "bMSE"]


def method_choices(pointed: dict[str, str] | None = None) -> tuple[list[str], list[str], str]:
    """(all method names, the ones that can run here, a Markdown note on the ones that cannot).

    pointed: methods a client just pointed at a weights source; their note names the source but
    never says why it failed (missing or lacking files), so the reply is no probe of the server's
    disk. The server log keeps the real reason."""
    rows = availability_table()
    runnable = [r["method"] for r in rows if r["available"] == "yes"]
    missing = []
    for r in rows:
        if r["available"] == "yes":
            continue
        source = (pointed or {}).get(r["method"])
        if source:
            log.info("weights for %s from %r cannot be used: %s", r["method"], source, r["reason"])
            missing.append(f"- **{r['method']}**: the weights '{source}' cannot be used here (give a folder "
                           "with the model's files, or a Hub id; the server log says why)")
        else:
            missing.append(f"- **{r['method']}**: {r['reason']}")
    note = ("Not available here:\n" + "\n".join(missing)) if missing else "All methods can run here."
    return [r["method"] for r in rows], runnable, note


WEIGHTED_METHODS = ("diffharmony", "freepih", "hspace")
"""Methods whose weights the studio can point elsewhere (a local folder or a Hub id)."""
WEIGHTS_FLAG = "--allow-weight-changes"
WEIGHTS_OFF = (f"Changing model weights is off on this server. The organiser enables it by starting the app with "
               f"`{WEIGHTS_FLAG}` (or HARMONY_ALLOW_WEIGHT_CHANGES=1), on a server only they can reach.")


def set_weights(sources: dict[str, str], allowed: bool) -> tuple[list[str], str]:
    """Point methods at weights ("" = back to the environment variable / default) for this server
    process, when the organiser allowed it; returns the runnable methods and the availability
    note, as `method_choices`."""
    if not allowed:
        raise InputError(WEIGHTS_OFF)
    sources = {name: str(source or "").strip() for name, source in sources.items()}
    for name, source in sources.items():
        get_method(name).set_weights(source or None)
    _, runnable, note = method_choices({n: s for n, s in sources.items() if s})
    return runnable, note


def build_request(composite: Any, mask: Any, names: Sequence[str] | None, max_side: int, ground_truth: Any = None,
                  seed: int = 0, point: tuple[int, int] | None = None) -> tuple[HarmonizationRequest, list[str], list[str]]:
    """(request, method names, notes) for a Compare or Explain run on what a client sent.

    The same server-side checks as Compose whatever the client: images decoded by harmony_core
    (one clear message for an unreadable file), the long side capped at `max_side` (with a note),
    the mask validated, method names checked and each run once (names=None: no methods to run)."""
    if composite is None or mask is None:
        raise InputError("Compose a composite first (Compose tab).")
    names = [] if names is None else resolve_methods(list(names))
    composed = finish(imaging.load_rgb(composite, "composite"), imaging.load_mask(mask, "mask"), max_side)
    gt = None if ground_truth is None else _ground_truth(imaging.load_rgb(ground_truth, "ground truth"), composed.composite)
    request = HarmonizationRequest(composite=composed.composite, mask=composed.mask, ground_truth=gt,
                                   seed=int(seed or 0), point=point)
    return request, names, composed.notes


def _ground_truth(gt: np.ndarray, composite: np.ndarray) -> np.ndarray:
    """The ground truth at the composite's size (uploads larger than the working size are shrunk)."""
    h, w = composite.shape[:2]
    gh, gw = gt.shape[:2]
    if (gh, gw) != (h, w):
        if abs(gw / gh - w / h) > 0.01:
            raise InputError(f"The ground truth is {gw}x{gh} but the composite is {w}x{h} (different aspect ratio).")
        gt = imaging.resize_rgb(gt, (w, h))
    return gt


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
