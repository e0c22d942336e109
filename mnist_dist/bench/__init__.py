"""Benchmarks: the origin pipeline against our step and pure compute, every step,
seed packs and time to target."""

from .._exports import lazy

__all__, __getattr__ = lazy(
    __name__,
    {
        "bench_main": "bench",
    },
)
