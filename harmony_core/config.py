"""The deployment's settings from the environment: every ``HARMONY_*`` variable (and the few facts
the platform sets: ``SPACE_ID``, ``SPACES_ZERO_GPU``, Gradio's host and port), read in one place,
typed and checked. The table of variables is in docs/architecture.md#configuration.

Why one module: a variable read at call time in many files had as many parsing rules (blank
meant unset in one, "0" in another) and no single list a deployer could read. Here each one is
parsed once, a bad value fails at start-up with the variable's name, and the code reads fields.

How "once" and tests agree: `current()` reads the environment on its first call and keeps the
result; `reload()` reads it again. The app and the CLI call `current()` at start, so a bad value
fails there. Tests that change the environment with pytest's ``monkeypatch`` need nothing more:
tests/conftest.py reloads after every ``setenv`` / ``delenv`` and after the undo. Nothing is read
at import time.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

PREFIX = "HARMONY_"
WEIGHTS_SUFFIX = "_WEIGHTS"


class ConfigError(ValueError):
    """A variable holds a value the studio cannot use; the message names it and what it takes."""


@dataclass(frozen=True)
class Config:
    """The parsed environment. Defaults are what an unset (or blank) variable means."""

    allow_download: bool = False
    """HARMONY_ALLOW_DOWNLOAD=1: a missing Hub snapshot may be fetched (only a method's listed files)."""
    allow_weight_changes: bool = False
    """HARMONY_ALLOW_WEIGHT_CHANGES=1: clients may repoint model weights (the app's --allow-weight-changes)."""
    weights: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    """Every non-blank HARMONY_<METHOD>_WEIGHTS, by variable name: a method's weights source."""
    study_dir: Path | None = None
    """HARMONY_STUDY_DIR: the blind study set (the app's --study; None: the app's demo set)."""
    votes_dir: Path | None = None
    """HARMONY_VOTES_DIR: the vote shards and the server secret (the app's --votes; None: outputs/votes)."""
    vote_secret: str | None = field(default=None, repr=False)
    """HARMONY_VOTE_SECRET: the HMAC secret of IP hashes (None: a file in the votes folder)."""
    votes_dataset: str | None = None
    """HARMONY_VOTES_DATASET: the private Hub dataset the votes are pushed to (None: no sync)."""
    votes_sync_minutes: float = 5.0
    """HARMONY_VOTES_SYNC_MINUTES: minutes between two pushes of the votes."""
    proxy_hops: int = 0
    """HARMONY_PROXY_HOPS: trusted reverse proxies in front of the app (default 1 on a Space, else 0)."""
    votes_per_minute: int = 30
    votes_per_day: int = 1000
    new_ids_per_day: int = 20
    unvoted_rounds_per_minute: int = 20
    unvoted_rounds_per_day: int = 300
    """The HARMONY_* rate limits of the same names (0 = no limit); the app's flags of the same names."""
    leave_out_flagged: bool = False
    """HARMONY_LEAVE_OUT_FLAGGED=1: the leaderboard counts no vote of a flagged source."""
    space_id: str | None = None
    """SPACE_ID: set by Hugging Face on a Space (owner/name)."""
    zero_gpu: bool = False
    """SPACES_ZERO_GPU: set on a ZeroGPU Space (the `spaces` package decides the rest)."""
    host: str = "0.0.0.0"
    """GRADIO_SERVER_NAME: the address the app listens on."""
    port: int = 7860
    """GRADIO_SERVER_PORT, else PORT: the port the app listens on."""

    def __post_init__(self) -> None:
        counts = ("proxy_hops", "votes_per_minute", "votes_per_day", "new_ids_per_day",
                  "unvoted_rounds_per_minute", "unvoted_rounds_per_day")
        for name in counts:
            if getattr(self, name) < 0:
                raise ConfigError(f"{PREFIX}{name.upper()} must be 0 or more, got {getattr(self, name)}")
        if not self.votes_sync_minutes > 0:
            raise ConfigError(f"{PREFIX}VOTES_SYNC_MINUTES must be above 0, got {self.votes_sync_minutes}")
        if not 0 < self.port < 65536:
            raise ConfigError(f"the port must be 1 to 65535, got {self.port}")

    @property
    def on_space(self) -> bool:
        """Whether this runs on a Hugging Face Space."""
        return self.space_id is not None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Config:
        """The settings `environ` holds; a blank variable counts as unset."""
        env = _Reader(environ)
        space_id = env.text("SPACE_ID")
        return cls(
            allow_download=env.flag("HARMONY_ALLOW_DOWNLOAD"),
            allow_weight_changes=env.flag("HARMONY_ALLOW_WEIGHT_CHANGES"),
            weights=MappingProxyType({name: value for name in environ
                                      if name.startswith(PREFIX) and name.endswith(WEIGHTS_SUFFIX)
                                      and (value := env.text(name))}),
            study_dir=env.path("HARMONY_STUDY_DIR"),
            votes_dir=env.path("HARMONY_VOTES_DIR"),
            vote_secret=environ.get("HARMONY_VOTE_SECRET") or None,  # as given: the IP hashes depend on it
            votes_dataset=env.text("HARMONY_VOTES_DATASET"),
            votes_sync_minutes=env.number("HARMONY_VOTES_SYNC_MINUTES", float, 5.0),
            proxy_hops=env.number("HARMONY_PROXY_HOPS", int, 1 if space_id else 0),
            votes_per_minute=env.number("HARMONY_VOTES_PER_MINUTE", int, 30),
            votes_per_day=env.number("HARMONY_VOTES_PER_DAY", int, 1000),
            new_ids_per_day=env.number("HARMONY_NEW_IDS_PER_DAY", int, 20),
            unvoted_rounds_per_minute=env.number("HARMONY_UNVOTED_ROUNDS_PER_MINUTE", int, 20),
            unvoted_rounds_per_day=env.number("HARMONY_UNVOTED_ROUNDS_PER_DAY", int, 300),
            leave_out_flagged=env.flag("HARMONY_LEAVE_OUT_FLAGGED"),
            space_id=space_id,
            zero_gpu=env.text("SPACES_ZERO_GPU") is not None,
            host=env.text("GRADIO_SERVER_NAME") or "0.0.0.0",
            port=env.number("GRADIO_SERVER_PORT", int, env.number("PORT", int, 7860)),
        )


@dataclass(frozen=True)
class _Reader:
    """One parsing rule per type, so that every variable of a type means the same thing."""

    environ: Mapping[str, str]

    def text(self, name: str) -> str | None:
        value = self.environ.get(name, "").strip()
        return value or None

    def flag(self, name: str) -> bool:
        value = self.text(name) or "0"
        if value not in ("0", "1"):
            raise ConfigError(f"{name} must be 0 or 1, got {value!r}")
        return value == "1"

    def path(self, name: str) -> Path | None:
        value = self.text(name)
        return Path(value).expanduser() if value else None

    def number(self, name: str, kind: type[int] | type[float], default: int | float) -> int | float:
        value = self.text(name)
        if value is None:
            return default
        try:
            return kind(value)
        except ValueError:
            raise ConfigError(f"{name} must be {'a whole number' if kind is int else 'a number'}, "
                              f"got {value!r}") from None


_LOCK = threading.Lock()
_CURRENT: Config | None = None


def current() -> Config:
    """The settings, read from the environment on the first call and kept."""
    global _CURRENT
    with _LOCK:
        if _CURRENT is None:
            _CURRENT = Config.from_environ(os.environ)
        return _CURRENT


def reload() -> Config:
    """The settings read again (after a test or a launcher changed the environment)."""
    global _CURRENT
    with _LOCK:
        _CURRENT = Config.from_environ(os.environ)
        return _CURRENT
