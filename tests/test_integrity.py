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

    demo = build_app(**{"max_side": MAX_SIDE, "votes_dir": votes_dir, **options})
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


# --- 2. The study folder is never served -------------------------------------------------------

def _study_payloads() -> list[object]:
    """A study file named every way a client could: absolute, relative (the server runs here), with
    `..`, as a string, as a FileData dict, with and without Gradio's metadata, inside an editor value."""
    output = next(iter(StudySet.load(STUDY).samples[0].outputs.values()))
    relative = output.relative_to(ROOT)
    return [str(STUDY / "manifest.json"), {"path": str(output)}, {"path": str(relative), "meta": {"_type": "gradio.FileData"}},
            "examples/study/manifest.json", {"path": f"{ROOT}/examples/../examples/study/manifest.json"},
            {"path": f"examples/study-inputs/../../{relative}"},
            {"background": {"path": str(output)}, "layers": [{"path": str(relative)}], "composite": {"path": str(output)}}]


def _served(url: str, reply: object) -> list[bytes]:
    """Every file a reply points at, fetched the way a browser would."""
    found: list[bytes] = []

    def walk(value: object) -> None:
        if isinstance(value, dict):
            if isinstance(value.get("url"), str):
                response = httpx.get(value["url"] if value["url"].startswith("http") else url + value["url"].lstrip("/"))
                if response.status_code == 200:
                    found.append(response.content)
            elif isinstance(value.get("path"), str):
                response = httpx.get(f"{url}gradio_api/file={value['path']}")
                if response.status_code == 200:
                    found.append(response.content)
            for item in value.values():
                walk(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)

    walk(reply)
    return found


def _pixels(data: bytes) -> np.ndarray | None:
    try:
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    except Exception:
        return None


def test_no_event_serves_or_returns_the_study_folder(tmp_path):
    demo, url = launch(tmp_path, max_side=4096)  # no resizing: a returned study image would keep its pixels
    try:
        study = StudySet.load(STUDY)
        secret_files = [STUDY / "manifest.json"] + [p for s in study.samples for p in (*s.outputs.values(),)]
        secret_bytes = {p.read_bytes() for p in secret_files}
        outputs = [imaging.load_rgb(p) for s in study.samples for p in s.outputs.values()]
        markers = [s.id for s in study.samples]
        calls = 0
        for index, fn in demo.fns.items():
            for payload in _study_payloads():
                kind, reply = queue_call(url, index, [payload] * len(fn.inputs))
                calls += 1
                text = json.dumps(reply)
                assert not any(m in text for m in markers), (fn.api_name, index, payload, text[:300])
                for data in _served(url, reply):
                    assert data not in secret_bytes, (fn.api_name, index, payload)
                    pixels = _pixels(data)
                    if pixels is not None:
                        assert not any(o.shape == pixels.shape and np.abs(o.astype(int) - pixels).mean() < 2 for o in outputs), \
                            (fn.api_name, index, payload)
        assert calls >= 20 * len(_study_payloads())
    finally:
        demo.close()
