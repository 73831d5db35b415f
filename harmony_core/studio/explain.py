"""The Explain tab: whatever maps methods return (result.maps), laid over the composite.

Generic over the keys, so a method that adds a map needs no UI change. The contract: each map
is an HxW array (any size; resized to the image) of values in [0, 1] (other ranges are
rescaled and the caption says so); a method declares the maps that depend on `request.point`
(`Method.point_maps`), and only such methods are re-run when the user clicks a point.

Maps of the same name from several methods (ptl and ptl-paper both return LTL and PTL maps) are
shown side by side, and the notes give their correlation over the background: for a clicked
point, whether the two networks look at the same background regions. `network_agreement` measures
that on a dataset (`python -m harmony_core explain-agreement`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import combinations

import cv2
import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colorbar import ColorbarBase
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from harmony_core.errors import InputError
from harmony_core.registry import Progress, get_method, map_methods, method_class, point_map_methods
from harmony_core.studio import words
from harmony_core.studio.display import DisplayFiles
from harmony_core.studio.serving import MethodProgress, serve_stream
from harmony_core.types import HarmonizationRequest

COLORMAPS = ["inferno", "viridis", "magma", "coolwarm", "gray"]


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
    point: bool = False
    """Whether the map follows the clicked point (one of its method's `point_maps`)."""

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
    point: tuple[int, int] | None = None
    """The point the point maps were made for (the tab's point boxes show it)."""

    def point_methods(self) -> list[str]:
        """Methods whose maps depend on the clicked point."""
        return list(dict.fromkeys(p.method for p in self.panels if p.point))


def start_point(mask: np.ndarray, point: tuple[int, int] | None) -> tuple[int, int]:
    """The point a run uses: the one given, else the documented default (the object's pixel
    nearest its centroid, as ptl's own default), so the marker and the boxes show where it is."""
    from harmony_core.methods.ptl import default_point

    return point if point is not None else default_point(mask)


def point_choice(result: Explained, chosen: str | None) -> str | None:
    """The map to show after a click: the chosen one when it depends on the point, else the first
    point map (the view must change with the click, which a background map never does)."""
    labels = [p.label for p in side_by_side(result.panels) if p.point]
    return chosen if chosen in labels or not labels else labels[0]


def default_methods() -> list[str]:
    """The methods the tab runs by default: those with point maps (ptl and ptl-paper, whose maps
    have the same names), because the tab is built around clicking a point."""
    return point_map_methods()


def choices() -> list[str]:
    """The methods the tab offers: those whose results carry maps."""
    return map_methods()


def availability_note() -> str:
    """Why the tab's networks cannot run here, or '' when they can."""
    states = {name: get_method(name).available() for name in default_methods()}
    return "\n".join(words.cannot_run(name, state.reason) for name, state in states.items() if not state)


def map_correlation(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> float:
    """Pearson correlation of two maps over the pixels `where` (the background: both maps are zero
    on the object, which would only add agreement); NaN when either is constant there."""
    x, y = a[where].astype(np.float64), b[where].astype(np.float64)
    x, y = x - x.mean(), y - y.mean()
    scale = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / scale) if scale > 0 else float("nan")


def agreement_notes(panels: Sequence[MapPanel], mask: np.ndarray) -> list[str]:
    """One note per map name that two methods share: how their maps correlate over the background."""
    by_key: dict[str, list[MapPanel]] = {}
    for panel in panels:
        by_key.setdefault(panel.key, []).append(panel)
    background = ~mask.astype(bool)
    notes = []
    for key, shared in by_key.items():
        for a, b in combinations(shared, 2):
            r = map_correlation(a.values, b.values, background)
            value = "undefined (a map is constant there)" if np.isnan(r) else f"{r:.2f}"
            notes.append(f"**{a.method}** vs **{b.method}**, {key}: correlation {value} over the background")
    return notes


def side_by_side(panels: Sequence[MapPanel]) -> list[MapPanel]:
    """The panels grouped by map name (first appearance order), methods in their order within a
    name: two networks' maps of the same kind end up next to each other."""
    keys = list(dict.fromkeys(p.key for p in panels))
    return sorted(panels, key=lambda p: keys.index(p.key))


def explain(request: HarmonizationRequest, names: list[str], progress: Progress) -> Explained:
    """Run each method and collect its maps; a method that cannot run or has no maps gets a note."""
    with contextlib.closing(explain_stream(request, names, progress)) as steps:
        return [step for step in steps if isinstance(step, Explained)][-1]


PROGRESS_EVERY_SECONDS = 0.25


def explain_stream(request: HarmonizationRequest, names: list[str], progress: Progress) -> Iterator[Explained | str | None]:
    """`explain` as a stream: at every progress event the progress line (what runs, which method of
    how many, the time left) at most every PROGRESS_EVERY_SECONDS and None otherwise, so that a
    consumer that can only stop between yields stops the run within one step (closing the stream
    stops the running method); then the maps."""
    out = Explained(point=request.point)
    mapped = set(map_methods())
    out.notes += [f"**{name}** has no maps, so it was not run here (Compare runs it)." for name in names if name not in mapped]
    names = [name for name in names if name in mapped]
    shown = 0.0
    for i, name in enumerate(names):
        pace = MethodProgress(i, len(names))
        with contextlib.closing(serve_stream(name, request)) as events:
            for event in events:
                if event[0] == "progress":
                    text = pace.describe(event[1], event[2])
                    progress(event[1], text)
                    if time.monotonic() - shown >= PROGRESS_EVERY_SECONDS:
                        shown = time.monotonic()
                        yield text
                        continue
                if event[0] != "done":
                    yield None
                    continue
                result, row = event[1], event[2]
        if result is None:
            out.notes.append(words.cannot_run(name, row.reason) if row.state == "not available"
                             else f"**{name}** failed: {row.reason}")
            continue
        if not result.maps:
            out.notes.append(f"**{name}** returns no maps.")
        for key, values in result.maps.items():
            try:
                unit, note = to_unit(values, request.size)
            except ValueError as exc:
                out.notes.append(f"**{name}** map '{key}' not shown: {exc}")
                continue
            out.panels.append(MapPanel(name, key, unit, note, key in method_class(name).point_maps))
    out.notes += agreement_notes(out.panels, request.mask)
    yield out


def clicked_point(index: object) -> tuple[int, int]:
    """The (x, y) of a click on the image, from the event's index (hostile clients send anything)."""
    if not (isinstance(index, (list, tuple)) and len(index) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in index)):
        raise InputError("Click a point of the image (x, y in pixels).")
    return int(index[0]), int(index[1])


def explain_point(previous: Explained | None, request: HarmonizationRequest, progress: Progress) -> Explained:
    """The maps after a click on `request.point`: only methods with a point map re-run."""
    with contextlib.closing(point_stream(previous, request, progress)) as steps:
        return [step for step in steps if isinstance(step, Explained)][-1]


def point_stream(previous: Explained | None, request: HarmonizationRequest,
                 progress: Progress) -> Iterator[Explained | str | None]:
    """`explain_point` as a stream (see `explain_stream`)."""
    if previous is None:
        raise InputError("Press **Explain** first, then click a point.")
    rerun = previous.point_methods()
    if not rerun:
        yield Explained(previous.panels, ["None of the chosen methods has a point map; nothing to re-run."],
                        request.point)
        return
    with contextlib.closing(explain_stream(request, rerun, progress)) as steps:
        for step in steps:
            if isinstance(step, Explained):
                step = merge(previous, step, rerun)
                step.point = request.point
            yield step


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
    panels = side_by_side(result.panels)
    labels = [p.label for p in panels]
    chosen = chosen if chosen in labels else (labels[0] if labels else None)
    overlays = [(overlay_map(composite, p.values, colormap, opacity, point), p.caption) for p in panels]
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


def object_points(mask: np.ndarray) -> dict[str, tuple[int, int]]:
    """The object's leftmost, central and rightmost pixels as (x, y): the points `network_agreement`
    clicks (the left / right ones at their column's middle object row)."""
    from harmony_core.methods.ptl import default_point

    ys, xs = np.nonzero(mask)
    points = {}
    for label, column in (("left", xs.min()), ("right", xs.max())):
        rows = np.sort(ys[xs == column])
        points[label] = (int(column), int(rows[len(rows) // 2]))
    points["centre"] = default_point(mask)
    return {label: points[label] for label in ("left", "centre", "right")}


def network_agreement(samples: Iterable[tuple[str, np.ndarray, np.ndarray]],
                      methods: Sequence[str] | None = None) -> list[dict[str, object]]:
    """For each (name, composite, mask) and each of `object_points`: the correlation over the
    background of every point map (`Method.point_maps`) that two of `methods` (default: every
    method with point maps) share, after
    running them with that point. Also each method's own left-versus-right correlation per point
    map, which says whether its map follows the point at all."""
    methods = point_map_methods() if methods is None else methods
    rows: list[dict[str, object]] = []
    for name, composite, mask in samples:
        if not mask.any():
            continue
        background = ~mask.astype(bool)
        maps: dict[str, dict[str, dict[str, np.ndarray]]] = {}
        for label, point in object_points(mask).items():
            request = HarmonizationRequest(composite, mask, point=point)
            maps[label] = {m: {k: to_unit(v, request.size)[0] for k, v in get_method(m).run(request).maps.items()
                               if k in method_class(m).point_maps} for m in methods}
        for label, by_method in maps.items():
            for a, b in combinations(methods, 2):
                for key in sorted(set(by_method[a]) & set(by_method[b])):
                    rows.append({"image": name, "point": label, "pair": f"{a} vs {b}", "map": key,
                                 "correlation": map_correlation(by_method[a][key], by_method[b][key], background)})
        for method in methods:
            for key in sorted(set(maps["left"][method]) & set(maps["right"][method])):
                rows.append({"image": name, "point": "left vs right", "pair": method, "map": key,
                             "correlation": map_correlation(maps["left"][method][key], maps["right"][method][key],
                                                            background)})
    return rows
