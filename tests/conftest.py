import atexit
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from harmony_core import config

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # app.py lives at the top level
SHARED = ROOT.parent / "shared"
# One torch/OpenMP thread in tests and the processes they start: the models under test are tiny,
# and on a busy 2-core machine OpenMP threads waiting for each other made calls up to 80x slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Tests never download (the Hub is not reachable from CI either): methods that need weights are
# tested with tiny models built in the test, and any other connection attempt fails the test.
os.environ["HF_HUB_OFFLINE"] = "1"
# An empty Hub cache of their own (processes the tests start inherit it), so no test can pick up
# weights this machine happens to hold.
_HUB_HOME = tempfile.mkdtemp(prefix="harmony-tests-hf-")
os.environ["HF_HOME"] = _HUB_HOME
os.environ["HF_HUB_CACHE"] = os.path.join(_HUB_HOME, "hub")
atexit.register(shutil.rmtree, _HUB_HOME, True)


def _weights_variables() -> list[str]:
    """The download switch and every registered method's weights variable (`ModelMethod.weights_env`)."""
    from harmony_core.diffusion.components import ALLOW_DOWNLOAD_ENV
    from harmony_core.registry import method_class, weighted_methods

    return [ALLOW_DOWNLOAD_ENV, *(method_class(name).weights_env for name in weighted_methods())]


# No test (nor a process it starts) sees weights this machine's environment points at.
for name in _weights_variables():
    os.environ.pop(name, None)
LOOPBACK = {"127.0.0.1", "localhost", "::1", "0.0.0.0"}


class ConfigMonkeyPatch(pytest.MonkeyPatch):
    """pytest's monkeypatch, with harmony_core.config read again whenever the environment changes,
    so that a test's setenv / delenv reaches code that reads `config.current()`."""

    def setenv(self, name: str, value: str, prepend: str | None = None) -> None:
        super().setenv(name, value, prepend)
        config.reload()

    def delenv(self, name: str, raising: bool = True) -> None:
        super().delenv(name, raising)
        config.reload()

    def undo(self) -> None:
        super().undo()
        config.reload()


@pytest.fixture
def monkeypatch():
    """Every test's (and every fixture's) monkeypatch is a ConfigMonkeyPatch."""
    patch = ConfigMonkeyPatch()
    yield patch
    patch.undo()


def free_port() -> int:
    """A port nothing listens on now, for a server or process group a test starts."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(autouse=True)
def local_network_only(monkeypatch):
    """Connections to this machine (the app under test) are fine; anything else fails the test."""
    connect = socket.socket.connect

    def guarded(self, address):
        if isinstance(address, tuple) and address[0] not in LOOPBACK:
            raise AssertionError(f"a test tried to reach {address[0]}")
        return connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


@pytest.fixture(autouse=True)
def no_hub(monkeypatch):
    """Every Hub lookup answers like an empty local cache, so huggingface_hub's client is never
    reached: methods with Hub ids report their weights missing, and models come from tiny local
    folders that the tests build."""
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def empty_cache(*args, **kwargs):
        raise LocalEntryNotFoundError("not in the local cache (tests never use the Hub)")

    for name in ("snapshot_download", "hf_hub_download"):
        monkeypatch.setattr(huggingface_hub, name, empty_cache)


@pytest.fixture
def scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(real, composite, mask): a smooth 96x128 scene whose rectangular object was recoloured."""
    rng = np.random.default_rng(0)
    import cv2

    real = cv2.resize(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), (128, 96), interpolation=cv2.INTER_CUBIC)
    mask = np.zeros((96, 128), bool)
    mask[30:70, 40:90] = True
    composite = real.copy()
    composite[mask] = np.clip(composite[mask] * np.array([1.3, 0.8, 0.9]) + 12, 0, 255).astype(np.uint8)
    return real, composite, mask
