"""Command line: `python -m harmony_core {methods,harmonize,bench,bench-studio,fetch-weights,make-dataset,evaluate,
prepare-study,...}`.

Errors the user can fix are printed as one line on stderr with exit status 2; nothing is left
half-written.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

import numpy as np
from tqdm import tqdm

from harmony_core import __version__, atomic, export, imaging
from harmony_core.errors import HarmonyError, InputError
from harmony_core.metrics import image_metrics
from harmony_core.registry import Progress, availability_table, get_method, resolve_methods, weighted_methods
from harmony_core.types import HarmonizationRequest, parse_seed


def _table(rows: list[dict[str, str]], columns: Sequence[str]) -> str:
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns)]
    lines += ["  ".join(str(r[c]).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)


def cmd_methods(args: argparse.Namespace) -> int:
    rows = [{**row, "available": "yes" if row["available"] else "no"} for row in availability_table()]
    print(_table(rows, ("method", "family", "available", "reason")))
    return 0


def _selected_methods(args: argparse.Namespace) -> list[str]:
    if args.all:
        return [row["method"] for row in availability_table() if row["available"]]
    if not args.method:
        raise InputError("Choose methods with --method NAME (repeatable, or comma-separated) or --all.")
    return resolve_methods([n.strip() for item in args.method for n in item.split(",") if n.strip()])


def apply_weights(args: argparse.Namespace) -> None:
    """--weights METHOD=SOURCE: point a method's shared instance at a weights folder or Hub id."""
    for item in getattr(args, "weights", None) or []:
        name, sep, source = item.partition("=")
        if not sep or not name.strip() or not source.strip():
            raise InputError(f"--weights expects METHOD=SOURCE (a folder or Hub id), got '{item}'")
        name = resolve_methods([name.strip()])[0]
        if name not in weighted_methods():
            raise InputError(f"{name} takes no weights (--weights {item}); these do: {', '.join(weighted_methods())}")
        get_method(name).set_weights(source.strip())


def build_request(args: argparse.Namespace) -> HarmonizationRequest:
    """A request from --composite/--mask, or from --background/--foreground placed at x/y/scale."""
    background = None
    if args.composite:
        if args.background and args.foreground:
            raise InputError("Give either --composite and --mask, or --background and --foreground, not both.")
        if not args.mask:
            raise InputError("--composite needs --mask (white = the pasted object).")
        composite = imaging.load_rgb(args.composite, f"composite '{args.composite}'")
        mask = imaging.load_mask(args.mask, f"mask '{args.mask}'")
    elif args.background and args.foreground:
        background = imaging.load_rgb(args.background, f"background '{args.background}'")
        foreground = imaging.load_rgba(args.foreground, f"foreground '{args.foreground}'")
        fg_mask = imaging.load_mask(args.mask, f"mask '{args.mask}'") if args.mask else None
        composite, mask = imaging.place_foreground(background, foreground, args.x, args.y, args.scale, fg_mask)
    else:
        raise InputError("Give --composite and --mask, or --background and --foreground (RGBA, or with --mask).")
    ground_truth = imaging.load_rgb(args.ground_truth, f"ground truth '{args.ground_truth}'") if args.ground_truth else None
    return HarmonizationRequest(
        composite=composite, mask=mask, background=background, prompt=args.prompt,
        ground_truth=ground_truth, seed=parse_seed(args.seed),
    )


def out_folder(out: str | os.PathLike) -> Path:
    """--out as an existing, writable folder (created when missing), or one InputError line."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise InputError(f"--out {out} is a file, not a folder: choose a folder.")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise InputError(f"cannot write into --out {out}: {exc.strerror or exc}") from None
    return path


RUN_REPORT = "results.json"
FIGURE = "figure.png"


def harmonize_folder(out: str | os.PathLike, names: Sequence[str], inputs: Sequence[str | None], overwrite: bool) -> Path:
    """The --out folder of a harmonize run, made safe to write into.

    A run writes composite.png, mask.png, METHOD.png, METHOD_MAP.png and results.json: a folder
    holding an input is refused even with --overwrite (an input could be lost). A folder holding
    another run is refused unless --overwrite, which first removes that run's files, so no
    result of the old run is left beside the new ones."""
    path = Path(out)
    planned = {"composite.png", "mask.png", RUN_REPORT, FIGURE, *(f"{n}.png" for n in names)}
    for source in filter(None, inputs):
        source_path = Path(source).resolve()
        if path.is_dir() and source_path.parent == path.resolve():
            raise InputError(f"--out {out} holds the input {source_path.name}: choose another --out folder "
                             "(never one holding the inputs).")
    previous = path / RUN_REPORT
    clashes = sorted(n for n in planned if (path / n).exists())
    if (previous.exists() or clashes) and not overwrite:
        raise InputError(f"--out {out} holds another run ({', '.join(clashes) or RUN_REPORT}): "
                         "choose an empty folder, or add --overwrite to replace that run.")
    path = out_folder(out)
    if previous.exists():
        try:
            old = json.loads(previous.read_text()).get("results", {})
        except (OSError, ValueError, AttributeError):
            old = {}
        stale = {"composite.png", "mask.png", RUN_REPORT, FIGURE}
        for entry in old.values() if isinstance(old, dict) else []:
            if isinstance(entry, dict):
                stale |= {str(entry.get("image", ""))} | {str(v) for v in (entry.get("maps") or {}).values()}
        for name in stale - {""}:
            if Path(name).name == name:  # only files of this folder, as the report names them
                (path / name).unlink(missing_ok=True)
    return path


def map_file_names(method: str, maps: dict[str, object]) -> dict[str, str]:
    """File name of each map: METHOD_MAP.png with the map's name as a slug (letters, digits and
    dashes, e.g. "ltl attention" -> ptl_ltl-attention.png); the result keeps the map's own name."""
    names: dict[str, str] = {}
    for map_name in maps:
        slug = re.sub(r"[^A-Za-z0-9]+", "-", map_name).strip("-") or "map"
        candidate, n = f"{method}_{slug}.png", 2
        while candidate in names.values():
            candidate, n = f"{method}_{slug}-{n}.png", n + 1
        names[map_name] = candidate
    return names


PLAIN_STEP = 0.1
"""Without a terminal, a progress line at every tenth of a run (and at its start and end)."""


@contextmanager
def method_progress(name: str, stream: TextIO | None = None) -> Iterator[Progress]:
    """A method's progress callback: a bar (percent done and the current step, no rate) when
    `stream` (stderr) is a terminal, else plain "NAME: 40% step 20/50" lines, so a log or a pipe
    reads well."""
    stream = stream or sys.stderr
    if stream.isatty():
        with tqdm(total=100, desc=name, leave=False, file=stream,
                  bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}") as bar:
            def on_bar(fraction: float, message: str) -> None:
                bar.n = round(100 * min(max(fraction, 0.0), 1.0))
                bar.set_postfix_str(message, refresh=True)

            yield on_bar
        return
    last = -1.0

    def on_line(fraction: float, message: str) -> None:
        nonlocal last
        if fraction in (0.0, 1.0) or fraction >= last + PLAIN_STEP:
            last = fraction
            print(f"{name}: {round(100 * fraction):3d}% {message.removeprefix(name + ': ')}", file=stream, flush=True)

    yield on_line


def cmd_harmonize(args: argparse.Namespace) -> int:
    from harmony_core.bench import parse_options, split_options, with_options

    apply_weights(args)
    names = _selected_methods(args)
    per_method = split_options(names, parse_options(args.option))
    methods = {name: with_options(get_method(name), per_method[name]) for name in names}
    request = build_request(args)
    out = harmonize_folder(args.out, names, [args.composite, args.mask, args.background, args.foreground,
                                             args.ground_truth], args.overwrite)
    imaging.save_image(request.composite, out / "composite.png")
    imaging.save_image(request.mask, out / "mask.png")
    report: dict[str, object] = {"version": __version__, "inputs": vars(args) | {"func": None}, "results": {}}
    failures = 0
    finished: dict[str, tuple[np.ndarray, float]] = {}
    for name in names:
        method = methods[name]
        with method_progress(name) as progress:
            try:
                result = method.run(request, progress)
            except HarmonyError as exc:
                failures += 1
                report["results"][name] = {"error": str(exc)}
                print(f"{name}: {exc}", file=sys.stderr)
                continue
        path = imaging.save_image(result.image, out / f"{name}.png")
        entry: dict[str, object] = {"image": path.name, "metadata": result.metadata}
        for map_name, file_name in map_file_names(name, result.maps).items():
            values = result.maps[map_name]
            map_path = imaging.save_image((values * 255).round().astype("uint8"), out / file_name)
            entry.setdefault("maps", {})[map_name] = map_path.name
        if request.ground_truth is not None:
            entry["metrics"] = image_metrics(result.image, request.ground_truth, request.mask, request.composite).as_dict()
        report["results"][name] = entry
        finished[name] = (result.image, result.metadata["seconds"])
        print(f"{name}: {result.metadata['seconds']:.3f} s -> {path}")
    if args.figure and finished:
        columns = export.columns_of(request.composite, finished, request.ground_truth)
        print(f"figure -> {imaging.save_image(export.figure(columns, request.mask), out / FIGURE)}")
    atomic.write_text(out / RUN_REPORT, json.dumps(report, indent=2, default=str))
    return 1 if failures == len(names) else 0


def cmd_bench(args: argparse.Namespace) -> int:
    from harmony_core.bench import bench_method, create_method, markdown_table, parse_options, split_options

    apply_weights(args)
    args.all = args.all or not args.method
    names = _selected_methods(args)
    options = parse_options(args.option)
    per_method = split_options(names, options)
    methods = {name: create_method(name, per_method[name], args.random_weights, args.device) for name in names}
    rows = []
    for size in args.size:
        for name in names:
            rows.append(bench_method(name, size, args.repeats, method=methods[name], trace_memory=args.trace_memory))
            print(f"  {name} @ {size}: {rows[-1].median_ms:.1f} ms", file=sys.stderr)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores")
    for name, method in methods.items():
        if args.random_weights or options:
            print(f"{name}: device {method.device}, weights: {method.weights_source}, "
                  f"options {per_method[name] or 'default'}")
    print(markdown_table(rows))
    return 0


def cmd_fetch_weights(args: argparse.Namespace) -> int:
    """Download exactly the files a method loads (diffusion/hub.py) into the Hugging Face cache."""
    from harmony_core.diffusion import hub

    listing = hub.method_files()
    if args.method not in listing:
        known = ", ".join(listing) or "none"
        raise InputError(f"{args.method} loads nothing from the Hub; methods with Hub weights: {known}")
    default_repo, files = listing[args.method]
    repo = args.repo or default_repo
    print(f"{args.method}: {len(files)} files of {repo}: {', '.join(files)}")
    try:
        folder = hub.fetch(repo, files, args.revision)
    except (OSError, ValueError) as exc:
        raise InputError(f"could not fetch {repo}: {exc}") from None
    print(f"in the Hugging Face cache: {folder}")
    return 0


def cmd_device_check(args: argparse.Namespace) -> int:
    from harmony_core.device_check import MARKDOWN_NAME, run

    run(args.out, args.tiny, args.minutes)
    print((Path(args.out) / MARKDOWN_NAME).read_text())
    return 0


def cmd_make_dataset(args: argparse.Namespace) -> int:
    from harmony_core.data import SyntheticComposites, list_photos, select_split, write_iharmony

    photos = select_split(list_photos(args.photos, args.masks), args.split)
    source = SyntheticComposites(photos, seed=args.seed, length=args.n)
    with tqdm(total=len(source), desc="make-dataset", unit="img") as bar:
        listing = write_iharmony(source, args.out, "train" if args.split == "train" else "test", lambda _: bar.update())
    print(f"{len(source)} composites from {len(photos)} {args.split} photos (seed {args.seed}) -> {listing}")
    return 0


def cmd_pack_photos(args: argparse.Namespace) -> int:
    from harmony_core.data import list_photos
    from harmony_core.data.datasets import pack_photos

    photos = list_photos(args.photos, args.masks)
    size = pack_photos(tqdm(photos, desc="pack-photos", unit="img"), args.out, args.quality, args.max_mib)
    print(f"{len(photos)} photos + masks -> {args.out} ({size / 2**20:.1f} MiB)")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from harmony_core.evaluate import PER_IMAGE, evaluate

    apply_weights(args)
    start = time.perf_counter()
    methods = [n.strip() for n in args.methods.split(",") if n.strip()]
    summary = evaluate(args.data, methods, out_folder(args.out), args.split)
    if summary is not None:
        print(summary.read_text())
        print(f"{summary} and {summary.with_name(PER_IMAGE)} written in {time.perf_counter() - start:.1f} s")
    return 0


def cmd_explain_agreement(args: argparse.Namespace) -> int:
    from harmony_core.data.datasets import load_sample
    from harmony_core.evaluate import collect
    from harmony_core.studio.explain import network_agreement

    apply_weights(args)
    methods = resolve_methods([n.strip() for n in args.methods.split(",") if n.strip()], require_available=True)
    if len(methods) < 2:
        raise InputError("explain-agreement compares methods: name at least two (e.g. --methods ptl,ptl-paper).")
    if args.first < 1:
        raise InputError("--first must be at least 1.")
    items = collect(args.data, args.split)[: args.first]
    samples = ((s.name, s.composite, s.mask) for s in (load_sample(item.files) for item in items))
    rows = network_agreement(samples, methods)
    if not rows:
        raise InputError(f"{', '.join(methods)} share no point map on these composites: nothing to compare.")
    print(_table([{**row, "correlation": f"{row['correlation']:.2f}"} for row in rows],
                 ["image", "point", "pair", "map", "correlation"]))
    return 0


def cmd_prepare_study(args: argparse.Namespace) -> int:
    from harmony_core.arena.prepare import prepare_study
    from harmony_core.arena.studyset import StudySet
    from harmony_core.data.datasets import read_dataset

    methods = [n.strip() for n in args.methods.split(",") if n.strip()]
    total = len(read_dataset(Path(args.inputs))) * len(dict.fromkeys(methods))
    with tqdm(total=total, desc="prepare-study", unit="output") as bar:
        manifest = prepare_study(args.inputs, methods, args.out, args.max_side, args.format, args.seed,
                                 lambda step: (bar.set_postfix_str(step, refresh=False), bar.update()))
    study = StudySet.load(manifest.parent)
    print(f"{len(study.samples)} samples x {len(study.methods)} methods -> {manifest}")
    return 0


def cmd_train_ptl(args: argparse.Namespace) -> int:
    from harmony_core.train_ptl import train

    train(args)
    return 0


def add_photo_folders(p: argparse.ArgumentParser) -> None:
    """--photos and --masks: source photos and their object masks, paired by file stem."""
    p.add_argument("--photos", required=True, help="folder of real photos (NAME.jpg, ...)")
    p.add_argument("--masks", required=True, help="folder of object masks named like the photos (NAME.png)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m harmony_core", description="Harmony Studio: image harmonization.")
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("methods", help="list the methods and whether they can run here")
    p.set_defaults(func=cmd_methods)

    def add_method_choice(p: argparse.ArgumentParser) -> None:
        p.add_argument("--method", action="append", help="method name (repeatable, or comma-separated)")
        p.add_argument("--all", action="store_true", help="every method that can run here")

    def add_option(p: argparse.ArgumentParser, help_text: str) -> None:
        p.add_argument("--option", action="append", metavar="[METHOD.]KEY=VALUE", help=help_text)

    def add_weights_option(p: argparse.ArgumentParser) -> None:
        p.add_argument("--weights", action="append", metavar="METHOD=SOURCE",
                       help="weights folder or Hub id for a method, e.g. diffharmony=/data/diffharmony (repeatable)")

    p = sub.add_parser("harmonize", help="harmonize one composite with one or more methods")
    p.add_argument("--composite", help="the composite image")
    p.add_argument("--mask", help="object mask (white = object); with --foreground: the foreground's mask")
    p.add_argument("--background", help="background image (with --foreground)")
    p.add_argument("--foreground", help="foreground image with transparency (or with --mask)")
    p.add_argument("--x", type=float, default=0.5, help="foreground centre, fraction of the width")
    p.add_argument("--y", type=float, default=0.5, help="foreground centre, fraction of the height")
    p.add_argument("--scale", type=float, default=1.0, help="foreground scale factor")
    p.add_argument("--ground-truth", help="real image, to report metrics")
    p.add_argument("--prompt", default="", help="text describing the foreground (diffusion methods)")
    p.add_argument("--seed", default="0", help="a whole number from 0 to 2^63 - 1")
    p.add_argument("--out", required=True, help="output folder (images + results.json); never one holding the inputs")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --out (its files are removed first)")
    p.add_argument("--figure", action="store_true",
                   help=f"also write {FIGURE}: the composite, each result and the ground truth in one row, with a zoomed crop")
    add_method_choice(p)
    add_weights_option(p)
    add_option(p, "a method setting for this run, e.g. n_gen=50 or freepih.resolution=256 (repeatable; KEY=VALUE "
                  "goes to every chosen method that has KEY)")
    p.set_defaults(func=cmd_harmonize)

    p = sub.add_parser("bench", help="latency (median of N) and peak memory per method")
    p.add_argument("--size", type=int, nargs="+", default=[256, 1024], help="square input sizes")
    p.add_argument("--repeats", type=int, default=5)
    add_method_choice(p)  # default: every method that can run here
    add_weights_option(p)
    p.add_argument("--random-weights", action="store_true",
                   help="full-size architectures with random weights (networks only; no download needed)")
    add_option(p, "a method setting for the benchmarked instances, e.g. n_gen=50 (repeatable; as harmonize's)")
    p.add_argument("--device", help="device for --random-weights models (default: cuda when present, else cpu)")
    p.add_argument("--trace-memory", action="store_true",
                   help="CPU peak memory: also trace Python/NumPy allocations (tracemalloc; slow) and report the larger")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("fetch-weights", help="download exactly the Hub files a method loads (nothing else of the repo)")
    p.add_argument("method", help="a method that loads from the Hub (hspace, freepih)")
    p.add_argument("--repo", help="another Hub repo in the same layout (default: the method's own)")
    p.add_argument("--revision", help="a branch, tag or commit of the repo (default: main)")
    p.set_defaults(func=cmd_fetch_weights)

    p = sub.add_parser("bench-studio", help="Compare through the running studio's API: wall time vs the methods' own seconds")
    from harmony_core import bench_studio

    bench_studio.add_arguments(p)
    p.set_defaults(func=bench_studio.run)

    p = sub.add_parser("bench-study", help="the blind study at scale: a synthetic vote store, then start-up, a round, "
                                           "a vote and the leaderboard against an empty store")
    from harmony_core import bench_study

    bench_study.add_arguments(p)
    p.set_defaults(func=bench_study.run)

    p = sub.add_parser("export-votes", help="the organiser's export: every shard's votes as one CSV and Parquet "
                                            "(public columns, per-export pseudonyms) with a dataset card")
    p.add_argument("--votes", required=True, help="the votes folder (every shard, and an older votes.csv)")
    p.add_argument("--out", required=True, help="output folder (outside the votes folder)")
    p.add_argument("--license", default="cc-by-4.0", help="the licence the dataset card states")
    p.set_defaults(func=cmd_export_votes)

    p = sub.add_parser("device-check",
                       help="every model-backed method on one GPU, all resident, each in the dtype it runs in, in one run")
    p.add_argument("--out", required=True, help="report folder: device_check.json + device_check.md")
    p.add_argument("--tiny", action="store_true", help="the same code path with tiny test models on the CPU")
    p.add_argument("--minutes", type=float, default=8.5, help="stop cleanly, keeping what was measured, after this long")
    p.set_defaults(func=cmd_device_check)

    p = sub.add_parser("make-dataset", help="synthesize iHarmony4-style composites from photos with object masks")
    add_photo_folders(p)
    p.add_argument("--out", required=True, help="dataset folder; its name becomes the subset name")
    p.add_argument("--n", type=int, help="number of composites (default: one per photo of the split)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", choices=["train", "val", "all"], default="all",
                   help="photos to use: val iff int(sha1(NAME), 16) %% 10 == 0, train otherwise")
    p.set_defaults(func=cmd_make_dataset)

    p = sub.add_parser("pack-photos", help="a compact copy of source photos + masks (e.g. to train on a GPU machine)")
    add_photo_folders(p)
    p.add_argument("--out", required=True, help="folder for images/ and masks/ (train-ptl --data reads it)")
    p.add_argument("--quality", type=int, default=92, help="JPEG quality (4:4:4 chroma)")
    p.add_argument("--max-mib", type=float, default=60.0, help="stop with an error when the copy grows larger")
    p.set_defaults(func=cmd_pack_photos)

    p = sub.add_parser("evaluate", help="metrics of methods on datasets: per-image CSV + Markdown summary (resumable)")
    p.add_argument("--data", required=True, nargs="+", action="extend",
                   help="dataset folders (iHarmony4 layout or flat *_composite/*_mask/*_real files)")
    p.add_argument("--methods", required=True, help="comma-separated method names")
    p.add_argument("--out", default="eval-report", help="report folder (rerun with the same folder to resume)")
    p.add_argument("--split", default="test", help="iHarmony4 list file to read: DATASET_{split}.txt")
    add_weights_option(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("explain-agreement", help="do two networks' point maps agree? their correlation on a dataset's "
                                                 "first composites, at the object's left, centre and right pixels")
    p.add_argument("--data", required=True, nargs="+", action="extend", help="dataset folders, as for evaluate")
    p.add_argument("--methods", default="ptl,ptl-paper", help="comma-separated methods with point maps (default: ptl,ptl-paper)")
    p.add_argument("--first", type=int, default=4, help="how many composites, in evaluate's order (default 4)")
    p.add_argument("--split", default="test", help="iHarmony4 list file to read: DATASET_{split}.txt")
    add_weights_option(p)
    p.set_defaults(func=cmd_explain_agreement)

    p = sub.add_parser("train-ptl", help="train the ptl network on composites synthesized from photos (resumable)")
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "photos-masks"),
                   help="folder with images/ and masks/ (source photos; the train split is used)")
    p.add_argument("--out", default="runs/ptl", help="run folder: checkpoint.pt, curve.csv, curve.png (rerun to resume)")
    p.add_argument("--steps", type=int, default=20000, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=4, help="the paper's: 4")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lr-drop", type=float, default=120 / 140, help="fraction of the steps after which lr /= 10")
    p.add_argument("--width", type=float, default=0.5, help="channel multiplier (1.0 = the paper's 9.5M network; 0.5 ships)")
    p.add_argument("--ptl-write", choices=["replace", "add"], default="add",
                   help="PTL output at the object: replace the features (paper) or add to them (ours, default)")
    p.add_argument("--head", choices=["residual", "affine"], default="affine",
                   help="output head: the paper's RGB residual or per-location 3x4 colour transforms (ours, default)")
    p.add_argument("--prior", choices=["none", "poisson"], default="poisson",
                   help="affine head only: correct a global colour map fitted to the Poisson blend (ours, default)")
    p.add_argument("--recipes", help="comma-separated recolouring recipes of the training composites "
                   "(default: the specification's six; harmony_core/data/synth.py lists them and ours)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1, help="data-synthesis worker processes")
    p.add_argument("--val-every", type=int, default=250, help="validate and checkpoint every N steps")
    p.add_argument("--val-samples", type=int, default=64, help="held-out composites in the curve")
    p.add_argument("--max-minutes", type=float, help="stop, with a checkpoint, after this much wall time")
    p.add_argument("--export", help="write fp16 weights + config + curve to this folder (e.g. weights/ptl)")
    p.add_argument("--init", help="start from these exported weights (e.g. weights/ptl) when OUT has no checkpoint; "
                                  "layers of another head start fresh")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, ...")
    p.add_argument("--threads", type=int, help="CPU threads for torch (1 avoids stalls on a busy machine)")
    p.set_defaults(func=cmd_train_ptl)

    p = sub.add_parser("prepare-study", help="precompute every method's output for a blind study (resumable)")
    p.add_argument("--inputs", required=True, help="folder of X_composite.* + X_mask.* files (or iHarmony4 layout)")
    p.add_argument("--methods", required=True, help="comma-separated method names (at least two)")
    p.add_argument("--out", required=True, help="study folder (rerun with the same folder to resume)")
    p.add_argument("--max-side", type=int, default=1024, help="long side the composites are shown at")
    p.add_argument("--format", choices=["png", "jpg"], default="png", help="image format of the outputs")
    p.add_argument("--seed", type=int, default=0, help="seed passed to every method")
    p.set_defaults(func=cmd_prepare_study)
    return parser


def cmd_export_votes(args: argparse.Namespace) -> int:
    from harmony_core.arena import dataset

    for kind, path in dataset.export(args.votes, args.out, args.license).items():
        print(f"{kind}: {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except HarmonyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
