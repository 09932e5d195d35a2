"""Deep Fishing gradient features of pretrained networks for scikit-learn.

The package turns a pretrained classification network with a fully connected
head into per-image gradient features (Gordo, Gaidon and Perronnin, "Deep
Fishing: Gradient Features from Deep Nets", BMVC 2015) and classifies them
with a support vector machine on the trace kernel.
"""

from ._moved import install as _install_moved_paths

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
    "find_fc_head",
    "FCHead",
    "FCLayer",
    "HeadStructureError",
    "dequantize_model",
    "list_layers",
    "datasets",
    "metrics",
    "__version__",
]

# Every public name loads on first use, so that ``import skfishing`` (and the
# command line's --help and --version) costs nothing: scikit-learn, SciPy,
# ONNX and onnxruntime load only when a name that needs them is used. The
# network side (onnxruntime) is never loaded by the kernel and SVM side (see
# docs/developers.rst).
_LAZY = {
    "DeepFisherTransformer": "._extraction.transformer",
    "TraceKernelSVC": "._kernels.svm",
    "TensorSketch": "._kernels.sketch",
    "trace_kernel": "._kernels.kernel",
    "add_backward": "._onnx.graph",
    "ImagePreprocessing": "._extraction.images",
    "register_model": ".registry",
    "list_models": ".registry",
    "fetch_model": ".registry",
    "find_fc_head": "._onnx.head",
    "FCHead": "._onnx.head",
    "FCLayer": "._onnx.head",
    "HeadStructureError": "._onnx.head",
    "dequantize_model": "._onnx.quantized",
    "list_layers": "._onnx.layers",
    "datasets": None,
    "metrics": None,
}

# The module paths of earlier versions import, with a FutureWarning (see _moved.py).
_install_moved_paths()


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    if _LAZY[name] is None:
        value = importlib.import_module(f".{name}", __name__)
    else:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
