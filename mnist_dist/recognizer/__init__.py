"""The digit recognizer: predict on images, evaluate on the test set, export as ONNX or
TorchScript."""

from .._exports import lazy

__all__, __getattr__ = lazy(
    __name__,
    {
        "predict_main": "predict",
        "evaluate_main": "evaluate",
        "export_main": "export",
    },
)
