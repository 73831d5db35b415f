"""The Explain tab's logic: any method's maps, overlaid; point maps re-run on a click."""

import numpy as np
import pytest

from harmony_core import registry
from harmony_core.registry import Method
from harmony_core.studio import explain
from harmony_core.types import HarmonizationRequest


class Mapper(Method):
    """A stand-in for ptl: a background map and a map around the clicked point."""

    name, family, title, summary = "mapper", "network", "x", "x"
    runs = 0

    def harmonize(self, request, progress):
        Mapper.runs += 1
        h, w = request.mask.shape
        maps = {"background contribution": (~request.mask).astype(np.float32)[::2, ::2]}
        if request.point is not None:
            yy, xx = np.mgrid[:h, :w]
            x, y = request.point
            maps["point contribution"] = np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 50.0)
        maps["raw logits"] = np.linspace(-3, 5, h * w).reshape(h, w)
        from harmony_core.types import HarmonizationResult
        return HarmonizationResult(request.composite.copy(), maps)


@pytest.fixture
def mapper(monkeypatch):
    monkeypatch.setitem(registry._FACTORIES, Mapper.name, Mapper)
    monkeypatch.delitem(registry._INSTANCES, Mapper.name, raising=False)
    return Mapper


def test_to_unit_resizes_and_rescales():
    values, note = explain.to_unit(np.array([[0.0, 1.0], [0.5, 0.25]]), (8, 6))
    assert values.shape == (6, 8) and note == ""
    values, note = explain.to_unit(np.array([[-2.0, 2.0]]), (2, 1))
    assert values.tolist() == [[0.0, 1.0]] and "rescaled from [-2, 2]" in note
    heads, _ = explain.to_unit(np.random.default_rng(0).random((5, 4, 3)), (4, 5))
    assert heads.shape == (5, 4)
    with pytest.raises(ValueError):
        explain.to_unit(np.zeros((2, 2, 2, 2)), (2, 2))


def test_overlay_and_legend():
    image = np.full((40, 60, 3), 100, np.uint8)
    values = np.zeros((40, 60), np.float32)
    values[:, 30:] = 1
    out = explain.overlay_map(image, values, "gray", 0.5, point=(10, 10))
    assert out.shape == image.shape and out.dtype == np.uint8
    assert out[20, 45].tolist() == [178, 178, 178] and out[20, 25].tolist() == [50, 50, 50]
    assert not np.array_equal(out[10, 10 - 5], [50, 50, 50])  # the point is marked
    legend = explain.legend_image("inferno")
    assert legend.ndim == 3 and legend.shape[2] == 3 and legend.shape[1] > legend.shape[0]


def test_explain_collects_maps_and_reruns_only_point_methods(scene, mapper):
    _, composite, mask = scene
    result = explain.explain(HarmonizationRequest(composite, mask), ["mapper", "reinhard"], lambda f, m: None)
    assert [p.key for p in result.panels] == ["background contribution", "raw logits"]
    assert result.panels[0].values.shape == mask.shape
    assert "rescaled" in result.panels[1].caption
    assert result.notes == ["**reinhard** returns no maps."]
    assert result.point_methods() == []
    clicked = explain.explain(HarmonizationRequest(composite, mask, point=(60, 50)), ["mapper"], lambda f, m: None)
    assert clicked.point_methods() == ["mapper"]
    assert np.unravel_index(clicked.panels[1].values.argmax(), mask.shape) == (50, 60)
    merged = explain.merge(clicked, clicked, ["mapper"])
    assert [p.key for p in merged.panels] == ["background contribution", "point contribution", "raw logits"]


def test_unavailable_explainer_is_explained(scene, monkeypatch):
    _, composite, mask = scene
    result = explain.explain(HarmonizationRequest(composite, mask), ["reinhard"], lambda f, m: None)
    assert result.panels == []

    class Missing(Mapper):
        name = "missing-weights"

        def available(self):
            return registry.Availability(False, "weights missing: download them to weights/x")

    monkeypatch.setitem(registry._FACTORIES, Missing.name, Missing)
    result = explain.explain(HarmonizationRequest(composite, mask), ["missing-weights"], lambda f, m: None)
    assert result.notes == ["**missing-weights** cannot run here: weights missing: download them to weights/x"]


def test_a_click_reruns_only_point_methods_and_render_picks_the_map(scene, mapper):
    from harmony_core.errors import InputError

    _, composite, mask = scene
    with pytest.raises(InputError, match="Explain"):
        explain.explain_point(None, HarmonizationRequest(composite, mask, point=(60, 50)), lambda f, m: None)
    first = explain.explain(HarmonizationRequest(composite, mask, point=(40, 35)), [Mapper.name, "reinhard"],
                            lambda f, m: None)
    runs = Mapper.runs
    clicked = explain.explain_point(first, HarmonizationRequest(composite, mask, point=(60, 50)), lambda f, m: None)
    assert Mapper.runs == runs + 1 and "point contribution" in [p.key for p in clicked.panels]
    view = explain.render(clicked, composite, (60, 50), "viridis", 0.5, "nonexistent")
    assert view.chosen == view.labels[0] and len(view.overlays) == len(clicked.panels)
    assert view.main.shape == composite.shape and "returns no maps" not in view.notes
    with pytest.raises(InputError, match="changed"):
        explain.render(clicked, composite[:50], None, "viridis", 0.5, None)
    none = explain.explain_point(explain.Explained(), HarmonizationRequest(composite, mask, point=(1, 1)), lambda f, m: None)
    assert none.notes == ["None of the chosen methods has a point map; nothing to re-run."]


def test_the_view_is_written_once_as_lossless_files(scene, tmp_path):
    from PIL import Image

    from harmony_core.studio.display import DisplayFiles

    _, composite, _ = scene
    h, w = composite.shape[:2]
    maps = explain.Explained([explain.MapPanel("m", "a", np.linspace(0, 1, h * w, dtype=np.float32).reshape(h, w)),
                              explain.MapPanel("m", "b", np.full((h, w), 0.5, np.float32))])
    view = explain.render(maps, composite, None, "inferno", 0.6, "m · b")
    shown = explain.to_files(view, DisplayFiles(tmp_path))
    assert shown.main == shown.overlays[1][0] and len(list(tmp_path.rglob("*.png"))) == 3  # 2 maps + legend
    assert np.array_equal(np.asarray(Image.open(shown.main)), view.main)
    assert np.array_equal(np.asarray(Image.open(shown.legend)), view.legend)
