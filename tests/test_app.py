"""The studio driven through gradio_client against an in-process launch (classical methods)."""

import socket
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def client():
    from app import build_app

    demo = build_app(max_side=400)
    port = free_port()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield Client(f"http://127.0.0.1:{port}/", verbose=False)
    finally:
        demo.close()


def load(path) -> np.ndarray:
    return np.asarray(Image.open(path))


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
