"""Kept for jobs queued before the package was laid out by concern: submitit pickled their
``Trial`` as ``mnist_dist.slurm.Trial``, and unpickling looks it up by that name."""

from .sweeps.slurm import Trial

__all__ = ["Trial"]
