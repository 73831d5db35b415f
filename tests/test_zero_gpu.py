"""The studio started the way a ZeroGPU Space starts it (SPACES_ZERO_GPU=true), with a stand-in
`spaces` (tests/fakes/spaces) that logs every GPU call, holds it like a queued slot until the
test releases it, and raises ZeroGPU's quota error on demand; hspace runs on a tiny random DDPM
folder. Everything is checked through the API, as a visitor's client sees it."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from harmony_core.methods.hspace import HSpace
from harmony_core.studio import budget, serving
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
FAKES = ROOT / "tests" / "fakes"
EXAMPLES = ROOT / "examples"
HSPACE_SETTINGS = {"n_inv": 3, "n_gen": 3, "n_inject": 3}
CPU_METHODS = ["composite", "reinhard", "histogram", "poisson", "ptl"]
LAUNCHER = f"""
import sys
fakes = sys.argv.pop(1)
from harmony_core.studio import serving  # first, as app.py does: it imports spaces
import spaces
assert spaces.__file__.startswith(fakes), spaces.__file__  # the stand-in, not the installed package
from harmony_core.registry import get_method
get_method("hspace").configure(**{HSPACE_SETTINGS!r})  # tiny model, few steps: a test, not a benchmark
import app
app.main()
"""
QUOTA = ("You have exceeded your free ZeroGPU quota (16s requested vs. 9s left). Try again in 0:07:12. "
         "Authenticate with a Hugging Face token for more quota")


class Space:
    """The app process and the stand-in's files."""

    def __init__(self, folder: Path) -> None:
        self.log, self.release, self.quota = folder / "calls.jsonl", folder / "release", folder / "quota"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"

    def calls(self, event: str = "call") -> list[dict]:
        if not self.log.exists():
            return []
        return [r for r in map(json.loads, self.log.read_text().splitlines()) if r["event"] == event]

    def wait_for_calls(self, count: int, timeout: float = 120) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(self.calls()) < count:
            assert time.monotonic() < deadline, f"{len(self.calls())} GPU calls, expected {count}"
            time.sleep(0.1)
        return self.calls()


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    from harmony_core.diffusion.tiny import save_tiny_ddpm

    folder = tmp_path_factory.mktemp("zero-gpu")
    space = Space(folder)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(FAKES), str(ROOT)]), "SPACES_ZERO_GPU": "true",
           "HARMONY_HSPACE_WEIGHTS": str(save_tiny_ddpm(folder / "ddpm")), "HARMONY_VOTES_DIR": str(folder / "votes"),
           "FAKE_SPACES_LOG": str(space.log), "FAKE_SPACES_RELEASE": str(space.release),
           "FAKE_SPACES_QUOTA": str(space.quota), "GRADIO_ANALYTICS_ENABLED": "False"}
    out = open(folder / "app.log", "w")
    process = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(FAKES), "--host", "127.0.0.1",
                                "--port", str(space.port), "--max-side", "256"],
                               cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while True:
            assert process.poll() is None, (folder / "app.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the app did not start"
            try:
                Client(space.url, verbose=False)
                break
            except Exception:
                time.sleep(1)
        space.release.touch()
        yield space
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        out.close()


def client(space: Space) -> Client:
    """A new visitor (its own session)."""
    return Client(space.url, verbose=False)


@pytest.fixture(scope="module")
def composed(space):
    """The cup example composed on the Space: (composite path, mask path, (width, height))."""
    composite, mask, _, _ = client(space).predict(
        handle_file(str(EXAMPLES / "cup_rocket_composite.jpg")), handle_file(str(EXAMPLES / "cup_rocket_mask.png")),
        api_name="/compose_upload")
    return composite, mask, budget.image_size(composite, 256)


def expected_duration(size: tuple[int, int]) -> int:
    """What the cost model gives hspace with the Space's settings at this size."""
    hspace = HSpace(**HSPACE_SETTINGS)
    seconds = hspace.cost.seconds(serving.settings_of(hspace), size, "gpu") + serving.CALL_OVERHEAD_S
    return min(serving.GPU_SECONDS_MAX, math.ceil(seconds))


def rows(status) -> dict[str, list[str]]:
    return {row[0]: row for row in status["data"]}


@pytest.mark.slow
def test_cpu_methods_never_take_a_gpu_call_and_the_gpu_call_asks_the_cost_models_duration(space, composed):
    composite, mask, size = composed
    before = len(space.calls())
    _, _, status, _ = client(space).predict(handle_file(composite), handle_file(mask), None, [*CPU_METHODS, "hspace"], 0,
                                            api_name="/compare")
    assert all(row[1] == "done" for row in rows(status).values()), status
    calls = space.calls()[before:]
    assert [c["method"] for c in calls] == ["hspace"] and calls[0]["function"] == "worker_events"
    assert calls[0]["duration"] == expected_duration(size)
    _, _, status, _ = client(space).predict(handle_file(composite), handle_file(mask), None, CPU_METHODS, 0, api_name="/compare")
    assert len(space.calls()) == before + 1 and all(row[1] == "done" for row in rows(status).values())


@pytest.mark.slow
def test_the_estimate_shows_the_gpu_seconds_and_warns_beyond_a_free_visitors_quota(space, composed):
    composite, _, size = composed
    visitor = client(space)
    note = visitor.predict(handle_file(composite), [*CPU_METHODS, "hspace"], api_name="/compare_estimate")
    assert f"GPU time requested: {expected_duration(size)} s" in note and "More than a visitor" not in note
    assert "None of them uses the GPU quota" in visitor.predict(handle_file(composite), CPU_METHODS, api_name="/compare_estimate")
    note = visitor.predict(handle_file(composite), ["hspace", "diffharmony", "freepih"], api_name="/compare_estimate")
    assert f"More than a visitor who is not signed in has in a day ({budget.FREE_GPU_S} s" in note
    # a wrong type is refused at Gradio's layer by the app's one-line policy, before the handler sees it
    wrong_type = "list of method names|takes a list of its choices"
    for names, error in ((["nope"], "Unknown method|takes a list of its choices"), ("hspace", wrong_type), ([1], wrong_type)):
        with pytest.raises(AppError, match=error):
            visitor.predict(handle_file(composite), names, api_name="/compare_estimate")
    with pytest.raises(AppError):  # a path on the server is refused (by Gradio or the upload gate), never read
        visitor.predict("/etc/passwd", ["hspace"], api_name="/compare_estimate")


@pytest.mark.slow
def test_the_default_selection_is_what_finishes_within_the_budget(space):
    (methods,) = [c for c in client(space).config["components"]
                  if c.get("props", {}).get("label", "").startswith("Methods (ticked")]
    ticked, labels = methods["props"]["value"], dict((v, label) for label, v in methods["props"]["choices"])
    assert set(CPU_METHODS) <= set(ticked) and not {"diffharmony", "freepih"} & set(ticked)  # no weights: not runnable
    assert labels["hspace"].startswith("hspace (~") and labels["hspace"].endswith("on the GPU)")
    assert labels["freepih"].endswith("on the GPU)") and labels["reinhard"].endswith("on the CPU)")


@pytest.mark.slow
def test_votes_leaderboard_compose_and_cpu_methods_go_on_while_two_compares_wait_for_the_gpu(space, composed):
    composite, mask, _ = composed
    before = len(space.calls())
    space.release.unlink()
    try:
        waiting = [client(space).submit(handle_file(composite), handle_file(mask), None, ["reinhard", "hspace"], seed,
                                        api_name="/compare") for seed in (1, 2)]
        space.wait_for_calls(before + 2)  # both Compares are inside their GPU calls, held
        third = client(space)  # a third visitor: the queue takes its events, none waits for the GPU
        rater = third.predict("Pairwise (A/B)", "", api_name="/study_next")[0]
        assert "Recorded" in third.predict(rater, api_name="/vote_a")[4]
        headline, table, *_ = third.predict("All votes", "Study set", api_name="/leaderboard")
        assert table["data"]
        _, _, _, message = third.predict(handle_file(str(EXAMPLES / "cat_composite.jpg")),
                                         handle_file(str(EXAMPLES / "cat_mask.png")), api_name="/compose_upload")
        assert "the object covers" in message
        _, _, status, _ = third.predict(handle_file(composite), handle_file(mask), None, ["poisson", "ptl"], 0,
                                        api_name="/compare")
        assert [row[1] for row in status["data"]] == ["done", "done"]
        assert not any(job.done() for job in waiting)  # the two Compares still wait for their GPU slot
    finally:
        space.release.touch()
    for job in waiting:
        _, _, status, _ = job.result(timeout=240)
        assert rows(status)["hspace"][1] == "done"


@pytest.mark.slow
def test_zero_gpus_quota_message_reaches_the_client_verbatim(space, composed):
    composite, mask, _ = composed
    space.quota.write_text(QUOTA)
    try:
        _, _, status, _ = client(space).predict(handle_file(composite), handle_file(mask), None, ["reinhard", "hspace"], 0,
                                                api_name="/compare")
    finally:
        space.quota.unlink()
    found = rows(status)
    assert found["reinhard"][1] == "done"
    assert found["hspace"][1].startswith("failed: ZeroGPU quota exceeded: " + QUOTA)
    assert "Sign in to Hugging Face" in found["hspace"][1] and "fewer GPU methods" in found["hspace"][1]
    assert space.calls("refused")


@pytest.mark.slow
def test_the_queue_has_its_documented_size_on_zero_gpu(monkeypatch, tmp_path):
    """On ZeroGPU Gradio caps a queue without max_size at one waiting event ("Queue is full")."""
    import app

    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    demo = app.queued(app.build_app(max_side=256, votes_dir=tmp_path))
    assert demo._queue.max_size == app.QUEUE_MAX_SIZE > 1
    concurrency = {d.api_name: d.concurrency_limit for d in demo.fns.values() if d.api_name in ("compare", "explain")}
    assert concurrency == {"compare": app.GPU_QUEUE["concurrency_limit"], "explain": app.GPU_QUEUE["concurrency_limit"]}
    assert app.GPU_QUEUE["concurrency_limit"] > 1  # ZeroGPU schedules its own slots


def test_elsewhere_the_estimate_is_time_only_and_the_default_selection_follows_the_budget(monkeypatch):
    from harmony_core.registry import method_names

    size = budget.image_size(str(EXAMPLES / "cat_composite.jpg"), 256)
    assert size == (256, 170) and budget.image_size(None, 300) == (300, 300)
    chosen = budget.default_selection(method_names(), size)
    assert chosen == [n for n in method_names() if serving.estimate_seconds(n, size) <= budget.TIME_BUDGET_S]
    assert set(CPU_METHODS) <= set(chosen) and "hspace" not in chosen  # hours on this CPU
    monkeypatch.setattr(budget, "TIME_BUDGET_S", 0.0)
    assert budget.default_selection(method_names(), size) == []
    note = budget.selection_note(["reinhard", "hspace"], size)
    assert note.startswith("Estimated time for 2 method(s) at 256x170") and "GPU time" not in note
