"""The finished example a first visit shows: the cat composite harmonized by the cheap methods,
computed once when the app starts, so a visitor sees what the studio does before uploading."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from harmony_core.errors import HarmonyError
from harmony_core.registry import get_method
from harmony_core.studio import compare, compose

log = logging.getLogger(__name__)

METHODS = ("reinhard", "histogram", "poisson", "ptl")
"""The classical methods and ptl: seconds on a CPU, so the start-up stays quick."""
COMPOSITE, MASK, REAL = "cat_composite.jpg", "cat_mask.png", "cat_real.jpg"


@dataclass
class Showcase:
    composed: compose.Composed
    run: compare.CompareState
    """The last state of the example's run (gallery, before/after, status, metrics, finished run)."""

    @property
    def message(self) -> str:
        return (f"{self.composed.message}\n\nThis is the example composite (a cat pasted into another photo): its "
                "results are in **Compare**. Upload your own above to replace it.")

    @property
    def slider_method(self) -> str:
        """The result the before/after slider shows: ptl's when it ran (the network the studio is
        built around), else the first."""
        return "ptl" if "ptl" in self.run.results else next(iter(self.run.results))

    @property
    def before_after(self) -> tuple:
        return self.composed.composite, self.run.results[self.slider_method].image


def first_visit(examples: Path, max_side: int) -> Showcase | None:
    """The example run, or None (logged) when its files or methods are missing: the app starts anyway."""
    try:
        composed = compose.from_upload(examples / COMPOSITE, examples / MASK, max_side)
        names = [n for n in METHODS if get_method(n).available()]
        request, names, _ = compare.build_request(examples / COMPOSITE, examples / MASK, names, max_side, examples / REAL)
        last = None  # the last state carries the finished run
        for step in compare.run_methods(request, names, lambda fraction, message: None):
            last = step
    except (HarmonyError, OSError) as exc:
        log.warning("no example for the first visit: %s", exc)
        return None
    return Showcase(composed, last) if last is not None and last.results else None
