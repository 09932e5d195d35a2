"""Save and load fitted pipelines with skops, without running code on load.

``joblib`` and ``pickle`` files can run any code when loaded. The ``skops``
format (:mod:`skops.io`) stores an estimator as data and, on load, creates
only the types the caller trusts. :func:`dump` and :func:`load` are thin
wrappers around :func:`skops.io.dump` and :func:`skops.io.load` that

* trust the types a skfishing pipeline holds, listed once in
  :data:`TRUSTED_TYPES`, and refuse a file that holds any other type (unless
  the caller trusts it explicitly), with a message that names it;
* write the file atomically.

The provenance of gradient features (the model's SHA-256, the layer, the
temperature, the labels) survives: :class:`~skfishing.TraceKernelSVC` keeps
it as a plain fitted attribute (``feature_source_``), so a loaded classifier
still refuses features of another model or setting.

Install the optional dependency with ``pip install "skfishing[skops]"``.
"""

from __future__ import annotations

import os
import pathlib
import warnings
import zipfile

import onnx
from sklearn.utils._param_validation import validate_params

from ._extraction.images import ImagePreprocessing
from ._extraction.transformer import DeepFisherTransformer
from ._io.files import atomic_path
from ._kernels.sketch import TensorSketch
from ._kernels.svm import TraceKernelSVC
from ._moved import former_names
from .cache import FeatureCache

__all__ = ["TRUSTED_TYPES", "dump", "load"]


def _type_name(cls):
    return f"{cls.__module__}.{cls.__qualname__}"


#: The types, besides those skops trusts by default (scikit-learn, NumPy,
#: SciPy and Python built-ins), that a fitted skfishing pipeline holds:
#: the estimators (:class:`~skfishing.TensorSketch` too, alone or as a
#: transformer's ``sketch``), a ``memory=`` :class:`~skfishing.cache.FeatureCache`
#: (saved as its folder and size: it loads empty), a model given as a
#: :class:`pathlib.Path`, a
#: model given in memory as an :class:`onnx.ModelProto` (rebuilt by parsing
#: its bytes, which runs no code), and the transformer's ``preprocessing``
#: (a dataclass of numbers). :func:`load` creates these and refuses any
#: other.
TRUSTED_TYPES = tuple(
    _type_name(cls)
    for cls in (
        DeepFisherTransformer,
        TraceKernelSVC,
        TensorSketch,
        FeatureCache,
        ImagePreprocessing,
        pathlib.PosixPath,
        pathlib.WindowsPath,
        onnx.ModelProto,
    )
)

#: The same types under the module paths of earlier versions: the files
#: those wrote name them so (their modules still import, see _moved.py).
_FORMER_TYPES = tuple(name for trusted in TRUSTED_TYPES for name in former_names(trusted))


def _skops():
    try:
        import skops.io
    except ImportError:
        raise ImportError(
            "saving and loading with skops needs the skops package: "
            'pip install "skfishing[skops]" (or pip install skops)'
        ) from None
    return skops.io


@validate_params(
    {"estimator": "no_validation", "file": [str, os.PathLike], "overwrite": ["boolean"]},
    prefer_skip_nested_validation=True,
)
def dump(estimator, file, *, overwrite=False):
    """Save a fitted estimator (such as a skfishing pipeline) in the skops format.

    The file is written under a temporary name and renamed when complete;
    without ``overwrite``, a file created meanwhile (by another process) is
    never replaced.
    Like joblib files, it holds the transformer's parameters (the model's
    registered name or path), not the network's weights: the model file must
    be present where the file is loaded.

    Parameters
    ----------
    estimator : object
        Usually a fitted :class:`~sklearn.pipeline.Pipeline` of
        :class:`~skfishing.DeepFisherTransformer` and
        :class:`~skfishing.TraceKernelSVC`.
    file : str or path-like
        The file to write, by convention with the ``.skops`` extension.
    overwrite : bool, default=False
        Whether to replace an existing file.

    Raises
    ------
    FileExistsError
        If ``file`` exists and ``overwrite`` is False, checked before the
        file is written and again, atomically, when it is moved into place.
    ImportError
        If skops is not installed.

    See Also
    --------
    load : Load the file, trusting only :data:`TRUSTED_TYPES`.

    Examples
    --------
    >>> from skfishing import persistence
    >>> persistence.dump(pipe, "pipeline.skops")  # doctest: +SKIP
    >>> pipe = persistence.load("pipeline.skops")  # doctest: +SKIP
    """
    sio = _skops()
    path = pathlib.Path(file)
    if os.path.lexists(path) and not overwrite:
        raise FileExistsError(f"{str(path)!r} exists; pass overwrite=True to replace it")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"folder {str(path.parent)!r} does not exist")
    with atomic_path(path, overwrite=overwrite) as temporary, warnings.catch_warnings():
        # NumPy's .npy format drops dtype metadata; TraceKernelSVC keeps it as feature_source_
        warnings.filterwarnings("ignore", message="metadata on a dtype", category=UserWarning)
        sio.dump(estimator, temporary)


@validate_params(
    {"file": [str, os.PathLike], "trusted": [list, tuple, None]},
    prefer_skip_nested_validation=True,
)
def load(file, *, trusted=None):
    """Load an estimator saved in the skops format, trusting only known types.

    The file's types are listed first (without creating anything): types
    that skops trusts by default and :data:`TRUSTED_TYPES` are accepted;
    any other type must be listed in ``trusted``, else nothing is loaded.

    The cache folders of loaded transformers (``memory=`` and ``cache_dir=``)
    are reset to None, with a warning that names them: skfishing writes
    there and trusts what it reads there, so a file never chooses them. Set
    them again (``set_params``) if you trust them.

    Parameters
    ----------
    file : str or path-like
        A file written by :func:`dump` (or by :func:`skops.io.dump`).
    trusted : list of str, default=None
        Further types to create, as fully qualified names (the names
        :func:`skops.io.get_untrusted_types` reports). List only types you
        have checked: creating an object may run its code.

    Returns
    -------
    estimator : object
        The estimator.

    Raises
    ------
    ValueError
        If the file holds a type that is neither in :data:`TRUSTED_TYPES`
        nor in ``trusted`` (the message lists them), or is not a skops file.
    FileNotFoundError
        If ``file`` does not exist.
    ImportError
        If skops is not installed.

    See Also
    --------
    dump : Save an estimator.
    """
    sio = _skops()
    path = pathlib.Path(file)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {str(path)!r}")
    try:
        found = sio.get_untrusted_types(file=path)
    except (zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise ValueError(f"{str(path)!r} is not a skops file: {exc}") from None
    allowed = set(TRUSTED_TYPES) | set(_FORMER_TYPES) | set(trusted or ())
    refused = sorted(set(found) - allowed)
    if refused:
        raise ValueError(
            f"{str(path)!r} holds types that skfishing does not trust: {', '.join(refused)}. "
            "Loading them could run their code, so nothing was loaded. If you know where the "
            "file comes from and these types are safe, pass them as load(..., trusted=[...])."
        )
    return _forget_folders(sio.load(path, trusted=sorted(found)), path)


def _forget_folders(estimator, path):
    """Reset the cache folders (``memory=``, ``cache_dir=``) of loaded transformers, with a warning.

    They are folders where the transformer writes (and whose entries it
    trusts): a file must not choose them. The caller sets them again.
    """
    from .cache import FeatureCache

    seen, todo = set(), [estimator]
    while todo:
        obj = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, DeepFisherTransformer):
            for name in ("memory", "cache_dir"):
                value = getattr(obj, name, None)
                folder = value.directory if isinstance(value, FeatureCache) else value
                if folder is not None:
                    setattr(obj, name, None)
                    warnings.warn(
                        f"{str(path)!r} sets {name}={folder!r}; a loaded file never chooses where "
                        f"skfishing writes, so {name} is None. If you trust that folder, set it again: "
                        f"estimator.set_params(...{name}=...).",
                        UserWarning,
                        stacklevel=3,
                    )
        if isinstance(obj, dict):
            todo.extend(obj.values())
        elif isinstance(obj, (list, tuple)):
            todo.extend(obj)
        elif hasattr(obj, "__dict__") and not isinstance(obj, type):
            todo.extend(vars(obj).values())
    return estimator
