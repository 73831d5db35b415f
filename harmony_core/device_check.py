"""`device-check`: every model-backed method timed on one GPU in a single run that fits a 10-minute call.

GPU time is lent rarely and briefly, so the whole measurement is prepared here and runs in one
command: every model-backed method (`registry.weighted_methods`) is built with random weights in
its full-size architecture (`random_weights`; speed and memory do not depend on the values), kept
resident together, each in the dtype it runs in (`method_dtypes`: hspace and ptl in fp32, the
Stable Diffusion methods in fp16), timed on synthetic composites, and the report is rewritten after
every measurement, so a run cut short by `--minutes` (or killed) still leaves everything measured
so far. `--tiny` runs the same code with the tiny test models on the CPU, so the command is
exercised by the tests.
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, get_args, get_type_hints

import psutil
import torch

from harmony_core import atomic
from harmony_core.bench import synthetic_request
from harmony_core.errors import InputError
from harmony_core.profiling import peak_memory_mb
from harmony_core.registry import Method, method_class, weighted_methods

JSON_NAME = "device_check.json"
MARKDOWN_NAME = "device_check.md"
SIZE = 512
EXTRA_ROWS: dict[str, list[tuple[str, int, dict[str, Any]]]] = {
    "ptl": [(f"ptl @{size}", size, {}) for size in (256, 512, 1024, 2048)],
    "ptl-paper": [(f"ptl-paper @{size}", size, {}) for size in (256, 1024)],
    "hspace": [("hspace n_gen=50", SIZE, {"n_gen": 50}), ("hspace n_gen=200", SIZE, {"n_gen": 200})],
}
"""Rows beyond the one at SIZE with the defaults that every model-backed method gets: ptl at the
sizes where its cost is measured (ptl-paper, the same network without the prior: two sizes say
what the head and the prior cost), hspace with fewer steps. (label, input size, settings)."""
SIZED = ("ptl", "ptl-paper")
"""Methods whose EXTRA_ROWS replace the default row (its size is among them)."""
SLOW_ROWS = ("freepih", "hspace")
"""Default rows timed last (minutes each on a GPU), after the ptl training rows."""
TRAIN_BATCH = 16
TARGETS_MS = {"diffharmony": 1000.0, "hspace n_gen=50": 3000.0, "freepih": 30000.0, "ptl @256": 10.0}
"""Latency targets on an H100/H200 in fp16 (issue 19), keyed by check label."""
RESIDENT_TARGET_MB = 12 * 1024
KEY_SETTINGS = {"diffharmony": ("resolution", "steps"), "hspace": ("n_inv", "n_gen"),
                "freepih": ("resolution", "num_inference_steps", "noise_level", "lbfgs_max_iter")}
"""The settings each row reports as run (from the result's own parameters)."""
SEEDS_PER_ROW = 1000
"""Row i times composites i * SEEDS_PER_ROW + 0, 1, ...: no two rows see the same image, so no
cache (hspace's inversions) carries over from one row to another."""


def log(message: str) -> None:
    """Progress on stderr, so a GPU run's log shows how far it got even if the call is cut."""
    print(f"[device-check {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class OutOfTime(Exception):
    """Raised from a progress callback or between steps when `--minutes` has run out."""


@dataclass
class Deadline:
    end: float

    def check(self, *_: object) -> None:
        """Usable as a method's progress callback, so even a long run stops within one step."""
        if time.perf_counter() > self.end:
            raise OutOfTime


@dataclass
class Timing:
    label: str
    method: str
    size: int
    settings: dict[str, Any]
    dtype: str
    status: str = "not run (out of time)"
    median_ms: float | None = None
    min_ms: float | None = None
    runs: int = 0
    peak_mb: float | None = None
    target_ms: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    """The last run's metadata: its stage timings say where the time goes."""
    first_seed: int = 0
    """The seed of the row's first composite (the warm-up); the timed runs take the next ones."""
    used: dict[str, Any] = field(default_factory=dict)
    """The key settings as the method ran them (KEY_SETTINGS, from the result's parameters)."""
    working_px: str = ""
    """The size the method worked at (its working resolution, else the input's)."""
    note: str = ""
    """What changes the row's meaning (--tiny settings, cache hits)."""


@dataclass
class Training:
    head: str
    batch: int
    status: str = "not run (out of time)"
    samples_per_s: float | None = None
    steps: int = 0
    peak_mb: float | None = None


def ptl_heads() -> list[str]:
    """The output heads PTLConfig offers (a Literal-typed `head` field), else its one network."""
    from harmony_core.models.ptl_net import PTLConfig

    head = next((f for f in fields(PTLConfig) if f.name == "head"), None)
    if head is None:
        return ["residual"]
    return list(get_args(get_type_hints(PTLConfig)["head"])) or [head.default]


def ptl_config(tiny: bool, head: str | None = None) -> Any:
    """The paper's width-1.0 network (tiny: the tests' width 0.25), with `head` when PTLConfig has one."""
    from harmony_core.models.ptl_net import PTLConfig

    options: dict[str, Any] = {"width": 0.25 if tiny else 1.0, "ptl_write": "add"}
    if head is not None and any(f.name == "head" for f in fields(PTLConfig)):
        options["head"] = head
        if head == "residual":
            options["prior"] = "none"  # a prior needs the affine head
    return PTLConfig(**options)


def memory_in_use(device: str) -> float:
    """MB the models hold: CUDA's allocated bytes, or the process's resident memory on the CPU."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        return torch.cuda.memory_allocated() / 2**20
    return psutil.Process().memory_info().rss / 2**20


def build_methods(scale: str, device: str, deadline: Deadline) -> tuple[dict[str, Method], dict[str, float]]:
    """Every model-backed method with random weights (`random_weights`), all on `device`, and the
    MB each added when built."""
    methods, resident = {}, {}
    for name in weighted_methods():
        deadline.check()
        before = memory_in_use(device)
        methods[name] = method_class(name).random_weights(scale, device)
        resident[name] = memory_in_use(device) - before
        log(f"{name}: built, {resident[name]:.0f} MB")
    return methods, resident


def method_dtypes(device: str) -> dict[str, torch.dtype]:
    """The dtype each model-backed method runs in on `device`, as its own default says (nothing is
    loaded): the check times every method the way the studio runs it."""
    return {name: method_class(name)(device=device).dtype for name in weighted_methods()}


def planned_rows(dtype: dict[str, str], tiny: bool) -> tuple[list[Timing], list[Timing]]:
    """(the rows timed first, the slow rows timed last): every model-backed method at SIZE with its
    defaults, ptl and ptl-paper at their sizes instead, plus EXTRA_ROWS; under --tiny each row takes
    its method's `quick_settings`."""
    def row(label: str, name: str, size: int, settings: dict[str, Any]) -> Timing:
        return timing_row(label, name, size, settings, dtype[name], tiny, dict(method_class(name).quick_settings))

    names = weighted_methods()
    first = [row(label, name, size, settings) for name in names for label, size, settings in EXTRA_ROWS.get(name, [])]
    first += [row(name, name, SIZE, {}) for name in names if name not in SIZED and name not in SLOW_ROWS]
    return first, [row(name, name, SIZE, {}) for name in SLOW_ROWS if name in names]


def configured(methods: dict[str, Method], row: Timing) -> Method:
    """The resident instance with the row's settings: a copy that shares its weights (no second copy)."""
    method = methods[row.method]
    return method.with_settings(**row.settings) if row.settings else method


def time_method(row: Timing, method: Method, repeats: int, deadline: Deadline) -> None:
    """A warm-up run, then `repeats` timed runs, each on a new composite (seed) so no cache helps:
    synchronize around each, peak memory over them all. Fills `row` as far as time allows, then
    lets OutOfTime end the whole check."""
    from harmony_core.diffusion.components import synchronize

    times: list[float] = []

    def runs() -> None:
        for run in range(repeats + 1):
            request = synthetic_request(row.size, row.first_seed + run)
            synchronize(method.device)
            start = time.perf_counter()
            result = method.run(request, deadline.check)
            synchronize(method.device)
            if run:
                times.append((time.perf_counter() - start) * 1000)
                row.metadata = {k: v for k, v in result.metadata.items() if k not in ("parameters", "step_log")}
                parameters = result.metadata.get("parameters", {})
                row.used = {k: parameters[k] for k in KEY_SETTINGS.get(row.method, ()) if k in parameters}
                row.working_px = working_px(result.metadata, row.size)
                if result.metadata.get("inversion_cache_hits"):
                    row.note = join_notes(row.note, "inversion cache hits: this time leaves out inversion")

    try:
        row.peak_mb = peak_memory_mb(runs, method.device)
        row.status = "ok"
    except OutOfTime:
        row.status = f"out of time after {len(times)} of {repeats} runs"
        raise
    except Exception as exc:  # one failing method (say, out of memory) must not cost the others' rows
        row.status = f"error: {type(exc).__name__}: {exc}"[:300]
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    finally:
        if times:
            row.median_ms, row.min_ms, row.runs = statistics.median(times), min(times), len(times)


def working_px(metadata: dict[str, Any], size: int) -> str:
    """'WxH' the method worked at: its working resolution or size when it reports one, else the input's."""
    value = metadata.get("working_resolution", metadata.get("working_size", size))
    return value if isinstance(value, str) else f"{value}x{value}"


def join_notes(*notes: str) -> str:
    return "; ".join(n for n in notes if n)


def judge(row: Timing, tiny: bool) -> None:
    """A measured row that misses its target says "missed" (tiny models get no verdict)."""
    if row.status == "ok" and not tiny and row.target_ms is not None and row.median_ms is not None:
        if row.median_ms > row.target_ms:
            row.status = "missed"


def timing_row(label: str, method: str, size: int, settings: dict[str, Any], dtype: str, tiny: bool,
               tiny_settings: dict[str, Any] | None = None) -> Timing:
    """A row with its target; under --tiny, `tiny_settings` replace the row's and its note says what
    the row then stands for (tiny models, smaller settings, no verdict)."""
    target = TARGETS_MS.get(label)
    if not tiny:
        return Timing(label, method, size, settings, dtype, target_ms=target)
    changed = {k: v for k, v in (tiny_settings or {}).items() if settings.get(k) != v}
    tiny_run = ", ".join(f"{k}={v}" for k, v in changed.items())
    gpu_run = ", ".join(f"{k}={settings.get(k, 'default')}" for k in changed)
    notes = [f"--tiny: {tiny_run} (the GPU run: {gpu_run})" if changed else "",
             "--tiny: no verdict on the target" if target is not None else ""]
    return Timing(label, method, size, settings | changed, dtype, target_ms=target, note=join_notes(*notes))


def train_ptl(row: Training, tiny: bool, device: str, steps: int, deadline: Deadline) -> None:
    """Adam steps of the ptl recipe (foreground MSE, fp32 as train-ptl runs) on a batch of synthetic
    composites; the data pipeline is left out, so this is the network's ceiling."""
    from harmony_core.diffusion.components import synchronize
    from harmony_core.models.ptl_net import PTLNet, foreground_mse_loss

    config = ptl_config(tiny, row.head)
    model = PTLNet(config).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    request = synthetic_request(config.image_size)
    real = torch.from_numpy(request.ground_truth).permute(2, 0, 1).float().div(255)
    composite = torch.from_numpy(request.composite).permute(2, 0, 1).float().div(255)
    mask = torch.from_numpy(request.mask).float()[None]
    batch = [t.expand(row.batch, -1, -1, -1).contiguous().to(device) for t in (composite, mask, real)]

    def step() -> None:
        deadline.check()
        loss = foreground_mse_loss(model(batch[0], batch[1]).image, batch[2], batch[1])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def timed() -> None:
        step()  # warm-up: kernels chosen, optimizer state allocated
        synchronize(device)
        start = time.perf_counter()
        for _ in range(steps):
            step()
            row.steps += 1
        synchronize(device)
        row.samples_per_s = row.batch * steps / (time.perf_counter() - start)

    try:
        row.peak_mb = peak_memory_mb(timed, device)
        row.status = "ok"
    except OutOfTime:
        row.status = f"out of time after {row.steps} of {steps} steps"
        raise
    except Exception as exc:  # as in time_method: the other rows still run
        row.status = f"error: {type(exc).__name__}: {exc}"[:300]


def environment(device: str) -> dict[str, str]:
    import diffusers
    import transformers

    cuda = device.startswith("cuda")
    return {
        "device": torch.cuda.get_device_name() if cuda else f"{platform.machine()} CPU, {psutil.cpu_count()} cores",
        "torch": torch.__version__, "cuda": str(torch.version.cuda) if cuda else "none",
        "cudnn": str(torch.backends.cudnn.version()) if cuda else "none",
        "diffusers": diffusers.__version__, "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def verdict(value: float | None, target: float | None, tiny: bool) -> str:
    """"<= 1000: met" / "missed"; tiny models are a smoke test, so no verdict there."""
    if target is None:
        return "-"
    if tiny or value is None:
        return f"<= {target:.0f}"
    return f"<= {target:.0f}: {'met' if value <= target else '**missed**'}"


def stages(metadata: dict[str, Any]) -> str:
    """The timing entries of a run's metadata (total, stages, per-step lists), in seconds."""
    parts = []
    for key, value in metadata.items():
        if "seconds" in key or key.endswith("_s"):
            if isinstance(value, dict):
                parts += [f"{k} {v:.3f}" for k, v in value.items()]
            elif isinstance(value, list):
                parts.append(f"{key} {sum(value):.3f} over {len(value)}")
            else:
                parts.append(f"{key} {value:.3f}")
    return ", ".join(parts)


def markdown(report: dict[str, Any]) -> str:
    """The report as docs/benchmarks.md shows it: environment, resident memory, latency and training tables."""
    env, tiny = report["environment"], report["tiny"]
    number = lambda v, f=".1f": "-" if v is None else format(v, f)  # noqa: E731
    kind = "tiny test models on the CPU (a smoke test, not a benchmark)" if tiny else "full-size architectures, random weights"
    lines = [
        f"Device check, {report['date']}: {env['device']}; torch {env['torch']}, CUDA {env['cuda']}, "
        f"cuDNN {env['cudnn']}, diffusers {env['diffusers']}, transformers {env['transformers']}, "
        f"Python {env['python']}; {kind}.",
        "", f"Command: `{report['command']}` (on the GPU machine: `bash scripts/device-check.sh`).", "",
        f"All resident together: **{number(report['resident_mb'], '.0f')} MB** "
        f"(target {verdict(report['resident_mb'], RESIDENT_TARGET_MB, tiny)} MB)",
        "", "| method | resident MB |", "|---|---|",
        *(f"| {name} | {mb:.0f} |" for name, mb in report["resident_by_method"].items()),
        "", "| check | input px | working px | settings (as run) | dtype | median ms | min ms | runs | peak MB | "
        "target ms | status | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["timings"]:
        settings = ", ".join(f"{k}={v}" for k, v in (r["used"] or r["settings"]).items()) or "defaults"
        lines.append(f"| {r['label']} | {r['size']} | {r['working_px'] or '-'} | {settings} | {r['dtype']} | "
                     f"{number(r['median_ms'])} | {number(r['min_ms'])} | {r['runs']} | {number(r['peak_mb'], '.0f')} | "
                     f"{verdict(r['median_ms'], r['target_ms'], tiny)} | {r['status']} | {r['note'] or ''} |")
    lines += ["", "Where the time goes (the last timed run, seconds):", ""]
    lines += [f"- {r['label']}: {stages(r['metadata'])}" for r in report["timings"] if r["metadata"]]
    lines += ["", "| ptl training head | batch | samples/s | steps | peak MB | status |", "|---|---|---|---|---|---|"]
    for r in report["training"]:
        lines.append(f"| {r['head']} | {r['batch']} | {number(r['samples_per_s'])} | {r['steps']} | "
                     f"{number(r['peak_mb'], '.0f')} | {r['status']} |")
    return "\n".join(lines) + "\n"


def run(out: str | Path, tiny: bool = False, minutes: float = 8.5) -> dict[str, Any]:
    """Measure everything, cheapest and most wanted first; the report is rewritten after each step."""
    from harmony_core.diffusion.components import dtype_name

    device = "cpu" if tiny else "cuda"
    if not tiny and not torch.cuda.is_available():
        raise InputError("device-check needs a CUDA GPU (none is visible); --tiny runs it on the CPU with tiny models")
    deadline = Deadline(time.perf_counter() + 60 * minutes)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dtype = {name: dtype_name(dtype) for name, dtype in method_dtypes(device).items()}
    repeats, train_steps, batch = (1, 1, 4) if tiny else (3, 20, TRAIN_BATCH)
    # --tiny cuts the slow settings so the smoke test stays short (each row's note says so); the GPU
    # run keeps every default. Each method in the dtype it runs in.
    timings, slow = planned_rows(dtype, tiny)
    for i, row in enumerate(timings + slow):
        row.first_seed = i * SEEDS_PER_ROW
    training = [Training(head, batch) for head in ptl_heads()]
    report: dict[str, Any] = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "tiny": tiny, "minutes": minutes,
        "command": f"python -m harmony_core device-check --out {out}{' --tiny' if tiny else ''} --minutes {minutes}",
        "environment": environment(device), "resident_mb": None, "resident_by_method": {},
    }

    def save() -> None:
        report["timings"] = [asdict(t) for t in timings + slow]
        report["training"] = [asdict(t) for t in training]
        atomic.write_text(out / JSON_NAME, json.dumps(report, indent=2, default=str) + "\n")
        atomic.write_text(out / MARKDOWN_NAME, markdown(report))

    save()
    try:
        methods, resident = build_methods("tiny" if tiny else "full", device, deadline)
        report["resident_by_method"], report["resident_mb"] = resident, sum(resident.values())
        save()
        for item in [*timings, *training, *slow]:
            if isinstance(item, Training):
                train_ptl(item, tiny, device, train_steps, deadline)
                log(f"ptl training ({item.head}): {item.status}, {item.samples_per_s or 0:.1f} samples/s")
            else:
                try:
                    time_method(item, configured(methods, item), repeats, deadline)
                finally:
                    judge(item, tiny)
                log(f"{item.label}: {item.status}, median {item.median_ms or 0:.1f} ms")
            save()
    except OutOfTime:
        log(f"out of time after {minutes} min; the report keeps what was measured")
        save()
    return report
