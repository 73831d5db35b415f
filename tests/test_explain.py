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
    maps = ("background contribution", "point contribution", "raw logits")
    point_maps = frozenset({"point contribution"})
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
    assert result.notes == ["**reinhard** has no maps, so it was not run here (Compare runs it)."]
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
    (note,) = result.notes
    summary, detail = note.split("</summary>")
    assert "<strong>missing-weights</strong> cannot run here: its trained model files are not on this server" in summary
    assert "weights/x" not in summary and "download them to weights/x" in detail  # the technical words folded away


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
    assert view.main.shape == composite.shape and "has no maps" not in view.notes
    with pytest.raises(InputError, match="changed"):
        explain.render(clicked, composite[:50], None, "viridis", 0.5, None)
    none = explain.explain_point(explain.Explained(), HarmonizationRequest(composite, mask, point=(1, 1)), lambda f, m: None)
    assert none.notes == ["None of the chosen methods has a point map; nothing to re-run."]


# --- ptl and ptl-paper side by side (tiny random networks built here) ---------------------------

def _tiny_network(folder, head: str, seed: int):
    import torch

    from harmony_core.models.ptl_net import PTLConfig, PTLNet

    torch.manual_seed(seed)
    prior = "none" if head == "residual" else "poisson"
    PTLNet(PTLConfig(width=0.25, head=head, prior=prior)).save_pretrained(folder)
    return folder


@pytest.fixture
def networks(tmp_path, monkeypatch):
    """The registry's ptl and ptl-paper on tiny random networks; returns a function that repoints them."""
    from harmony_core.methods.ptl import PTLMethod, PTLPaperMethod

    def use(ptl_folder, paper_folder):
        monkeypatch.setitem(registry._INSTANCES, "ptl", PTLMethod(weights=ptl_folder, device="cpu"))
        monkeypatch.setitem(registry._INSTANCES, "ptl-paper", PTLPaperMethod(weights=paper_folder, device="cpu"))

    use(_tiny_network(tmp_path / "ours", "affine", 3), _tiny_network(tmp_path / "paper", "residual", 4))
    return use


def test_map_correlation_counts_only_the_given_pixels():
    rng = np.random.default_rng(1)
    a = rng.random((20, 30))
    where = np.ones((20, 30), bool)
    where[5:15, 5:15] = False
    b = a.copy()
    b[~where] = 7.0  # differences on the excluded pixels do not count
    assert explain.map_correlation(a, b, where) == pytest.approx(1.0)
    assert explain.map_correlation(a, 1 - a, where) == pytest.approx(-1.0)
    assert np.isnan(explain.map_correlation(a, np.zeros_like(a), where))
    panels = [explain.MapPanel("x", "point map", a), explain.MapPanel("y", "point map", np.zeros_like(a)),
              explain.MapPanel("y", "other map", a)]
    assert explain.agreement_notes(panels, ~where) == [
        "**x** vs **y**, point map: correlation undefined (a map is constant there) over the background"]


def test_the_tab_shows_both_networks_side_by_side_with_their_agreement(scene, networks):
    from harmony_core.methods.ptl import MAP_NAMES

    _, composite, mask = scene
    assert explain.default_methods() == ["ptl", "ptl-paper"] and explain.availability_note() == ""
    first = explain.explain(HarmonizationRequest(composite, mask, point=(45, 40)), explain.default_methods(),
                            lambda f, m: None)
    clicked = explain.explain_point(first, HarmonizationRequest(composite, mask, point=(85, 65)), lambda f, m: None)
    for result in (first, clicked):
        view = explain.render(result, composite, (85, 65), "inferno", 0.6, None)
        keys = [key for name in MAP_NAMES for key in (f"ptl · {name}", f"ptl-paper · {name}")]
        assert view.labels == keys and [c for _, c in view.overlays] == keys  # each kind: ours, then the paper's
        agreement = [n for n in result.notes if " vs " in n]
        assert len(agreement) == len(MAP_NAMES) and all("correlation" in n for n in agreement)
    # The point maps changed with the click: the re-run replaced both networks' maps.
    before = {p.label: p.values for p in first.panels}
    after = {p.label: p.values for p in clicked.panels}
    assert all(not np.array_equal(before[f"{m} · ptl point contribution"], after[f"{m} · ptl point contribution"])
               for m in ("ptl", "ptl-paper"))


@pytest.mark.slow
def test_agreement_is_one_for_the_same_network_and_follows_the_point(scene, networks, tmp_path):
    """ptl pointed at the paper's folder runs the same network: every shared map correlates 1."""
    _, composite, mask = scene
    paper = _tiny_network(tmp_path / "same", "residual", 5)
    networks(paper, paper)
    result = explain.explain(HarmonizationRequest(composite, mask, point=(50, 40)), ["ptl", "ptl-paper"],
                             lambda f, m: None)
    assert [n for n in result.notes if " vs " in n] and all(n.endswith("correlation 1.00 over the background")
                                                             for n in result.notes if " vs " in n)
    rows = explain.network_agreement([("scene", composite, mask)], ["ptl", "ptl-paper"])
    pairs = [r for r in rows if r["pair"] == "ptl vs ptl-paper"]
    assert {(r["point"], r["map"]) for r in pairs} == {(p, m) for p in ("left", "centre", "right")
                                                       for m in ("ltl point attention", "ptl point contribution")}
    assert all(r["correlation"] == pytest.approx(1.0) for r in pairs)
    own = [r for r in rows if r["point"] == "left vs right"]
    assert len(own) == 4 and all(r["correlation"] < 0.99 for r in own)  # a random network's maps follow the point
    points = explain.object_points(mask)
    assert list(points) == ["left", "centre", "right"] and points["left"] == (40, 50) and points["right"] == (89, 50)
    assert abs(points["centre"][0] - 64.5) <= 1 and abs(points["centre"][1] - 49.5) <= 1


def test_a_missing_network_is_named_in_the_note(networks, tmp_path):
    networks(tmp_path / "none", tmp_path / "none")
    note = explain.availability_note()
    assert "<strong>ptl</strong> cannot run here" in note and "<strong>ptl-paper</strong> cannot run here" in note


def test_only_methods_with_maps_are_offered_and_run(scene, mapper, monkeypatch):
    """Issue 30, 6: methods without maps ran in full just to say so."""
    from harmony_core.registry import get_method

    assert set(explain.choices()) >= {"ptl", "hspace", "mapper"}
    assert not {"reinhard", "diffharmony", "freepih"} & set(explain.choices())
    ran = []
    reinhard = get_method("reinhard")
    monkeypatch.setattr(reinhard, "harmonize", lambda request, progress: ran.append(request))
    _, composite, mask = scene
    result = explain.explain(HarmonizationRequest(composite, mask), ["reinhard"], lambda f, m: None)
    assert ran == [] and result.panels == [] and "has no maps" in result.notes[0]


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




def test_the_first_run_uses_the_default_point_and_a_click_shows_a_point_map():
    from harmony_core.methods.ptl import default_point

    mask = np.zeros((40, 60), bool)
    mask[10:30, 20:50] = True
    assert explain.start_point(mask, None) == default_point(mask) != (0, 0)
    assert explain.start_point(mask, (3, 4)) == (3, 4)
    values = np.zeros((40, 60), np.float32)
    result = explain.Explained([explain.MapPanel("m", "background contribution", values),
                                explain.MapPanel("m", "point contribution", values, point=True)])
    assert explain.point_choice(result, "m · background contribution") == "m · point contribution"
    assert explain.point_choice(result, None) == "m · point contribution"
    assert explain.point_choice(explain.Explained(result.panels[:1]), "m · background contribution") == \
        "m · background contribution"  # no point map: the view stays
