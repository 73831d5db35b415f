"""A stand-in for Hugging Face's `spaces` package, for tests only (put tests/fakes first on
sys.path). Like spaces 0.51.3, `GPU` returns the function unchanged unless SPACES_ZERO_GPU is
set; on "ZeroGPU" each call of the wrapped generator function:

- works out its duration the way spaces does (a number, or a callable given the call's arguments)
  and appends {"event": "call", "function", "method", "duration", "pid"} as a JSON line to
  $FAKE_SPACES_LOG;
- waits like a call queued for a GPU slot: until the file $FAKE_SPACES_RELEASE exists (when that
  variable is set; at most 120 s);
- raises ZeroGPU's quota error on demand: while the file $FAKE_SPACES_QUOTA exists, a gr.Error
  titled "ZeroGPU quota exceeded" whose message is the file's text (as spaces' client raises it);
- runs the function across a pickle boundary (arguments in, every yielded event out), as the
  real worker process does, then logs {"event": "end", ...}.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import pickle
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RELEASE_TIMEOUT_S = 120


def _log(record: dict[str, Any]) -> None:
    path = os.environ.get("FAKE_SPACES_LOG")
    if path:
        with open(path, "a") as log:
            log.write(json.dumps(record) + "\n")


def _wait_for_slot() -> None:
    release = os.environ.get("FAKE_SPACES_RELEASE")
    deadline = time.monotonic() + RELEASE_TIMEOUT_S
    while release and not Path(release).exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def _quota_message() -> str | None:
    quota = os.environ.get("FAKE_SPACES_QUOTA")
    return Path(quota).read_text() if quota and Path(quota).exists() else None


def GPU(task: Callable | None = None, *, duration: Any = None, size: str | None = None) -> Any:
    if task is None:
        return functools.partial(GPU, duration=duration, size=size)
    if not os.environ.get("SPACES_ZERO_GPU") or not inspect.isgeneratorfunction(task):
        return task  # the studio wraps one generator function; anything else is not simulated

    @functools.wraps(task)
    def call(*args: Any, **kwargs: Any) -> Any:
        seconds = duration(*args, **kwargs) if callable(duration) else duration
        record = {"function": task.__name__, "method": getattr(args[0], "method", None) if args else None,
                  "duration": seconds, "pid": os.getpid()}
        _log({"event": "call", **record})
        _wait_for_slot()
        message = _quota_message()
        if message is not None:
            import gradio as gr

            _log({"event": "refused", **record})
            raise gr.Error(message, title="ZeroGPU quota exceeded", print_exception=False)
        args, kwargs = pickle.loads(pickle.dumps((args, kwargs)))
        for event in task(*args, **kwargs):
            yield pickle.loads(pickle.dumps(event))
        _log({"event": "end", **record})

    return call


def gradio_auto_wrap(task: Any) -> Any:
    """Gradio calls this on a Space (SPACE_ID set); the tests never set it."""
    return task
