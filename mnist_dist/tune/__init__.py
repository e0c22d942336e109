"""Search: tune files (a search space over TrainConfig fields, the test set locked), the
groundwork of ``mnist-dist tune`` (issue #23)."""

from .._exports import lazy

__all__, __getattr__ = lazy(__name__, {"load_tune": "spec", "TuneSpec": "spec"})
