"""The Explain tab: whatever maps methods return (result.maps), laid over the composite.

Generic over the keys, so a method that adds a map needs no UI change. The contract: each map
is an HxW array (any size; resized to the image) of values in [0, 1] (other ranges are
rescaled and the caption says so); a method whose map depends on `request.point` names that
map with the word "point", and only such methods are re-run when the user clicks a point.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colorbar import ColorbarBase
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from harmony_core.errors import InputError
from harmony_core.registry import Progress, get_method
from harmony_core.studio.display import DisplayFiles
from harmony_core.studio.serving import serve
from harmony_core.types import HarmonizationRequest

COLORMAPS = ["inferno", "viridis", "magma", "coolwarm", "gray"]
EXPLAINER = "ptl"
"""The method the tab is built around (the region-matching network's contribution maps)."""


def to_unit(values: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, str]:
    """A float32 HxW map in [0, 1] at `size` (width, height), and a note when it was rescaled."""
    values = np.nan_to_num(np.asarray(values, np.float32))
    while values.ndim > 2 and 1 in (values.shape[0], values.shape[-1]):  # (1, H, W) or (H, W, 1)
        values = values[0] if values.shape[0] == 1 else values[..., 0]
    if values.ndim == 3:  # a map per channel or head: show their mean
        values = values.mean(axis=-1 if values.shape[-1] <= values.shape[0] else 0)
    if values.ndim != 2:
        raise ValueError(f"a map must be HxW, got shape {values.shape}")
    note = ""
    lo, hi = float(values.min()), float(values.max())
    if lo < 0 or hi > 1:
        values = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
        note = f"rescaled from [{lo:.3g}, {hi:.3g}]"
    if values.shape != (size[1], size[0]):
        values = np.clip(cv2.resize(values, size, interpolation=cv2.INTER_LINEAR), 0, 1)
    return values, note


def overlay_map(image: np.ndarray, values: np.ndarray, colormap: str = "inferno", opacity: float = 0.6,
                point: tuple[int, int] | None = None) -> np.ndarray:
    """The image with a [0, 1] map blended over it in a colormap, and the point marked."""
    rgb = colormaps[colormap](values)[..., :3] * 255
    out = ((1 - opacity) * image.astype(np.float32) + opacity * rgb).round().astype(np.uint8)
    if point is not None:
        radius = max(4, round(0.012 * max(image.shape[:2])))
        cv2.circle(out, point, radius + 2, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.circle(out, point, radius, (0, 255, 255), 2, cv2.LINE_AA)
    return out


def legend_image(colormap: str = "inferno", label: str = "contribution (0 = none, 1 = highest)") -> np.ndarray:
    """A horizontal colorbar as an RGB image (Figure + Agg canvas: no pyplot global state)."""
    figure = Figure(figsize=(4.8, 0.9), dpi=100)
    FigureCanvasAgg(figure)
    axis = figure.add_axes((0.04, 0.55, 0.92, 0.3))
    ColorbarBase(axis, cmap=colormaps[colormap], norm=Normalize(0, 1), orientation="horizontal").set_label(label, fontsize=9)
    axis.tick_params(labelsize=8)
    figure.canvas.draw()
    return np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()


@dataclass
class MapPanel:
    method: str
    key: str
    values: np.ndarray
    note: str = ""

    @property
    def label(self) -> str:
        return f"{self.method} · {self.key}"

    @property
    def caption(self) -> str:
        return self.label + (f" ({self.note})" if self.note else "")


@dataclass
class Explained:
    panels: list[MapPanel] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def point_methods(self) -> list[str]:
        """Methods whose maps depend on the clicked point (a map key mentions "point")."""
        return list(dict.fromkeys(p.method for p in self.panels if "point" in p.key.lower()))


def default_methods() -> list[str]:
    return [EXPLAINER]


def availability_note() -> str:
    """Why the tab's main method cannot run here, or '' when it can."""
    state = get_method(EXPLAINER).available()
    return "" if state else f"**{EXPLAINER}** cannot run here: {state.reason}"


def explain(request: HarmonizationRequest, names: list[str], progress: Progress) -> Explained:
    """Run each method and collect its maps; a method that cannot run or has no maps gets a note."""
    out = Explained()
    for i, name in enumerate(names):
        result, row = serve(name, request, lambda f, m, i=i: progress((i + f) / len(names), m))
        if result is None:
            out.notes.append(f"**{name}** " + (f"cannot run here: {row.reason}" if row.state == "not available"
                                              else f"failed: {row.reason}"))
            continue
        if not result.maps:
            out.notes.append(f"**{name}** returns no maps.")
        for key, values in result.maps.items():
            try:
                unit, note = to_unit(values, request.size)
            except ValueError as exc:
                out.notes.append(f"**{name}** map '{key}' not shown: {exc}")
                continue
            out.panels.append(MapPanel(name, key, unit, note))
    return out


def explain_point(previous: Explained | None, request: HarmonizationRequest, progress: Progress) -> Explained:
    """The maps after a click on `request.point`: only methods with a point map re-run."""
    if previous is None:
        raise InputError("Press **Explain** first, then click a point.")
    rerun = previous.point_methods()
    if not rerun:
        return Explained(previous.panels, ["None of the chosen methods has a point map; nothing to re-run."])
    return merge(previous, explain(request, rerun, progress), rerun)


@dataclass
class ExplainView:
    """What the tab shows for a set of maps: the chosen map over the composite, every map, notes."""

    main: np.ndarray
    labels: list[str]
    chosen: str | None
    overlays: list[tuple[np.ndarray, str]]
    legend: np.ndarray
    notes: str


def render(result: Explained, composite: np.ndarray, point: tuple[int, int] | None, colormap: str,
           opacity: float, chosen: str | None) -> ExplainView:
    """Lay the maps over the composite (the chosen one, else the first, as the main view)."""
    if result.panels and result.panels[0].values.shape != composite.shape[:2]:
        raise InputError("The composite changed since these maps were made: press **Explain** again.")
    labels = [p.label for p in result.panels]
    chosen = chosen if chosen in labels else (labels[0] if labels else None)
    overlays = [(overlay_map(composite, p.values, colormap, opacity, point), p.caption) for p in result.panels]
    main = overlays[labels.index(chosen)][0] if chosen else composite
    return ExplainView(main, labels, chosen, overlays, legend_image(colormap), "\n".join(f"- {n}" for n in result.notes))


@dataclass
class ExplainFiles:
    """An ExplainView as display files (paths), each image written once: the main view is its
    map's overlay file, not a second copy."""

    main: str
    overlays: list[tuple[str, str]]
    legend: str


def to_files(view: ExplainView, files: DisplayFiles) -> ExplainFiles:
    """Write the view's overlays and legend to `files` (the composite itself when there is no map)."""
    overlays = [(files.show(image, caption), caption) for image, caption in view.overlays]
    main = overlays[view.labels.index(view.chosen)][0] if view.chosen else files.show(view.main, "composite")
    return ExplainFiles(main, overlays, files.show(view.legend, "legend"))


def merge(previous: Explained, fresh: Explained, rerun: list[str]) -> Explained:
    """The panels of `previous`, those of the re-run methods replaced by `fresh` (order kept)."""
    fresh_by_method = {m: [p for p in fresh.panels if p.method == m] for m in rerun}
    panels: list[MapPanel] = []
    for panel in previous.panels:
        if panel.method not in rerun:
            panels.append(panel)
        elif fresh_by_method.get(panel.method) is not None:
            panels += fresh_by_method.pop(panel.method)
    return Explained(panels + [p for ps in fresh_by_method.values() for p in ps], fresh.notes)
