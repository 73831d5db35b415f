"""One path for running a method (serve), and the ZeroGPU call as plain picklable data."""

import importlib
import math
import pickle
import time

import numpy as np
import pytest

from harmony_core import registry
from harmony_core.registry import Method, method_names
from harmony_core.studio import serving
from harmony_core.studio.serving import Job
from harmony_core.types import Availability, HarmonizationRequest, HarmonizationResult


class Mapper(Method):
    """Reports progress and returns a map, like ptl."""

    name, family, title, summary = "test-serving-mapper", "network", "x", "x"

    def harmonize(self, request, progress):
        progress(0.5, "halfway")
        return HarmonizationResult(request.composite.copy(), {"map": (~request.mask).astype(np.float32)},
                                   {"prompt": request.prompt, "style": request.background is not None})


class Exploding(Method):
    name, family, title, summary = "test-serving-oom", "network", "x", "x"

    def harmonize(self, request, progress):
        import torch

        raise torch.OutOfMemoryError("CUDA out of memory")


class Missing(Method):
    name, family, title, summary = "test-serving-missing", "network", "x", "x"

    def available(self):
        return Availability(False, "weights missing. Put them in weights/x; or set X")

    def harmonize(self, request, progress):
        raise AssertionError("must not run")


@pytest.fixture
def methods(monkeypatch):
    for cls in (Mapper, Exploding, Missing):
        monkeypatch.setitem(registry._FACTORIES, cls.name, cls)
        monkeypatch.delitem(registry._INSTANCES, cls.name, raising=False)


@pytest.fixture
def request_(scene):
    real, composite, mask = scene
    return HarmonizationRequest(composite, mask, background=real, prompt="a red box", seed=3, point=(50, 40))


def test_the_gpu_calls_inputs_and_outputs_pickle(methods, request_):
    job = pickle.loads(pickle.dumps(Job.of(Mapper.name, request_)))
    assert job.settings == {"seed": 3, "prompt": "a red box", "point": (50, 40)}
    events = [pickle.loads(pickle.dumps(e)) for e in serving.job_events(job)]
    assert events[0][:2] == ("progress", 0.0) and ("progress", 0.5, "halfway") in events
    kind, image, maps, metadata = events[-1]
    assert kind == "done" and isinstance(image, np.ndarray) and isinstance(maps["map"], np.ndarray)
    assert metadata["prompt"] == "a red box" and metadata["style"] and metadata["peak_memory"].endswith(" MB")


def pickled_worker(job):
    """spaces.GPU as far as data goes: the job and every event cross a pickle boundary."""
    for event in serving.worker_events(pickle.loads(pickle.dumps(job))):
        yield pickle.loads(pickle.dumps(event))


def test_serve_through_a_simulated_zero_gpu_boundary(methods, request_, monkeypatch):
    """run() as on ZeroGPU: the job and every event cross a pickle boundary; progress still arrives."""
    monkeypatch.setattr(serving, "ON_GPU", pickled_worker)
    seen = []
    result, row = serving.serve(Mapper.name, request_, lambda f, m: seen.append((f, m)))
    assert row.state == "done" and row.cells()[:2] == [Mapper.name, "done"]
    assert np.array_equal(result.image, request_.composite) and (0.5, "halfway") in seen
    with pytest.raises(RuntimeError):  # an exception in the worker reaches the caller
        list(serving.job_events(Job(Exploding.name, request_.composite, request_.mask)))


def test_on_zero_gpu_only_gpu_methods_take_a_call_and_their_failures_keep_their_words(methods, request_, monkeypatch):
    calls = []
    monkeypatch.setattr(serving, "ON_GPU", lambda job: calls.append(job.method) or pickled_worker(job))
    assert serving.serve("reinhard", request_, lambda f, m: None)[1].state == "done" and calls == []
    result, row = serving.serve(Exploding.name, request_, lambda f, m: None)  # out of memory inside the worker
    assert calls == [Exploding.name] and result is None and row.reason == serving.OUT_OF_MEMORY


def test_zero_gpus_own_errors_reach_the_user_verbatim_with_what_to_do(methods, request_, monkeypatch):
    import gradio as gr

    quota = "You have exceeded your free ZeroGPU quota (84s requested vs. 40s left). Try again in 0:12:00."
    errors = [gr.Error(quota, title="ZeroGPU quota exceeded"), gr.Error("OutOfMemoryError", title="ZeroGPU worker error"),
              gr.Error("GPU task aborted", title="ZeroGPU worker error")]

    def refusing(job):
        raise errors.pop(0)
        yield

    monkeypatch.setattr(serving, "ON_GPU", refusing)
    _, row = serving.serve(Mapper.name, request_, lambda f, m: None)
    assert row.state == "failed" and quota in row.reason and "Sign in" in row.reason and "fewer GPU methods" in row.reason
    assert serving.serve(Mapper.name, request_, lambda f, m: None)[1].reason == serving.OUT_OF_MEMORY
    _, row = serving.serve(Mapper.name, request_, lambda f, m: None)
    assert row.reason.startswith("ZeroGPU worker error: GPU task aborted") and "try again" in row.reason.lower()


def test_elsewhere_gpu_methods_take_turns_and_cpu_methods_do_not_wait(methods, request_, monkeypatch):
    """Outside ZeroGPU one GPU method runs at a time (GPU_SLOT); a CPU method runs meanwhile."""
    import threading

    inside, most, release = [], [], threading.Event()

    class Holding(Mapper):
        def harmonize(self, request, progress):
            inside.append(1)
            most.append(len(inside))
            release.wait(30)
            inside.pop()
            return request.composite.copy()

    monkeypatch.setitem(registry._FACTORIES, Mapper.name, Holding)
    monkeypatch.delitem(registry._INSTANCES, Mapper.name, raising=False)
    waits = []
    runs = [threading.Thread(target=serving.serve, args=(Mapper.name, request_, lambda f, m: waits.append(m)))
            for _ in range(2)]
    for thread in runs:
        thread.start()
    deadline = time.monotonic() + 30
    while not (inside and f"{Mapper.name}: waiting for the GPU (another run is using it)" in waits):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert serving.serve("reinhard", request_, lambda f, m: None)[1].state == "done"  # while the slot is held
    release.set()
    for thread in runs:
        thread.join(30)
    assert most == [1, 1]


def test_serve_reports_instead_of_raising(methods, request_):
    result, row = serving.serve(Missing.name, request_, lambda f, m: None)
    assert result is None and row.state == "not available" and row.cells()[1].startswith("not available: weights missing")
    result, row = serving.serve(Exploding.name, request_, lambda f, m: None)
    assert result is None and row.reason == serving.OUT_OF_MEMORY  # recognized by type


def test_out_of_memory_is_recognized_by_type_not_name():
    import torch

    class OutOfMemoryError(Exception):  # same name, other type
        pass

    assert serving.is_out_of_memory(torch.OutOfMemoryError("x")) and serving.is_out_of_memory(MemoryError())
    assert not serving.is_out_of_memory(OutOfMemoryError())


def test_gpu_duration_covers_every_method(scene):
    _, composite, mask = scene
    small, large = Job("x", composite, mask), Job("x", np.zeros((1024, 1024, 3), np.uint8), np.eye(1024, dtype=bool))
    for name in method_names():
        seconds = [serving.gpu_seconds(Job(name, j.composite, j.mask)) for j in (small, large)]
        assert all(isinstance(s, int) and 0 < s <= serving.GPU_SECONDS_MAX for s in seconds), (name, seconds)
        assert seconds[0] <= seconds[1]
    assert serving.gpu_seconds(Job("poisson", large.composite, large.mask)) > serving.gpu_seconds(Job("poisson", composite, mask))


def test_gpu_duration_follows_the_settings_and_an_unknown_cost_is_conservative(methods, scene):
    """The duration comes from the method's cost and its settings; a method that declares no
    cost gets the slow-GPU default (no KeyError, no short call)."""
    from harmony_core.cost import DEFAULT_COST

    _, composite, mask = scene
    hspace = registry.get_method("hspace")
    size = (composite.shape[1], composite.shape[0])
    expected = math.ceil(hspace.cost.seconds(serving.settings_of(hspace), size, "gpu") + serving.CALL_OVERHEAD_S)
    assert serving.gpu_seconds(Job("hspace", composite, mask)) == min(expected, serving.GPU_SECONDS_MAX)
    few = hspace.with_settings(n_gen=50)
    assert hspace.cost.seconds(serving.settings_of(few), size, "gpu") < \
        hspace.cost.seconds(serving.settings_of(hspace), size, "gpu")
    assert Mapper.cost is DEFAULT_COST and DEFAULT_COST.gpu
    assert serving.gpu_seconds(Job(Mapper.name, composite, mask)) == \
        math.ceil(DEFAULT_COST.on_gpu.fixed + serving.CALL_OVERHEAD_S)


def test_only_the_gpu_methods_need_a_gpu():
    needs = {name for name in method_names() if registry.get_method(name).cost.gpu}
    assert needs == {"hspace", "diffharmony", "freepih"}


def test_availability_is_a_typed_row_with_a_one_line_reason(methods):
    rows = {s.method: s for s in serving.method_statuses()}
    assert rows["reinhard"].runnable is True and rows["reinhard"].reason == ""
    assert rows[Missing.name].runnable is False and rows[Missing.name].short_reason == "weights missing"


def test_spaces_is_installed_and_a_no_op_outside_a_space(monkeypatch):
    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    spaces = importlib.import_module("spaces")
    assert spaces.GPU(duration=serving.gpu_seconds)(serving.worker_events) is serving.worker_events
    assert not serving.on_zero_gpu() and serving.ON_GPU is None and serving.preload() == []


@pytest.mark.slow
def test_the_app_starts_with_spaces_installed(tmp_path):
    import spaces  # noqa: F401  (installed, as on a Space)

    from app import build_app

    demo = build_app(max_side=256, votes_dir=tmp_path)
    assert {"compare", "export", "vote_both_good", "vote_both_bad", "study_view"} <= {
        d.api_name for d in demo.fns.values() if d.api_name}


def test_on_zero_gpu_the_available_models_load_at_start_up(monkeypatch):
    """preload() as on ZeroGPU: every available model-backed method loads now (ptl's and ptl-paper's
    shipped weights here; the others have no weights on this machine and stay unloaded)."""
    monkeypatch.setattr(serving, "on_zero_gpu", lambda: True)
    loaded = serving.preload()
    assert {"ptl", "ptl-paper"} <= set(loaded)
    assert all(registry.get_method(n).loaded() is not None for n in ("ptl", "ptl-paper"))
    assert set(loaded) <= set(registry.weighted_methods())
    assert all(registry.get_method(n).available() for n in loaded)


def test_serving_is_imported_before_torch():
    """On ZeroGPU `spaces` must come before anything that may initialize CUDA: app.py imports
    serving first, and serving itself never imports torch."""
    import subprocess
    import sys

    code = "import sys; from harmony_core.studio import serving; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=serving.__file__.rsplit("/harmony_core/", 1)[0])
    first = next(line for line in open(serving.__file__.replace("harmony_core/studio/serving.py", "app.py"))
                 if line.startswith(("import ", "from ")) and "__future__" not in line)
    assert first.startswith("from harmony_core.studio import serving")


def test_app_is_wiring_no_function_over_80_lines():
    import ast
    from pathlib import Path

    tree = ast.parse((Path(serving.__file__).parents[2] / "app.py").read_text())
    long = {f.name: f.end_lineno - f.lineno + 1 for f in ast.walk(tree)
            if isinstance(f, ast.FunctionDef) and f.end_lineno - f.lineno + 1 > 80}
    assert not long, long


def test_progress_is_per_method_with_an_eta_from_its_pace(monkeypatch):
    """Issue 30, 5: a per-method fraction, which method of how many, and the time left."""
    now = [100.0]
    monkeypatch.setattr(serving.time, "monotonic", lambda: now[0])
    pace = serving.MethodProgress(1, 3)
    assert pace.describe(0.0, "hspace: starting") == "hspace: starting · method 2 of 3"
    now[0] += 29
    assert pace.describe(0.25, "hspace: generating 250/1000") == (
        "hspace: generating 250/1000 · method 2 of 3 · about 87 s left")
    now[0] += 271
    assert pace.describe(0.5, "x").endswith("about 5 min left")
    assert serving.eta_text(3 * 3600 + 600) == "about 3 h 10 min left"


class Slow(Method):
    """Reports progress every 10 ms for up to 10 s, and records how it ended."""

    name, family, title, summary = "test-serving-slow", "network", "x", "x"
    ended: list[str] = []

    def harmonize(self, request, progress):
        import time

        from harmony_core.errors import Cancelled

        try:
            for step in range(1000):
                progress(step / 1000, f"step {step}")
                time.sleep(0.01)
        except Cancelled:
            Slow.ended.append("stopped")
            raise
        Slow.ended.append("finished")
        return request.composite.copy()


def _wait_for(condition, seconds: float = 10.0) -> None:
    import time

    end = time.monotonic() + seconds
    while not condition() and time.monotonic() < end:
        time.sleep(0.01)
    assert condition()


@pytest.mark.parametrize("zero_gpu", [False, True])
def test_closing_the_stream_stops_the_method_within_a_step(methods, request_, monkeypatch, zero_gpu):
    """Issue 30, 1: a cancelled run kept computing. Closing serve_stream (what Gradio does to a
    cancelled or abandoned handler) stops the method at its next step; on ZeroGPU the GPU call's
    generator is closed too (which ends the call)."""
    monkeypatch.setitem(registry._FACTORIES, Slow.name, Slow)
    monkeypatch.setattr(Slow, "ended", [])
    gpu_closed = []
    if zero_gpu:
        def worker(job):
            try:
                yield from serving.job_events(pickle.loads(pickle.dumps(job)))
            finally:
                gpu_closed.append(True)

        monkeypatch.setattr(serving, "ON_GPU", worker)
    stream = serving.serve_stream(Slow.name, request_)
    assert next(event for event in stream if event[0] == "progress" and event[2] == "step 5")
    stream.close()
    _wait_for(lambda: Slow.ended == ["stopped"])
    assert gpu_closed == ([True] if zero_gpu else [])


def test_a_finished_stream_ends_with_the_result_and_its_row(methods, request_):
    events = list(serving.serve_stream(Mapper.name, request_))
    assert ("progress", 0.5, "halfway") in events
    kind, result, row = events[-1]
    assert kind == "done" and row.state == "done" and np.array_equal(result.image, request_.composite)
