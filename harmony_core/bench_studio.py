"""Compare in the studio, timed through its public API: wall time against the methods' own seconds.

    python -m harmony_core bench-studio [--sizes 1024 2048 4096] [--methods reinhard,histogram,poisson,ptl]
        [--app app.py | --url http://127.0.0.1:7860/] [--repeats 2]
    python -m harmony_core bench-studio --overhead [--methods reinhard,ptl,hspace] [--size 512]
    python -m harmony_core bench-studio --encoders [--sizes 1024 2048 4096]

The first form starts the app (`--max-side` the largest size) in a child process, or connects to a
running one, uploads the cat example resized to each size through /compose_upload and times
/compare from the request to its last streamed update (outputs are not downloaded: the time is the
server's). "methods" is the sum of the status table's seconds; the target is wall <= 1.25 x
methods + 0.5 s. The server's peak memory is its resident-set high-water mark (Linux) over each
size's runs (started app only).

The second form (`--overhead`) times each method in this process the way `bench` does (the
method's `run`) and the way the studio does (`serving.execute`: the run inside the peak-memory
measurement), alternating, and prints both medians; hspace runs with tiny random weights.
The third (`--encoders`) times the display-format candidates (studio/display.py) on the example.
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "cat_composite.jpg"
EXAMPLE_MASK = ROOT / "examples" / "cat_mask.png"
DEFAULT_METHODS = "reinhard,histogram,poisson,ptl"


def target_seconds(methods_s: float) -> float:
    """The wall time a Compare may take for methods that took `methods_s` seconds."""
    return 1.25 * methods_s + 0.5


def resized_example(side: int, folder: Path) -> tuple[Path, Path]:
    """The cat composite and its mask with the long side at `side` (bicubic / nearest), as PNGs."""
    composite = np.asarray(Image.open(EXAMPLE).convert("RGB"))
    mask = np.asarray(Image.open(EXAMPLE_MASK).convert("L"))
    h, w = composite.shape[:2]
    size = (round(w * side / max(h, w)), round(h * side / max(h, w)))
    paths = folder / f"cat-{side}.png", folder / f"cat-{side}-mask.png"
    Image.fromarray(cv2.resize(composite, size, interpolation=cv2.INTER_CUBIC)).save(paths[0], compress_level=1)
    Image.fromarray(cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)).save(paths[1], compress_level=1)
    return paths


class Memory:
    """A process's resident-set high-water mark (Linux /proc), reset at `reset`."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def reset(self) -> None:
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        except OSError:
            pass

    def peak_mb(self) -> float | None:
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return None


@dataclass
class Timed:
    size: str
    wall_s: float
    first_s: float
    methods_s: float
    per_method: dict[str, float]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(app: Path, max_side: int, folder: Path) -> tuple[subprocess.Popen, str]:
    """`python APP` on a free local port, its votes in `folder`; (process, url) once it answers."""
    from urllib.request import urlopen

    port = free_port()
    log = open(folder / "app.log", "w")
    process = subprocess.Popen([sys.executable, str(app), "--host", "127.0.0.1", "--port", str(port),
                                "--max-side", str(max_side), "--votes", str(folder / "votes")],
                               cwd=app.parent, stdout=log, stderr=subprocess.STDOUT,
                               env={**os.environ, "GRADIO_TEMP_DIR": str(folder / "gradio")})
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 300
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the app exited ({process.returncode}); see {folder / 'app.log'}")
        try:
            urlopen(url, timeout=2).read(1)
            return process, url
        except OSError:
            time.sleep(0.5)
    process.terminate()
    raise RuntimeError("the app did not answer within 300 s")


def compare_once(client: Any, composite: Path, mask: Path, methods: list[str]) -> Timed:
    """One Compare through the API: compose the pair, then time /compare to its last update."""
    from gradio_client import handle_file

    work = client.predict(handle_file(str(composite)), handle_file(str(mask)), api_name="/compose_upload")
    start = time.perf_counter()
    first = None
    job = client.submit(work[0], work[1], None, methods, 0, "", api_name="/compare")
    for _ in job:
        first = first or time.perf_counter() - start
    outputs = job.outputs()[-1]
    wall = time.perf_counter() - start
    status = outputs[2]
    rows = status["data"] if isinstance(status, dict) else status
    per_method = {row[0]: float(row[2]) for row in rows if row[1] == "done"}
    if set(per_method) != set(methods):
        raise RuntimeError(f"not every method ran: {rows}")
    with Image.open(composite) as image:
        size = f"{image.width}x{image.height}"
    return Timed(size, wall, first or wall, sum(per_method.values()), per_method)


def bench_studio(args: argparse.Namespace) -> str:
    from gradio_client import Client

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    folder = Path(tempfile.mkdtemp(prefix="bench-studio-"))
    process, url = (None, args.url) if args.url else start_app(Path(args.app).resolve(), max(args.sizes), folder)
    memory = Memory(process.pid) if process else None
    rows = []
    try:
        client = Client(url, verbose=False, download_files=False)
        warm = resized_example(min(args.sizes), folder)
        compare_once(client, *warm, methods)  # loads the models; not counted
        for side in args.sizes:
            pair = resized_example(side, folder)
            if memory:
                memory.reset()
            runs = [compare_once(client, *pair, methods) for _ in range(args.repeats)]
            peak = memory.peak_mb() if memory else None
            for run in runs:
                print(f"  {run.size}: wall {run.wall_s:.2f} s, first result {run.first_s:.2f} s, methods "
                      f"{run.methods_s:.2f} s {({k: round(v, 2) for k, v in run.per_method.items()})}", file=sys.stderr)
            rows.append((runs, peak))
    finally:
        if process:
            process.terminate()
            process.wait(30)
    return table(rows)


def table(rows: list[tuple[list[Timed], float | None]]) -> str:
    lines = ["| size | Compare wall s (median; runs) | first result s | methods s | wall / methods | "
             "target s | met | server peak MB |", "|---|---:|---:|---:|---:|---:|---|---:|"]
    for runs, peak in rows:
        wall = statistics.median(r.wall_s for r in runs)
        methods = statistics.median(r.methods_s for r in runs)
        first = statistics.median(r.first_s for r in runs)
        every = ", ".join(f"{r.wall_s:.2f}" for r in runs)
        met = all(r.wall_s <= target_seconds(r.methods_s) for r in runs)
        lines.append(f"| {runs[0].size} | {wall:.2f} ({every}) | {first:.2f} | {methods:.2f} | {wall / methods:.2f}x | "
                     f"{target_seconds(methods):.2f} | {'yes' if met else 'no'} | "
                     f"{'' if peak is None else f'{peak:.0f}'} |")
    return "\n".join(lines)


def overhead(args: argparse.Namespace) -> str:
    """Each method timed as `bench` times it and as the studio runs it, alternating (see the docstring)."""
    from harmony_core.bench import parse_options
    from harmony_core.registry import get_method, no_progress
    from harmony_core.studio.serving import Job, execute
    from harmony_core.types import HarmonizationRequest

    options = parse_options(args.option)
    folder = Path(tempfile.mkdtemp(prefix="bench-studio-"))
    composite_path, mask_path = resized_example(args.size, folder)
    composite = np.asarray(Image.open(composite_path))
    request = HarmonizationRequest(composite, np.asarray(Image.open(mask_path)) > 127)
    lines = ["| method | size | bench (run) median s | studio (execute) median s | studio / bench |",
             "|---|---|---:|---:|---:|"]
    for name in [m.strip() for m in args.methods.split(",") if m.strip()]:
        method = get_method(name)
        if name == "hspace":
            from harmony_core.diffusion.tiny import save_tiny_ddpm

            method.set_weights(str(save_tiny_ddpm(folder / "tiny-ddpm")))
        if options:
            method.configure(**options)  # the shared instance: the studio's path runs it
        method.run(request)  # warm-up: loads the model, fills caches
        plain, studio = [], []
        ways = [(plain, lambda method=method: method.run(request)),
                (studio, lambda name=name: execute(Job.of(name, request), no_progress))]
        for i in range(args.repeats):
            for times, call in ways if i % 2 == 0 else ways[::-1]:  # A B B A ...: drift hits both alike
                start = time.perf_counter()
                call()
                times.append(time.perf_counter() - start)
        a, b = statistics.median(plain), statistics.median(studio)
        print(f"  {name}: run {[round(t, 3) for t in plain]} execute {[round(t, 3) for t in studio]}", file=sys.stderr)
        label = f"{name}{' (tiny random weights)' if name == 'hspace' else ''}{f' {options}' if options else ''}"
        lines.append(f"| {label} | {composite.shape[1]}x{composite.shape[0]} | {a:.3f} | {b:.3f} | {b / a:.2f} |")
    return "\n".join(lines)


def encoders(args: argparse.Namespace) -> str:
    """Display-format candidates on the example at each size: best of `repeats` encodes (ms, MB)."""
    candidates = {"PNG level 1 (shipped)": {"format": "PNG", "compress_level": 1},
                  "PNG level 6 (Pillow's default)": {"format": "PNG", "compress_level": 6},
                  "WebP lossless, method 0": {"format": "WEBP", "lossless": True, "method": 0, "quality": 0}}
    folder = Path(tempfile.mkdtemp(prefix="bench-studio-"))
    lines = ["| format | " + " | ".join(f"{side} px ms (MB)" for side in args.sizes) + " |",
             "|---|" + "---:|" * len(args.sizes)]
    images = {side: Image.open(resized_example(side, folder)[0]).convert("RGB") for side in args.sizes}
    best = {(label, side): (float("inf"), 0) for label in candidates for side in args.sizes}
    for _ in range(args.repeats):  # round-robin, so a busy spell slows every candidate alike
        for (label, side), (fastest, _) in best.items():
            out = io.BytesIO()
            start = time.perf_counter()
            images[side].save(out, **candidates[label])
            best[label, side] = min(fastest, time.perf_counter() - start), out.tell()
    for label in candidates:
        cells = [f"{best[label, side][0] * 1000:.0f} ({best[label, side][1] / 1e6:.1f})" for side in args.sizes]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096], help="long sides of the example")
    p.add_argument("--methods", default=DEFAULT_METHODS, help="comma-separated methods (overhead: reinhard,ptl,hspace)")
    p.add_argument("--repeats", type=int, default=2, help="Compares per size (overhead: runs per method)")
    p.add_argument("--app", default=str(ROOT / "app.py"), help="the app to start (its --max-side: the largest size)")
    p.add_argument("--url", help="time a running app instead (its --max-side must allow the sizes; no memory figure)")
    p.add_argument("--overhead", action="store_true", help="bench's time vs the studio's for each method, in-process")
    p.add_argument("--size", type=int, default=512, help="--overhead: long side of the example")
    p.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="--overhead: a setting of the methods that have it, e.g. n_gen=100 (repeatable)")
    p.add_argument("--encoders", action="store_true", help="time the display-format candidates on the example")


def run(args: argparse.Namespace) -> int:
    print(overhead(args) if args.overhead else encoders(args) if args.encoders else bench_studio(args))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
