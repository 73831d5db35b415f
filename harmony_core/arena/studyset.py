"""The organizer's study set as the studio reads it, and the rounds (runtime: no methods run here).

Precomputing means voting needs no GPU and every rater judges the very same pixels. Layout:

    STUDY/manifest.json              methods, settings, and one entry per complete sample
    STUDY/samples/NAME/composite.EXT, mask.png, outputs/METHOD.EXT

The set is written offline by `prepare_study` (harmony_core/arena/prepare.py, the CLI's
prepare-study), which runs the methods.
"""

from __future__ import annotations

import hashlib
import json
import random
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harmony_core import imaging
from harmony_core.arena.votes import MODES
from harmony_core.errors import InputError

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
FORMATS = ("png", "jpg")
MAX_SHOWN = 4
"""At most this many outputs per best-of-n round (labelled A-D); more methods are sampled."""
LETTERS = "ABCD"


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
    def load(cls, root: str | Path) -> StudySet:
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


def next_round(study: StudySet, mode: str, done: set[str], seed: int | None = None,
               compared: tuple[list[str], np.ndarray] | None = None) -> Round | None:
    """A sample this rater has not voted on, its methods shuffled; None when all are done.

    The seed (random unless given) fixes the sample, the order and, in pairwise mode, the pair;
    it is recorded with the vote, so every round can be replayed. compared: (methods, win
    matrix) of the comparisons so far; given, a pairwise round shows the least-compared pair not
    yet separated (sampling.informative_pair; the seed then breaks ties), so the votes go where
    they still decide something.
    """
    seed, rng = _round_rng(mode, seed)
    remaining = [s for s in study.samples if s.id not in done]
    if not remaining:
        return None
    sample = rng.choice(remaining)
    if mode == "pairwise" and compared is not None:
        return Round(sample, mode, _informative_pair(rng, sample, compared), seed)
    return Round(sample, mode, _shuffled(rng, sample, mode), seed)


def _informative_pair(rng: random.Random, sample: StudySample, compared: tuple[list[str], np.ndarray]) -> list[str]:
    """sampling.informative_pair among the sample's methods, in random order."""
    from harmony_core.arena.sampling import informative_pair

    names, wins = compared
    methods = sorted(sample.outputs)
    at = {m: i for i, m in enumerate(names)}
    local = np.zeros((len(methods), len(methods)))
    for i, a in enumerate(methods):
        for j, b in enumerate(methods):
            if a in at and b in at:
                local[i, j] = wins[at[a], at[b]]
    a, b = informative_pair(list(range(len(methods))), local, rng)
    return rng.sample([methods[a], methods[b]], 2)


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

