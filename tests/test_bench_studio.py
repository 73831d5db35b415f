import numpy as np
import pytest
from PIL import Image

from harmony_core import bench_studio
from harmony_core.bench_studio import Timed, resized_example, table, target_seconds


def test_the_example_is_resized_to_the_long_side_with_its_mask(tmp_path):
    composite, mask = resized_example(700, tmp_path)
    image, matte = np.asarray(Image.open(composite)), np.asarray(Image.open(mask))
    assert max(image.shape[:2]) == 700 and image.shape[:2] == matte.shape
    assert set(np.unique(matte)) <= {0, 255} and 0 < (matte > 0).mean() < 0.9  # nearest: still a binary mask


def test_the_table_says_whether_every_run_met_the_target():
    assert target_seconds(4.0) == 5.5
    fast = [Timed("1024x681", 2.0, 0.5, 2.0, {}), Timed("1024x681", 3.0, 0.5, 2.0, {})]
    slow = [Timed("2048x1362", 2.0, 0.5, 2.0, {}), Timed("2048x1362", 3.1, 0.5, 2.0, {})]
    rows = table([(fast, 700.0), (slow, None)]).splitlines()
    assert rows[2].startswith("| 1024x681 | 2.50 (2.00, 3.00) |") and "| yes | 700 |" in rows[2]
    assert "| no |  |" in rows[3]  # one run over 1.25 x 2.0 + 0.5 s; no memory figure from a running app


@pytest.mark.slow
def test_a_process_memory_reads_its_high_water_mark():
    import os

    here = bench_studio.Memory(os.getpid())
    before = here.peak_mb()
    block = np.ones(150 * 2**20, np.uint8)
    assert here.peak_mb() >= before + 140 and block[-1] == 1
    assert bench_studio.Memory(1 << 30).peak_mb() is None  # no such process
