"""The organizer's study set: composites with every method's output precomputed, and the rounds.

Precomputing means voting needs no GPU and every rater judges the very same pixels. Layout:

    STUDY/manifest.json              methods, settings, and one entry per complete sample
    STUDY/samples/NAME/composite.EXT, mask.png, outputs/METHOD.EXT

`prepare_study` is resumable: outputs already on disk are kept, the manifest is rewritten
atomically after each sample, so an interrupted run loses at most the sample in progress.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from harmony_core import __version__, atomic, imaging
from harmony_core.data.datasets import read_dataset
from harmony_core.errors import InputError
from harmony_core.registry import get_method, resolve_methods
from harmony_core.types import HarmonizationRequest

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
FORMATS = ("png", "jpg")
MAX_SHOWN = 4
"""At most this many outputs per best-of-n round (labelled A-D); more methods are sampled."""
LETTERS = "ABCD"
MODES = ("best_of_n", "pairwise")


def sample_id(composite: np.ndarray, mask: np.ndarray) -> str:
    """sha256 of the composite's RGB bytes then the mask's bytes (0/255), both as shown.

    Pixels rather than file bytes: the same composite re-encoded keeps its id.
    """
    digest = hashlib.sha256(f"{composite.shape[1]}x{composite.shape[0]}:".encode())
    digest.update(np.ascontiguousarray(composite, np.uint8).tobytes())
    digest.update(imaging.mask_to_image(mask).tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class StudySample:
    id: str
    name: str
    composite: Path
    mask: Path
    outputs: dict[str, Path]


@dataclass
class StudySet:
    root: Path
    methods: list[str]
    samples: list[StudySample]
    settings: dict = field(default_factory=dict)

    @classmethod
    def load(cls, root: str | Path) -> "StudySet":
        root = Path(root)
        path = root / MANIFEST
        if not path.is_file():
            raise InputError(f"No study set in {root} (no {MANIFEST}); build one with `python -m harmony_core prepare-study`.")
        manifest = json.loads(path.read_text())
        if manifest.get("version") != MANIFEST_VERSION:
            raise InputError(f"{path} has manifest version {manifest.get('version')}, this app reads {MANIFEST_VERSION}.")
        samples = [
            StudySample(s["id"], s["name"], root / s["composite"], root / s["mask"],
                        {m: root / p for m, p in s["outputs"].items()})
            for s in manifest["samples"]
        ]
        return cls(root, list(manifest["methods"]), samples, manifest["settings"])

    def sample(self, sid: str) -> StudySample:
        for s in self.samples:
            if s.id == sid:
                return s
        raise InputError(f"Sample {sid[:12]}... is not in this study set.")


def _manifest(methods: list[str], settings: dict, samples: list[dict]) -> str:
    return json.dumps({"version": MANIFEST_VERSION, "app_version": __version__, "methods": methods,
                       "settings": settings, "samples": samples}, indent=1)


def prepare_study(inputs: str | Path, methods: Sequence[str], out: str | Path, max_side: int = 1024,
                  image_format: str = "png", seed: int = 0,
                  on_step: Callable[[str], None] | None = None) -> Path:
    """Run every method on every composite of `inputs` and write the study set to `out`.

    on_step(description) is called after each output (for a progress bar). Returns the manifest.
    """
    if image_format not in FORMATS:
        raise InputError(f"--format must be one of {', '.join(FORMATS)}")
    methods = resolve_methods(list(methods), require_available=True)
    if len(methods) < 2:
        raise InputError("A study needs at least two methods to compare.")
    files = read_dataset(Path(inputs))
    out = Path(out)
    settings = {"max_side": max_side, "format": image_format, "seed": seed}
    done: dict[str, dict] = {}
    if (out / MANIFEST).is_file():
        old = json.loads((out / MANIFEST).read_text())
        if old.get("methods") != methods or old.get("settings") != settings:
            raise InputError(f"{out} holds a study with other methods or settings; choose a new --out folder.")
        done = {s["name"]: s for s in old["samples"]}
    entries: list[dict] = []
    seen: set[str] = set()
    atomic.write_text(out / MANIFEST, _manifest(methods, settings, list(done.values())))
    for item in files:
        folder = Path("samples") / item.name
        if item.name in done and all((out / p).is_file() for p in done[item.name]["outputs"].values()):
            entry = done[item.name]
            for name in methods:
                (on_step or (lambda _: None))(f"{item.name}/{name} (kept)")
        else:
            entry = _prepare_sample(item.composite, item.mask, methods, out, folder, max_side, image_format, seed, on_step)
        if entry["id"] in seen:
            log.warning("%s repeats an earlier composite; skipped", item.name)
            continue
        seen.add(entry["id"])
        entries.append(entry)
        atomic.write_text(out / MANIFEST, _manifest(methods, settings, entries))
    return out / MANIFEST


def _prepare_sample(composite_path: Path, mask_path: Path, methods: list[str], out: Path, folder: Path,
                    max_side: int, image_format: str, seed: int,
                    on_step: Callable[[str], None] | None) -> dict:
    composite = imaging.load_rgb(composite_path, f"composite '{composite_path}'")
    mask = imaging.load_mask(mask_path, f"mask '{mask_path}'")
    if mask.shape != composite.shape[:2]:
        log.warning("%s: mask resized to the composite's size", mask_path)
        mask = imaging.resize_mask(mask, (composite.shape[1], composite.shape[0]))
    if max(composite.shape[:2]) > max_side:
        composite, mask = imaging.cap_long_side(composite, max_side), imaging.cap_long_side(mask, max_side)
    request = HarmonizationRequest(composite=composite, mask=mask, seed=seed)
    paths = {"composite": folder / f"composite.{image_format}", "mask": folder / "mask.png"}
    imaging.save_image(request.composite, out / paths["composite"])
    imaging.save_image(request.mask, out / paths["mask"])
    outputs = {}
    for name in methods:
        path = folder / "outputs" / f"{name}.{image_format}"
        if not (out / path).is_file():
            imaging.save_image(get_method(name).run(request).image, out / path)
        outputs[name] = str(path)
        if on_step:
            on_step(f"{folder.name}/{name}")
    return {"id": sample_id(request.composite, request.mask), "name": folder.name,
            "composite": str(paths["composite"]), "mask": str(paths["mask"]), "outputs": outputs}


@dataclass
class Round:
    """One round as a rater sees it: a sample and methods in a seeded random order."""

    sample: StudySample
    mode: str
    shown: list[str]
    seed: int
    source: str = "study"
    """"study" for the organizer's set, "user" for a rater's own Compare results."""

    @property
    def labels(self) -> list[str]:
        return list(LETTERS[: len(self.shown)])


def next_round(study: StudySet, mode: str, done: set[str], seed: int | None = None) -> Round | None:
    """A sample this rater has not voted on, its methods shuffled; None when all are done.

    The seed (random unless given) fixes the sample, the order and, in pairwise mode, the pair;
    it is recorded with the vote, so every round can be replayed.
    """
    seed, rng = _round_rng(mode, seed)
    remaining = [s for s in study.samples if s.id not in done]
    if not remaining:
        return None
    sample = rng.choice(remaining)
    return Round(sample, mode, _shuffled(rng, sample, mode), seed)


def user_round(sample: StudySample, mode: str, seed: int | None = None) -> Round:
    """A round over a rater's own results (the Compare tab's), shown and recorded like a study round."""
    if len(sample.outputs) < 2:
        raise InputError("A blind vote needs at least two results: run two or more methods in **Compare** first.")
    seed, rng = _round_rng(mode, seed)
    return Round(sample, mode, _shuffled(rng, sample, mode), seed, source="user")


def _round_rng(mode: str, seed: int | None) -> tuple[int, random.Random]:
    if mode not in MODES:
        raise InputError(f"Unknown study mode '{mode}'.")
    seed = secrets.randbits(48) if seed is None else seed
    return seed, random.Random(seed)


def _shuffled(rng: random.Random, sample: StudySample, mode: str) -> list[str]:
    """The methods to show, in random order: two in pairwise mode, else up to MAX_SHOWN."""
    count = 2 if mode == "pairwise" else min(MAX_SHOWN, len(sample.outputs))
    return rng.sample(sorted(sample.outputs), count)
