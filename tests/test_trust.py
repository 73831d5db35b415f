"""The studio is public: each attack of issue 15 sent through the real API, and refused.

gradio_client for what a script would send, raw HTTP calls (/gradio_api/call/...) where the
attack is a payload gradio_client would not build (a `{"path": ...}` without Gradio's metadata)
or where the raw URLs in the reply are what is checked.
"""

import json
import time
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from harmony_core.arena.studyset import StudySet
from harmony_core.arena.votes import COLUMNS, VoteStore
from harmony_core.studio import raters
from harmony_core.studio.raters import RateLimiter, RateLimits
from tests.conftest import free_port

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
METHODS = StudySet.load(EXAMPLES / "study").methods
MAX_SIDE = 400


def launch(votes_dir, **options):
    from app import build_app

    demo = build_app(**{"max_side": MAX_SIDE, "votes_dir": votes_dir, **options})  # options may set max_side
    port = free_port()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    return demo, f"http://127.0.0.1:{port}/"


@pytest.fixture(scope="module")
def votes_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("votes")


@pytest.fixture(scope="module")
def server(votes_dir):
    demo, url = launch(votes_dir)
    try:
        yield url
    finally:
        demo.close()


@pytest.fixture(scope="module")
def client(server):
    return Client(server, verbose=False)


def raw_call(url: str, api_name: str, data: list) -> tuple[str, object]:
    """(event, data) of the last message of a call through Gradio's plain HTTP API."""
    event_id = httpx.post(f"{url}gradio_api/call/{api_name}", json={"data": data}, timeout=30).json()["event_id"]
    event, payload = "", None
    with httpx.stream("GET", f"{url}gradio_api/call/{api_name}/{event_id}", timeout=120) as stream:
        for line in stream.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                payload = json.loads(line.split(":", 1)[1].strip() or "null")
    return event, payload


def new_rater(client) -> str:
    return client.predict("Pairwise (A/B)", "", api_name="/study_next")[0]


# --- 1. The blind study is blind -------------------------------------------------------------

@pytest.mark.slow
def test_round_images_are_served_under_names_that_say_nothing(server, client):
    rater = new_rater(client)
    seen: list[str] = []
    for mode in ("Best of all (A-D)", "Pairwise (A/B)", "Best of all (A-D)"):
        event, out = raw_call(server, "study_next", [mode, rater])
        assert event == "complete", out
        slots = [s for s in out[3:7] if s.get("value")]  # out[2]: the round's gr.State, never sent
        assert len(slots) >= 2 and [s["label"] for s in slots] == list("ABCD"[: len(slots)])
        for slot in slots:
            text = json.dumps(slot["value"]).lower()
            assert not any(m in text for m in METHODS), text  # url, path, orig_name
            assert "samples" not in text and "outputs" not in text and "study" not in text
            seen.append(slot["value"]["url"])
    assert len(set(seen)) == len(seen)  # a fresh copy (new bytes, new URL) every round


# --- 2. Nobody votes as somebody else --------------------------------------------------------

@pytest.mark.slow
def test_rater_ids_are_issued_and_signed_by_the_server(client):
    issued = new_rater(client)
    assert raters.RATER_ID.fullmatch(issued) and len(issued) == raters.RATER_ID_LENGTH
    for forged in ("r-0123456789abcdef", issued[:-1] + ("0" if issued[-1] != "0" else "1"), "victim", "r" * 10**6):
        with pytest.raises(AppError, match="not issued by this server"):
            client.predict("Best of all (A-D)", forged, api_name="/study_next")
    victim, attacker = Client(client.src, verbose=False), client
    victim_id = new_rater(victim)
    victim.predict("Best of all (A-D)", victim_id, api_name="/study_next")
    attacker.predict("Best of all (A-D)", issued, api_name="/study_next")
    with pytest.raises(AppError, match="another rater id"):  # a real id, but not this round's
        attacker.predict(victim_id, api_name="/vote_a")
    assert "Recorded" in victim.predict(victim_id, api_name="/vote_a")[-1]


@pytest.mark.slow
def test_votes_are_rate_limited_per_rater_and_per_ip(tmp_path):
    demo, url = launch(tmp_path, rate_limits=RateLimits(per_minute=2, per_day=100))
    try:
        client = Client(url, verbose=False)
        rater = new_rater(client)
        for _ in range(2):
            client.predict("Best of all (A-D)", rater, api_name="/study_next")
            client.predict(rater, api_name="/vote_cant_decide")
        client.predict("Best of all (A-D)", rater, api_name="/study_next")
        with pytest.raises(AppError, match="Too many votes: at most 2 a minute"):
            client.predict(rater, api_name="/vote_a")
        other = Client(url, verbose=False)  # a new rater id from the same address
        other_id = new_rater(other)
        other.predict("Best of all (A-D)", other_id, api_name="/study_next")
        with pytest.raises(AppError, match="Too many votes"):
            other.predict(other_id, api_name="/vote_a")
        assert len(VoteStore(tmp_path).rows()) == 2
    finally:
        demo.close()


def test_the_daily_cap_holds_after_the_minute():
    now = [0.0]
    limiter = RateLimiter(RateLimits(per_minute=2, per_day=3), clock=lambda: now[0])
    for t in (0, 1, 70):
        now[0] = t
        limiter.take("rater", "ip")
    now[0] = 140
    with pytest.raises(raters.RateLimited, match="3 a day"):
        limiter.take("rater", "other-ip")
    limiter.take("another-rater", "other-ip")  # nothing was counted for the refused vote
    now[0] = 86400 + 1
    limiter.take("rater", "ip")


def test_a_forged_forwarded_for_header_does_not_change_the_address():
    assert raters.client_address("203.0.113.9", "10.0.0.1", hops=0) == "10.0.0.1"  # no proxy: header ignored
    assert raters.client_address("1.2.3.4, 198.51.100.7", "10.0.0.1", hops=1) == "198.51.100.7"  # the proxy's entry
    assert raters.client_address("", "10.0.0.1", hops=1) == "10.0.0.1"


# --- 3. One vote cannot break the study --------------------------------------------------------

@pytest.mark.slow
def test_a_hostile_vote_is_refused_and_an_old_hostile_row_is_skipped(client, votes_dir):
    huge = "r" * 10**6
    with pytest.raises(AppError, match="not issued"):
        client.predict("Best of all (A-D)", huge, api_name="/study_next")
    with pytest.raises(AppError):
        client.predict(huge, api_name="/vote_a")
    rater = new_rater(client)
    client.predict("Best of all (A-D)", rater, api_name="/study_next")
    client.predict(rater, api_name="/vote_b")
    store = VoteStore(votes_dir)
    kept = len(store.rows())
    row = dict(store.rows()[0], rater_id="r" * 200_000, vote_id="hostile")  # as the old version stored it
    with open(store.path, "a") as handle:
        handle.write(",".join(row[c] for c in COLUMNS) + "\n")
        handle.write('"unterminated,quote\n')
    start = time.perf_counter()
    out = client.predict("Best of all (A-D)", new_rater(client), api_name="/study_next")
    assert out[2]["value"]
    headline, table, _, _ = client.predict("All votes", "All images", api_name="/leaderboard")
    assert "preferred" in headline and table["data"]
    assert time.perf_counter() - start < 30
    assert len(VoteStore(votes_dir).rows()) == kept  # both bad lines skipped, nothing else lost


# --- 4. No file from anywhere on the server ----------------------------------------------------

@pytest.mark.parametrize("api_name, data", [
    ("compose_upload", lambda p, ok: [p, ok]),
    ("compose_invert", lambda p, ok: [p, ok]),
    ("compose_place", lambda p, ok: [p, ok, None, 0.5, 0.5, 1.0]),
    ("compose_paint", lambda p, ok: [{"background": p, "layers": [], "composite": None}]),
    ("compare", lambda p, ok: [ok, ok, p, ["reinhard"], 0, ""]),  # "": the prompt (a raw call sends every input)
    ("explain", lambda p, ok: [p, ok, ["reinhard"], None, None, "inferno", 0.6, None, 0, ""]),  # + seed, prompt
])
@pytest.mark.slow
def test_a_server_path_is_refused_whether_or_not_it_exists(server, tmp_path, api_name, data):
    outside = tmp_path / "secret.png"  # a readable image outside the upload folder and the app's folders
    Image.new("RGB", (64, 48), "red").save(outside)
    uploaded = {"path": str(EXAMPLES / "cat_mask.png")}  # the app's own folder: allowed
    replies = set()
    for path in (str(outside), str(tmp_path / "missing.png"), "/etc/hostname", f"{EXAMPLES}/../../../etc/passwd"):
        event, message = raw_call(server, api_name, data({"path": path}, uploaded))
        assert event == "error", (api_name, path, message)
        replies.add(str(message).replace(path, "PATH"))
    assert len(replies) == 1  # the same reply whether the file exists or not
    if api_name == "compose_paint":  # Gradio's own EditorData check refuses first: the app's one line, no path
        assert "inputs do not fit this app" in replies.pop()
    else:
        assert "not uploaded to this server" in replies.pop()


# --- 5. Anonymous users do not change the server -------------------------------------------------

@pytest.mark.slow
def test_weights_cannot_be_changed_unless_the_organiser_allowed_it(client, tmp_path):
    replies = []
    for path in (str(tmp_path), str(tmp_path / "nonexistent"), "/root/.ssh"):
        with pytest.raises(AppError, match="--allow-weight-changes") as caught:
            client.predict("", "", path, api_name="/set_weights")
        replies.append(str(caught.value).replace(path, "PATH"))
    assert len(set(replies)) == 1


# --- 6. The size cap holds at the server -------------------------------------------------------

@pytest.mark.slow
def test_compare_caps_a_large_image_sent_directly(client, tmp_path):
    h, w = 3000, 5000
    gradient = np.broadcast_to(np.linspace(0, 255, w, dtype=np.uint8)[None, :, None], (h, w, 3))
    Image.fromarray(np.ascontiguousarray(gradient)).save(tmp_path / "big.png")
    mask = np.zeros((h, w), np.uint8)
    mask[1000:2000, 2000:3000] = 255
    Image.fromarray(mask).save(tmp_path / "big_mask.png")
    start = time.perf_counter()
    job = client.submit(handle_file(str(tmp_path / "big.png")), handle_file(str(tmp_path / "big_mask.png")), None,
                        ["reinhard", "poisson"], 0, api_name="/compare")
    gallery, _, status, _ = job.result(timeout=120)
    seconds = time.perf_counter() - start
    assert seconds < 30, seconds
    assert [np.asarray(Image.open(item["image"])).shape[:2] for item in gallery] == [(240, 400)] * 2
    assert all(row[1] == "done" and row[4] == "400x240" for row in status["data"]), status


# --- 8. Web errors: the app's own message, no traceback ----------------------------------------

@pytest.mark.slow
def test_unreadable_uploads_get_the_apps_own_message(client, tmp_path, capfd):
    text = tmp_path / "text.png"
    text.write_text("just some text, renamed")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes((EXAMPLES / "cat_composite.jpg").read_bytes()[:3000])
    huge = tmp_path / "huge.png"  # a valid PNG header declaring 30000x30000 pixels
    Image.new("L", (1, 1)).save(huge)
    data = bytearray(huge.read_bytes())
    data[16:24] = (30000).to_bytes(4, "big") * 2
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")  # keep the IHDR chunk valid
    huge.write_bytes(bytes(data))
    expected = {text: "not an image file", empty: "not an image file", truncated: "truncated or corrupt",
                huge: "decompression-bomb guard"}
    for path, message in expected.items():
        with pytest.raises(AppError, match=message):
            client.predict(handle_file(str(path)), handle_file(str(EXAMPLES / "cat_mask.png")), api_name="/compose_upload")
    with pytest.raises(AppError, match="Compose a composite"):
        client.predict(None, None, api_name="/compose_invert")
    # Harmonize with nothing composed: a warning, and every output left as it is (no error badges).
    assert client.predict(None, None, None, ["reinhard"], 0, api_name="/compare") == ({"__type__": "update"},) * 4
    with pytest.raises(AppError, match="Unknown method"):
        client.predict(handle_file(str(EXAMPLES / "cat_composite.jpg")), handle_file(str(EXAMPLES / "cat_mask.png")),
                       None, ["nope"], 0, api_name="/compare")
    gallery, _, status, _ = client.predict(
        handle_file(str(EXAMPLES / "cat_composite.jpg")), handle_file(str(EXAMPLES / "cat_mask.png")), None,
        ["reinhard", "reinhard", "poisson", "reinhard"], 0, api_name="/compare")
    assert [row[0] for row in status["data"]] == ["reinhard", "poisson"] and len(gallery) == 2
    captured = capfd.readouterr()
    assert "Traceback" not in captured.out + captured.err
