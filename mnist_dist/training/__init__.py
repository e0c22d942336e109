"""The trainer: one step model or a pack of its seeds, its flags, W&B tracking and
the machine facts of a run."""

from .._exports import lazy

__all__, __getattr__ = lazy(
    __name__,
    {
        "train": "loop",
        "train_seeds": "packed",
        "parse_args": "flags",
        "Tracker": "tracking",
        "make_result": "runinfo",
    },
)
