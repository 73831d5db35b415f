"""Harmony Studio: the Gradio app. Widgets and wiring only; the logic lives in harmony_core.studio.

    python app.py [--host 0.0.0.0] [--port 7860] [--max-side 1024]
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
from pathlib import Path
from typing import Any, Callable

import gradio as gr
import numpy as np

from harmony_core import __version__, imaging
from harmony_core.errors import HarmonyError, InputError
from harmony_core.studio import compose
from harmony_core.studio.compare import METRIC_COLUMNS, STATUS_COLUMNS, method_choices, run_methods
from harmony_core.types import HarmonizationRequest

log = logging.getLogger("harmony_studio")
EXAMPLES = Path(__file__).parent / "examples"
GPU_QUEUE = "gpu"


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Show problems as a message in the UI, never as a stack trace."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except HarmonyError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        except gr.Error:
            raise
        except Exception:
            log.exception("unexpected error in %s", fn.__name__)
            raise gr.Error("Something went wrong on the server (details are in its log).", print_exception=False) from None

    return wrapper


def _compose_outputs(result: compose.Composed) -> tuple:
    return result.composite, result.mask_image, result.overlay, result.message, gr.update(visible=result.mask.mean() > 0.5)


def _ground_truth(ground_truth: Any, composite: np.ndarray) -> np.ndarray | None:
    """The ground truth at the composite's size (uploads larger than the working size are shrunk)."""
    if ground_truth is None:
        return None
    gt = imaging.load_rgb(ground_truth, "ground truth")
    h, w = composite.shape[:2]
    gh, gw = gt.shape[:2]
    if (gh, gw) != (h, w):
        if abs(gw / gh - w / h) > 0.01:
            raise InputError(f"The ground truth is {gw}x{gh} but the composite is {w}x{h} (different aspect ratio).")
        gt = imaging.resize_rgb(gt, (w, h))
    return gt


def build_app(max_side: int = compose.DEFAULT_MAX_SIDE) -> gr.Blocks:
    all_methods, runnable, unavailable_note = method_choices()

    @user_errors
    def compose_upload(composite, mask):
        return _compose_outputs(compose.from_upload(composite, mask, max_side))

    @user_errors
    def compose_place(background, foreground, foreground_mask, x, y, scale):
        return _compose_outputs(compose.from_layers(background, foreground, foreground_mask, x, y, scale, max_side))

    @user_errors
    def compose_paint(editor_value):
        return _compose_outputs(compose.from_painting(editor_value, max_side))

    @user_errors
    def compose_invert(composite, mask):
        return _compose_outputs(compose.invert(composite, mask, max_side))

    with gr.Blocks(title="Harmony Studio", analytics_enabled=False) as demo:
        gr.Markdown(
            f"# Harmony Studio <small>v{__version__}</small>\n"
            "Make an object pasted into a photo look like it belongs there. **Compose** a composite, "
            "then **Compare** harmonization methods side by side."
        )
        with gr.Tabs():
            with gr.Tab("Compose", id="compose"):
                with gr.Tabs():
                    with gr.Tab("Composite + mask"):
                        with gr.Row():
                            up_composite = gr.Image(label="Composite", type="pil", image_mode=None, format="png")
                            up_mask = gr.Image(label="Mask (white = pasted object)", type="pil", image_mode=None, format="png")
                        up_button = gr.Button("Use this composite", variant="primary")
                    with gr.Tab("Background + foreground"):
                        with gr.Row():
                            background = gr.Image(label="Background", type="pil", image_mode=None, format="png")
                            foreground = gr.Image(label="Foreground (PNG with transparency)", type="pil", image_mode=None, format="png")
                            foreground_mask = gr.Image(label="Foreground mask (optional)", type="pil", image_mode=None, format="png")
                        with gr.Row():
                            pos_x = gr.Slider(0, 1, value=0.5, step=0.01, label="x (centre, fraction of width)")
                            pos_y = gr.Slider(0, 1, value=0.5, step=0.01, label="y (centre, fraction of height)")
                            scale = gr.Slider(0.05, 4, value=1.0, step=0.05, label="scale")
                        place_button = gr.Button("Place the foreground", variant="primary")
                    with gr.Tab("Paint the mask"):
                        editor = gr.ImageEditor(
                            label="Upload the composite, then paint over the pasted object",
                            type="numpy", image_mode="RGBA", format="png", layers=False, transforms=(),
                            brush=gr.Brush(colors=["#ffffff"], default_color="#ffffff", color_mode="fixed", default_size=24),
                        )
                        paint_button = gr.Button("Use the painted mask", variant="primary")
                with gr.Accordion("Ground truth (optional: the real photo, to compute metrics)", open=False):
                    ground_truth = gr.Image(label="Ground truth", type="pil", image_mode=None, format="png", height=240)
                notice = gr.Markdown()
                with gr.Row():
                    work_composite = gr.Image(label="Working composite", type="numpy", interactive=False, format="png")
                    work_mask = gr.Image(label="Working mask", type="numpy", image_mode="L", interactive=False, format="png")
                    overlay = gr.Image(label="Mask overlay", interactive=False, format="png")
                invert_button = gr.Button("Invert mask", visible=False)
                compose_outputs = [work_composite, work_mask, overlay, notice, invert_button]
                gr.Examples(
                    label="Examples: composite + mask",
                    examples=[
                        [str(EXAMPLES / "cup_rocket_composite.jpg"), str(EXAMPLES / "cup_rocket_mask.png"), None],
                        [str(EXAMPLES / "cat_composite.jpg"), str(EXAMPLES / "cat_mask.png"), str(EXAMPLES / "cat_real.jpg")],
                    ],
                    inputs=[up_composite, up_mask, ground_truth],
                    fn=lambda c, m, _gt: compose_upload(c, m), outputs=compose_outputs, run_on_click=True,
                )
                gr.Examples(
                    label="Example: background + transparent foreground",
                    examples=[[str(EXAMPLES / "rocket_background.jpg"), str(EXAMPLES / "cup_foreground.png"), 0.25, 0.75, 0.9]],
                    inputs=[background, foreground, pos_x, pos_y, scale],
                    fn=lambda b, f, x, y, s: compose_place(b, f, None, x, y, s),
                    outputs=compose_outputs, run_on_click=True,
                )

            with gr.Tab("Compare", id="compare"):
                with gr.Row():
                    methods = gr.CheckboxGroup(choices=all_methods, value=runnable, label="Methods")
                    seed = gr.Number(value=0, precision=0, label="Seed")
                gr.Markdown(unavailable_note)
                run_button = gr.Button("Harmonize", variant="primary")
                gallery = gr.Gallery(label="Results", columns=4, format="png", object_fit="contain", height="auto")
                slider = gr.ImageSlider(label="Before / after (click a result to choose it)", format="png")
                status = gr.Dataframe(headers=STATUS_COLUMNS, label="Status", interactive=False, wrap=True)
                metrics = gr.Dataframe(headers=METRIC_COLUMNS, label="Metrics against the ground truth (256-px protocol)", interactive=False)

        up_button.click(compose_upload, [up_composite, up_mask], compose_outputs, api_name="compose_upload")
        place_button.click(
            compose_place, [background, foreground, foreground_mask, pos_x, pos_y, scale], compose_outputs,
            api_name="compose_place",
        )
        paint_button.click(compose_paint, [editor], compose_outputs, api_name="compose_paint")
        invert_button.click(compose_invert, [work_composite, work_mask], compose_outputs, api_name="compose_invert")

        def harmonize(composite, mask, gt, names, seed_value, progress=gr.Progress(track_tqdm=True)):
            try:
                if composite is None or mask is None:
                    raise InputError("Compose a composite first (Compose tab).")
                if not names:
                    raise InputError("Choose at least one method.")
                composite = imaging.load_rgb(composite, "composite")
                request = HarmonizationRequest(
                    composite=composite, mask=imaging.load_mask(mask, "mask"),
                    ground_truth=_ground_truth(gt, composite), seed=int(seed_value or 0),
                )
            except HarmonyError as exc:
                raise gr.Error(str(exc), print_exception=False) from None
            before_after = None
            for state in run_methods(request, list(names), lambda f, msg: progress(f, desc=msg)):
                changed = [r.image for name, r in state.results.items() if name != "composite"]
                if before_after is None and changed:
                    before_after = (composite, changed[0])
                yield state.gallery, before_after, state.status, state.metrics or None

        run_button.click(
            harmonize, [work_composite, work_mask, ground_truth, methods, seed],
            [gallery, slider, status, metrics], api_name="compare",
            concurrency_id=GPU_QUEUE, concurrency_limit=1,
        )

        def choose(composite, event: gr.SelectData):
            return (composite, event.value["image"]["path"])

        gallery.select(choose, [work_composite], [slider], api_name=False)
    return demo


def main() -> None:
    parser = argparse.ArgumentParser(description="Harmony Studio web app")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", os.environ.get("PORT", 7860))))
    parser.add_argument("--max-side", type=int, default=compose.DEFAULT_MAX_SIDE, help="long side the studio works at")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    build_app(args.max_side).queue().launch(server_name=args.host, server_port=args.port, theme=gr.themes.Soft())


if __name__ == "__main__":
    main()
