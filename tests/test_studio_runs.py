"""The diffusion methods (tiny random weights) driven through the studio's API as users and
hostile clients would: cancel-then-submit loops, and runs that must never overlap in a model."""

import threading
import time
from pathlib import Path

import pytest
from gradio_client import Client, handle_file

from harmony_core import registry
from harmony_core.errors import Cancelled
from harmony_core.methods.diffharmony import DiffHarmony
from harmony_core.methods.freepih import FreePIH
from harmony_core.methods.hspace import HSpace
from tests.conftest import free_port

pytestmark = pytest.mark.slow  # the diffusion methods through a launched app

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
DIFFUSION = ("diffharmony", "freepih", "hspace")


class Inside:
    """Counts the runs inside any model at once, and how each run ended (wraps `harmonize`)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = self.most = 0
        self.stopped: dict[str, int] = {}
        self.finished: dict[str, int] = {}
        self.requests: list = []

    def wrap(self, method: registry.Method) -> None:
        original = method.harmonize

        def harmonize(request, progress):
            self.requests.append((method.name, request))
            with self.lock:
                self.now += 1
                self.most = max(self.most, self.now)
            try:
                out = original(request, progress)
                self.finished[method.name] = self.finished.get(method.name, 0) + 1
                return out
            except Cancelled:
                self.stopped[method.name] = self.stopped.get(method.name, 0) + 1
                raise
            finally:
                with self.lock:
                    self.now -= 1

        method.harmonize = harmonize


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    """(user A, user B, the counter, the composite and mask) on a studio whose diffusion methods
    have tiny random weights, each run taking a few dozen steps."""
    from app import build_app

    instances = {
        "hspace": HSpace.random_weights("tiny", device="cpu", n_inv=4, n_gen=60),
        "freepih": FreePIH.random_weights("tiny", device="cpu", resolution=64, num_inference_steps=10,
                                          noise_level=0.2, lbfgs_max_iter=3),
        "diffharmony": DiffHarmony.random_weights("tiny", device="cpu", resolution=64, steps=40),
    }
    saved = {name: registry._INSTANCES.get(name) for name in instances}
    inside = Inside()
    for name, method in instances.items():
        inside.wrap(method)
        registry._INSTANCES[name] = method
    demo = build_app(max_side=128, votes_dir=tmp_path_factory.mktemp("votes"))
    port = free_port()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        a, b = (Client(f"http://127.0.0.1:{port}/", verbose=False) for _ in range(2))
        composite, mask, _, _ = a.predict(handle_file(str(EXAMPLES / "cup_rocket_composite.jpg")),
                                          handle_file(str(EXAMPLES / "cup_rocket_mask.png")), api_name="/compose_upload")
        yield a, b, inside, handle_file(composite), handle_file(mask)
    finally:
        demo.close()
        for name, method in saved.items():
            if method is None:
                registry._INSTANCES.pop(name, None)
            else:
                registry._INSTANCES[name] = method


def wait_until_running(job, name: str, timeout: float = 60) -> None:
    """Until the job's status table shows the method running inside its model (a step done)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for output in job.outputs()[::-1]:
            status = output[2] if isinstance(output, (list, tuple)) and len(output) > 2 else None
            rows = status.get("data", []) if isinstance(status, dict) else []
            if any(row[0] == name and row[1].startswith(f"running: {name}: ") and "starting" not in row[1]
                   for row in rows):
                return
        time.sleep(0.05)
    raise AssertionError(f"the job never started: {job.status()}")


@pytest.mark.parametrize("name", DIFFUSION)
def test_a_cancelled_run_stops_and_never_breaks_the_next_users_run(studio, name):
    """Issue 30, 1: user A submits and cancels, user B submits at once, three times over: every B
    run is done, A's runs stopped inside the method, and no two runs were ever inside a model."""
    a, b, inside, composite, mask = studio
    stopped_before = inside.stopped.get(name, 0)
    for _ in range(3):
        first = a.submit(composite, mask, None, [name], 1, "a cup", api_name="/compare")
        wait_until_running(first, name)
        first.cancel()
        second = b.submit(composite, mask, None, [name], 2, "a cup", api_name="/compare")
        _, _, status, _ = second.result(timeout=300)
        assert [row[:2] for row in status["data"]] == [[name, "done"]], status
        steps = dict(zip(status["headers"], status["data"][0]))["steps"]
        assert steps.isdigit() and int(steps) > 0  # issue 30, 4: a count, not freepih's per-step log
    assert inside.most == 1
    assert inside.stopped.get(name, 0) - stopped_before == 3  # each cancelled run stopped mid-way
    assert inside.now == 0


def test_explain_runs_only_methods_with_maps_on_compares_inputs(studio):
    """Issue 30, 6: Explain ran diffharmony and freepih in full just to say "returns no maps", and
    hspace there ignored the Compose background (and freepih got no prompt)."""
    a, _, inside, _, _ = studio
    composite, mask, _, _ = a.predict(
        handle_file(str(EXAMPLES / "rocket_background.jpg")), handle_file(str(EXAMPLES / "cup_foreground.png")), None,
        0.25, 0.75, 0.9, api_name="/compose_place")
    inside.requests.clear()
    _, _, gallery, _, notes = a.predict(handle_file(composite), handle_file(mask), ["diffharmony", "hspace", "freepih"],
                                        None, None, "inferno", 0.6, None, 5, "a white cup", api_name="/explain")
    assert [name for name, _ in inside.requests] == ["hspace"]
    request = inside.requests[0][1]
    assert request.background is not None and request.seed == 5 and request.prompt == "a white cup"
    assert {item["caption"].split(" · ")[0] for item in gallery} == {"hspace"}
    assert "**diffharmony** has no maps" in notes and "**freepih** has no maps" in notes
