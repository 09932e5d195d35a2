"""The module paths of earlier versions, still importable with a FutureWarning.

The implementation modules moved into private subpackages (see
docs/developers.rst); what users import is re-exported by the package and
its public submodules. ``import skfishing.kernel``, ``from skfishing.head
import find_fc_head`` and files that name a class by its old module
(joblib pickles of ``skfishing.transformer.DeepFisherTransformer``, skops
files) keep working: :class:`MovedModuleFinder` gives the module at its new
place under its old name, with one FutureWarning saying where to import
from now. No file is left at the old paths.
"""

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings

__all__ = []  # the package installs the finder; nothing here is user API

#: Old module -> (the module it is now, where its public names are imported
#: from now or None when it had no user API).
MOVED = {
    "skfishing.head": ("skfishing._onnx.head", "skfishing"),
    "skfishing.flatten": ("skfishing._onnx.flatten", None),
    "skfishing.quantized": ("skfishing._onnx.quantized", "skfishing"),
    "skfishing.graph": ("skfishing._onnx.graph", "skfishing"),
    "skfishing.graph_index": ("skfishing._onnx.graph_index", None),
    "skfishing.vjp": ("skfishing._onnx.vjp", None),
    "skfishing.layers": ("skfishing._onnx.layers", "skfishing"),
    "skfishing.network": ("skfishing._onnx.network", None),
    "skfishing.kernel": ("skfishing._kernels.kernel", "skfishing"),
    "skfishing.sketch": ("skfishing._kernels.sketch", "skfishing"),
    "skfishing.svm": ("skfishing._kernels.svm", "skfishing"),
    "skfishing.transformer": ("skfishing._extraction.transformer", "skfishing"),
    "skfishing.images": ("skfishing._extraction.images", "skfishing"),
    "skfishing.batches": ("skfishing._extraction.batches", None),
    "skfishing.model_spec": ("skfishing._io.model_spec", "skfishing.registry"),
    "skfishing.download": ("skfishing._io.download", "skfishing.registry"),
    "skfishing.files": ("skfishing._io.files", None),
    "skfishing.parts": ("skfishing._io.parts", None),
    "skfishing.demo": ("skfishing._demo", None),
}


def message(old):
    """The warning given when ``old`` is imported."""
    new, public = MOVED[old]
    if public is None:
        where = f"it is private now ({new}), not user API"
    else:
        where = f"import its public names from {public} (the module is private now: {new})"
    return f"the module {old} is deprecated and will be removed in a future version: {where}."


def former_names(type_name):
    """The names ``module.qualname`` a type had before its module moved (skops files name types so)."""
    module, _, qualname = type_name.rpartition(".")
    return tuple(f"{old}.{qualname}" for old, (new, _) in MOVED.items() if new == module)


class MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds the old module paths of :data:`MOVED`: the new module, under the old name.

    It comes first on ``sys.meta_path``: the table is the truth about these
    names, even where another finder (an editable install of another
    checkout) still knows a file at an old path.
    """

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec):
        return None  # a placeholder: exec_module puts the real module in its place

    def exec_module(self, module):
        old = module.__name__
        warnings.warn(message(old), FutureWarning, stacklevel=2)
        # the import system returns what sys.modules holds under the name it loaded
        sys.modules[old] = importlib.import_module(MOVED[old][0])


def install():
    """Put the finder on ``sys.meta_path`` (once per process)."""
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, MovedModuleFinder())
