"""Sweeps: sweep files, their submission as submitit job arrays (SLURM or local), the
checkpointable ``Trial``, and the sweep folder's record and trial states."""

from .._exports import lazy

__all__, __getattr__ = lazy(
    __name__,
    {
        "sweep_main": "submit",
        "status_main": "submit",
        "Trial": "slurm",
        "load_sweep": "spec",
        "trial_states": "state",
    },
)
