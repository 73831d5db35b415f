"""Study integrity (issue 23): each attack of a hostile rater sent through the real API, refused or harmless.

Raw queue calls (/gradio_api/queue/join by fn_index) reach every event, private ones included,
exactly as a script would; gradio_client where the call is what a client library would send.
"""

import hashlib
import io
import json
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
from gradio_client import Client
from PIL import Image

from harmony_core import imaging
from harmony_core.studio import blind
from harmony_core.study.studyset import StudySet
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "examples" / "study"
MAX_SIDE = 400


def launch(votes_dir, **options):
    from app import build_app

    demo = build_app(max_side=MAX_SIDE, votes_dir=votes_dir, **options)
    port = free_port()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    return demo, f"http://127.0.0.1:{port}/"


@pytest.fixture(scope="module")
def votes_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("votes")


@pytest.fixture(scope="module")
def app(votes_dir):
    demo, url = launch(votes_dir)
    try:
        yield demo, url
    finally:
        demo.close()


@pytest.fixture(scope="module")
def server(app):
    return app[1]


def queue_call(url: str, fn_index: int, data: list, session: str | None = None, headers: dict | None = None) -> tuple[str, object]:
    """(the last message's kind, its output or error) of one raw /queue/join call by fn_index."""
    session = session or uuid.uuid4().hex
    joined = httpx.post(f"{url}gradio_api/queue/join", json={"data": data, "fn_index": fn_index, "session_hash": session,
                                                             "event_data": None, "trigger_id": None},
                        headers=headers or {}, timeout=30)
    if joined.status_code != 200:
        return "refused", joined.text
    kind, payload = "", None
    with httpx.stream("GET", f"{url}gradio_api/queue/data", params={"session_hash": session}, timeout=120) as stream:
        for line in stream.iter_lines():
            if not line.startswith("data:"):
                continue
            message = json.loads(line[5:])
            if message.get("msg") == "process_completed":
                out = message.get("output") or {}
                return ("error", out.get("error")) if not message.get("success") else ("complete", out.get("data"))
    return kind, payload


def fn_index(demo, api_name: str) -> int:
    return next(i for i, fn in demo.fns.items() if fn.api_name == api_name)


# --- 1. De-blinding from bytes ------------------------------------------------------------------

def test_blind_encodings_are_fresh_padded_and_nearly_lossless():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40, 60, 3), dtype=np.uint8), np.full((40, 60, 3), 128, np.uint8),
              np.zeros((30, 60, 3), np.uint8)]
    first, second = blind.encode_round(images), blind.encode_round(images)
    assert len({len(f) for f in first}) == 1 and len({len(f) for f in second}) == 1  # one byte size per round
    assert len(first[0]) != len(second[0]) or first != second
    assert not set(first) & set(second)
    for data, image in zip(first, images):
        decoded = Image.open(io.BytesIO(data))
        assert decoded.format == "PNG" and decoded.size == (60, 40) and not decoded.info  # no metadata at all
        pixels = np.asarray(decoded.convert("RGB")).astype(int)[: image.shape[0]]
        change = np.abs(pixels - image)
        assert change.max() <= 1 and 0 < change.mean() <= blind.DITHER_SHARE  # imperceptible, yet not the stored pixels


def test_study_images_cannot_be_matched_by_hash_or_size(server):
    client = Client(server, verbose=False)
    study = StudySet.load(STUDY)
    stored = {p.read_bytes() for s in study.samples for p in s.outputs.values()}
    stored_hashes = {hashlib.sha256(b).hexdigest() for b in stored}
    stored_pixels = {hashlib.sha256(imaging.load_rgb(p).tobytes()).hexdigest() for s in study.samples
                     for p in s.outputs.values()}
    stored_sizes = {len(b) for b in stored}
    rater = client.predict("Best of all (A-D)", "", api_name="/study_next")[0]
    seen_hashes: set[str] = set()
    served = 0
    while served < 18:
        out = client.predict("Best of all (A-D)", rater, api_name="/study_next")
        files = [Path(s["value"]) for s in out[2:6] if s.get("value")]
        data = [f.read_bytes() for f in files]
        assert len({len(d) for d in data}) == 1  # the byte size is the round's, not the method's
        for d in data:
            digest = hashlib.sha256(d).hexdigest()
            assert digest not in stored_hashes and digest not in seen_hashes and len(d) not in stored_sizes
            assert hashlib.sha256(np.asarray(Image.open(io.BytesIO(d)).convert("RGB")).tobytes()).hexdigest() not in stored_pixels
            assert not Image.open(io.BytesIO(d)).info
            seen_hashes.add(digest)
        served += len(data)
        assert " · " in client.predict(rater, api_name="/vote_cant_decide")[0]["label"]  # revealed after the vote
    assert served >= 18
