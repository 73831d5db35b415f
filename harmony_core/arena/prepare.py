"""prepare-study (offline, CLI): run every method on every composite and write the study set.

Resumable: outputs already on disk are kept, the manifest is rewritten atomically after each
sample, so an interrupted run loses at most the sample in progress. The layout and the rounds
the studio serves from it are in studyset.py.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from harmony_core import __version__, atomic, imaging
from harmony_core.arena.studyset import FORMATS, MANIFEST, MANIFEST_VERSION, sample_id
from harmony_core.data.datasets import read_dataset
from harmony_core.errors import InputError
from harmony_core.registry import get_method, resolve_methods
from harmony_core.types import HarmonizationRequest

log = logging.getLogger(__name__)


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
