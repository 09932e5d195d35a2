"""Save and load fitted pipelines with skops, without running code on load.

``joblib`` and ``pickle`` files can run any code when loaded. The ``skops``
format (:mod:`skops.io`) stores an estimator as data and, on load, creates
only the types the caller trusts. :func:`dump` and :func:`load` are thin
wrappers around :func:`skops.io.dump` and :func:`skops.io.load` that

* trust the types a skfishing pipeline holds, listed once in
  :data:`TRUSTED_TYPES`, and refuse a file that holds any other type (unless
  the caller trusts it explicitly), with a message that names it;
* keep the provenance of gradient features (the model's SHA-256, the layer,
  the temperature, the labels), which :class:`~skfishing.TraceKernelSVC`
  keeps in the dtype of its support vectors and which skops alone would
  drop, so that a loaded classifier still refuses features of another model
  or setting.

Install the optional dependency with ``pip install "skfishing[skops]"``.
"""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
import warnings
import zipfile

import numpy as np
import onnx
from sklearn.base import BaseEstimator
from sklearn.utils._param_validation import validate_params

from .features import SOURCE_KEYS
from .svm import TraceKernelSVC
from .transformer import DeepFisherTransformer

__all__ = ["TRUSTED_TYPES", "dump", "load"]


def _type_name(cls):
    return f"{cls.__module__}.{cls.__qualname__}"


#: The types, besides those skops trusts by default (scikit-learn, NumPy,
#: SciPy and Python built-ins), that a fitted skfishing pipeline holds:
#: the two estimators, a model given as a :class:`pathlib.Path`, and a
#: model given in memory as an :class:`onnx.ModelProto` (rebuilt by parsing
#: its bytes, which runs no code). :func:`load` creates these and refuses
#: any other.
TRUSTED_TYPES = tuple(
    _type_name(cls)
    for cls in (
        DeepFisherTransformer,
        TraceKernelSVC,
        pathlib.PosixPath,
        pathlib.WindowsPath,
        onnx.ModelProto,
    )
)

#: Name of the zip member that holds the provenance of structured arrays.
_PROVENANCE = "skfishing-provenance.json"


def _skops():
    try:
        import skops.io
    except ImportError:
        raise ImportError(
            "saving and loading with skops needs the skops package: "
            'pip install "skfishing[skops]" (or pip install skops)'
        ) from None
    return skops.io


def _children(obj):
    if isinstance(obj, BaseEstimator):
        return list(vars(obj).items())
    if isinstance(obj, dict):
        return [(key, value) for key, value in obj.items() if isinstance(key, str)]
    if isinstance(obj, (list, tuple)):
        return list(enumerate(obj))
    return []


def _provenance(estimator):
    """Where the structured arrays with dtype metadata are, and that metadata."""
    found, seen, stack = [], set(), [((), estimator)]
    while stack:
        path, obj = stack.pop()
        if isinstance(obj, np.ndarray):
            if obj.dtype.names and obj.dtype.metadata:
                metadata = {key: obj.dtype.metadata[key] for key in SOURCE_KEYS if key in obj.dtype.metadata}
                found.append({"path": list(path), "metadata": metadata})
            continue
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        stack += [((*path, key), child) for key, child in reversed(_children(obj))]
    return found


def _restore_provenance(estimator, entries, file):
    """Put the metadata recorded by :func:`dump` back on the arrays."""
    for entry in entries:
        path, metadata = entry["path"], dict(entry["metadata"])
        if not path or not set(metadata) <= set(SOURCE_KEYS):
            raise ValueError(f"{file}: malformed provenance entry {entry!r}.")
        if "labels" in metadata:
            metadata["labels"] = tuple(float(v) for v in metadata["labels"])
        parent = estimator
        for key in path[:-1]:
            parent = getattr(parent, key) if isinstance(parent, BaseEstimator) else parent[key]
        key = path[-1]
        array = getattr(parent, key) if isinstance(parent, BaseEstimator) else parent[key]
        if not isinstance(array, np.ndarray) or not array.dtype.names:
            raise ValueError(f"{file}: provenance recorded for {path!r}, which is not a structured array.")
        restored = array.view(np.dtype(array.dtype, metadata=metadata))
        if isinstance(parent, BaseEstimator):
            setattr(parent, key, restored)
        elif isinstance(parent, (list, dict)):
            parent[key] = restored


@validate_params(
    {"estimator": "no_validation", "file": [str, os.PathLike], "overwrite": ["boolean"]},
    prefer_skip_nested_validation=True,
)
def dump(estimator, file, *, overwrite=False):
    """Save a fitted estimator (such as a skfishing pipeline) in the skops format.

    The file is written under a temporary name and renamed when complete.
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
        If ``file`` exists and ``overwrite`` is False.
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
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(descriptor)
    try:
        with warnings.catch_warnings():
            # the dtype metadata that NumPy's .npy format drops is written below
            warnings.filterwarnings("ignore", message="metadata on a dtype", category=UserWarning)
            sio.dump(estimator, temporary)
        with zipfile.ZipFile(temporary, "a", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(_PROVENANCE, json.dumps(_provenance(estimator)))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


@validate_params(
    {"file": [str, os.PathLike], "trusted": [list, tuple, None]},
    prefer_skip_nested_validation=True,
)
def load(file, *, trusted=None):
    """Load an estimator saved in the skops format, trusting only known types.

    The file's types are listed first (without creating anything): types
    that skops trusts by default and :data:`TRUSTED_TYPES` are accepted;
    any other type must be listed in ``trusted``, else nothing is loaded.

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
        The estimator, with the provenance of its gradient features.

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
    allowed = set(TRUSTED_TYPES) | set(trusted or ())
    refused = sorted(set(found) - allowed)
    if refused:
        raise ValueError(
            f"{str(path)!r} holds types that skfishing does not trust: {', '.join(refused)}. "
            "Loading them could run their code, so nothing was loaded. If you know where the "
            "file comes from and these types are safe, pass them as load(..., trusted=[...])."
        )
    estimator = sio.load(path, trusted=sorted(found))
    with zipfile.ZipFile(path) as archive:
        if _PROVENANCE in archive.namelist():
            try:
                entries = json.loads(archive.read(_PROVENANCE))
            except ValueError as exc:
                raise ValueError(f"{str(path)!r}: unreadable {_PROVENANCE}: {exc}") from None
            _restore_provenance(estimator, entries, str(path))
    return estimator
