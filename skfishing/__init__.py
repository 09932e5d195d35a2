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
from .transformer import DeepFisherTransformer

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
