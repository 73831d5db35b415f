"""Data for training and evaluation: dataset readers (datasets.py) and synthetic composites (synth.py).

The project's split of source photos (../shared/data/photos-masks) is a stable hash of each
photo's name: validation iff int(sha1(NAME).hexdigest(), 16) % 10 == 0, training otherwise
(`is_validation`, `select_split`). Nothing here imports torch; only reading an item of
`SyntheticComposites.torch_dataset()` does.
"""

from harmony_core.data.datasets import (
    Photo,
    Sample,
    SampleFiles,
    is_validation,
    list_photos,
    load_photo,
    load_sample,
    read_dataset,
    read_flat,
    read_iharmony,
    select_split,
)
from harmony_core.data.synth import TRANSFORMS, SynthConfig, SyntheticComposites, SynthSample, write_iharmony

__all__ = [
    "Photo", "Sample", "SampleFiles", "is_validation", "list_photos", "load_photo", "load_sample",
    "read_dataset", "read_flat", "read_iharmony", "select_split",
    "SynthConfig", "SynthSample", "SyntheticComposites", "TRANSFORMS", "write_iharmony",
]
