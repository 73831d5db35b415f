"""Harmony Studio's library: image harmonization methods, metrics, evaluation and benchmarks."""

__version__ = "0.1.0"
