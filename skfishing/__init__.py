"""Deep Fishing gradient features of pretrained networks for scikit-learn.

The package turns a pretrained classification network with a fully connected
head into per-image gradient features (Gordo, Gaidon and Perronnin, "Deep
Fishing: Gradient Features from Deep Nets", BMVC 2015) and classifies them
with a support vector machine on the trace kernel.
"""

from . import datasets, metrics
from .graph import add_backward
from .images import ImagePreprocessing
from .kernel import trace_kernel
from .registry import fetch_model, list_models, register_model
from .sketch import TensorSketch
from .svm import TraceKernelSVC

__version__ = "0.1.0.dev0"

__all__ = [
    "DeepFisherTransformer",
    "TraceKernelSVC",
    "TensorSketch",
    "trace_kernel",
    "add_backward",
    "ImagePreprocessing",
    "register_model",
    "list_models",
    "fetch_model",
    "datasets",
    "metrics",
    "__version__",
]


def __getattr__(name):
    # The network side (onnxruntime) loads on first use, so that the kernel
    # and SVM side imports without it (see docs/developers.rst).
    if name == "DeepFisherTransformer":
        from .transformer import DeepFisherTransformer

        globals()[name] = DeepFisherTransformer
        return DeepFisherTransformer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
