"""One lifecycle for every method that loads weights (ptl, diffharmony, freepih, hspace).

A `ModelMethod` declares where its weights may come from and what they must contain; the base
does the rest, the same way for all of them:

- **Source**, first that is set: the constructor's `weights` argument (which `set_weights`, the
  organiser's override, replaces), the method's environment variable (`weights_env`), the
  default Hub id or folder (`default_weights`, may be None). A local folder is used as is; a
  Hub id comes from the local Hugging Face cache (see `diffusion/components.py`), and a permitted
  download fetches exactly the files the method loads (`hub_files`, see `diffusion/hub.py`).
- **available()** checks the declared `required_files` without loading or downloading anything;
  the reason says what is missing and where to set another source (`how_to_set`, `missing_help`).
  It also reads what it can without loading: the configs parse, the safetensors headers fit their
  files, and `_check` looks at the config's class and key fields. What fails there, or in a load,
  is reported as "the weights at <source> could not be loaded: <reason>" (`unloadable`), and a
  failed load is remembered for that source (until `set_weights`).
- **load()**: one lazy load per source under a lock shared by the instance and its copies. A run
  checks the files once (`require_available`, the studio's `serve` or `run`); the later checks of
  the same run (`run`, `load`) reuse that answer.
- **set_weights** / **use_device** drop the loaded model and evict its parts from components'
  cache, so the old weights' memory is released (a part another method still holds stays there).
- **Device / dtype**: cuda when visible, else cpu; fp16 on cuda and fp32 on the cpu unless the
  method says otherwise (`default_dtype`).
- **Settings**: as every method's (`registry.Method`): a frozen dataclass (`settings_class`) built
  and validated once; `with_settings(...)` gives a copy for one request (or one benchmark row) that
  shares the loaded model; the shared instance is never changed per user.
- **weights_source**: what the result's metadata records.
- **One run at a time per shared model**: `run` holds the class's `run_lock` for the whole run.
  By default that is one process-wide lock, because the diffusion methods share models through
  components' cache (and freepih hooks them): two runs inside one model would mix their hooks and
  optimizer state. A method whose model is its own (ptl) has its own lock, so it never waits
  behind a diffusion run. While it waits, it reports progress, so a cancelled waiting run stops
  there (see `registry.checked`).

Subclasses implement `_load(source)` (and `harmonize`); `_check(folder)` may add checks of the
files' content, `adopt(model, label)` installs an already-built model (random weights, tests).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any, ClassVar

import torch

from harmony_core.diffusion import components
from harmony_core.errors import MethodUnavailable
from harmony_core.registry import Method, Progress, no_progress
from harmony_core.types import Availability, HarmonizationRequest, HarmonizationResult

log = logging.getLogger(__name__)


RUNS = threading.RLock()
"""The default `run_lock`: held from start to end by every run of the methods that share models
(module docstring: one run at a time per shared model)."""
WAIT_REPORT_SECONDS = 0.25


class _WeightsState:
    """What an instance and its `with_settings` copies share: the source, the loaded model, the lock."""

    def __init__(self, explicit: str | os.PathLike | None) -> None:
        self.lock = threading.RLock()
        self.explicit = explicit
        self.model: Any = None
        self.loaded_from: str | None = None
        self.failed: tuple[str, str] | None = None
        """(source, reason) of the last load that failed."""
        self.ready: str | None = None
        """The source a run's `require_available` accepted: `available()` answers yes for it without
        checking the files again, until a load from it fails or the source changes."""

    def drop(self) -> None:
        """Forget the loaded model and evict its parts from components' cache, so that its memory
        is released once no other method holds them."""
        model, self.model, self.loaded_from, self.ready = self.model, None, None, None
        if model is not None:
            components.release(model)


class ModelMethod(Method):
    """A method backed by a model whose weights come from a folder or Hub id (module docstring)."""

    weights_env: ClassVar[str]
    """Environment variable naming the weights (folder or Hub id)."""
    required_files: ClassVar[tuple[str, ...]] = ()
    """Paths the weights folder must hold ('|' separates alternatives, globs allowed)."""
    how_to_set: ClassVar[str]
    """Where a user sets the source, quoted in every reason."""
    missing_help: ClassVar[str] = ""
    """Appended to the reason when the weights cannot be used (where to get them)."""
    takes_weights = True
    run_lock: ClassVar[threading.RLock] = RUNS
    """Held for a whole run: RUNS where models are shared between methods, a lock of its own otherwise."""

    def __init__(self, *, settings: Any = None, weights: str | os.PathLike | None = None,
                 device: str | torch.device | None = None, dtype: torch.dtype | None = None, **overrides: Any) -> None:
        """weights: a folder or Hub id (None: the environment variable, else the default).
        device / dtype: None follows the policy above. settings, or any of its fields as keyword
        arguments (`HSpace(n_gen=200)`)."""
        super().__init__(settings=settings, **overrides)
        self._state = _WeightsState(weights)
        self._device = None if device is None else str(torch.device(device))
        self._dtype = dtype

    def run(self, request: HarmonizationRequest, progress: Progress | None = None) -> HarmonizationResult:
        """`Method.run` under `run_lock`; while another run holds it, progress says so every quarter second."""
        progress = progress or no_progress
        while not self.run_lock.acquire(timeout=WAIT_REPORT_SECONDS):
            progress(0.0, f"{self.name}: waiting for the run before this one to stop")
        try:
            return super().run(request, progress)
        finally:
            self.run_lock.release()

    def parameters(self) -> dict[str, Any]:
        return {**super().parameters(), "dtype": components.dtype_name(self.dtype)}

    # --- where the weights come from ------------------------------------------------------------

    def source(self) -> str | None:
        """The weights to use: the argument / set_weights, else $weights_env, else `default_weights`."""
        return components.configured_source(self._state.explicit, self.weights_env) or self.default_weights

    def set_weights(self, source: str | os.PathLike | None) -> None:
        """Use weights from `source` (a folder or Hub id) from the next run on; None or "" falls back
        to the environment variable / default. The loaded model is dropped and evicted from
        components' cache (reloaded lazily), so the old weights do not stay resident."""
        with self._state.lock:
            self._state.explicit = source
            self._state.failed = None
            self._state.drop()

    @property
    def weights_source(self) -> str:  # type: ignore[override]
        """The loaded source (else the configured one), as the result's metadata records it."""
        return self._state.loaded_from or self.source() or "none"

    @property
    def device(self) -> str:  # type: ignore[override]
        return self._device or components.default_device()

    def use_device(self, device: str) -> None:
        """Run on `device` whatever is visible (ZeroGPU: the methods outside GPU calls stay on the
        CPU); a model loaded elsewhere is dropped and loads again on first use."""
        with self._state.lock:
            if self.device != str(torch.device(device)):
                self._device = str(torch.device(device))
                self._state.drop()

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype or self.default_dtype(self.device)

    def default_dtype(self, device: str) -> torch.dtype:
        """fp16 on cuda, fp32 on the cpu; a method that needs fp32 everywhere overrides this."""
        return components.default_dtype(device)

    # --- availability and loading ---------------------------------------------------------------

    def loaded(self) -> Any:
        """The model loaded from the current source, or None when it is not loaded (yet)."""
        state = self._state
        model, loaded_from = state.model, state.loaded_from
        return model if model is not None and loaded_from == self.source() else None

    def available(self) -> Availability:
        source = self.source()
        if self.loaded() is not None or (source is not None and self._state.ready == source):
            return Availability(True)
        found = components.check(source, self.required_files, self.how_to_set, self.hub_files, self.name)
        if not found:
            reason = "no weights configured" if source is None and self.missing_help else found.reason
            return Availability(False, f"{reason}. {self.missing_help}" if self.missing_help else reason)
        if components.is_hub_id(source) and components.downloads_allowed() and found.reason:
            return found  # not fetched yet: the files are checked when they are loaded
        failed = self._state.failed
        if failed is not None and failed[0] == source:
            return Availability(False, failed[1])
        folder = components.resolve(source, self.hub_files, self.name)
        problem = components.files_problem(folder, self.required_files)
        return self.unloadable(problem) if problem else self._check(folder, found)

    def require_available(self) -> None:
        """`Method.require_available`, remembering the source it accepted for this run's `load`."""
        super().require_available()
        self._state.ready = self.source()

    def unloadable(self, problem: str) -> Availability:
        """Not available because the weights at the current source cannot be loaded, in words."""
        return Availability(False, f"the weights at {self.source()} could not be loaded: {problem}")

    def _check(self, folder: Path, found: Availability) -> Availability:
        """More checks of a folder that has the required files, without loading them (the config's
        class and key fields, see `components.config_problem`); default none."""
        return found

    def load(self) -> Any:
        """The model, loaded once per source (under the lock; every copy shares it)."""
        state = self._state
        with state.lock:
            model = self.loaded()
            if model is not None:
                return model
            source = self.source()
            self.require_available()  # the files, unless this run's check just accepted them
            if components.is_hub_id(source):
                components.resolve(source, self.hub_files, self.name)  # fetches exactly hub_files when permitted
            try:
                state.model = self._load(source)
            except Exception as exc:
                if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
                    raise  # the machine's state, not the weights'
                log.exception("loading %s from %s failed", self.name, source)
                reason = self.unloadable(_in_words(exc)).reason
                state.failed, state.ready = (source, reason), None
                raise MethodUnavailable(f"{self.name} cannot run here: {reason}", reason) from exc
            state.loaded_from = source
            return state.model

    def _load(self, source: str) -> Any:
        """Build the model from `source` (a folder or Hub id that `available` accepted) on
        `self.device` in `self.dtype`."""
        raise NotImplementedError

    def adopt(self, model: Any, label: str) -> None:
        """Use an already-built model (random weights, tests); `label` becomes its weights source."""
        with self._state.lock:
            self._state.explicit = self._state.loaded_from = label
            self._state.model = model


def _in_words(exc: BaseException) -> str:
    """An exception's message as one line of at most ~300 characters, with its kind when it has no message."""
    text = " ".join(str(exc).split())
    text = text if len(text) <= 300 else text[:297] + "..."
    return text or type(exc).__name__
