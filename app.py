"""Harmony Studio: the Gradio app, as wiring. One builder per tab lays out its widgets next to their
events and returns the components other tabs need; `build_app` assembles them. Every handler is
a thin adapter from widget values to the plain functions of harmony_core.studio (tested without
a server) and back, under one error policy (`user_errors`).

    python app.py [--host 0.0.0.0] [--port 7860] [--max-side 1024] [--allow-weight-changes]

Every event that takes an image runs with `preprocess=False`: the raw value passes the app's
one gate (harmony_core.studio.uploads) and is decoded by harmony_core, never by Gradio.
"""

from __future__ import annotations

# On a ZeroGPU Space `spaces` must be imported before anything initializes CUDA: serving does it.
from harmony_core.studio import serving  # isort: skip

import argparse
import contextlib
import dataclasses
import functools
import hashlib
import hmac
import inspect
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np

from harmony_core import __version__, config, imaging
from harmony_core.arena import stats, studyset, votes
from harmony_core.errors import HarmonyError, InputError
from harmony_core.registry import no_progress
from harmony_core.studio import budget, compare, compose, explain, notice, showcase, study, words
from harmony_core.studio.display import DisplayFiles
from harmony_core.studio.raters import (
    RateLimiter,
    RateLimits,
    client_address,
    distrust_server_proxy_headers,
    proxy_hops,
)
from harmony_core.studio.uploads import editor_paths, upload_path

log = logging.getLogger("harmony_studio")
EXAMPLES = Path(__file__).parent / "examples"
DEFAULT_STUDY = EXAMPLES / "study"
DEFAULT_VOTES = Path(__file__).parent / "outputs" / "votes"
GPU_QUEUE = {"concurrency_id": "gpu", "concurrency_limit": 8}
"""Compare and Explain share one concurrency group of 8 runs at once. The GPU methods still take one
GPU at a time (serving.GPU_SLOT), except on ZeroGPU, which schedules its own slots per call, and the
CPU methods never wait for them; votes, the leaderboard and Compose are in groups of their own."""
QUEUE_MAX_SIZE = 64
"""Events waiting in the queue at most, over all groups (beyond that a visitor reads "Queue is
full"). Explicit because on ZeroGPU Gradio would otherwise cap the queue at one waiting event."""
RAW = {"preprocess": False}
"""Image inputs reach the handlers raw, through the gate."""
CSS = """
/* The intro and the example side by side when there is room, else one above the other. */
#intro-row { flex-wrap: wrap; }
#intro-row > * { flex: 1 1 320px; }
#intro-row > #example-slider { flex: 0 1 320px; }
/* Galleries grow with their results instead of scrolling inside a box that cuts the second row. */
#compare-gallery .grid-wrap, #explain-gallery .grid-wrap { max-height: none; min-height: 0; overflow-y: visible; }
/* Each caption below its image, whole (wrapped), not over it and cut. */
#compare-gallery .grid-container, #explain-gallery .grid-container { grid-template-rows: none; grid-auto-rows: auto; }
#compare-gallery .thumbnail-lg, #explain-gallery .thumbnail-lg { display: flex; flex-direction: column; height: auto;
  aspect-ratio: auto; }
#compare-gallery .thumbnail-lg > img, #explain-gallery .thumbnail-lg > img { height: auto; }
#compare-gallery .caption-label, #explain-gallery .caption-label { position: static; max-width: 100%; white-space: normal;
  border: none; border-radius: 0; text-align: center; }
/* A study image's caption sits above the image, clear of its toolbar icons. */
#study-slots [data-testid="block-label"] { position: static; max-width: 100%; white-space: normal; }
@media (max-width: 640px) {
  #compare-gallery .grid-container, #explain-gallery .grid-container {
    grid-template-columns: repeat(2, minmax(0, 1fr)) !important; }
  /* Two images a row, and the vote buttons stay in reach at the bottom of the screen (a fixed row:
     the container's overflow would stop a sticky one). */
  #study-slots { display: grid !important; grid-template-columns: repeat(2, minmax(0, 1fr)); margin-bottom: 130px; }
  #study-votes { position: fixed; left: 0; right: 0; bottom: 0; z-index: 20; background: var(--body-background-fill, #fff);
                 padding: 6px 8px;
                 box-shadow: 0 -2px 6px rgba(0, 0, 0, 0.15); display: grid !important;
                 grid-template-columns: repeat(4, minmax(0, 1fr)); gap: 6px; }
  #study-votes > button { min-width: 0 !important; padding: 6px 4px; }
  #study-options { flex-direction: column; }
  #study-options > * { min-width: 100% !important; }
  /* An image's label above it, not under its toolbar icons. */
  [data-testid="block-label"] { position: static; max-width: 100%; white-space: normal; }
}
"""
"""Layout the widgets' own parameters cannot say (passed to launch)."""


def _user_error(fn_name: str, exc: Exception) -> gr.Error:
    """The message a user sees for an exception: its own for HarmonyError, a sentence otherwise."""
    if isinstance(exc, gr.Error):
        return exc
    if isinstance(exc, HarmonyError):
        return gr.Error(words.plain_text(_cut(str(exc))), print_exception=False)
    log.exception("unexpected error in %s", fn_name)
    return gr.Error("Something went wrong on the server (details are in its log).", print_exception=False)


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The one error policy of every handler, plain or generator: problems show as a message in
    the UI, never as a stack trace (Gradio streams a generator function's yields, so the wrapper
    of a generator must stay one)."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def streaming(*args: Any, **kwargs: Any) -> Any:
            try:
                yield from fn(*args, **kwargs)
            except Exception as exc:
                raise _user_error(fn.__name__, exc) from None

        return streaming

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            raise _user_error(fn.__name__, exc) from None

    return wrapper


MAX_MESSAGE_CHARS = 300
"""Longest message a reply or a log line carries: a client's value echoed back is cut to this."""
MAX_TEXT_CHARS = 2000
"""Longest text any text input takes (a prompt, a weights source); longer is refused unread."""
BAD_CALL = "This call's inputs do not fit this app: {why}. Use the page, or the API as /gradio_api/info describes it."


def _cut(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _bad_input(block: Any, value: Any) -> str | None:
    """Why a raw input value does not fit its component (None when it fits). Gradio checks choices
    and types only when it preprocesses, and the app's image events take raw values, so this is the
    one check every event's inputs pass, private events included."""
    label = _cut(str(getattr(block, "label", None) or type(block).__name__), 40)
    if isinstance(block, (gr.State, gr.BrowserState)) or value is None:
        return None
    # method names (a list, or one comma-separated text): the handlers name an unknown one
    if isinstance(block, gr.CheckboxGroup):
        if isinstance(value, str):
            return None if len(value) <= MAX_TEXT_CHARS else f"'{label}' takes a list of its choices"
        if not isinstance(value, list) or len(value) > 4 * len(block.choices or []) or \
                any(not isinstance(v, str) or len(v) > 100 for v in value):
            return f"'{label}' takes a list of its choices"
        return None
    if isinstance(block, (gr.Radio, gr.Dropdown)):
        allowed = {c[1] if isinstance(c, (tuple, list)) else c for c in (block.choices or [])}
        many = getattr(block, "multiselect", False)
        values = value if many and isinstance(value, list) else [value] if not many else None
        if values is None or len(values) > len(allowed) or any(not isinstance(v, str) or v not in allowed for v in values):
            return f"'{label}' takes {'a list of ' if many else ''}one of its choices"
        return None
    if isinstance(block, gr.Checkbox):
        return None if isinstance(value, bool) else f"'{label}' takes true or false"
    if isinstance(block, (gr.Number, gr.Slider)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                (isinstance(value, float) and not np.isfinite(value)):
            return f"'{label}' takes a number"  # a Python int of any size is finite: the handler judges its range
        low, high = getattr(block, "minimum", None), getattr(block, "maximum", None)
        if (low is not None and value < low) or (high is not None and value > high):
            return f"'{label}' takes a number from {low} to {high}"
        return None
    if isinstance(block, gr.Textbox):
        return None if isinstance(value, str) and len(value) <= MAX_TEXT_CHARS else \
            f"'{label}' takes a text of at most {MAX_TEXT_CHARS} characters"
    if isinstance(block, (gr.Image, gr.ImageEditor, gr.File, gr.Gallery, gr.ImageSlider)):
        return None if isinstance(value, (str, dict, list)) else f"'{label}' takes an image"
    return None


def guard_events(demo: gr.Blocks) -> None:
    """Gradio's own layer under one policy, before any handler runs: too few inputs, ill-typed
    ones and whatever Gradio's preprocessing refuses answer with one line (gr.Error without a
    traceback in the log), never Gradio's long message or a null error."""
    validate, preprocess = demo.validate_inputs, demo.preprocess_data

    def validate_inputs(block_fn: Any, inputs: list[Any]) -> None:
        if not isinstance(inputs, list) or len(inputs) < len(block_fn.inputs):
            raise gr.Error(BAD_CALL.format(why=f"{len(block_fn.inputs)} inputs are needed"), print_exception=False)
        validate(block_fn, inputs)

    async def preprocess_data(block_fn: Any, inputs: list[Any], state: Any, explicit_call: bool = False) -> Any:
        validate_inputs(block_fn, inputs)
        for block, value in zip(block_fn.inputs, inputs):
            if state is not None and block._id in state:  # the session's own copy (choices updated since)
                block = state[block._id]
            why = _bad_input(block, value)
            if why:
                raise gr.Error(BAD_CALL.format(why=why), print_exception=False)
        try:
            return await preprocess(block_fn, inputs, state, explicit_call)
        except gr.Error:
            raise
        except Exception as exc:
            log.info("refused the inputs of %s: %s", block_fn.name, _cut(str(exc)))
            raise gr.Error(BAD_CALL.format(why="an input is not what this event takes"), print_exception=False) from None

    call = demo.call_function

    async def call_function(block_fn: Any, *args: Any, **kwargs: Any) -> Any:
        # The handlers raise only gr.Error (user_errors, _refusing): anything else comes from
        # Gradio's own layer around them, e.g. event data it cannot read.
        try:
            return await call(block_fn, *args, **kwargs)
        except gr.Error:
            raise
        except Exception as exc:
            log.info("refused the event data of %s: %s", block_fn.name, _cut(repr(exc)))
            raise gr.Error(BAD_CALL.format(why="the event data is not what this event takes"), print_exception=False) from None

    demo.validate_inputs = validate_inputs
    demo.preprocess_data = preprocess_data
    demo.call_function = call_function
    for block_fn in demo.fns.values():  # Gradio's own handlers (the Examples' loaders) too
        if block_fn.fn is not None and not hasattr(block_fn.fn, "__wrapped__"):
            block_fn.fn = _refusing(block_fn.fn)


def _refusing(fn: Callable[..., Any]) -> Callable[..., Any]:
    """One of Gradio's own handlers under the app's policy: what it cannot take is a bad call
    (one line, no traceback), not a server error."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as exc:
            log.info("refused a call of %s: %s", getattr(fn, "__name__", "handler"), _cut(repr(exc)))
            raise gr.Error(BAD_CALL.format(why="an input is not what this event takes"), print_exception=False) from None

    return wrapper


def _warned(message: str, outputs: int) -> tuple:
    """A button pressed with its input missing: one plain toast, and every output left as it is
    (raising would paint an "Error" badge on each output box besides the toast)."""
    gr.Warning(words.plain_text(message))
    return (gr.update(),) * outputs


@dataclass
class Server:
    """What the tabs' handlers share: server-wide settings, the upload gate, the study and votes."""

    max_side: int
    upload_roots: tuple[Path | str, ...]
    denied_roots: tuple[Path | str, ...]
    """Never read nor handed back, whatever the roots allow: the study set's folder."""
    allow_weight_changes: bool
    study_set: studyset.StudySet | None
    study_note: str
    store: votes.VoteStore
    secret: bytes
    limiter: RateLimiter
    leave_out_flagged: bool = False
    """The organiser's choice: the board counts no vote of a flagged source (Sources table)."""

    def image_in(self, payload: Any, what: str) -> Path | None:
        return upload_path(payload, self.upload_roots, what, self.denied_roots)

    def source(self, request: gr.Request | None) -> str:
        """The caller's IP hash: the unit of the rate limits and of the statistics' clusters."""
        return votes.ip_hash(_client_ip(request), self.secret)


def _client_ip(request: gr.Request | None) -> str | None:
    """The client's address as the trusted proxies saw it (raters.client_address)."""
    if request is None:
        return None
    peer = request.client.host if request.client else None
    return client_address(request.headers.get("x-forwarded-for", ""), peer, proxy_hops())


# --- Compose ------------------------------------------------------------------------------------


@dataclass
class ComposeTab:
    composite: gr.Image
    mask: gr.Image
    ground_truth: gr.Image
    background: gr.State
    """The background of a placed composite (hspace's style image), else None."""
    composed: list[Any]
    """The events that set a new working composite (to chain other tabs' updates on)."""


def _compose_outputs(result: compose.Composed, cache: str) -> tuple:
    files = DisplayFiles(cache, "compose-")  # lossless: the working composite is what Compare reads back
    return (files.show(result.composite, "composite"), files.show(result.mask_image, "mask"),
            files.show(result.overlay, "overlay"), result.message, gr.update(visible=bool(result.mask.mean() > 0.5)),
            result.background)


def _compose_inputs() -> dict[str, Any]:
    """The three ways in (upload, place, paint) and the optional ground truth."""
    c: dict[str, Any] = {}
    with gr.Tabs():
        with gr.Tab("Composite + mask"):
            with gr.Row():
                c["composite"] = gr.Image(label="Composite", type="filepath", image_mode=None, format="png",
                                          elem_id="compose-composite")
                c["mask"] = gr.Image(label="Mask (white = pasted object)", type="filepath", image_mode=None, format="png",
                                     elem_id="compose-mask")
            c["use"] = gr.Button("Use this composite", variant="primary", elem_id="compose-use")
        with gr.Tab("Background + foreground"):
            with gr.Row():
                c["background"] = gr.Image(label="Background", type="filepath", image_mode=None, format="png")
                c["foreground"] = gr.Image(label="Foreground (PNG with transparency)", type="filepath", image_mode=None,
                                           format="png")
                c["foreground_mask"] = gr.Image(label="Foreground mask (optional)", type="filepath", image_mode=None,
                                                format="png")
            with gr.Row():
                c["x"] = gr.Slider(0, 1, value=0.5, step=0.01, label="x (centre, fraction of width)")
                c["y"] = gr.Slider(0, 1, value=0.5, step=0.01, label="y (centre, fraction of height)")
                c["scale"] = gr.Slider(0.05, 4, value=1.0, step=0.05, label="scale")
            c["place"] = gr.Button("Place the foreground", variant="primary")
        with gr.Tab("Paint the mask"):
            c["editor"] = gr.ImageEditor(
                label="Upload the composite, then paint over the pasted object",
                type="filepath", image_mode="RGBA", format="png", layers=False, transforms=(),
                brush=gr.Brush(colors=["#ffffff"], default_color="#ffffff", color_mode="fixed", default_size=24),
            )
            c["paint"] = gr.Button("Use the painted mask", variant="primary")
    with gr.Accordion("Ground truth (optional: the real photo, to compute metrics)", open=False):
        c["ground_truth"] = gr.Image(label="Ground truth", type="filepath", image_mode=None, format="png", height=240)
    return c


def compose_tab(server: Server, example: showcase.Showcase | None) -> ComposeTab:
    c = _compose_inputs()
    first = example.composed if example else None
    notice = gr.Markdown(example.message if example else None, elem_id="compose-notice")
    with gr.Row():
        work_composite = gr.Image(first and first.composite, label="Working composite", type="filepath", interactive=False,
                                  format="png", elem_id="compose-working")
        work_mask = gr.Image(first and first.mask_image, label="Working mask", type="filepath", image_mode="L",
                             interactive=False, format="png")
        overlay = gr.Image(first and first.overlay, label="Mask overlay", interactive=False, format="png")
    invert_button = gr.Button("Invert mask", visible=False)
    background = gr.State(None)
    outputs = [work_composite, work_mask, overlay, notice, invert_button, background]
    # Examples only fill the inputs; the composing runs below as a private, gated event
    # (Examples' own run_on_click event would let Gradio decode whatever path it is sent).
    upload_examples = gr.Examples(
        label="Examples: composite + mask",
        examples=[[str(EXAMPLES / "cup_rocket_composite.jpg"), str(EXAMPLES / "cup_rocket_mask.png"), None],
                  [str(EXAMPLES / "cat_composite.jpg"), str(EXAMPLES / "cat_mask.png"), str(EXAMPLES / "cat_real.jpg")]],
        inputs=[c["composite"], c["mask"], c["ground_truth"]],
    )
    place_examples = gr.Examples(
        label="Example: background + transparent foreground",
        examples=[[str(EXAMPLES / "rocket_background.jpg"), str(EXAMPLES / "cup_foreground.png"), 0.25, 0.75, 0.9]],
        inputs=[c["background"], c["foreground"], c["x"], c["y"], c["scale"]],
    )
    image_in, cache = server.image_in, work_composite.GRADIO_CACHE

    @user_errors
    def compose_upload(composite, mask):
        if missing := compose.missing_upload(composite, mask):
            return _warned(missing, len(outputs))
        return _compose_outputs(compose.from_upload(image_in(composite, "composite"), image_in(mask, "mask"), server.max_side),
                                cache)

    @user_errors
    def compose_place(background_in, foreground, foreground_mask, x, y, scale):
        return _compose_outputs(compose.from_layers(
            image_in(background_in, "background"), image_in(foreground, "foreground"),
            image_in(foreground_mask, "foreground mask"), x, y, scale, server.max_side), cache)

    @user_errors
    def compose_paint(editor_value):
        return _compose_outputs(compose.from_painting(editor_paths(editor_value, server.upload_roots, server.denied_roots),
                                                         server.max_side), cache)

    @user_errors
    def compose_invert(composite, mask, placed_on):
        return _compose_outputs(compose.invert(image_in(composite, "composite"), image_in(mask, "mask"), server.max_side,
                                               placed_on), cache)

    upload_in = [c["composite"], c["mask"]]
    place_in = [c["background"], c["foreground"], c["foreground_mask"], c["x"], c["y"], c["scale"]]
    composed = [
        c["use"].click(compose_upload, upload_in, outputs, api_name="compose_upload", **RAW),
        upload_examples.load_input_event.then(compose_upload, upload_in, outputs, api_name=False, **RAW),
        c["place"].click(compose_place, place_in, outputs, api_name="compose_place", **RAW),
        place_examples.load_input_event.then(compose_place, place_in, outputs, api_name=False, **RAW),
        c["paint"].click(compose_paint, [c["editor"]], outputs, api_name="compose_paint", **RAW),
        invert_button.click(compose_invert, [work_composite, work_mask, background], outputs, api_name="compose_invert", **RAW),
    ]
    return ComposeTab(work_composite, work_mask, c["ground_truth"], background, composed)


# --- Compare ------------------------------------------------------------------------------------


@dataclass
class CompareTab:
    results: gr.State
    """The finished run (compare.CompareRun), for the blind vote and the export."""
    blind_button: gr.Button
    seed: gr.Number
    prompt: gr.Textbox
    """Explain runs with the same seed and prompt."""


def _compare_controls(server: Server, all_methods: list[str], runnable: list[str], note: str,
                      example: showcase.Showcase | None) -> dict[str, Any]:
    c: dict[str, Any] = {}
    with gr.Row():
        c["run_on"] = gr.Image(example and example.composed.composite, label="Runs on: the working composite (Compose tab)",
                               type="filepath", interactive=False, format="png", height=220, elem_id="compare-input")
        with gr.Column():
            largest = (server.max_side, server.max_side)
            c["methods"] = gr.CheckboxGroup(
                choices=budget.choices(all_methods, largest), value=budget.default_selection(runnable, largest),
                label=f"Methods (ticked: those estimated to finish within {budget.TIME_BUDGET_S:.0f} s here)",
                elem_id="compare-methods")
            c["estimate"] = gr.Markdown(budget.selection_note(c["methods"].value, largest), elem_id="compare-estimate")
            prompt_shown, style_shown = compare.shown_inputs(c["methods"].value)
            with gr.Row():
                c["seed"] = gr.Number(value=0, precision=0, label="Seed")
                c["prompt"] = gr.Textbox(label=compare.prompt_label(), value="", max_lines=2, elem_id="compare-prompt",
                                         visible=prompt_shown)
            c["style_note"] = gr.Markdown(compare.inputs_note(None), elem_id="compare-style", visible=style_shown)
    c["availability"] = gr.Markdown(note, elem_id="compare-availability")
    with gr.Accordion("Model weights (a local folder or a Hub id; empty = the default)", open=False,
                      visible=server.allow_weight_changes):
        c["weight_boxes"] = [gr.Textbox(label=name, value="", placeholder="default", max_lines=1)
                             for name in compare.weight_methods()]
        c["weights_button"] = gr.Button("Use these weights (for everyone on this server)")
    return c


def _export_controls() -> dict[str, Any]:
    c: dict[str, Any] = {}
    with gr.Accordion("Export: a paper-style figure and every output", open=False):
        with gr.Row():
            c["zoom"] = gr.Checkbox(value=True, label="Add a zoomed crop of the object under each image")
            c["button"] = gr.Button("Export", elem_id="export-run")
        with gr.Row():
            c["figure"] = gr.Image(label="Figure (full resolution)", type="filepath", interactive=False, format="png")
            c["files"] = gr.File(label="Downloads: figure.png and a ZIP of every output, the mask and results.json",
                                 file_count="multiple", interactive=False, elem_id="export-files")
    return c


def _wire_method_choice(server: Server, c: dict[str, Any]) -> None:
    """The Methods box: the inputs it shows, its estimate, and the organiser's weights."""
    image_in = server.image_in

    @user_errors
    def show_inputs_for(names):
        prompt_shown, style_shown = compare.shown_inputs(names)
        return gr.update(visible=prompt_shown), gr.update(visible=style_shown)

    c["methods"].change(show_inputs_for, [c["methods"]], [c["prompt"], c["style_note"]], api_name=False, concurrency_limit=4)

    @user_errors
    def show_estimate(composite, names):
        size = budget.image_size(image_in(composite, "composite"), server.max_side)
        return budget.selection_note(names, size)

    gr.on([c["methods"].change, c["run_on"].change], show_estimate, [c["run_on"], c["methods"]], c["estimate"],
          api_name="compare_estimate", concurrency_limit=4, **RAW)

    @user_errors
    def use_weights(*sources):
        runnable_now, note_now = compare.set_weights(dict(zip(compare.weight_methods(), sources)), server.allow_weight_changes)
        largest = (server.max_side, server.max_side)
        return gr.update(value=budget.default_selection(runnable_now, largest)), note_now

    c["weights_button"].click(use_weights, c["weight_boxes"], [c["methods"], c["availability"]], api_name="set_weights",
                              **GPU_QUEUE)


def _export_section(results: gr.State) -> None:
    """Export: a paper-style figure and a ZIP of the session's last finished run."""
    e = _export_controls()

    @user_errors
    def export_results(run, zoom):
        if missing := compare.missing_run(run):
            return _warned(missing, 2)
        figure, archive = compare.export_run(run, bool(zoom))
        return str(figure), [str(figure), str(archive)]

    e["button"].click(export_results, [results, e["zoom"]], [e["figure"], e["files"]], api_name="export", concurrency_limit=2)


def compare_tab(server: Server, composed: ComposeTab, all_methods: list[str], runnable: list[str], note: str,
                example: showcase.Showcase | None) -> CompareTab:
    c = _compare_controls(server, all_methods, runnable, note, example)
    with gr.Row():
        run_button = gr.Button("Harmonize", variant="primary", elem_id="compare-run")
        stop_button = gr.Button("Stop", variant="stop", elem_id="compare-stop")
    run = example.run if example else None
    gallery = gr.Gallery(run and run.gallery, label="Results", columns=4, format="png", object_fit="contain", height="auto",
                         elem_id="compare-gallery")
    slider = gr.ImageSlider(example and example.before_after, label=compare.slider_label(example and example.slider_method),
                            format="png", elem_id="compare-slider")
    status = gr.Dataframe(run and run.status, headers=serving.STATUS_COLUMNS, label="Status", interactive=False, wrap=True,
                          elem_id="compare-status")
    metrics = gr.Dataframe(run and run.metrics or None, headers=compare.METRIC_COLUMNS,
                           label="Metrics against the ground truth (256-px protocol)", interactive=False)
    blind_button = gr.Button("Vote blind on these results (Blind study tab)", elem_id="compare-blind")
    results = gr.State(run and run.finished)
    _export_section(results)
    image_in = server.image_in

    @user_errors
    def show_inputs(composite, background):
        return image_in(composite, "composite"), compare.inputs_note(background)

    for event in composed.composed:
        event.then(show_inputs, [composed.composite, composed.background], [c["run_on"], c["style_note"]], api_name=False, **RAW)

    @user_errors
    def harmonize(composite, mask, gt, names, seed_value, prompt, background):
        if missing := compare.missing_composite(composite, mask):
            yield _warned(missing, 5)
            return
        request, names, notes = compare.build_request(image_in(composite, "composite"), image_in(mask, "mask"), names,
                                                      server.max_side, image_in(gt, "ground truth"), seed_value,
                                                      prompt=prompt, background=background)
        for note_text in notes:
            gr.Warning(words.plain_text(note_text))
        unchanged = (gr.skip(),) * 5
        yield unchanged  # Gradio can stop a generator only between yields, and only after its first
        shown = 0
        files = DisplayFiles(gallery.GRADIO_CACHE, "compare-")  # served as they are: each result encoded once
        with contextlib.closing(compare.run_methods(request, names, no_progress, ticks=True, files=files)) as states:
            for state in states:
                if state is None or isinstance(state, compare.Running):
                    yield (gr.skip(), gr.skip(), state.status, gr.skip(), gr.skip()) if state else unchanged
                    continue
                for note_text in state.notes[shown:]:
                    shown += 1
                    gr.Warning(words.plain_text(note_text))
                yield state.gallery, state.before_after, state.status, state.metrics or None, state.finished

    # The running method's progress and time left show in its status row, not as an overlay, so
    # results already shown stay visible while others run.
    run_event = run_button.click(harmonize, [composed.composite, composed.mask, composed.ground_truth, c["methods"],
                                             c["seed"], c["prompt"], composed.background],
                                 [gallery, slider, status, metrics, results], api_name="compare",
                                 show_progress="hidden", **GPU_QUEUE, **RAW)
    run_event.then(user_errors(lambda run: gr.update(label=compare.slider_label(compare.slider_method(run)))), [results],
                   [slider], api_name=False)
    stop_button.click(None, None, None, cancels=[run_event], api_name=False)

    _wire_method_choice(server, c)

    @user_errors
    def choose(composite, event: gr.SelectData):
        chosen = (event.value or {}).get("image") if isinstance(event.value, dict) else None
        caption = str((event.value or {}).get("caption") or "") if isinstance(event.value, dict) else ""
        pair = tuple(str(p) if p else None for p in (image_in(composite, "composite"), image_in(chosen, "result")))
        return gr.update(value=pair, label=compare.slider_label(caption.split(" · ")[0] or None))

    gallery.select(choose, [composed.composite], [slider], api_name=False, **RAW)

    return CompareTab(results, blind_button, c["seed"], c["prompt"])


# --- Explain ------------------------------------------------------------------------------------


def _explain_controls(example: showcase.Showcase | None) -> tuple:
    """Explain's widgets, in page order; the point boxes start at the example's default point."""
    with gr.Row():
        names = gr.CheckboxGroup(choices=explain.choices(), value=explain.default_methods(), label="Methods with maps")
        first = explain.start_point(example.composed.mask, None) if example else (None, None)
        point_x = gr.Number(value=first[0], precision=0, label="point x (px)", elem_id="explain-x")
        point_y = gr.Number(value=first[1], precision=0, label="point y (px)", elem_id="explain-y")
    with gr.Row():
        run_button = gr.Button("Explain", variant="primary", elem_id="explain-run")
        stop_button = gr.Button("Stop", variant="stop", elem_id="explain-stop")
    with gr.Row():
        map_choice = gr.Dropdown(choices=[], label="Map shown above the legend", elem_id="explain-choice")
        colormap = gr.Dropdown(choices=explain.COLORMAPS, value=explain.COLORMAPS[0], label="Colormap")
        opacity = gr.Slider(0, 1, value=0.6, step=0.05, label="Map opacity")
    view = gr.Image(label="Click a point on the object", type="numpy", interactive=False, format="png", elem_id="explain-view")
    legend = gr.Image(label="Legend", type="numpy", interactive=False, format="png", height=100, show_label=False)
    notes = gr.Markdown()
    gallery = gr.Gallery(label="All maps (same kind side by side)", columns=2, format="png", object_fit="contain", height="auto",
                         elem_id="explain-gallery")
    return names, point_x, point_y, run_button, stop_button, map_choice, colormap, opacity, view, legend, notes, gallery


def _wire_explain_point(server: Server, composed: ComposeTab, run: Any, state: gr.State, point_x: gr.Number,
                        point_y: gr.Number) -> None:
    """The point boxes show the point a run will use: a new composite's default, then the run's."""
    image_in = server.image_in

    @user_errors
    def show_point(result: explain.Explained | None):
        point = result.point if result is not None else None
        return (gr.update(), gr.update()) if point is None else point

    @user_errors
    def default_point(mask):
        mask = image_in(mask, "mask")
        return explain.start_point(imaging.load_mask(mask, "mask"), None) if mask is not None else (None, None)

    for event in composed.composed:  # a new composite: the boxes show the point a run will use
        event.then(default_point, [composed.mask], [point_x, point_y], api_name=False, **RAW)
    run.then(show_point, [state], [point_x, point_y], api_name=False)


def explain_tab(server: Server, composed: ComposeTab, compared: CompareTab, example: showcase.Showcase | None) -> None:
    gr.Markdown("What each method's maps show, over the working composite, with the seed, prompt and background of "
                "**Compare**. **Click a point on the object** to see which background regions it draws on (methods "
                "with a point map re-run).")
    gr.Markdown(explain.availability_note())
    (names, point_x, point_y, run_button, stop_button, map_choice, colormap, opacity, view, legend, notes,
     gallery) = _explain_controls(example)
    state = gr.State(None)
    outputs = [state, view, map_choice, gallery, legend, notes]
    image_in = server.image_in

    def shown(result: explain.Explained, composite: np.ndarray, point, cmap: str, alpha: float, chosen) -> tuple:
        v = explain.render(result, composite, point, cmap, alpha, chosen)
        f = explain.to_files(v, DisplayFiles(gallery.GRADIO_CACHE, "explain-"))  # each image encoded once
        return result, f.main, gr.update(choices=v.labels, value=v.chosen), f.overlays, f.legend, v.notes

    def request_for(composite, mask, methods, point, background, seed, prompt):
        """The request Compare would make (the same background, seed and prompt), with the point."""
        return compare.build_request(image_in(composite, "composite"), image_in(mask, "mask"), methods, server.max_side,
                                     seed=seed, point=point, prompt=prompt, background=background)

    def running(step: str | None, count: int) -> tuple:
        """While the maps are computed: the progress line in the notes, every other output unchanged."""
        return (gr.skip(),) * (count - 1) + (gr.skip() if step is None else step,)

    @user_errors
    def explain_run(composite, mask, methods, x, y, cmap, alpha, chosen, background, seed, prompt):
        if missing := compare.missing_composite(composite, mask):
            yield _warned(missing, len(outputs))
            return
        point = (int(x), int(y)) if x is not None and y is not None else None
        request, methods, request_notes = request_for(composite, mask, methods, point, background, seed, prompt)
        request = dataclasses.replace(request, point=explain.start_point(request.mask, request.point))
        yield running(None, len(outputs))  # Gradio can stop a generator only between yields, and only after its first
        with contextlib.closing(explain.explain_stream(request, methods, no_progress)) as steps:
            for step in steps:
                if not isinstance(step, explain.Explained):
                    yield running(step, len(outputs))
                    continue
                step.notes = request_notes + step.notes
                yield shown(step, request.composite, request.point, cmap, alpha, chosen)

    @user_errors
    def explain_click(composite, mask, previous, cmap, alpha, chosen, background, seed, prompt, event: gr.SelectData):
        x, y = explain.clicked_point(getattr(event, "index", None))
        request, _, _ = request_for(composite, mask, None, (x, y), background, seed, prompt)
        yield running(None, len(outputs) + 2)
        with contextlib.closing(explain.point_stream(previous, request, no_progress)) as steps:
            for step in steps:
                yield ((x, y, *shown(step, request.composite, (x, y), cmap, alpha, explain.point_choice(step, chosen)))
                       if isinstance(step, explain.Explained) else running(step, len(outputs) + 2))

    @user_errors
    def explain_restyle(composite, previous, x, y, cmap, alpha, chosen):
        composite = image_in(composite, "composite")
        if previous is None or composite is None:
            return previous, None, gr.update(), [], explain.legend_image(cmap), ""
        point = (int(x), int(y)) if x is not None and y is not None else None
        image = imaging.cap_long_side(imaging.load_rgb(composite, "composite"), server.max_side)
        return shown(previous, image, point, cmap, alpha, chosen)

    same_as_compare = [composed.background, compared.seed, compared.prompt]
    runs = [run_button.click(explain_run, [composed.composite, composed.mask, names, point_x, point_y, colormap, opacity,
                                           map_choice, *same_as_compare], outputs, api_name="explain", show_progress="hidden",
                             **GPU_QUEUE, **RAW),
            view.select(explain_click, [composed.composite, composed.mask, state, colormap, opacity, map_choice,
                                        *same_as_compare], [point_x, point_y, *outputs], api_name=False,
                        show_progress="hidden", **GPU_QUEUE, **RAW)]
    _wire_explain_point(server, composed, runs[0], state, point_x, point_y)
    stop_button.click(None, None, None, cancels=runs, api_name=False)
    gr.on([map_choice.input, colormap.change, opacity.release], explain_restyle,
          [composed.composite, state, point_x, point_y, colormap, opacity, map_choice], outputs, api_name=False, **RAW)


# --- Blind study --------------------------------------------------------------------------------


@dataclass
class StudyTab:
    mode: gr.Radio
    view: dict[str, Any]
    """The event that shows the round's images as the zoom / difference toggles ask."""
    rounds: list[Any]
    """round state, the slots, the vote buttons and the message: what a new round updates."""
    rater_outputs: list[Any]


def _round_outputs(state, view: study.RoundView, locked: bool) -> tuple:
    images = [gr.update(value=img, label=cap, visible=img is not None) for img, cap in zip(view.images, view.captions)]
    buttons = [gr.update(interactive=not locked and img is not None, visible=img is not None) for img in view.images]
    ties = [gr.update(interactive=not locked and view.ties, visible=view.ties)] * len(study.TIES)
    shown = any(img is not None for img in view.images)  # none: the mode is finished, no lone button left
    return (state, *images, *buttons, gr.update(interactive=not locked, visible=shown), *ties, view.message)


def study_tab(server: Server, rater: gr.BrowserState, demo: gr.Blocks) -> StudyTab:
    gr.Markdown("Which result looks most natural? Images are labelled by letter only, in a random order; "
                f"the methods are revealed after your vote. {server.study_note}")
    with gr.Accordion("What a vote records, why, where it goes, for how long", open=True, elem_id="study-notice"):
        gr.Markdown(notice.STUDY_NOTICE)
    rater_note = gr.Markdown()
    with gr.Row(elem_id="study-options"):
        mode = gr.Radio(list(study.MODE_LABELS), value=next(iter(study.MODE_LABELS)), label="Mode")
        zoom = gr.Checkbox(value=False, label="Zoom on the object (the same crop in every image)", elem_id="study-zoom")
        difference = gr.Checkbox(value=False, label="After your vote: show the difference from the composite",
                                 elem_id="study-difference")
        next_button = gr.Button("Next image", variant="primary", elem_id="study-next")
    message = gr.Markdown(elem_id="study-message")
    with gr.Row(elem_id="study-slots"):
        slots = [gr.Image(label=letter, type="filepath", interactive=False, elem_id=f"slot-{letter}")
                 for letter in studyset.LETTERS[:studyset.MAX_SHOWN]]
    with gr.Row(elem_id="study-votes"):
        vote_buttons = [gr.Button(letter, interactive=False, elem_id=f"vote-{letter}")
                        for letter in studyset.LETTERS[:studyset.MAX_SHOWN]]
        cant_decide = gr.Button(study.CANT_DECIDE, interactive=False, elem_id="vote-none")
        tie_buttons = [gr.Button(label, interactive=False, visible=False, elem_id=f"vote-{kind.replace('_', '-')}")
                       for label, kind in study.TIES.items()]
    state = gr.State(None)
    rounds = [state, *slots, *vote_buttons, cant_decide, *tie_buttons, message]

    @user_errors
    def known_rater(rater_id: str | None, request: gr.Request) -> tuple[str, str]:
        rater_id = study.browser_rater(rater_id, server.secret, server.limiter, server.source(request))
        return rater_id, study.rater_note(rater_id)

    demo.load(known_rater, [rater], [rater, rater_note], api_name=False)

    @user_errors
    def next_round(mode_label, rater_id, previous, request: gr.Request):
        if server.study_set is None:
            raise InputError(server.study_note)
        source = server.source(request)
        rater_id = study.round_rater(rater_id, server.secret, server.limiter, source)
        round_state, view = study.start_round(server.study_set, server.store, rater_id, mode_label, server.limiter, source,
                                              previous)
        return (rater_id, study.rater_note(rater_id), *_round_outputs(round_state, view, locked=round_state is None))

    @user_errors
    def restyle(round_state, zoomed, diff, request: gr.Request):
        return tuple(study.restyle_round(round_state, bool(zoomed), bool(diff), server.source(request)))

    view = {"fn": restyle, "inputs": [state, zoom, difference], "outputs": slots, "concurrency_limit": None}
    next_button.click(next_round, [mode, rater, state], [rater, rater_note, *rounds], api_name="study_next",
                      concurrency_limit=None).then(**view, api_name=False)

    def voter(choice: str) -> Callable[..., tuple]:
        @user_errors
        def vote(round_state, rater_id, request: gr.Request):
            view = study.cast_vote(round_state, choice, server.store, rater_id or "", getattr(request, "session_hash", "") or "",
                                   _client_ip(request), server.secret, server.limiter)
            return _round_outputs(round_state, view, locked=True)

        return vote

    choices = [*studyset.LETTERS[:studyset.MAX_SHOWN], study.CANT_DECIDE, *study.TIES]
    names = [f"vote_{letter.lower()}" for letter in studyset.LETTERS[:studyset.MAX_SHOWN]] + ["vote_cant_decide"]
    names += [f"vote_{kind}" for kind in study.TIES.values()]
    for choice, button, api_name in zip(choices, [*vote_buttons, cant_decide, *tie_buttons], names):
        button.click(voter(choice), [state, rater], rounds, api_name=api_name,
                     concurrency_limit=None).then(**view, api_name=False)
    gr.on([zoom.change, difference.change], **view, api_name="study_view")
    return StudyTab(mode, view, rounds, [rater, rater_note])


def wire_blind_vote(server: Server, compared: CompareTab, studied: StudyTab, rater: gr.BrowserState, tabs: gr.Tabs) -> None:
    """Compare's "Vote blind on these results": a round over the user's own finished run."""

    @user_errors
    def blind_from_compare(run: compare.CompareRun | None, mode_label, rater_id, previous, request: gr.Request):
        source = server.source(request)
        rater_id = study.round_rater(rater_id, server.secret, server.limiter, source)
        outputs = {n: r.image for n, r in run.results.items()} if run else None
        state, view = study.start_user_round(run and run.composite, run and run.mask, outputs, server.store, rater_id,
                                             mode_label, server.limiter, source, previous)
        return (rater_id, study.rater_note(rater_id), *_round_outputs(state, view, locked=False), gr.Tabs(selected="study"))

    compared.blind_button.click(blind_from_compare, [compared.results, studied.mode, rater, studied.rounds[0]],
                                [*studied.rater_outputs, *studied.rounds, tabs], api_name="compare_blind",
                                concurrency_limit=None).then(**studied.view, api_name=False)


# --- Leaderboard --------------------------------------------------------------------------------


def leaderboard_tab(server: Server, tab: gr.Tab) -> None:
    with gr.Row():
        mode = gr.Radio(list(study.MODE_FILTERS), value="All votes", label="Votes")
        source = gr.Radio(list(study.SOURCE_FILTERS), value="Study set", label="Images")
        refresh = gr.Button("Refresh", elem_id="board-refresh")
        prepare = gr.Button("Prepare the votes CSV (anonymous)", elem_id="board-csv")
        download = gr.DownloadButton("Download the votes CSV", value=None, elem_id="board-download")
    headline = gr.Markdown(elem_id="board-headline")
    table = gr.Dataframe(headers=stats.TABLE_COLUMNS, label="Methods (best first)", interactive=False, elem_id="board-table")
    pairs = gr.Dataframe(headers=stats.PAIR_COLUMNS, label="Pairs: how many more votes would separate them at the current "
                         "rates (normal 95% interval of the win rate)", interactive=False, elem_id="board-pairs")
    plot = gr.Plot(label="Pairwise win rates")
    with gr.Accordion("Sources: votes per network address (for the organiser)", open=False):
        sources = gr.Dataframe(headers=stats.SOURCE_COLUMNS, interactive=False, elem_id="board-sources")

    @user_errors
    def show_board(mode_filter, source_filter):
        text, result, figure = study.board(server.store, mode_filter, source_filter, server.leave_out_flagged)
        return text, result.table, figure, None  # the CSV is written only on request (below)

    @user_errors
    def votes_csv():
        return str(study.export_csv(server.store))

    prepare.click(votes_csv, None, [download], api_name="votes_csv", concurrency_limit=2)

    @user_errors
    def show_pairs(mode_filter, source_filter):
        return study.pair_board(server.store, mode_filter, source_filter, server.leave_out_flagged)

    @user_errors
    def show_sources(mode_filter, source_filter):
        return study.sources_board(server.store, mode_filter, source_filter)

    inputs, outputs = [mode, source], [headline, table, plot, download]
    refresh.click(show_board, inputs, outputs, api_name="leaderboard", concurrency_limit=4).then(
        show_pairs, inputs, [pairs], api_name="leaderboard_pairs", concurrency_limit=4).then(
        show_sources, inputs, [sources], api_name="leaderboard_sources", concurrency_limit=4)
    gr.on([mode.change, source.change, tab.select], show_board, inputs, outputs, api_name=False, concurrency_limit=4).then(
        show_pairs, inputs, [pairs], api_name=False, concurrency_limit=4).then(
        show_sources, inputs, [sources], api_name=False, concurrency_limit=4)


# --- the app ------------------------------------------------------------------------------------


def folders(study_dir: str | os.PathLike | None, votes_dir: str | os.PathLike | None) -> tuple[Path, Path]:
    """The study set and votes folders: the given ones, else the config's, else the demo set and
    outputs/votes. The one rule, for `main` and `make_server`."""
    settings = config.current()
    return (Path(study_dir or settings.study_dir or DEFAULT_STUDY),
            Path(votes_dir or settings.votes_dir or DEFAULT_VOTES))


def make_server(max_side: int, study_dir: str | os.PathLike | None, votes_dir: str | os.PathLike | None,
                allow_weight_changes: bool, rate_limits: RateLimits, leave_out_flagged: bool = False) -> Server:
    study_dir, votes_dir = folders(study_dir, votes_dir)
    try:
        study_set: studyset.StudySet | None = studyset.StudySet.load(study_dir)
        study_note = f"{len(study_set.samples)} images, methods: {', '.join(study_set.methods)}."
        if study_dir.resolve() == DEFAULT_STUDY.resolve():
            study_note += " " + study.DEMO_NOTE
    except HarmonyError as exc:
        study_set, study_note = None, f"No study set: {exc}"
    store, limiter = study.open_store(votes_dir), RateLimiter(rate_limits)
    return Server(max_side, (gr.utils.get_upload_folder(), EXAMPLES), (study_dir,), allow_weight_changes, study_set,
                  study_note, store, votes.load_secret(votes_dir), limiter, leave_out_flagged)


def build_app(max_side: int = compose.DEFAULT_MAX_SIDE, study_dir: str | os.PathLike | None = None,
              votes_dir: str | os.PathLike | None = None, allow_weight_changes: bool = False,
              rate_limits: RateLimits = RateLimits(), leave_out_flagged: bool = False) -> gr.Blocks:
    """The Blocks UI. study_dir: the blind study set (default examples/study); votes_dir: where
    the vote shards and the server secret live (default outputs/votes); allow_weight_changes: whether
    clients may repoint model weights for the whole process (the organiser's --allow-weight-changes);
    rate_limits: votes, new rater ids and rounds without a vote per rater and per IP hash;
    leave_out_flagged: the board counts no vote of a flagged source."""
    server = make_server(max_side, study_dir, votes_dir, allow_weight_changes, rate_limits, leave_out_flagged)
    all_methods, runnable, note = compare.method_choices()
    example = showcase.first_visit(EXAMPLES, max_side)
    browser_secret = hmac.new(server.secret, b"browser-state", hashlib.sha256).hexdigest()
    # Gradio's cache holds a copy of every image and download it served: keep it to a day.
    with gr.Blocks(title="Harmony Studio", analytics_enabled=False, delete_cache=(3600, 24 * 3600)) as demo:
        with gr.Row(equal_height=False, elem_id="intro-row"):
            gr.Markdown(
                f"# Harmony Studio <small>v{__version__}</small>\n"
                "Make an object pasted into a photo look like it belongs there. **Compose** a composite, "
                "**Compare** harmonization methods side by side, see what a network looks at in **Explain**, "
                "and vote blind in the **Blind study**." + (
                    "\n\nBeside this: an example, finished. Drag the slider to compare; its composite and every "
                    "result are already in **Compose** and **Compare**." if example else ""),
                elem_id="intro")
            if example:
                gr.ImageSlider(example.before_after, label=f"Example: before / after {example.slider_method}",
                               interactive=False, height=220, format="png", buttons=[], scale=0, min_width=300,
                               elem_id="example-slider")
        rater = gr.BrowserState("", storage_key="harmony_studio_rater", secret=browser_secret)
        with gr.Tabs() as tabs:
            with gr.Tab("Compose", id="compose"):
                composed = compose_tab(server, example)
            with gr.Tab("Compare", id="compare"):
                compared = compare_tab(server, composed, all_methods, runnable, note, example)
            with gr.Tab("Explain", id="explain"):
                explain_tab(server, composed, compared, example)
            with gr.Tab("Blind study", id="study"):
                studied = study_tab(server, rater, demo)
            with gr.Tab("Leaderboard", id="leaderboard") as board:
                leaderboard_tab(server, board)
        wire_blind_vote(server, compared, studied, rater, tabs)
    guard_events(demo)
    distrust_server_proxy_headers()
    # Last, so it does not slow the imports and the build: the index (with the last day's votes
    # in the rate limits) loads while the server starts, and requests that need it wait for it.
    study.load_in_background(server.store, server.limiter, leave_out_flagged)
    return demo


def queued(demo: gr.Blocks) -> gr.Blocks:
    """The app's queue, with its documented size (QUEUE_MAX_SIZE)."""
    return demo.queue(max_size=QUEUE_MAX_SIZE)


def main() -> None:
    settings = config.current()  # a bad HARMONY_* value fails here, naming the variable
    parser = argparse.ArgumentParser(description="Harmony Studio web app")
    parser.add_argument("--host", default=settings.host)
    parser.add_argument("--port", type=int, default=settings.port)
    parser.add_argument("--max-side", type=int, default=compose.DEFAULT_MAX_SIDE, help="long side the studio works at")
    parser.add_argument("--study", default=None, help="blind study set folder (default: $HARMONY_STUDY_DIR or examples/study)")
    parser.add_argument("--votes", default=None, help="votes folder (default: $HARMONY_VOTES_DIR or outputs/votes)")
    parser.add_argument(compare.WEIGHTS_FLAG, action="store_true", default=settings.allow_weight_changes,
                        help="let clients repoint model weights for the whole server (organiser only; off by default)")
    parser.add_argument("--votes-per-minute", type=int, default=settings.votes_per_minute,
                        help="votes per rater and per IP hash in a minute (0 = no limit)")
    parser.add_argument("--votes-per-day", type=int, default=settings.votes_per_day,
                        help="votes per rater and per IP hash in a day (0 = no limit)")
    parser.add_argument("--new-ids-per-day", type=int, default=settings.new_ids_per_day,
                        help="new rater ids per IP hash in a day (0 = no limit)")
    parser.add_argument("--unvoted-rounds-per-minute", type=int, default=settings.unvoted_rounds_per_minute,
                        help="rounds without a vote per IP hash in a minute (0 = no limit)")
    parser.add_argument("--unvoted-rounds-per-day", type=int, default=settings.unvoted_rounds_per_day,
                        help="rounds without a vote per IP hash in a day (0 = no limit)")
    parser.add_argument("--leave-out-flagged-sources", action="store_true", default=settings.leave_out_flagged,
                        help="the leaderboard counts no vote of a flagged source (see its Sources table)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    study_dir, votes_dir = folders(args.study, args.votes)
    demo = build_app(args.max_side, study_dir, votes_dir, args.allow_weight_changes,
                     RateLimits(args.votes_per_minute, args.votes_per_day, args.new_ids_per_day,
                                args.unvoted_rounds_per_minute, args.unvoted_rounds_per_day),
                     args.leave_out_flagged_sources)
    loaded = serving.preload()  # ZeroGPU only: models on the CPU now, moved to the GPU inside each call
    if loaded:
        log.info("preloaded for ZeroGPU: %s", ", ".join(loaded))
    queued(demo).launch(server_name=args.host, server_port=args.port, theme=gr.themes.Soft(), css=CSS)


if __name__ == "__main__":
    main()
