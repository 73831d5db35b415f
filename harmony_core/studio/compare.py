"""The Compare tab: run the chosen methods one after another and report as each finishes; export."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harmony_core import export, imaging
from harmony_core.errors import InputError
from harmony_core.metrics import ImageMetrics, image_metrics
from harmony_core.registry import PROMPT, STYLE, Progress, get_method, reading, resolve_methods, weighted_methods
from harmony_core.studio import words
from harmony_core.studio.compose import finish
from harmony_core.studio.display import DisplayFiles
from harmony_core.studio.scratch import scratch_folder
from harmony_core.studio.serving import (
    MethodProgress,
    MethodStatus,
    StatusRow,
    method_statuses,
    public_value,
    serve_stream,
)
from harmony_core.types import HarmonizationRequest, HarmonizationResult, parse_seed

log = logging.getLogger(__name__)

METRIC_COLUMNS = ["method", "MSE", "fMSE", "PSNR", "fPSNR", "bMSE"]
PROMPT_CHARACTERS = 500
"""The longest prompt kept (CLIP's 77 tokens are rarely more than ~400 characters)."""
PROMPT_TOKENS = 77


def availability_note(statuses: list[MethodStatus], pointed: dict[str, str] | None = None) -> str:
    """Markdown: one plain line per method that cannot run here, its technical reason folded under it.

    pointed: methods a client just pointed at a weights source; their note names the source but
    never says why it failed (missing or lacking files), so the reply is no probe of the server's
    disk. The server log keeps the real reason."""
    lines = []
    for status in statuses:
        if status.runnable:
            continue
        source = (pointed or {}).get(status.method)
        if source:
            log.info("weights for %s from %r cannot be used: %s", status.method, source, status.reason)
            lines.append(words.details(f"<strong>{status.method}</strong> cannot run here: the weights you gave "
                                       "cannot be used.",
                                       f"The weights '{source}' cannot be used here (give a folder with the model's "
                                       "files, or a Hub id; the server log says why)."))
        else:
            lines.append(words.cannot_run(status.method, status.reason))
    return ("\n".join(lines)) if lines else "All methods can run here."


def method_choices(pointed: dict[str, str] | None = None) -> tuple[list[str], list[str], str]:
    """(all method names, the ones that can run here, the availability note)."""
    statuses = method_statuses()
    return ([s.method for s in statuses], [s.method for s in statuses if s.runnable],
            availability_note(statuses, pointed))


def weight_methods() -> tuple[str, ...]:
    """Methods whose weights the studio can point elsewhere (a local folder or a Hub id), in the
    order of the /set_weights inputs (alphabetical, so a method added later comes in its place)."""
    return tuple(sorted(weighted_methods()))


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
                  seed: int = 0, point: tuple[int, int] | None = None, prompt: str = "",
                  background: np.ndarray | None = None) -> tuple[HarmonizationRequest, list[str], list[str]]:
    """(request, method names, notes) for a Compare or Explain run on what a client sent.

    The same server-side checks as Compose whatever the client: images decoded by harmony_core
    (one clear message for an unreadable file), the long side capped at `max_side` (with a note),
    the mask validated, method names checked and each run once (names=None: no methods to run).
    background: the one Compose placed the object on (hspace's style image); dropped with a note
    when it no longer fits the composite."""
    if composite is None or mask is None:
        raise InputError(NO_COMPOSITE)
    names = [] if names is None else resolve_methods(method_list(names))
    composed = finish(imaging.load_rgb(composite, "composite"), imaging.load_mask(mask, "mask"), max_side)
    gt = None if ground_truth is None else _ground_truth(imaging.load_rgb(ground_truth, "ground truth"), composed.composite)
    notes = composed.notes
    if background is not None and background.shape != composed.composite.shape:
        background = None
        notes.append(f"The background from Compose no longer matches the composite; {_names(reading(STYLE))} "
                     "will use the composite as the style image.")
    prompt = str(prompt or "")
    if len(prompt) > PROMPT_CHARACTERS:
        notes.append(f"The prompt was cut to its first {PROMPT_CHARACTERS} characters (of {len(prompt)}); "
                     f"a text encoder such as CLIP's reads at most {PROMPT_TOKENS} tokens of it.")
        prompt = prompt[:PROMPT_CHARACTERS]
    request = HarmonizationRequest(composite=composed.composite, mask=composed.mask, ground_truth=gt,
                                   seed=parse_seed(seed), point=point, prompt=prompt, background=background)
    return request, names, notes


NO_COMPOSITE = "Compose a composite first (Compose tab)."


def missing_composite(composite: Any, mask: Any) -> str | None:
    """What to say when a run is asked for before anything was composed, else None."""
    return NO_COMPOSITE if composite is None or mask is None else None


def missing_run(run: CompareRun | None) -> str | None:
    """What to say when an export is asked for before a run finished, else None."""
    return NO_RUN if run is None or not run.results else None


def method_list(names: str | Sequence[str]) -> list[str]:
    """The method names a client sent: a list, or one string (a name, or names separated by commas)
    that must not be read as its characters."""
    if isinstance(names, str):
        return [n.strip() for n in names.split(",") if n.strip()]
    return list(names)


def slider_label(method: str | None) -> str:
    """The before/after slider's label: which method is on its right side."""
    if not method:
        return "Before / after (click a result to choose it)"
    return f"Before / after: {method} on the right"


def slider_method(run: CompareRun | None) -> str | None:
    """The method a finished run puts on the slider's right side (the first that is not the composite)."""
    return next((n for n in run.results if n != "composite"), None) if run is not None else None


def _names(names: Sequence[str]) -> str:
    """'a', 'a and b', 'a, b and c' in bold."""
    bold = [f"**{name}**" for name in names] or ["no method"]
    return bold[0] if len(bold) == 1 else f"{', '.join(bold[:-1])} and {bold[-1]}"


def shown_inputs(selected: Sequence[str] | None) -> tuple[bool, bool]:
    """(the prompt box, the style note): each shown while a chosen method that can run here reads
    it (`Method.inputs`)."""
    chosen = set(selected or [])

    def read(what: str) -> bool:
        return any(name in chosen and get_method(name).available() for name in reading(what))

    return read(PROMPT), read(STYLE)


def prompt_label() -> str:
    """The prompt box's label: which methods read it."""
    return (f"Prompt ({', '.join(reading(PROMPT))}: what the object is, e.g. 'a white cup'; "
            "recorded with its result)")


def inputs_note(background: np.ndarray | None) -> str:
    """What the Compare tab says about the inputs besides the composite."""
    styled = reading(STYLE)
    who, verb, own = _names(styled), *(("takes", "its") if len(styled) == 1 else ("take", "their"))
    if background is not None:
        return (f"{who} {verb} {own} style from the background you placed the object on in Compose "
                "(the other methods see only the composite).")
    return (f"{who} {verb} {own} style from the composite itself; place a foreground on a background in "
            "Compose to give it that background instead.")


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
class CompareRun:
    """A finished run, kept server-side for the blind vote and the export."""

    composite: np.ndarray
    mask: np.ndarray
    ground_truth: np.ndarray | None
    results: dict[str, HarmonizationResult]
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class CompareState:
    """What the Compare tab shows; updated and yielded after each method. Images are display
    files (paths), each written once: a later state reuses the earlier states' paths."""

    gallery: list[tuple[str, str]] = field(default_factory=list)
    status: list[list[str]] = field(default_factory=list)
    metrics: list[list[object]] = field(default_factory=list)
    results: dict[str, HarmonizationResult] = field(default_factory=dict)
    before_after: tuple[str, str] | None = None
    notes: list[str] = field(default_factory=list)
    """What a method said about the inputs it was given (e.g. a prompt cut to the encoder's length)."""
    finished: CompareRun | None = None
    """Set on the last state only: a vote or an export needs every method's result."""


@dataclass
class Running:
    """A tick while a method runs: the status rows so far, the running method's last (its progress
    and the time left)."""

    status: list[list[str]]


RUNNING_EVERY_SECONDS = 0.25
"""The running row is sent at most this often (hspace reports a thousand steps)."""


def run_methods(request: HarmonizationRequest, names: list[str], progress: Progress,
                files: DisplayFiles | None = None, ticks: bool = False) -> Iterator[CompareState | Running | None]:
    """Run each method, yielding the state once per method in order; a failure is reported in its
    status row and never stops the others. Each result is written to `files` (default: a scratch
    folder) once, as it arrives, and later states reuse its path. The last state carries the
    finished run.

    progress gets each method's own fraction, with which method of how many it is and an ETA.
    ticks: also yield at every progress event, so that a consumer that can only stop between
    yields (Gradio) can stop the run within one step (closing this generator stops the method
    that is running): a `Running` with the status table and the running method's row at most
    every RUNNING_EVERY_SECONDS, None (nothing new) otherwise."""
    files = files or DisplayFiles(prefix="compare-")
    state = CompareState()
    values: dict[str, dict[str, float]] = {}
    shown = 0.0
    composite = files.show(request.composite, "composite") if names else ""
    following = serve_stream(names[0], request) if names else None
    for i, name in enumerate(names):
        pace = MethodProgress(i, len(names))
        with contextlib.closing(following) as events:
            for event in events:
                if event[0] == "progress":
                    text = pace.describe(event[1], event[2])
                    progress(event[1], text)
                    if ticks and time.monotonic() - shown >= RUNNING_EVERY_SECONDS:
                        shown = time.monotonic()
                        yield Running([*state.status, StatusRow(name, "running", text).cells()])
                        continue
                if event[0] != "done":
                    if ticks:
                        yield None
                    continue
                result, row = event[1], event[2]
        # The next method starts now, so that writing this result's display file overlaps it.
        following = serve_stream(names[i + 1], request) if i + 1 < len(names) else None
        try:
            _add_result(state, name, result, row, request, files, composite, values)
            if i == len(names) - 1:
                state.finished = CompareRun(request.composite, request.mask, request.ground_truth, dict(state.results), values)
            yield state
        except BaseException:  # closed by its consumer, or failed: the next method stops too
            if following is not None:
                following.close()
            raise


def _add_result(state: CompareState, name: str, result: HarmonizationResult | None, row: StatusRow,
                request: HarmonizationRequest, files: DisplayFiles, composite: str,
                values: dict[str, dict[str, float]]) -> None:
    """One method's outcome into the state: its status row, and its display file written once."""
    state.status.append(row.cells())
    if result is None:
        return
    state.results[name] = result
    if result.metadata.get("prompt_note"):
        state.notes.append(f"{name}: {result.metadata['prompt_note']}.")
    image = files.show(result.image, name)
    state.gallery.append((image, f"{name} · {result.metadata['seconds']:.2f} s · {result.metadata['device']}"))
    if state.before_after is None and name != "composite":
        state.before_after = (composite, image)
    if request.ground_truth is not None:
        measured = image_metrics(result.image, request.ground_truth, request.mask, request.composite)
        values[name] = measured.as_dict()
        state.metrics.append([name, *_metric_values(measured)])


def _metric_values(m: ImageMetrics) -> list[object]:
    return [round(m.mse, 2), round(m.fmse, 2), round(m.psnr, 2), round(m.fpsnr, 2), round(m.bmse or 0.0, 4)]


NO_RUN = "Run the methods in **Compare** (and let the run finish), then export."


def export_run(run: CompareRun | None, zoom: bool = True) -> tuple[Path, Path]:
    """(figure.png, results.zip) of a finished run, written to a fresh scratch folder."""
    if missing_run(run):
        raise InputError(NO_RUN)
    timed = {name: (r.image, float(r.metadata.get("seconds", 0.0))) for name, r in run.results.items()}
    figure = export.figure(export.columns_of(run.composite, timed, run.ground_truth), run.mask, zoom)
    figure_png = export.png_bytes(figure)
    report = {"results": {name: {"image": export.output_name(name), "metadata": public_value(r.metadata), **(
        {"metrics": run.metrics[name]} if name in run.metrics else {})} for name, r in run.results.items()},
        "composite": "composite.png", "mask": "mask.png", "figure": "figure.png"}
    folder = scratch_folder("export-")
    (folder / "figure.png").write_bytes(figure_png)
    archive = folder / "harmony-results.zip"
    archive.write_bytes(export.results_zip(run.composite, run.mask, {n: r.image for n, r in run.results.items()},
                                           json.loads(json.dumps(report, default=str)), figure_png))
    return folder / "figure.png", archive
