import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harmony_core import registry
from harmony_core.errors import InputError, MethodUnavailable
from harmony_core.registry import Availability, Method
from harmony_core.studio.compare import run_methods
from harmony_core.studio.display import FOLDER_NAME, DisplayFiles
from harmony_core.types import HarmonizationRequest


class NeedsWeights(Method):
    name, family, title, summary = "needs-weights", "network", "x", "x"

    def available(self):
        return Availability(False, "weights missing: put them in weights/x")

    def harmonize(self, request, progress):
        raise AssertionError("must not run")


def test_unavailable_method_is_reported_and_the_others_still_run(scene, monkeypatch):
    real, composite, mask = scene
    monkeypatch.setitem(registry._FACTORIES, NeedsWeights.name, NeedsWeights)
    monkeypatch.delitem(registry._INSTANCES, NeedsWeights.name, raising=False)
    request = HarmonizationRequest(composite, mask, ground_truth=real)
    states = list(run_methods(request, ["needs-weights", "reinhard"], lambda f, m: None))
    final = states[-1]
    assert len(states) == 2
    assert final.status[0][0] == "needs-weights" and final.status[0][1].startswith("not available")
    assert "weights missing" in final.status[0][1]
    assert final.status[1][:2] == ["reinhard", "done"]
    assert [row[0] for row in final.metrics] == ["reinhard"] and list(final.results) == ["reinhard"]


def test_unavailable_method_raises_with_reason(scene):
    _, composite, mask = scene
    with pytest.raises(MethodUnavailable, match="weights missing"):
        NeedsWeights().run(HarmonizationRequest(composite, mask))


class Styled(Method):
    """Records what hspace and freepih would read: the style image and the prompt."""

    name, family, title, summary = "test-styled", "diffusion", "x", "x"

    def harmonize(self, request, progress):
        from harmony_core.types import HarmonizationResult

        return HarmonizationResult(request.composite.copy(), metadata={
            "prompt": request.prompt, "style_is_background": request.background is not None})


def test_compose_background_and_prompt_reach_the_method(scene, monkeypatch, tmp_path):
    from PIL import Image

    from harmony_core.studio.compare import build_request, inputs_note

    real, composite, mask = scene
    monkeypatch.setitem(registry._FACTORIES, Styled.name, Styled)
    monkeypatch.delitem(registry._INSTANCES, Styled.name, raising=False)
    Image.fromarray(composite).save(tmp_path / "c.png")
    Image.fromarray(mask.astype("uint8") * 255).save(tmp_path / "m.png")
    request, names, notes = build_request(tmp_path / "c.png", tmp_path / "m.png", [Styled.name], 1024,
                                          prompt="a red box", background=real)
    *_, last = run_methods(request, names, lambda f, m: None)
    metadata = last.finished.results[Styled.name].metadata
    assert metadata["prompt"] == "a red box" and metadata["style_is_background"] and not notes
    assert "background you placed" in inputs_note(real) and "composite itself" in inputs_note(None)
    request, _, notes = build_request(tmp_path / "c.png", tmp_path / "m.png", [Styled.name], 1024, background=real[:50])
    assert request.background is None and "no longer matches" in notes[0]


def test_the_last_state_carries_the_finished_run(scene):
    real, composite, mask = scene
    seen = [(state.finished, state.before_after) for state in run_methods(
        HarmonizationRequest(composite, mask, ground_truth=real), ["composite", "reinhard"], lambda f, m: None)]
    assert seen[0] == (None, None)  # not finished; the unchanged composite is no "after"
    final, before_after = seen[-1]
    assert list(final.results) == ["composite", "reinhard"] and set(final.metrics) == {"composite", "reinhard"}
    assert np.array_equal(np.asarray(Image.open(before_after[0])), composite)
    assert np.array_equal(np.asarray(Image.open(before_after[1])), final.results["reinhard"].image)


def test_each_result_is_shown_from_one_lossless_file_written_once(scene, tmp_path):
    real, composite, mask = scene
    files = DisplayFiles(tmp_path, "compare-")
    written: list[str] = []
    show = files.show
    files.show = lambda image, name: written.append(name) or show(image, name)
    request = HarmonizationRequest(composite, mask, ground_truth=real)
    galleries = [list(state.gallery) for state in run_methods(request, ["reinhard", "histogram", "poisson"],
                                                               lambda f, m: None, files)]
    assert [len(g) for g in galleries] == [1, 2, 3]
    for earlier, later in zip(galleries, galleries[1:]):
        assert later[:len(earlier)] == earlier  # the same paths: nothing re-encoded by a later update
    assert written == ["composite", "reinhard", "histogram", "poisson"]  # each image written once
    *_, state = run_methods(request, ["reinhard"], lambda f, m: None, DisplayFiles(tmp_path))
    final = state.finished.results["reinhard"].image
    path, caption = state.gallery[0]
    assert Path(path).suffix == ".png" and Path(path).parent.parent == tmp_path / FOLDER_NAME
    assert np.array_equal(np.asarray(Image.open(path)), final)  # the displayed pixels are the output's
    assert state.before_after[1] == path and caption.startswith("reinhard · ")


class Gate(Method):
    """Blocks until the test opens it."""

    name, family, title, summary = "test-gate", "classical", "x", "x"
    opened = threading.Event()

    def harmonize(self, request, progress):
        assert self.opened.wait(10)
        return request.composite.copy()


def test_closing_a_compare_lets_the_running_method_finish_and_starts_no_other(scene, monkeypatch):
    real, composite, mask = scene
    monkeypatch.setitem(registry._FACTORIES, Gate.name, Gate)
    monkeypatch.delitem(registry._INSTANCES, Gate.name, raising=False)
    started = []
    monkeypatch.setattr("harmony_core.studio.serving.get_method", lambda name: started.append(name) or registry.get_method(name))
    states = run_methods(HarmonizationRequest(composite, mask), ["reinhard", Gate.name, "histogram"], lambda f, m: None)
    assert [row[0] for row in next(states).status] == ["reinhard"]
    states.close()
    Gate.opened.set()
    time.sleep(0.3)
    assert Gate.name in started and "histogram" not in started


def test_availability_collapses_to_one_line_per_method_with_details_on_demand(monkeypatch):
    from harmony_core.studio.compare import availability_note
    from harmony_core.studio.serving import MethodStatus

    long_reason = "weights missing. Download them from the authors' page (a long explanation), then set X"
    note = availability_note([MethodStatus("reinhard", "classical", True), MethodStatus("x", "network", False, long_reason)])
    summary, details = note.split("</summary>")
    assert summary.count("\n") == 0 and "<strong>x</strong> cannot run here: its trained model files" in summary
    assert "set X" not in summary and long_reason.replace("'", "'") in details and "reinhard" not in note
    pointed = availability_note([MethodStatus("x", "network", False, long_reason)], {"x": "/some/folder"})
    assert "/some/folder" in pointed and "Download" not in pointed  # never why (no probe of the disk)
    assert availability_note([MethodStatus("reinhard", "classical", True)]) == "All methods can run here."


def test_seeds_are_whole_numbers_in_the_generators_range():
    from harmony_core.types import SEED_RULE, parse_seed

    assert [parse_seed(v) for v in (None, "", 0, 7.0, " 12 ", 2 ** 63 - 1, np.int64(5))] == [0, 0, 0, 7, 12, 2 ** 63 - 1, 5]
    for bad in ("nan", "abc", [1, 2], 99999999999999999999, 18446744073709551616, 2 ** 63, -1, 1.5,
                float("nan"), float("inf"), True, "1e3", {"seed": 1}):
        with pytest.raises(InputError, match="whole number"):
            parse_seed(bad)
    assert SEED_RULE.count("\n") == 0


def test_a_cut_prompt_is_said_so(scene):
    from harmony_core.studio.compare import build_request

    _, composite, mask = scene
    request, _, notes = build_request(composite, mask, ["reinhard"], 400, prompt="x" * 100_000)
    assert len(request.prompt) == 500 and any("cut to its first 500 characters (of 100000)" in n for n in notes)
    assert build_request(composite, mask, ["reinhard"], 400, prompt="a cup")[2] == []


def test_visitor_words_for_a_method_that_cannot_run():
    from harmony_core.studio import words

    assert "graphics card" in words.plain_reason("CUDA is not available on this machine")
    assert "model files" in words.plain_reason("no weights configured; set HARMONY_X_WEIGHTS or X(weights=...)")
    assert "organiser" in words.plain_reason("an unexpected state")
    line = words.cannot_run("hspace", "set HARMONY_HSPACE_WEIGHTS or HSpace(weights=...)")
    summary = line.split("</summary>")[0]
    assert "HARMONY_" not in summary and "weights=" not in summary and "(details)" in summary
    assert words.plain_text("Press **Explain** first, then *click* a point; `code`") == \
        "Press Explain first, then click a point; code"


def test_methods_as_one_string_are_read_as_names_not_letters():
    from harmony_core.studio.compare import method_list

    assert method_list("ptl") == ["ptl"] and method_list("reinhard, poisson") == ["reinhard", "poisson"]
    assert method_list(["ptl"]) == ["ptl"]
