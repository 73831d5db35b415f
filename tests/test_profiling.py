import time

import numpy as np

from harmony_core import profiling


def allocate(mb: int, hold_s: float = 0.0) -> int:
    block = np.ones(mb * 2**20, np.uint8)  # touched, so resident
    time.sleep(hold_s)
    return int(block[::4096].sum())


def test_the_peak_is_the_growth_a_call_needed_even_when_freed_before_it_returns():
    value, peak = profiling.measure_peak(lambda: allocate(200))
    assert value == 200 * 2**20 // 4096 and 190 < peak < 260
    assert profiling.measure_peak(lambda: None)[1] < 20  # not the process's level: the growth


def test_without_the_kernel_high_water_mark_a_coarse_sampler_sees_a_held_allocation(monkeypatch):
    monkeypatch.setattr(profiling, "_reset_high_water_mark", lambda: False)
    _, peak = profiling.measure_peak(lambda: allocate(200, hold_s=0.2), interval=0.02)
    assert 190 < peak < 260


def test_tracemalloc_only_when_asked(monkeypatch):
    started = []
    monkeypatch.setattr(profiling.tracemalloc, "start", lambda: started.append(True))
    monkeypatch.setattr(profiling.tracemalloc, "get_traced_memory", lambda: (0, 300 * 2**20))
    monkeypatch.setattr(profiling.tracemalloc, "stop", lambda: None)
    profiling.measure_peak(lambda: None)
    assert not started
    _, peak = profiling.measure_peak(lambda: None, trace=True)
    assert started and peak == 300
