import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # app.py lives at the top level
SHARED = ROOT.parent / "shared"


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
