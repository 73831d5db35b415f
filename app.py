"""Harmony Studio: the Gradio app. Widgets and wiring only; the logic lives in harmony_core.studio.

    python app.py [--host 0.0.0.0] [--port 7860] [--max-side 1024] [--allow-weight-changes]

Every event that takes an image runs with `preprocess=False`: the raw value passes the app's
one gate (harmony_core.studio.uploads) and is decoded by harmony_core, never by Gradio.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import hmac
import inspect
import logging
import os
from pathlib import Path
from typing import Any, Callable

import gradio as gr
import numpy as np

from harmony_core import __version__, imaging
from harmony_core.errors import HarmonyError, InputError
from harmony_core.study.stats import TABLE_COLUMNS
from harmony_core.study.studyset import LETTERS, MAX_SHOWN, StudySet
from harmony_core.study.votes import VoteStore, load_secret, start_hub_sync
from harmony_core.studio import compose, explain, study
from harmony_core.studio.compare import (
    METRIC_COLUMNS, STATUS_COLUMNS, WEIGHTED_METHODS, WEIGHTS_FLAG, build_request, method_choices, run_methods,
    set_weights,
)
from harmony_core.studio.raters import RateLimiter, RateLimits, client_address, proxy_hops
from harmony_core.studio.uploads import editor_paths, upload_path
from harmony_core.types import HarmonizationRequest

log = logging.getLogger("harmony_studio")
EXAMPLES = Path(__file__).parent / "examples"
DEFAULT_STUDY = EXAMPLES / "study"
DEFAULT_VOTES = Path(__file__).parent / "outputs" / "votes"
GPU_QUEUE = "gpu"


def _user_error(fn_name: str, exc: Exception) -> gr.Error:
    """The message a user sees for an exception: its own for HarmonyError, a sentence otherwise."""
    if isinstance(exc, gr.Error):
        return exc
    if isinstance(exc, HarmonyError):
        return gr.Error(str(exc), print_exception=False)
    log.exception("unexpected error in %s", fn_name)
    return gr.Error("Something went wrong on the server (details are in its log).", print_exception=False)


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Show problems as a message in the UI, never as a stack trace (generators too: Gradio
    streams a generator function's yields, so the wrapper must stay one)."""
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


def _compose_outputs(result: compose.Composed) -> tuple:
    return result.composite, result.mask_image, result.overlay, result.message, gr.update(visible=result.mask.mean() > 0.5)


def _client_ip(request: gr.Request | None) -> str | None:
    """The client's address as the trusted proxies saw it (raters.client_address)."""
    if request is None:
        return None
    peer = request.client.host if request.client else None
    return client_address(request.headers.get("x-forwarded-for", ""), peer, proxy_hops())


def build_app(max_side: int = compose.DEFAULT_MAX_SIDE, study_dir: str | os.PathLike | None = None,
              votes_dir: str | os.PathLike | None = None, allow_weight_changes: bool = False,
              rate_limits: RateLimits = RateLimits()) -> gr.Blocks:
    """The Blocks UI. study_dir: the blind study set (default examples/study); votes_dir: where
    votes.csv and the server secret live (default outputs/votes); allow_weight_changes: whether
    clients may repoint model weights for the whole process (the organiser's --allow-weight-changes);
    rate_limits: votes per rater and per IP hash."""
    all_methods, runnable, unavailable_note = method_choices()
    study_dir = Path(study_dir or os.environ.get("HARMONY_STUDY_DIR") or DEFAULT_STUDY)
    votes_dir = Path(votes_dir or os.environ.get("HARMONY_VOTES_DIR") or DEFAULT_VOTES)
    try:
        study_set: StudySet | None = StudySet.load(study_dir)
        study_note = f"{len(study_set.samples)} images, methods: {', '.join(study_set.methods)}."
    except HarmonyError as exc:
        study_set, study_note = None, f"No study set: {exc}"
    store = VoteStore(votes_dir)
    secret = load_secret(votes_dir)
    browser_secret = hmac.new(secret, b"browser-state", hashlib.sha256).hexdigest()
    limiter = RateLimiter(rate_limits)
    upload_roots = (gr.utils.get_upload_folder(), EXAMPLES, study_dir)

    def image_in(payload: Any, what: str) -> Path | None:
        return upload_path(payload, upload_roots, what)

    @user_errors
    def compose_upload(composite, mask):
        return _compose_outputs(compose.from_upload(image_in(composite, "composite"), image_in(mask, "mask"), max_side))

    @user_errors
    def compose_place(background, foreground, foreground_mask, x, y, scale):
        return _compose_outputs(compose.from_layers(
            image_in(background, "background"), image_in(foreground, "foreground"),
            image_in(foreground_mask, "foreground mask"), x, y, scale, max_side,
        ))

    @user_errors
    def compose_paint(editor_value):
        return _compose_outputs(compose.from_painting(editor_paths(editor_value, upload_roots), max_side))

    @user_errors
    def compose_invert(composite, mask):
        return _compose_outputs(compose.invert(image_in(composite, "composite"), image_in(mask, "mask"), max_side))

    # Gradio's cache holds a copy of every image and download it served: keep it to a day.
    with gr.Blocks(title="Harmony Studio", analytics_enabled=False, delete_cache=(3600, 24 * 3600)) as demo:
        gr.Markdown(
            f"# Harmony Studio <small>v{__version__}</small>\n"
            "Make an object pasted into a photo look like it belongs there. **Compose** a composite, "
            "**Compare** harmonization methods side by side, see what a network looks at in **Explain**, "
            "and vote blind in the **Blind study**."
        )
        rater = gr.BrowserState("", storage_key="harmony_studio_rater", secret=browser_secret)
        with gr.Tabs() as tabs:
            with gr.Tab("Compose", id="compose"):
                with gr.Tabs():
                    with gr.Tab("Composite + mask"):
                        with gr.Row():
                            up_composite = gr.Image(label="Composite", type="filepath", image_mode=None, format="png", elem_id="compose-composite")
                            up_mask = gr.Image(label="Mask (white = pasted object)", type="filepath", image_mode=None, format="png", elem_id="compose-mask")
                        up_button = gr.Button("Use this composite", variant="primary", elem_id="compose-use")
                    with gr.Tab("Background + foreground"):
                        with gr.Row():
                            background = gr.Image(label="Background", type="filepath", image_mode=None, format="png")
                            foreground = gr.Image(label="Foreground (PNG with transparency)", type="filepath", image_mode=None, format="png")
                            foreground_mask = gr.Image(label="Foreground mask (optional)", type="filepath", image_mode=None, format="png")
                        with gr.Row():
                            pos_x = gr.Slider(0, 1, value=0.5, step=0.01, label="x (centre, fraction of width)")
                            pos_y = gr.Slider(0, 1, value=0.5, step=0.01, label="y (centre, fraction of height)")
                            scale = gr.Slider(0.05, 4, value=1.0, step=0.05, label="scale")
                        place_button = gr.Button("Place the foreground", variant="primary")
                    with gr.Tab("Paint the mask"):
                        editor = gr.ImageEditor(
                            label="Upload the composite, then paint over the pasted object",
                            type="filepath", image_mode="RGBA", format="png", layers=False, transforms=(),
                            brush=gr.Brush(colors=["#ffffff"], default_color="#ffffff", color_mode="fixed", default_size=24),
                        )
                        paint_button = gr.Button("Use the painted mask", variant="primary")
                with gr.Accordion("Ground truth (optional: the real photo, to compute metrics)", open=False):
                    ground_truth = gr.Image(label="Ground truth", type="filepath", image_mode=None, format="png", height=240)
                notice = gr.Markdown(elem_id="compose-notice")
                with gr.Row():
                    work_composite = gr.Image(label="Working composite", type="filepath", interactive=False, format="png")
                    work_mask = gr.Image(label="Working mask", type="filepath", image_mode="L", interactive=False, format="png")
                    overlay = gr.Image(label="Mask overlay", interactive=False, format="png")
                invert_button = gr.Button("Invert mask", visible=False)
                compose_outputs = [work_composite, work_mask, overlay, notice, invert_button]
                # Examples only fill the inputs; the composing runs below as a private, gated event
                # (Examples' own run_on_click event would let Gradio decode whatever path it is sent).
                upload_examples = gr.Examples(
                    label="Examples: composite + mask",
                    examples=[
                        [str(EXAMPLES / "cup_rocket_composite.jpg"), str(EXAMPLES / "cup_rocket_mask.png"), None],
                        [str(EXAMPLES / "cat_composite.jpg"), str(EXAMPLES / "cat_mask.png"), str(EXAMPLES / "cat_real.jpg")],
                    ],
                    inputs=[up_composite, up_mask, ground_truth],
                )
                place_examples = gr.Examples(
                    label="Example: background + transparent foreground",
                    examples=[[str(EXAMPLES / "rocket_background.jpg"), str(EXAMPLES / "cup_foreground.png"), 0.25, 0.75, 0.9]],
                    inputs=[background, foreground, pos_x, pos_y, scale],
                )

            with gr.Tab("Compare", id="compare"):
                with gr.Row():
                    methods = gr.CheckboxGroup(choices=all_methods, value=runnable, label="Methods")
                    seed = gr.Number(value=0, precision=0, label="Seed")
                availability = gr.Markdown(unavailable_note)
                with gr.Accordion("Model weights (a local folder or a Hub id; empty = the default)", open=False,
                                  visible=allow_weight_changes):
                    weight_boxes = [gr.Textbox(label=name, placeholder="default", max_lines=1) for name in WEIGHTED_METHODS]
                    weights_button = gr.Button("Use these weights (for everyone on this server)")
                run_button = gr.Button("Harmonize", variant="primary", elem_id="compare-run")
                gallery = gr.Gallery(label="Results", columns=4, format="png", object_fit="contain", height="auto", elem_id="compare-gallery")
                slider = gr.ImageSlider(label="Before / after (click a result to choose it)", format="png")
                status = gr.Dataframe(headers=STATUS_COLUMNS, label="Status", interactive=False, wrap=True, elem_id="compare-status")
                metrics = gr.Dataframe(headers=METRIC_COLUMNS, label="Metrics against the ground truth (256-px protocol)", interactive=False)
                blind_button = gr.Button("Vote blind on these results (Blind study tab)", elem_id="compare-blind")
                compare_results = gr.State(None)

            with gr.Tab("Explain", id="explain"):
                gr.Markdown(
                    "What each method's maps show, over the working composite. **Click a point on the object** "
                    "to see which background regions it draws on (methods with a point map re-run)."
                )
                gr.Markdown(explain.availability_note())
                with gr.Row():
                    explain_methods = gr.CheckboxGroup(choices=all_methods, value=explain.default_methods(), label="Methods")
                    point_x = gr.Number(value=None, precision=0, label="point x (px)")
                    point_y = gr.Number(value=None, precision=0, label="point y (px)")
                explain_button = gr.Button("Explain", variant="primary", elem_id="explain-run")
                with gr.Row():
                    map_choice = gr.Dropdown(choices=[], label="Map shown above the legend")
                    colormap = gr.Dropdown(choices=explain.COLORMAPS, value=explain.COLORMAPS[0], label="Colormap")
                    opacity = gr.Slider(0, 1, value=0.6, step=0.05, label="Map opacity")
                explain_view = gr.Image(label="Click a point on the object", type="numpy", interactive=False, format="png")
                legend = gr.Image(label="Legend", type="numpy", interactive=False, format="png", height=100, show_label=False)
                explain_notes = gr.Markdown()
                explain_gallery = gr.Gallery(label="All maps", columns=3, format="png", object_fit="contain", height="auto")
                explain_state = gr.State(None)

            with gr.Tab("Blind study", id="study"):
                gr.Markdown(
                    "Which result looks most natural? Images are labelled by letter only, in a random order; "
                    f"the methods are revealed after your vote. {study_note}"
                )
                rater_note = gr.Markdown()
                with gr.Row():
                    study_mode = gr.Radio(list(study.MODE_LABELS), value=next(iter(study.MODE_LABELS)), label="Mode")
                    next_button = gr.Button("Next image", variant="primary", elem_id="study-next")
                study_message = gr.Markdown(elem_id="study-message")
                with gr.Row():
                    slots = [gr.Image(label=letter, type="filepath", interactive=False, elem_id=f"slot-{letter}")
                             for letter in LETTERS[:MAX_SHOWN]]
                with gr.Row():
                    vote_buttons = [gr.Button(letter, interactive=False, elem_id=f"vote-{letter}") for letter in LETTERS[:MAX_SHOWN]]
                    cant_decide = gr.Button(study.CANT_DECIDE, interactive=False, elem_id="vote-none")
                round_state = gr.State(None)

            with gr.Tab("Leaderboard", id="leaderboard") as leaderboard_tab:
                with gr.Row():
                    board_mode = gr.Radio(list(study.MODE_FILTERS), value="All votes", label="Votes")
                    board_source = gr.Radio(list(study.SOURCE_FILTERS), value="Study set", label="Images")
                    board_refresh = gr.Button("Refresh", elem_id="board-refresh")
                    board_download = gr.DownloadButton("Download the raw votes CSV", value=None)
                board_headline = gr.Markdown(elem_id="board-headline")
                board_table = gr.Dataframe(headers=TABLE_COLUMNS, label="Methods (best first)", interactive=False,
                                           elem_id="board-table")
                board_plot = gr.Plot(label="Pairwise win rates")

        raw = {"preprocess": False}  # image inputs reach the handlers raw, through the gate
        up_button.click(compose_upload, [up_composite, up_mask], compose_outputs, api_name="compose_upload", **raw)
        upload_examples.load_input_event.then(compose_upload, [up_composite, up_mask], compose_outputs, api_name=False, **raw)
        place_button.click(
            compose_place, [background, foreground, foreground_mask, pos_x, pos_y, scale], compose_outputs,
            api_name="compose_place", **raw,
        )
        place_examples.load_input_event.then(
            compose_place, [background, foreground, foreground_mask, pos_x, pos_y, scale], compose_outputs,
            api_name=False, **raw,
        )
        paint_button.click(compose_paint, [editor], compose_outputs, api_name="compose_paint", **raw)
        invert_button.click(compose_invert, [work_composite, work_mask], compose_outputs, api_name="compose_invert", **raw)

        @user_errors
        def harmonize(composite, mask, gt, names, seed_value, progress=gr.Progress(track_tqdm=True)):
            request, names, notes = build_request(image_in(composite, "composite"), image_in(mask, "mask"), names,
                                                  max_side, image_in(gt, "ground truth"), seed_value)
            for note in notes:
                gr.Warning(note)
            before_after = None
            for i, state in enumerate(run_methods(request, names, lambda f, msg: progress(f, desc=msg))):
                changed = [r.image for name, r in state.results.items() if name != "composite"]
                if before_after is None and changed:
                    before_after = (request.composite, changed[0])
                finished = i == len(names) - 1  # run_methods yields once per method; vote only on a finished run
                results = (request.composite, request.mask, {n: r.image for n, r in state.results.items()}) if finished else None
                yield state.gallery, before_after, state.status, state.metrics or None, results

        run_button.click(
            harmonize, [work_composite, work_mask, ground_truth, methods, seed],
            [gallery, slider, status, metrics, compare_results], api_name="compare",
            concurrency_id=GPU_QUEUE, concurrency_limit=1, **raw,
        )

        @user_errors
        def use_weights(*sources):
            runnable_now, note = set_weights(dict(zip(WEIGHTED_METHODS, sources)), allow_weight_changes)
            return gr.update(value=runnable_now), note

        weights_button.click(use_weights, weight_boxes, [methods, availability], api_name="set_weights",
                             concurrency_id=GPU_QUEUE, concurrency_limit=1)

        @user_errors
        def choose(composite, event: gr.SelectData):
            chosen = (event.value or {}).get("image") if isinstance(event.value, dict) else None
            return tuple(str(p) if p else None for p in (image_in(composite, "composite"), image_in(chosen, "result")))

        gallery.select(choose, [work_composite], [slider], api_name=False, **raw)

        # --- Explain ----------------------------------------------------------------------------

        def explain_outputs(result: explain.Explained, composite: np.ndarray, point, cmap: str, alpha: float, chosen: str | None) -> tuple:
            if result.panels and result.panels[0].values.shape != composite.shape[:2]:
                raise InputError("The composite changed since these maps were made: press **Explain** again.")
            labels = [p.label for p in result.panels]
            chosen = chosen if chosen in labels else (labels[0] if labels else None)
            point = tuple(int(v) for v in point) if point else None
            overlays = [(explain.overlay_map(composite, p.values, cmap, alpha, point), p.caption) for p in result.panels]
            main = overlays[labels.index(chosen)][0] if chosen else composite
            notes = "\n".join(f"- {n}" for n in result.notes)
            return (result, main, gr.update(choices=labels, value=chosen), overlays,
                    explain.legend_image(cmap), notes)

        explain_view_outputs = [explain_state, explain_view, map_choice, explain_gallery, legend, explain_notes]

        def explain_request(composite, mask, names, point) -> tuple[HarmonizationRequest, list[str], list[str]]:
            return build_request(image_in(composite, "composite"), image_in(mask, "mask"), names, max_side, point=point)

        @user_errors
        def explain_run(composite, mask, names, x, y, cmap, alpha, chosen, progress=gr.Progress(track_tqdm=True)):
            point = (int(x), int(y)) if x is not None and y is not None else None
            request, names, notes = explain_request(composite, mask, names, point)
            result = explain.explain(request, names, lambda f, m: progress(f, desc=m))
            result.notes = notes + result.notes
            return explain_outputs(result, request.composite, point, cmap, alpha, chosen)

        @user_errors
        def explain_click(composite, mask, previous, cmap, alpha, chosen, event: gr.SelectData,
                          progress=gr.Progress(track_tqdm=True)):
            x, y = (int(v) for v in event.index)
            if previous is None:
                raise InputError("Press **Explain** first, then click a point.")
            rerun = previous.point_methods()
            request, _, _ = explain_request(composite, mask, rerun or None, (x, y))
            if rerun:
                fresh = explain.explain(request, rerun, lambda f, m: progress(f, desc=m))
                previous = explain.merge(previous, fresh, rerun)
            else:
                previous.notes = ["None of the chosen methods has a point map; nothing to re-run."]
            return (x, y, *explain_outputs(previous, request.composite, (x, y), cmap, alpha, chosen))

        @user_errors
        def explain_restyle(composite, previous, x, y, cmap, alpha, chosen):
            composite = image_in(composite, "composite")
            if previous is None or composite is None:
                return (previous, None, gr.update(), [], explain.legend_image(cmap), "")
            point = (int(x), int(y)) if x is not None and y is not None else None
            image = imaging.cap_long_side(imaging.load_rgb(composite, "composite"), max_side)
            return explain_outputs(previous, image, point, cmap, alpha, chosen)

        explain_button.click(
            explain_run, [work_composite, work_mask, explain_methods, point_x, point_y, colormap, opacity, map_choice],
            explain_view_outputs, api_name="explain", concurrency_id=GPU_QUEUE, concurrency_limit=1, **raw,
        )
        explain_view.select(
            explain_click, [work_composite, work_mask, explain_state, colormap, opacity, map_choice],
            [point_x, point_y, *explain_view_outputs], api_name=False, concurrency_id=GPU_QUEUE, concurrency_limit=1,
            **raw,
        )
        gr.on(
            [map_choice.input, colormap.change, opacity.release], explain_restyle,
            [work_composite, explain_state, point_x, point_y, colormap, opacity, map_choice], explain_view_outputs,
            api_name=False, **raw,
        )

        # --- Blind study ------------------------------------------------------------------------

        def known_rater(rater_id: str | None) -> tuple[str, str]:
            rater_id = study.browser_rater(rater_id, secret)
            return rater_id, study.rater_note(rater_id)

        demo.load(known_rater, [rater], [rater, rater_note], api_name=False)

        def round_outputs(state, view: study.RoundView, locked: bool) -> tuple:
            images = [gr.update(value=img, label=cap, visible=img is not None) for img, cap in zip(view.images, view.captions)]
            buttons = [gr.update(interactive=not locked and img is not None, visible=img is not None) for img in view.images]
            return (state, *images, *buttons, gr.update(interactive=not locked), view.message)

        round_view_outputs = [round_state, *slots, *vote_buttons, cant_decide, study_message]

        @user_errors
        def next_round(mode, rater_id):
            if study_set is None:
                raise InputError(study_note)
            rater_id = study.round_rater(rater_id, secret)
            state, view = study.start_round(study_set, store, rater_id, mode)
            return (rater_id, study.rater_note(rater_id), *round_outputs(state, view, locked=state is None))

        next_button.click(next_round, [study_mode, rater], [rater, rater_note, *round_view_outputs],
                          api_name="study_next", concurrency_limit=None)

        def voter(choice: str) -> Callable[..., tuple]:
            @user_errors
            def vote(state, rater_id, request: gr.Request):
                view = study.cast_vote(state, choice, store, rater_id or "", getattr(request, "session_hash", "") or "",
                                       _client_ip(request), secret, limiter)
                return round_outputs(state, view, locked=True)

            return vote

        for letter, button in zip(LETTERS, vote_buttons):
            button.click(voter(letter), [round_state, rater], round_view_outputs,
                         api_name=f"vote_{letter.lower()}", concurrency_limit=None)
        cant_decide.click(voter(study.CANT_DECIDE), [round_state, rater], round_view_outputs,
                          api_name="vote_cant_decide", concurrency_limit=None)

        @user_errors
        def blind_from_compare(results, mode, rater_id):
            rater_id = study.round_rater(rater_id, secret)
            state, view = study.start_user_round(*(results or (None, None, None)), store, rater_id, mode)
            return (rater_id, study.rater_note(rater_id), *round_outputs(state, view, locked=False), gr.Tabs(selected="study"))

        blind_button.click(blind_from_compare, [compare_results, study_mode, rater],
                           [rater, rater_note, *round_view_outputs, tabs], api_name="compare_blind", concurrency_limit=None)

        # --- Leaderboard ------------------------------------------------------------------------

        @user_errors
        def show_board(mode_filter, source_filter):
            headline, result, figure = study.board(store, mode_filter, source_filter)
            return headline, result.table, figure, study.export_csv(store)

        board_inputs = [board_mode, board_source]
        board_outputs = [board_headline, board_table, board_plot, board_download]
        board_refresh.click(show_board, board_inputs, board_outputs, api_name="leaderboard", concurrency_limit=4)
        gr.on([board_mode.change, board_source.change, leaderboard_tab.select], show_board, board_inputs, board_outputs,
              api_name=False, concurrency_limit=4)
    return demo


def main() -> None:
    parser = argparse.ArgumentParser(description="Harmony Studio web app")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", os.environ.get("PORT", 7860))))
    parser.add_argument("--max-side", type=int, default=compose.DEFAULT_MAX_SIDE, help="long side the studio works at")
    parser.add_argument("--study", default=None, help="blind study set folder (default: $HARMONY_STUDY_DIR or examples/study)")
    parser.add_argument("--votes", default=None, help="votes folder (default: $HARMONY_VOTES_DIR or outputs/votes)")
    parser.add_argument(WEIGHTS_FLAG, action="store_true", default=os.environ.get("HARMONY_ALLOW_WEIGHT_CHANGES") == "1",
                        help="let clients repoint model weights for the whole server (organiser only; off by default)")
    parser.add_argument("--votes-per-minute", type=int, default=int(os.environ.get("HARMONY_VOTES_PER_MINUTE", 30)),
                        help="votes per rater and per IP hash in a minute (0 = no limit)")
    parser.add_argument("--votes-per-day", type=int, default=int(os.environ.get("HARMONY_VOTES_PER_DAY", 1000)),
                        help="votes per rater and per IP hash in a day (0 = no limit)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    votes_dir = Path(args.votes or os.environ.get("HARMONY_VOTES_DIR") or DEFAULT_VOTES)
    demo = build_app(args.max_side, args.study, votes_dir, args.allow_weight_changes,
                     RateLimits(args.votes_per_minute, args.votes_per_day))
    start_hub_sync(votes_dir)  # only when $HARMONY_VOTES_DATASET is set; its thread pushes until exit
    demo.queue().launch(server_name=args.host, server_port=args.port, theme=gr.themes.Soft())


if __name__ == "__main__":
    main()
