"""The studio driven through gradio_client against an in-process launch (classical methods)."""

from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from harmony_core import registry
from harmony_core.arena.studyset import StudySet
from harmony_core.arena.votes import VoteStore
from harmony_core.registry import Method
from harmony_core.types import HarmonizationResult
from tests.conftest import free_port

pytestmark = pytest.mark.slow  # the app launched (or built) for every test but one

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


class Mapper(Method):
    """Stands in for ptl in the Explain tab: a background map, and a point map when clicked."""

    name, family, title, summary = "test-mapper", "network", "x", "x"
    maps = ("background contribution", "point contribution")
    point_maps = frozenset({"point contribution"})

    def harmonize(self, request, progress):
        h, w = request.mask.shape
        maps = {"background contribution": (~request.mask).astype(np.float32)}
        if request.point is not None:
            x, y = request.point
            yy, xx = np.mgrid[:h, :w]
            maps["point contribution"] = np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 100.0)
        return HarmonizationResult(request.composite.copy(), maps)


@pytest.fixture(scope="module")
def votes_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("votes")


@pytest.fixture(scope="module")
def client(votes_dir):
    from app import build_app

    registry._FACTORIES[Mapper.name] = Mapper
    demo = build_app(max_side=400, votes_dir=votes_dir, allow_weight_changes=True)
    port = free_port()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield Client(f"http://127.0.0.1:{port}/", verbose=False)
    finally:
        demo.close()
        registry._FACTORIES.pop(Mapper.name)
        registry._INSTANCES.pop(Mapper.name, None)


def load(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def new_rater(client) -> str:
    """A signed rater id, as an API client gets one: the first study call without an id."""
    return client.predict("Pairwise (A/B)", "", api_name="/study_next")[0]


def test_compose_then_compare_with_ground_truth(client):
    composite, mask, overlay, message = client.predict(
        handle_file(str(EXAMPLES / "cat_composite.jpg")), handle_file(str(EXAMPLES / "cat_mask.png")),
        api_name="/compose_upload",
    )
    assert "the object covers" in message
    assert load(composite).shape[1] == 400  # the 451-px long side capped at max_side ...
    assert "at most 400 px" in message  # ... and the user is told
    job = client.submit(
        handle_file(composite), handle_file(mask), handle_file(str(EXAMPLES / "cat_real.jpg")),
        ["composite", "reinhard", "histogram", "poisson"], 0, api_name="/compare",
    )
    gallery, before_after, status, metrics = job.result(timeout=120)
    assert len(job.outputs()) >= 4  # streamed: one update per finished method
    assert [item["caption"].split(" · ")[0] for item in gallery] == ["composite", "reinhard", "histogram", "poisson"]
    assert all(row[1] == "done" for row in status["data"])
    rows = {row[0]: row for row in metrics["data"]}
    assert rows["reinhard"][2] < rows["composite"][2]  # fMSE improves
    assert all(row[5] == 0 for row in metrics["data"])  # bMSE: background untouched
    work_mask = load(mask) > 127
    for item in gallery:
        assert np.array_equal(load(item["image"])[..., :3][~work_mask], load(composite)[..., :3][~work_mask])
    assert before_after is not None


@pytest.mark.parametrize("seed", ["nan", "abc", [1, 2], 99999999999999999999, 2 ** 63, -1, 1.5])
def test_a_bad_seed_gets_the_one_line_message(client, seed):
    """Issue 30, 3: such seeds gave "internal error" or "Something went wrong"."""
    from harmony_core.types import SEED_RULE

    composite, mask = handle_file(str(EXAMPLES / "cat_composite.jpg")), handle_file(str(EXAMPLES / "cat_mask.png"))
    with pytest.raises(AppError) as raised:
        client.predict(composite, mask, None, ["reinhard"], seed, "", api_name="/compare")
    # Gradio's layer refuses what is not a number for a Number box (the app's one-line policy, app.guard_events);
    # the handler refuses the numbers that are no seed.
    assert str(raised.value) == SEED_RULE or "'Seed' takes a number" in str(raised.value)
    assert "\n" not in str(raised.value)
    _, _, status, _ = client.predict(composite, mask, None, ["reinhard"], 2 ** 63 - 1, "", api_name="/compare")
    assert status["data"][0][:2] == ["reinhard", "done"]


def test_place_foreground(client):
    composite, mask, _, message = client.predict(
        handle_file(str(EXAMPLES / "rocket_background.jpg")), handle_file(str(EXAMPLES / "cup_foreground.png")),
        None, 0.3, 0.7, 0.5, api_name="/compose_place",
    )
    assert (load(mask) > 127).any() and "Ready" in message


def test_painted_mask(client, tmp_path):
    layer = np.zeros((300, 451, 4), np.uint8)
    layer[100:200, 150:300] = (255, 255, 255, 255)
    Image.fromarray(layer).save(tmp_path / "layer.png")
    editor = {
        "background": handle_file(str(EXAMPLES / "cat_composite.jpg")),
        "layers": [handle_file(str(tmp_path / "layer.png"))],
        "composite": handle_file(str(EXAMPLES / "cat_composite.jpg")),
    }
    _, mask, _, message = client.predict(editor, api_name="/compose_paint")
    painted = load(mask) > 127
    assert painted.mean() == pytest.approx(100 * 150 / (300 * 451), rel=0.05)


def test_bad_inputs_show_a_message_not_a_trace(client, tmp_path):
    empty = tmp_path / "empty.png"
    Image.new("L", (451, 300)).save(empty)
    with pytest.raises(AppError, match="mask is empty"):
        client.predict(handle_file(str(EXAMPLES / "cat_composite.jpg")), handle_file(str(empty)), api_name="/compose_upload")
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"\x89PNG garbage")
    with pytest.raises(AppError):
        client.predict(handle_file(str(junk)), handle_file(str(empty)), api_name="/compose_upload")
    with pytest.raises(AppError, match="at least one method"):
        client.predict(handle_file(str(EXAMPLES / "cat_composite.jpg")), handle_file(str(EXAMPLES / "cat_mask.png")),
                       None, [], 0, api_name="/compare")


def test_invert_a_mostly_white_mask(client, tmp_path):
    big = np.full((300, 451), 255, np.uint8)
    big[:50, :50] = 0
    Image.fromarray(big).save(tmp_path / "big.png")
    composite, mask, _, message = client.predict(
        handle_file(str(EXAMPLES / "cat_composite.jpg")), handle_file(str(tmp_path / "big.png")), api_name="/compose_upload"
    )
    assert "Invert mask" in message
    _, inverted, _, _ = client.predict(handle_file(composite), handle_file(mask), api_name="/compose_invert")
    assert (load(inverted) > 127).mean() < 0.05


def test_blind_study_vote_reveal_and_duplicates(client, votes_dir):
    rater = new_rater(client)
    out = client.predict("Best of all (A-D)", rater, api_name="/study_next")
    assert out[0] == rater and rater in out[1]
    slots = out[2:6]
    assert [s["label"] for s in slots] == ["A", "B", "C", "D"]  # letters only before the vote
    assert all(Path(s["value"]).is_file() for s in slots)
    revealed = client.predict(rater, api_name="/vote_c")
    labels = [s["label"] for s in revealed[:4]]
    assert all(" · " in label for label in labels) and "your pick" in labels[2]
    assert "Recorded" in revealed[4]
    with pytest.raises(AppError, match="already recorded"):
        client.predict(rater, api_name="/vote_a")
    client.predict("Best of all (A-D)", rater, api_name="/study_next")
    client.predict(rater, api_name="/vote_cant_decide")
    client.predict("Pairwise (A/B)", rater, api_name="/study_next")
    revealed = client.predict(rater, api_name="/vote_a")
    assert [s["visible"] for s in revealed[:4]] == [True, True, False, False]
    rows = VoteStore(votes_dir).rows()
    mine = [r for r in rows if r["rater_id"] == rater]
    assert [r["mode"] for r in mine] == ["best_of_n", "best_of_n", "pairwise"]
    first = mine[0]
    assert first["winner_method"] == labels[2].split(" · ")[1].split(" ")[0]
    assert first["choice_pos"] == "2" and len(first["shown_order"].split(";")) == 4
    assert first["sample_source"] == "study" and first["ip_hash"] and "127.0.0.1" not in first["ip_hash"]
    assert first["session_hash"] and first["flags"].startswith("seed=")
    assert mine[1]["winner_method"] == "" and mine[1]["choice_pos"] == ""
    for _ in range(len(StudySet.load(EXAMPLES / "study").samples) - 2):  # vote on the remaining samples
        client.predict("Best of all (A-D)", rater, api_name="/study_next")
        client.predict(rater, api_name="/vote_cant_decide")
    done = client.predict("Best of all (A-D)", rater, api_name="/study_next")
    assert "voted on all" in done[-1] and not done[2]["visible"]


def test_leaderboard_counts_votes_and_offers_the_csv(client, votes_dir):
    rater = new_rater(client)
    client.predict("Best of all (A-D)", rater, api_name="/study_next")
    client.predict(rater, api_name="/vote_a")
    headline, table, plot, csv_path = client.predict("All votes", "All images", api_name="/leaderboard")
    assert "preferred" in headline and "rater ids" in headline
    assert table["headers"][:3] == ["method", "shown", "wins"]
    methods = {row[0] for row in table["data"]}
    assert {"composite", "reinhard", "histogram", "poisson"} <= methods
    assert all(row[-1] == "provisional" for row in table["data"])
    assert plot["type"] == "matplotlib"
    assert not csv_path  # a view writes nothing: the CSV is made on request
    public = Path(client.predict(api_name="/votes_csv")).read_text()
    full = VoteStore(votes_dir).rows()
    assert public.count("\n") == len(full) + 1 and public.startswith("vote_id,")
    for row in full:  # nothing that signs a vote or addresses a session is published
        assert row["rater_id"] not in public and row["ip_hash"] not in public
        assert not row["session_hash"] or row["session_hash"] not in public
    headline, table, _, _ = client.predict("Pairwise", "All images", api_name="/leaderboard")
    assert sum(row[2] for row in table["data"]) <= 2


def test_blind_vote_on_the_users_own_compare_results(client, votes_dir):
    rater = new_rater(client)
    composite, mask, _, _ = client.predict(
        handle_file(str(EXAMPLES / "cat_composite.jpg")), handle_file(str(EXAMPLES / "cat_mask.png")),
        api_name="/compose_upload",
    )
    gallery, *_ = client.predict(handle_file(composite), handle_file(mask), None, ["reinhard", "histogram", "poisson"], 0,
                                 api_name="/compare")
    out = client.predict("Pairwise (A/B)", rater, api_name="/compare_blind")
    slots = out[2:6]
    assert [s["label"] for s in slots] == ["A", "B", "C", "D"] and [s["visible"] for s in slots] == [True, True, False, False]
    assert not any(m in Path(s["value"]).name for s in slots[:2] for m in ("reinhard", "histogram", "poisson"))
    named = {Path(item["image"]).read_bytes() for item in gallery}  # same pixels, but not the same file
    assert all(Path(s["value"]).read_bytes() not in named for s in slots[:2])
    assert any(np.abs(load(s["value"]).astype(int) - load(item["image"])[..., :3]).max() <= 1  # the blind dither only
               for s in slots[:1] for item in gallery)
    assert "Your composite" in out[-1]
    revealed = client.predict(rater, api_name="/vote_b")
    assert "your pick" in revealed[1]["label"]
    (vote,) = [r for r in VoteStore(votes_dir).rows() if r["rater_id"] == rater]
    assert vote["sample_source"] == "user" and vote["mode"] == "pairwise"
    assert vote["winner_method"] == revealed[1]["label"].split(" · ")[1].split(" ")[0]
    with pytest.raises(AppError, match="already voted"):
        client.predict("Pairwise (A/B)", rater, api_name="/compare_blind")
    _, table, _, _ = client.predict("All votes", "Users' own composites", api_name="/leaderboard")
    assert sum(row[1] for row in table["data"]) == 2  # the one vote showed two methods
    assert {row[0] for row in table["data"]} <= {"reinhard", "histogram", "poisson"}


def test_explain_shows_any_methods_maps_and_a_point_map(client):
    composite, mask, _, _ = client.predict(
        handle_file(str(EXAMPLES / "cat_composite.jpg")), handle_file(str(EXAMPLES / "cat_mask.png")),
        api_name="/compose_upload",
    )
    job = client.submit(handle_file(composite), handle_file(mask), ["test-mapper", "reinhard"], None, None,
                        "inferno", 0.6, None, api_name="/explain")
    main, choice, gallery, legend, notes = job.result(timeout=120)
    # No point given: the documented default (the object pixel nearest its centroid), so a point map too.
    assert [item["caption"] for item in gallery] == ["test-mapper · background contribution",
                                                     "test-mapper · point contribution"]
    assert load(main).shape[:2] == load(composite).shape[:2]
    assert "reinhard** has no maps, so it was not run here" in notes
    main, _, gallery, _, _ = client.predict(handle_file(composite), handle_file(mask), ["test-mapper"], 100, 80,
                                            "viridis", 0.5, None, api_name="/explain")
    assert [item["caption"].split(" · ")[1] for item in gallery] == ["background contribution", "point contribution"]
    with pytest.raises(AppError, match="outside"):
        client.predict(handle_file(composite), handle_file(mask), ["test-mapper"], 5000, 80, "inferno", 0.5, None,
                       api_name="/explain")


def test_weights_field_points_a_method_at_a_folder(client, tmp_path):
    from harmony_core.diffusion.tiny import save_tiny_ddpm
    from harmony_core.registry import get_method

    missing = str(tmp_path / "nowhere")
    runnable, note = client.predict("", "", missing, api_name="/set_weights")
    assert "hspace" in note and "nowhere" in note
    assert "hspace" not in runnable
    try:
        save_tiny_ddpm(tmp_path / "ddpm")
        _, note = client.predict("", "", str(tmp_path / "ddpm"), api_name="/set_weights")
        assert get_method("hspace").available()
        assert "**hspace**" not in note
    finally:
        client.predict("", "", "", api_name="/set_weights")


def test_weights_that_cannot_load_are_not_offered(client, tmp_path):
    """Issue 30, 2: hspace pointed at a text-to-image pipeline was listed as runnable."""
    from harmony_core.diffusion.tiny import save_tiny_sd_pipeline

    pipeline = save_tiny_sd_pipeline(tmp_path / "sd", seed=0)
    try:
        runnable, note = client.predict("", "", str(pipeline), api_name="/set_weights")
        assert "hspace" not in runnable["value"] and "<strong>hspace</strong> cannot run here" in note
    finally:
        client.predict("", "", "", api_name="/set_weights")


def test_weights_replies_never_tell_whether_a_path_exists(client, tmp_path):
    """With --allow-weight-changes on, the note names the source but not why it failed."""
    notes = []
    try:
        for path in (str(tmp_path), str(tmp_path / "nonexistent"), "/root/.ssh"):
            _, note = client.predict("", "", path, api_name="/set_weights")
            notes.append(note.replace(path, "PATH"))
    finally:
        client.predict("", "", "", api_name="/set_weights")
    assert len(set(notes)) == 1 and "cannot be used here" in notes[0]


def test_one_error_policy_for_plain_and_generator_handlers():
    import gradio as gr

    from app import user_errors
    from harmony_core.errors import InputError

    @user_errors
    def streams():
        yield 1
        raise InputError("bad input")

    @user_errors
    def crashes():
        raise KeyError("internal detail")

    stream = streams()
    assert next(stream) == 1
    with pytest.raises(gr.Error, match="bad input"):
        next(stream)
    with pytest.raises(gr.Error) as caught:
        crashes()
    assert "internal detail" not in str(caught.value) and "went wrong" in str(caught.value)


def test_compare_shows_its_input_and_export_gives_a_figure_and_a_zip(client):
    import json
    import zipfile

    composite, mask, _, _ = client.predict(
        handle_file(str(EXAMPLES / "cat_composite.jpg")), handle_file(str(EXAMPLES / "cat_mask.png")),
        api_name="/compose_upload",
    )
    client.predict(handle_file(composite), handle_file(mask), handle_file(str(EXAMPLES / "cat_real.jpg")),
                   ["composite", "reinhard"], 0, "a cat", api_name="/compare")
    figure, files = client.predict(True, api_name="/export")
    h, w = load(composite).shape[:2]
    assert load(figure).shape[1] == 3 * w + 4 * 8  # composite, reinhard, ground truth at full resolution
    archive = next(f for f in files if f.endswith(".zip"))
    with zipfile.ZipFile(archive) as z:
        assert {"composite.png", "mask.png", "outputs/reinhard.png", "results.json"} <= set(z.namelist())
        assert json.loads(z.read("results.json"))["results"]["reinhard"]["metadata"]["method"] == "reinhard"


def test_pairwise_ties_and_the_object_zoom_through_the_api(client, votes_dir):
    rater = new_rater(client)
    out = client.predict("Pairwise (A/B)", rater, api_name="/study_next")
    shown = [s["value"] for s in out[2:4]]
    zoomed = client.predict(True, False, api_name="/study_view")
    assert all(z and Path(z).name not in {Path(s).name for s in shown} for z in zoomed[:2])
    assert load(zoomed[0]).shape == load(zoomed[1]).shape  # the same crop for both
    revealed = client.predict(rater, api_name="/vote_both_good")
    assert "both good" in revealed[4] and all(" · " in s["label"] for s in revealed[:2])
    (row,) = [r for r in VoteStore(votes_dir).rows() if r["rater_id"] == rater]
    assert "tie=both_good" in row["flags"] and row["winner_method"] == ""
    client.predict("Best of all (A-D)", rater, api_name="/study_next")
    with pytest.raises(AppError, match="pairwise"):
        client.predict(rater, api_name="/vote_both_bad")
    _, pairs = client.predict("Pairwise", "All images", api_name="/leaderboard"), client.predict(
        "Pairwise", "All images", api_name="/leaderboard_pairs")
    assert pairs["headers"] == ["pair", "comparisons", "win rate of the first", "more votes to separate"]


def test_every_handler_of_the_app_runs_under_the_one_error_policy(tmp_path):
    from app import build_app

    demo = build_app(max_side=256, votes_dir=tmp_path)
    ours = [d.fn for d in demo.fns.values() if d.fn is not None and d.fn.__module__ != "gradio.helpers"]
    assert len(ours) > 20 and all(hasattr(fn, "__wrapped__") for fn in ours)  # functools.wraps of user_errors


def test_stop_buttons_cancel_the_runs_and_no_overlay_hides_results(tmp_path):
    """Issue 30, 5: no Stop button, and the progress overlay hid the finished results."""
    from app import build_app

    config = build_app(votes_dir=tmp_path).config
    ids = {c.get("props", {}).get("elem_id"): c["id"] for c in config["components"] if c.get("props", {}).get("elem_id")}
    deps = config["dependencies"]
    by_api = {d.get("api_name"): i for i, d in enumerate(deps)}
    for run, stop in (("compare", "compare-stop"), ("explain", "explain-stop")):
        cancelled = {i for d in deps if [t[0] for t in d["targets"]] == [ids[stop]] for i in d["cancels"]}
        assert by_api[run] in cancelled
    assert deps[by_api["compare"]]["show_progress"] == "hidden"  # the status table's running row shows it


def _raw_call(client, api_name: str, data: list) -> list:
    """An endpoint's whole answer as the browser gets it (gradio_client drops buttons' updates)."""
    import json

    import httpx

    root = client.src.rstrip("/")
    event = httpx.post(f"{root}/gradio_api/call/{api_name}", json={"data": data}, timeout=60).json()["event_id"]
    with httpx.stream("GET", f"{root}/gradio_api/call/{api_name}/{event}", timeout=120) as reply:
        lines = list(reply.iter_lines())
    kinds = [line[len("event: "):] for line in lines if line.startswith("event: ")]
    payloads = [line[len("data: "):] for line in lines if line.startswith("data: ")]
    assert kinds[-1] == "complete", lines
    return json.loads(payloads[-1])


def _uploaded(client, path) -> dict:
    import httpx

    root = client.src.rstrip("/")
    with open(path, "rb") as f:
        (server_path,) = httpx.post(f"{root}/gradio_api/upload", files={"files": (Path(path).name, f)}).json()
    return {"path": server_path, "meta": {"_type": "gradio.FileData"}}


def test_the_invert_button_is_shown_by_a_real_bool(client, tmp_path):
    """numpy's bool reached the browser as the string "False", which is truthy: always visible."""
    answer = _raw_call(client, "compose_upload", [_uploaded(client, EXAMPLES / "cat_composite.jpg"),
                                                  _uploaded(client, EXAMPLES / "cat_mask.png")])
    invert = answer[4]
    assert invert["visible"] is False
    big = np.full((300, 451), 255, np.uint8)
    big[:50, :50] = 0
    Image.fromarray(big).save(tmp_path / "big.png")
    answer = _raw_call(client, "compose_upload", [_uploaded(client, EXAMPLES / "cat_composite.jpg"),
                                                  _uploaded(client, tmp_path / "big.png")])
    assert answer[4]["visible"] is True


def test_small_things_a_visitor_ran_into(client, tmp_path):
    composite, mask, _, _ = client.predict(
        handle_file(str(EXAMPLES / "cat_composite.jpg")), handle_file(str(EXAMPLES / "cat_mask.png")),
        api_name="/compose_upload",
    )
    # The methods as one string are one method, not its letters.
    gallery, *_ = client.predict(handle_file(composite), handle_file(mask), None, "reinhard", 0, api_name="/compare")
    assert [item["caption"].split(" · ")[0] for item in gallery] == ["reinhard"]
    # A 1x1 composite is too small, not "inverted".
    Image.new("RGB", (1, 1), (9, 9, 9)).save(tmp_path / "dot.png")
    Image.new("L", (1, 1), 255).save(tmp_path / "dot_mask.png")
    with pytest.raises(AppError, match="too small") as caught:
        client.predict(handle_file(str(tmp_path / "dot.png")), handle_file(str(tmp_path / "dot_mask.png")),
                       api_name="/compose_upload")
    assert "inverted" not in str(caught.value)


def test_a_toast_shows_plain_text_not_markdown():
    from app import _user_error
    from harmony_core.errors import InputError

    assert _user_error("f", InputError("Press **Explain** first, then click a point.")).message == \
        "Press Explain first, then click a point."


def test_pressed_too_early_a_warning_not_an_error(client):
    """Harmonize, Explain and Export with nothing to work on leave their outputs as they are (no
    error badges on each) and say what to do once."""
    answer = _raw_call(client, "compare", [None, None, None, ["reinhard"], 0, "", None])
    assert answer[:4] == [{"__type__": "update"}] * 4 and answer[4] is None  # the results state: not sent
    answer = _raw_call(client, "explain", [None, None, ["ptl"], None, None, "inferno", 0.6, None, None, 0, ""])
    assert answer[0] is None and answer[1:] == [{"__type__": "update"}] * 5


def test_the_end_of_a_mode_says_where_more_rounds_are(client):
    rater = new_rater(client)
    for _ in range(40):
        if "Thank you" in client.predict("Pairwise (A/B)", rater, api_name="/study_next")[-1]:
            break
        client.predict(rater, api_name="/vote_a")
    answer = _raw_call(client, "study_next", ["Pairwise (A/B)", rater])
    assert "Thank you" in answer[-1] and "switch the **Mode**" in answer[-1] and "Best of all" in answer[-1]
    cant_decide = answer[-4]  # before the two tie buttons and the message
    assert cant_decide["visible"] is False  # no lone disabled button left
