"""Benchmark evaluation: methods x datasets -> per-image CSV and a paper-style Markdown summary.

Each method runs on every sample at the dataset's native resolution; metrics follow the 256-px
protocol of harmony_core.metrics. The per-image CSV is the run's state: rows are appended and
flushed one by one, and a rerun skips the (subset, image, method) rows already there (a torn
last line from a crash is skipped and set aside to per_image.torn, the rule of atomic.py), so an
interrupted run resumes where it stopped.

Data parallel: under a distributed launcher (accelerate launch --multi_gpu --num_processes N,
or torchrun --nproc_per_node N; both work on CPU-only machines) process r of N takes the samples
whose index in the sorted sample list is r modulo N and appends to its own shard CSV; after a
barrier the main process merges the shards, sorts the rows by (subset, image, method) and writes
the same CSV and summary a single process would. Note that `accelerate launch --cpu
--num_processes N` starts one process in accelerate 1.15 (several CPU processes need mpirun).
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from tqdm import tqdm

from harmony_core import atomic
from harmony_core.data.datasets import SampleFiles, load_sample, read_dataset
from harmony_core.errors import InputError
from harmony_core.metrics import BUCKETS, METRIC_NAMES, image_metrics, summarize, summarize_by_bucket
from harmony_core.registry import get_method, resolve_methods
from harmony_core.types import HarmonizationRequest

log = logging.getLogger(__name__)

PER_IMAGE = "per_image.csv"
SUMMARY = "summary.md"
SHARD_DIR = "shards"
COLUMNS = ["subset", "image", "method", "MSE", "fMSE", "PSNR", "fPSNR", "bMSE", "fg_ratio", "bucket",
           "width", "height", "seconds"]
Row = dict[str, str]
Key = tuple[str, str, str]


@dataclass(frozen=True)
class Item:
    subset: str
    files: SampleFiles


def collect(data_dirs: Sequence[str | Path], split: str = "test") -> list[Item]:
    """Samples with a ground truth from every dataset, sorted by (subset, name); subset = folder name."""
    items: list[Item] = []
    subsets: set[str] = set()
    for data_dir in data_dirs:
        path = Path(data_dir)
        subset = path.resolve().name
        if subset in subsets:
            raise InputError(f"Two datasets are named '{subset}'; subsets are told apart by folder name.")
        subsets.add(subset)
        samples = read_dataset(path, split)
        usable = [s for s in samples if s.real is not None]
        if len(usable) < len(samples):
            log.warning("%s: %d composites have no real image and are skipped", subset, len(samples) - len(usable))
        if not usable:
            raise InputError(f"{path}: no composite has a real image, so no metric can be computed.")
        items += [Item(subset, s) for s in usable]
    return sorted(items, key=lambda item: (item.subset, item.files.name))


# --- processes --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Shard:
    rank: int = 0
    world: int = 1
    state: Any = None
    """accelerate's PartialState when launched distributed."""

    @property
    def main(self) -> bool:
        return self.rank == 0

    def wait(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()


BARRIER_TIMEOUT = timedelta(hours=24)
"""Shards may finish far apart on long runs; the default 30 min barrier timeout would abort them."""


def current_shard() -> Shard:
    """This process's rank and the world size (accelerate imported only under a launcher)."""
    sizes = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
    if max(int(os.environ.get(name, "1")) for name in sizes) <= 1:
        if os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true" and "MASTER_ADDR" in os.environ:
            log.warning(
                "accelerate launch --cpu started a single process (accelerate 1.15 needs mpirun for "
                "several CPU processes); use `accelerate launch --multi_gpu --num_processes N` (it "
                "works without GPUs) or `torchrun --nproc_per_node N` to shard the evaluation."
            )
        return Shard()
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available(), timeout=BARRIER_TIMEOUT)
    return Shard(state.process_index, state.num_processes, state)


# --- the CSV state ----------------------------------------------------------------------------

def key_of(row: Row) -> Key:
    return row["subset"], row["image"], row["method"]


def read_rows(path: Path) -> list[Row]:
    """Complete rows of a per-image CSV; a torn last line is skipped (atomic.complete_lines)."""
    if not path.is_file():
        return []
    lines = atomic.complete_lines(path.read_bytes(), path).decode().splitlines(keepends=True)
    reader = csv.DictReader(lines)
    if lines and reader.fieldnames != COLUMNS:
        raise InputError(f"{path} has other columns than this version writes; choose a new --out folder.")
    return [row for row in reader if None not in row.values() and None not in row]


def _open_for_append(path: Path) -> TextIO:
    """Append handle after the last complete line (a torn one is set aside to PATH.torn, the rule
    of atomic.repair_torn_tail), with the header on a new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.repair_torn_tail(path)
    handle = open(path, "a", newline="")
    if handle.tell() == 0:
        csv.writer(handle).writerow(COLUMNS)
    return handle


def state_files(out: Path) -> list[Path]:
    return [out / PER_IMAGE, *sorted((out / SHARD_DIR).glob("*.csv"))]


def merge(out: Path) -> list[Row]:
    """All rows of the per-image CSV and the shards, deduplicated and sorted, written as one CSV."""
    rows: dict[Key, Row] = {}
    for path in state_files(out):
        for row in read_rows(path):
            rows.setdefault(key_of(row), row)
    merged = [rows[key] for key in sorted(rows)]
    _write_csv(merged, out / PER_IMAGE)
    for path in state_files(out)[1:]:
        path.unlink()
    if (out / SHARD_DIR).is_dir() and not any((out / SHARD_DIR).iterdir()):
        (out / SHARD_DIR).rmdir()
    return merged


def _write_csv(rows: Iterable[Row], path: Path) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    atomic.write_text(path, text.getvalue())


# --- running ----------------------------------------------------------------------------------

def run_items(items: Sequence[Item], methods: Sequence[str], done: set[Key], path: Path, shard: Shard) -> None:
    """Run every method on every item not yet in `done`, appending one flushed row per result."""
    todo = [(item, [m for m in methods if (item.subset, item.files.name, m) not in done]) for item in items]
    total = len(items) * len(methods)
    remaining = sum(len(names) for _, names in todo)
    desc = "evaluate" if shard.world == 1 else f"evaluate {shard.rank + 1}/{shard.world}"
    with _open_for_append(path) as handle, tqdm(total=total, initial=total - remaining, desc=desc,
                                                 unit="run", position=shard.rank) as bar:
        writer = csv.DictWriter(handle, COLUMNS)
        for item, names in todo:
            if not names:
                continue
            try:
                sample = load_sample(item.files)
                request = HarmonizationRequest(composite=sample.composite, mask=sample.mask, ground_truth=sample.real)
            except InputError as exc:
                log.warning("%s/%s skipped: %s", item.subset, item.files.name, exc)
                bar.update(len(names))
                continue
            for name in names:
                bar.set_postfix_str(name)
                result = get_method(name).run(request)
                metrics = image_metrics(result.image, request.ground_truth, request.mask, request.composite)
                height, width = request.composite.shape[:2]
                writer.writerow({
                    "subset": item.subset, "image": item.files.name, "method": name,
                    **{k: str(v) for k, v in metrics.as_dict().items()},
                    "width": width, "height": height, "seconds": result.metadata["seconds"],
                })
                handle.flush()
                bar.update(1)


def evaluate(
    data_dirs: Sequence[str | Path], methods: Sequence[str], out: str | Path, split: str = "test"
) -> Path | None:
    """Evaluate this process's shard and, on the main process, merge and summarize.

    Returns the summary's path on the main process, None on the others.
    """
    items = collect(data_dirs, split)
    methods = resolve_methods(list(methods), require_available=True)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shard = current_shard()
    done = {key_of(row) for path in state_files(out) for row in read_rows(path)}
    own = out / PER_IMAGE if shard.world == 1 else out / SHARD_DIR / f"rank{shard.rank}.csv"
    run_items(items[shard.rank :: shard.world], methods, done, own, shard)
    shard.wait()
    if not shard.main:
        return None
    wanted = {(item.subset, item.files.name) for item in items}
    rows = [r for r in merge(out) if (r["subset"], r["image"]) in wanted and r["method"] in methods]
    if not rows:
        raise InputError(f"No sample of {', '.join(map(str, data_dirs))} could be read (the warnings above say why); "
                         "no summary written.")
    atomic.write_text(out / SUMMARY, summary_markdown(rows, methods))
    return out / SUMMARY


# --- the summary ------------------------------------------------------------------------------

def _number(value: float) -> str:
    return "–" if not np.isfinite(value) else f"{value:.2f}"


def _table(header: Sequence[str], body: Iterable[Sequence[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|",
        *("| " + " | ".join(cells) + " |" for cells in body),
    ]


def _grouped(
    rows: Sequence[Row], methods: Sequence[str], groups: Sequence[str],
    stats: Callable[[list[Row]], Mapping[str, Mapping[str, float]]],
) -> list[str]:
    """A method-per-row table with MSE, fMSE, PSNR, fPSNR for each group (subset or bucket)."""
    header = ["Method", *(f"{g} {m}" for g in groups for m in METRIC_NAMES)]
    body = []
    for method in methods:
        per_group = stats([r for r in rows if r["method"] == method])
        body.append([method, *(_number(per_group[g][m]) for g in groups for m in METRIC_NAMES)])
    return _table(header, body)


def summary_markdown(rows: Sequence[Row], methods: Sequence[str]) -> str:
    """Paper-style tables: overall, per subset, per foreground-ratio bucket; one row per method."""
    buckets = {(r["subset"], r["image"]): r["bucket"] for r in rows}
    subsets = Counter(subset for subset, _ in buckets)
    per_bucket = Counter(buckets.values())
    lines = [
        "## Harmonization metrics",
        "",
        f"{len(buckets)} images ({', '.join(f'{s}: {n}' for s, n in sorted(subsets.items()))}). "
        "Metrics per image at 256x256 (bilinear, mask nearest), averaged over images; PSNR with "
        "peak 255; ↓ lower / ↑ higher is better. max bMSE: largest background change vs the "
        "composite (0 = pasted back). s/img: method time per image at native resolution.",
        "",
        "### All subsets",
        "",
    ]
    body = []
    for method in methods:
        own = [r for r in rows if r["method"] == method]
        stats = summarize(own)
        bmse = max((float(r["bMSE"]) for r in own), default=float("nan"))
        seconds = f"{np.mean([float(r['seconds']) for r in own]):.3f}" if own else "–"
        body.append([method, *(_number(stats[m]) for m in METRIC_NAMES), _number(bmse), seconds, str(len(own))])
    lines += _table(["Method", "MSE ↓", "fMSE ↓", "PSNR ↑", "fPSNR ↑", "max bMSE", "s/img", "n"], body)
    lines += ["", "### By subset", ""]
    lines += _grouped(rows, methods, sorted(subsets),
                      lambda own: {s: summarize(r for r in own if r["subset"] == s) for s in subsets})
    counts = ", ".join(f"{name}: {per_bucket[name]}" for name, _, _ in BUCKETS)
    lines += ["", f"### By foreground ratio (images: {counts})", ""]
    lines += _grouped(rows, methods, [name for name, _, _ in BUCKETS], summarize_by_bucket)
    return "\n".join(lines) + "\n"
