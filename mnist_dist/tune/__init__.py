"""Search (``mnist-dist tune``): tune files (spec), the tune folder and its Optuna study
(study), the workers that train its trials (worker), the command (command), its report
(report) and promotion of a trial to a registered step (promote). The test set is locked."""

from .._exports import lazy

__all__, __getattr__ = lazy(
    __name__, {"load_tune": "spec", "TuneSpec": "spec", "Worker": "worker", "work": "worker"}
)
