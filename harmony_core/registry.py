"""The method registry: every harmonization method behind one small interface.

A method says whether it can run here (and why not), and `run(request, progress)` returns a
result whose pixels outside the mask equal the composite: the base class enforces paste-back
and fills in the metadata, so no method can forget either.
"""

from __future__ import annotations

import importlib
import threading
import time
from abc import ABC, abstractmethod
from typing import Any, Callable, ClassVar, Literal

import numpy as np

from harmony_core import imaging
from harmony_core.cost import DEFAULT_COST, Cost
from harmony_core.errors import Cancelled, InputError, MethodUnavailable
from harmony_core.types import Availability, HarmonizationRequest, HarmonizationResult

Family = Literal["classical", "network", "diffusion"]
Progress = Callable[[float, str], None]
"""progress(fraction in [0, 1], what is happening) — the UI maps it to a bar, the CLI to tqdm."""


def no_progress(fraction: float, message: str) -> None:
    """The default progress callback: ignore."""


def checked(progress: Progress, cancel: threading.Event) -> Progress:
    """`progress` that raises Cancelled once `cancel` is set. Every model-backed method reports
    progress between its steps (and while it waits for another run), so a cancelled run stops
    within one step, wherever it is."""

    def report(fraction: float, message: str) -> None:
        if cancel.is_set():
            raise Cancelled("the run was stopped")
        progress(fraction, message)

    return report


class Method(ABC):
    """A harmonization method. Subclasses set the class attributes and implement `harmonize`."""

    name: ClassVar[str]
    family: ClassVar[Family]
    title: ClassVar[str]
    summary: ClassVar[str]
    cost: ClassVar[Cost] = DEFAULT_COST
    """Seconds a run takes per device (harmony_core.cost); a method without one gets a slow GPU default."""

    has_maps: ClassVar[bool] = False
    """Whether results carry maps (result.maps): the Explain tab runs only such methods."""

    device: str = "cpu"
    weights_source: str = "none"

    def available(self) -> Availability:
        return Availability(True)

    def parameters(self) -> dict[str, Any]:
        """The method's settings, recorded in every result's metadata."""
        return {}

    @classmethod
    def random_weights(cls, scale: str = "full", device: str | None = None, **options: Any) -> "Method":
        """An instance with the real architecture but random weights ("full") or a tiny one ("tiny").

        For benchmarks and tests on machines without the weights; `options` are the method's
        settings (e.g. n_gen=50). Methods without networks do not support it.
        """
        raise NotImplementedError(f"{cls.name} has no random-weight mode")

    @abstractmethod
    def harmonize(self, request: HarmonizationRequest, progress: Progress) -> HarmonizationResult | np.ndarray:
        """Produce the harmonized image (paste-back and metadata are added by `run`)."""

    def run(self, request: HarmonizationRequest, progress: Progress | None = None) -> HarmonizationResult:
        state = self.available()
        if not state:
            raise MethodUnavailable(f"{self.name} cannot run here: {state.reason}")
        progress = progress or no_progress
        progress(0.0, f"{self.name}: starting")
        start = time.perf_counter()
        output = self.harmonize(request, progress)
        seconds = time.perf_counter() - start
        result = output if isinstance(output, HarmonizationResult) else HarmonizationResult(image=output)
        if result.image.shape != request.composite.shape or result.image.dtype != np.uint8:
            raise RuntimeError(
                f"{self.name} returned {result.image.shape} {result.image.dtype}, expected "
                f"{request.composite.shape} uint8"
            )
        result.image = imaging.paste_back(result.image, request.composite, request.mask)
        width, height = request.size
        result.metadata = {
            "method": self.name,
            "family": self.family,
            "seconds": seconds,
            "device": self.device,
            "resolution": f"{width}x{height}",
            "seed": request.seed,
            "weights": self.weights_source,
            "parameters": self.parameters(),
            **result.metadata,
        }
        progress(1.0, f"{self.name}: done in {seconds:.2f} s")
        return result


_FACTORIES: dict[str, type[Method]] = {}
_INSTANCES: dict[str, Method] = {}
_LOCK = threading.Lock()


def register(cls: type[Method]) -> type[Method]:
    """Class decorator adding a method to the registry under `cls.name`."""
    if cls.name in _FACTORIES and _FACTORIES[cls.name] is not cls:
        raise ValueError(f"method name '{cls.name}' registered twice")
    _FACTORIES[cls.name] = cls
    return cls


BUILTIN_METHODS = ("classical", "ptl", "hspace", "diffharmony", "freepih")
"""Modules of harmony_core.methods, imported on first use of the registry. Importing one module
(say the classical colour tools, which data synthesis uses) does not pull in torch."""


def _load_builtins() -> None:
    for module in BUILTIN_METHODS:
        importlib.import_module(f"harmony_core.methods.{module}")


def method_names() -> list[str]:
    _load_builtins()
    return list(_FACTORIES)


def get_method(name: str) -> Method:
    """The shared instance of a method (created once, lazily, so models load once per process)."""
    _load_builtins()
    with _LOCK:
        if name not in _INSTANCES:
            if name not in _FACTORIES:
                known = ", ".join(_FACTORIES)
                raise KeyError(f"Unknown method '{name}'. Known methods: {known}")
            _INSTANCES[name] = _FACTORIES[name]()
        return _INSTANCES[name]


def map_methods() -> list[str]:
    """Names of the methods whose results carry maps (`Method.has_maps`), in registration order."""
    _load_builtins()
    return [name for name, cls in _FACTORIES.items() if cls.has_maps]


def weighted_methods() -> list[str]:
    """Names of the methods whose weights can be pointed elsewhere (`set_weights`, `--weights`):
    every `ModelMethod`, in registration order."""
    from harmony_core.model_method import ModelMethod

    _load_builtins()
    return [name for name, cls in _FACTORIES.items() if issubclass(cls, ModelMethod)]


def resolve_methods(names: list[str] | tuple[str, ...], require_available: bool = False) -> list[str]:
    """Validated method names (duplicates dropped, order kept); an InputError names the problem."""
    if not names:
        raise InputError("Choose at least one method.")
    known = method_names()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise InputError(f"Unknown method(s): {', '.join(unknown)}. Known: {', '.join(known)}")
    names = list(dict.fromkeys(names))
    if require_available:
        for name in names:
            state = get_method(name).available()
            if not state:
                raise InputError(f"{name} cannot run here: {state.reason}")
    return names


def availability_table() -> list[dict[str, Any]]:
    """One row per method: name, family, whether it runs here (a bool), and why not."""
    rows = []
    for name in method_names():
        method = get_method(name)
        state = method.available()
        rows.append({
            "method": name, "family": method.family, "available": bool(state),
            "reason": state.reason, "summary": method.summary,
        })
    return rows
