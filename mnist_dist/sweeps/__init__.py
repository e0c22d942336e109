"""Sweeps: sweep files (``spec``), their submission as submitit job arrays, SLURM or local
(``submit``, ``slurm``: the checkpointable ``Trial``), the sweep folder's record and trial
states (``state``), and ``mnist-dist status`` (``status``)."""

from .._exports import lazy

__all__, __getattr__ = lazy(
    __name__,
    {
        "sweep_main": "submit",
        "status_main": "status",
        "Trial": "slurm",
        "load_sweep": "spec",
        "trial_states": "state",
    },
)
