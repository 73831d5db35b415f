"""The method registry: every harmonization method behind one small interface.

A method is one class in one file of harmony_core/methods/: what it is (family, cost, the inputs
it reads, the maps it explains, its settings, whether it takes weights) is declared on the class,
and the studio, the command line and the tests read it from there, never from tables keyed by
its name. `run(request, progress)` returns a result whose pixels outside the mask equal the
composite: the base class enforces paste-back and fills in the metadata, so no method can forget
either.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import importlib
import pkgutil
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np

from harmony_core import imaging
from harmony_core.cost import DEFAULT_COST, Cost
from harmony_core.errors import Cancelled, InputError, MethodUnavailable
from harmony_core.types import Availability, HarmonizationRequest, HarmonizationResult

Family = Literal["classical", "network", "diffusion"]
Input = Literal["prompt", "style"]
PROMPT: Input = "prompt"
"""The method reads `request.prompt` (Compare shows a prompt box while such a method is chosen)."""
STYLE: Input = "style"
"""The method takes its style from `request.background` (the composite when there is none)."""
Progress = Callable[[float, str], None]
"""progress(fraction in [0, 1], what is happening) — the UI maps it to a bar, the CLI to tqdm."""
M = TypeVar("M", bound="Method")


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


# --- settings -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class NoSettings:
    """The settings of a method that has none (every option is an unknown key)."""


def make_settings(owner: str, settings_class: type, base: Any, changes: Mapping[str, Any]) -> Any:
    """`base` (default: the class's defaults) with `changes`, validated: an unknown key, a value of
    another kind than the field's default (a string for a number, from `--option`) or one the
    dataclass's own checks reject is an InputError that names the method and its options."""
    names = {f.name for f in dataclasses.fields(settings_class)}
    unknown = sorted(set(changes) - names)
    if unknown:
        options = ", ".join(sorted(names)) or "none"
        raise InputError(f"{owner} has no option {', '.join(unknown)}; options: {options}")
    if base is not None and not isinstance(base, settings_class):
        raise InputError(f"{owner} takes {settings_class.__name__} settings, got {type(base).__name__}")
    base = base if base is not None else settings_class()
    for key, value in changes.items():
        default = getattr(base, key)
        if not _same_kind(value, default):
            raise InputError(f"{owner}: {key} takes {type(default).__name__} values, got {value!r}")
    try:
        return dataclasses.replace(base, **changes)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"{owner}: {exc}") from None


def _same_kind(value: Any, default: Any) -> bool:
    """Whether `value` can stand where `default` does: a bool only for a bool, a number for a
    float, the default's own type otherwise (None defaults accept anything the class accepts)."""
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float, np.integer, np.floating))
    if isinstance(default, int):
        return isinstance(value, (int, np.integer))
    return default is None or isinstance(value, type(default))


# --- the method -----------------------------------------------------------------------------------


class Method(ABC):
    """A harmonization method. Subclasses set the class attributes and implement `harmonize`."""

    name: ClassVar[str]
    family: ClassVar[Family]
    title: ClassVar[str]
    summary: ClassVar[str]
    cost: ClassVar[Cost] = DEFAULT_COST
    """Seconds a run takes per device (harmony_core.cost): serving's ZeroGPU calls, Compare's
    default ticks and estimates; a method without one gets a slow GPU default."""
    inputs: ClassVar[frozenset[Input]] = frozenset()
    """What the method reads besides the composite and the mask (PROMPT, STYLE)."""
    maps: ClassVar[tuple[str, ...]] = ()
    """The names of the maps its results carry (result.maps): the Explain tab offers such methods."""
    point_maps: ClassVar[frozenset[str]] = frozenset()
    """Those of `maps` that depend on `request.point`: a click in Explain re-runs these methods,
    and the tab runs them by default."""
    takes_weights: ClassVar[bool] = False
    """Whether its weights can be pointed elsewhere (`set_weights`, `--weights`): ModelMethod."""
    default_weights: ClassVar[str | None] = None
    """The folder or Hub id of its weights when nothing else names a source (ModelMethod)."""
    hub_files: ClassVar[tuple[str, ...]] = ()
    """The files it loads from a Hub repo (`default_weights` or one in the same layout): the only
    files ever downloaded for it, and the Space card's `preload_from_hub` (diffusion/hub.py)."""
    settings_class: ClassVar[type] = NoSettings
    """A frozen dataclass that validates itself (`__post_init__`); `--option KEY=VALUE` sets its fields."""
    quick_settings: ClassVar[Mapping[str, Any]] = {}
    """Settings that keep a tiny-model run short (the contract tests, `device-check --tiny`)."""

    device: str = "cpu"
    weights_source: str = "none"

    def __init__(self, *, settings: Any = None, **overrides: Any) -> None:
        """settings: an instance of `settings_class`, or any of its fields as keywords (`Reinhard(std_ratio_min=0.3)`)."""
        self.settings = make_settings(self.name, self.settings_class, settings, overrides)

    def with_settings(self: M, **changes: Any) -> M:
        """A copy with other settings (validated) that shares everything else (a ModelMethod's
        weights and loaded model): how one request or one benchmark row runs with its own settings;
        the shared instance is never changed per user."""
        other = copy.copy(self)
        other.settings = make_settings(self.name, self.settings_class, self.settings, changes)
        return other

    def configure(self, **changes: Any) -> None:
        """Replace this instance's default settings (validated, as a new frozen object): for the
        organiser, the command line and tests, never per user (use `with_settings`)."""
        self.settings = make_settings(self.name, self.settings_class, self.settings, changes)

    @classmethod
    def option_names(cls) -> list[str]:
        """The settings `--option` may set."""
        return [f.name for f in dataclasses.fields(cls.settings_class)]

    def available(self) -> Availability:
        return Availability(True)

    def parameters(self) -> dict[str, Any]:
        """The method's settings, recorded in every result's metadata (never loads a model)."""
        return dataclasses.asdict(self.settings)

    @classmethod
    def random_weights(cls: type[M], scale: str = "full", device: str | None = None, **options: Any) -> M:
        """An instance with the real architecture but random weights ("full") or a tiny one ("tiny").

        For benchmarks and tests on machines without the weights; `options` are the method's
        settings (e.g. n_gen=50). Methods without networks do not support it.
        """
        raise NotImplementedError(f"{cls.name} has no random-weight mode")

    @abstractmethod
    def harmonize(self, request: HarmonizationRequest, progress: Progress) -> HarmonizationResult | np.ndarray:
        """Produce the harmonized image (paste-back and metadata are added by `run`)."""

    def require_available(self) -> None:
        """MethodUnavailable with the reason when the method cannot run here."""
        state = self.available()
        if not state:
            raise MethodUnavailable(f"{self.name} cannot run here: {state.reason}", state.reason)

    def run(self, request: HarmonizationRequest, progress: Progress | None = None) -> HarmonizationResult:
        """The result, pasted back, with its metadata; MethodUnavailable when it cannot run here."""
        self.require_available()
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


# --- the registry ---------------------------------------------------------------------------------

_FACTORIES: dict[str, type[Method]] = {}
_INSTANCES: dict[str, Method] = {}
_LOCK = threading.Lock()


def register(cls: type[Method]) -> type[Method]:
    """Class decorator adding a method to the registry under `cls.name`."""
    if cls.name in _FACTORIES and _FACTORIES[cls.name] is not cls:
        raise ValueError(f"method name '{cls.name}' registered twice")
    _FACTORIES[cls.name] = cls
    return cls


def unregister(name: str) -> None:
    """Remove a method and its shared instance (a test that registered its own method cleans up)."""
    with _LOCK:
        _FACTORIES.pop(name, None)
        _INSTANCES.pop(name, None)


BUILTIN_METHODS = ("classical", "ptl", "hspace", "diffharmony", "freepih")
"""The order of the built-in modules (the order the studio lists their methods in); any other
module of harmony_core.methods is imported after them, so adding a method is adding one file.
Importing one module (say the classical colour tools, which data synthesis uses) does not pull in
the others."""


def _load_builtins() -> None:
    from harmony_core import methods

    _import_methods(tuple(methods.__path__))


@functools.cache
def _import_methods(paths: tuple[str, ...]) -> None:
    """Import every module of the methods package found on `paths`, once (not a folder listing per lookup)."""
    found = [m.name for m in pkgutil.iter_modules(paths) if not m.name.startswith("_")]
    for module in [*BUILTIN_METHODS, *sorted(set(found) - set(BUILTIN_METHODS))]:
        importlib.import_module(f"harmony_core.methods.{module}")


def method_names() -> list[str]:
    _load_builtins()
    return list(_FACTORIES)


def method_class(name: str) -> type[Method]:
    """The class registered as `name` (its capabilities, without building an instance)."""
    _load_builtins()
    if name not in _FACTORIES:
        raise KeyError(f"Unknown method '{name}'. Known methods: {', '.join(_FACTORIES)}")
    return _FACTORIES[name]


def get_method(name: str) -> Method:
    """The shared instance of a method (created once, lazily, so models load once per process)."""
    cls = method_class(name)
    with _LOCK:
        if name not in _INSTANCES:
            _INSTANCES[name] = cls()
        return _INSTANCES[name]


def methods_where(test: Callable[[type[Method]], bool]) -> list[str]:
    """Names of the registered methods whose class passes `test`, in registration order."""
    _load_builtins()
    return [name for name, cls in list(_FACTORIES.items()) if test(cls)]


def map_methods() -> list[str]:
    """The methods whose results carry maps (`Method.maps`)."""
    return methods_where(lambda cls: bool(cls.maps))


def point_map_methods() -> list[str]:
    """The methods with a map that follows the clicked point (`Method.point_maps`)."""
    return methods_where(lambda cls: bool(cls.point_maps))


def weighted_methods() -> list[str]:
    """The methods whose weights can be pointed elsewhere (`Method.takes_weights`)."""
    return methods_where(lambda cls: cls.takes_weights)


def reading(what: Input) -> list[str]:
    """The methods that read `what` (PROMPT, STYLE) besides the composite and mask."""
    return methods_where(lambda cls: what in cls.inputs)


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
