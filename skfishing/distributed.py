"""Features on a Dask cluster, stored as chunked Zarr arrays.

Past one machine, extraction runs on the workers of a :mod:`dask.distributed`
cluster. :func:`dask_transform` applies a transformer to a Dask array (or a
list of image paths) block by block: a lazy Dask array whose blocks are
computed on the workers, each of which builds the transformer's network once
and keeps it for all its blocks. :func:`to_zarr` writes features to a chunked
on-disk Zarr store and :func:`from_zarr` opens one lazily, in any process.
Sketching (:class:`~skfishing.TensorSketch`, through :func:`dask_transform`
again) and incremental training (``dask_ml.wrappers.Incremental``) then run
on the same cluster; see :ref:`scaling`.

Needs the optional dependencies ``pip install "skfishing[dask]"``.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from numbers import Integral
from pathlib import Path

import joblib
import numpy as np
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils._param_validation import HasMethods, Interval, validate_params
from sklearn.utils.validation import check_is_fitted

from ._extraction.transformer import DeepFisherTransformer
from .features import FIELDS, check_layout

__all__ = ["dask_transform", "to_zarr", "from_zarr", "WORKER_ATTRIBUTE", "ZARR_ATTRIBUTE"]

#: Attribute of a ``distributed.Worker`` that holds its transformers.
WORKER_ATTRIBUTE = "skfishing_estimators"

#: Attribute of the root group of a store written by :func:`to_zarr`.
ZARR_ATTRIBUTE = "skfishing"


def _dask():
    try:
        import dask
        import dask.array as da
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("skfishing.distributed needs dask: pip install 'skfishing[dask]'") from exc
    return dask, da


class _WorkerEstimators:
    """The transformers of one worker process, keyed by their pickled state.

    A task receives its transformer as a fresh unpickled copy; the worker
    keeps the first copy of each and hands it to every later task, so that
    what the transformer builds lazily (the network's sessions) is built
    once per worker, not once per task. The store lives on the worker
    object (it goes with the worker) and keeps the ``size`` most recently
    used estimators.
    """

    def __init__(self, size=8):
        self.lock = threading.Lock()
        self.size = size
        self.estimators = OrderedDict()

    def get(self, estimator):
        key = joblib.hash(estimator)
        with self.lock:
            kept = self.estimators.setdefault(key, estimator)
            self.estimators.move_to_end(key)
            while len(self.estimators) > self.size:
                self.estimators.popitem(last=False)
            return kept


def _worker_estimator(estimator):
    """``estimator``, or the equal one this worker already holds."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):  # not in a task on a distributed worker
        return estimator
    cache = getattr(worker, WORKER_ATTRIBUTE, None)
    if cache is None:
        cache = worker.__dict__.setdefault(WORKER_ATTRIBUTE, _WorkerEstimators())
    return cache.get(estimator)


def _as_input(block):
    """A block of a Dask array as transformers take it (paths as a list)."""
    if block.ndim == 1 and block.dtype.kind in "OUS":
        return [os.fsdecode(p) if isinstance(p, bytes) else p for p in block.tolist()]
    return block


#: How the errors of DeepFisherTransformer name a row of its input.
_ROW_INDEX = re.compile(r"\b(image|sample) (\d+)\b")


def _transform_block(block, starts, estimator):
    try:
        return _worker_estimator(estimator).transform(_as_input(block))
    except Exception as exc:
        raise _in_rows_of_x(exc, int(starts[0]), len(block), estimator) from exc


def _in_rows_of_x(exc, start, n_rows, estimator):
    """``exc`` of a block of rows ``start...``, renamed to say the rows of X, not of the block."""
    message = str(exc.args[0]) if len(exc.args) == 1 else str(exc)
    if isinstance(estimator, DeepFisherTransformer):  # "image 1" of the block is image start + 1 of X
        message = _ROW_INDEX.sub(lambda m: f"{m[1]} {start + int(m[2])}", message, count=1)
    message += f" (in the block of rows {start} to {start + n_rows - 1} of X)"
    try:
        return type(exc)(message)
    except Exception:  # exception types with another signature
        return RuntimeError(f"{type(exc).__name__}: {message}")


def _fit_and_probe(estimator, rows):
    """The estimator, fitted if it is a stateless transformer that is not
    (a copy: the caller's object is left alone); its output for ``rows``."""
    try:
        check_is_fitted(estimator)
    except NotFittedError as exc:
        if not isinstance(estimator, DeepFisherTransformer):
            raise NotFittedError(
                f"dask_transform needs a fitted {type(estimator).__name__}: fit it first "
                "(for TensorSketch, on one sample: only the widths matter)."
            ) from exc
        estimator = clone(estimator).fit(_as_input(rows))
    return estimator, estimator.transform(_as_input(rows))


@validate_params(
    {
        "estimator": [HasMethods(["transform"])],
        "X": [object],
        "chunk_size": [Interval(Integral, 1, None, closed="left")],
    },
    prefer_skip_nested_validation=True,
)
def dask_transform(estimator, X, *, chunk_size=256):
    """Transform a Dask array block by block, on the cluster's workers.

    Returns a lazy Dask array; computing it (``.compute()``,
    :func:`to_zarr`, ``dask_ml``) runs ``estimator.transform`` on every
    block of rows of ``X``, on the workers of the current
    :class:`distributed.Client` (or on the local scheduler when there is
    none). A worker keeps the first copy of ``estimator`` it receives and
    uses it for all its blocks, for the life of the worker, so a
    :class:`~skfishing.DeepFisherTransformer` builds its network once per
    worker. The result does not depend on the blocks: rows are computed
    independently.

    One sample is transformed at once, on a worker, to learn the shape and
    dtype of the output.

    Parameters
    ----------
    estimator : transformer
        A fitted transformer, or a :class:`~skfishing.DeepFisherTransformer`
        (stateless: if not fitted, it is fitted on the first sample). It is
        pickled into every task: pass models by name or path, not as an
        ``onnx.ModelProto``.

    X : dask.array.Array, ndarray or list of paths
        Samples along the first axis: image paths (a list, or a 1-D array
        of ``str``), images (an array of shape ``(n_samples, H, W, 3)``), or
        features (the output of another :func:`dask_transform` or of
        :func:`from_zarr`). The other axes are never split between blocks.

    chunk_size : int, default=256
        Rows per block when ``X`` is not a Dask array already (a Dask array
        keeps its row chunks).

    Returns
    -------
    Z : dask.array.Array
        The features, lazy: of shape ``(n_samples,)`` with the structured
        dtype of gradient features, or ``(n_samples, n_features)``; blocks of
        the row chunks of ``X``.

    Examples
    --------
    >>> from distributed import Client, LocalCluster  # doctest: +SKIP
    >>> client = Client(LocalCluster(n_workers=2))  # doctest: +SKIP
    >>> Z = dask_transform(DeepFisherTransformer("tinyalexnet"), paths)  # doctest: +SKIP
    >>> to_zarr(Z, "features.zarr")  # doctest: +SKIP
    """
    dask, da = _dask()
    if not isinstance(X, da.Array):
        if isinstance(X, (list, tuple)):
            bad = next((i for i, x in enumerate(X) if not isinstance(x, (str, os.PathLike))), None)
            if bad is not None:
                raise TypeError(
                    f"a list X must hold image paths (str or path-like); X[{bad}] is a "
                    f"{type(X[bad]).__name__}. Pass images as one array of shape (n_samples, H, W, 3) "
                    "or as a Dask array."
                )
            X = np.array([os.fspath(x) for x in X])
        X = da.from_array(np.asarray(X), chunks=(chunk_size,) + (-1,) * (np.ndim(X) - 1))
    if X.ndim == 0 or any(np.isnan(X.shape)) or X.shape[0] == 0:
        raise ValueError(
            f"X must be a Dask array of known shape with at least one sample, got shape {X.shape}."
        )
    X = X.rechunk({axis: -1 for axis in range(1, X.ndim)})
    estimator, probe = dask.delayed(_fit_and_probe, nout=2, pure=True)(estimator, X[:1]).compute()
    in_index = "i" + "abcdefgh"[: X.ndim - 1]
    out_index = "i" + "pqrstuvw"[: probe.ndim - 1]
    # the first row of each block, so that errors name the rows of X
    starts = np.repeat(np.cumsum((0,) + X.chunks[0][:-1]), X.chunks[0])
    return da.blockwise(
        _transform_block,
        out_index,
        X,
        in_index,
        da.from_array(starts, chunks=(X.chunks[0],)),
        "i",
        estimator=estimator,
        new_axes={index: size for index, size in zip(out_index[1:], probe.shape[1:])},
        concatenate=True,
        dtype=probe.dtype,
        meta=probe[:0],
        name="skfishing-transform",
    )


@validate_params(
    {"Z": [object], "store": [str, os.PathLike, HasMethods(["get", "set"])], "overwrite": ["boolean"]},
    prefer_skip_nested_validation=True,
)
def to_zarr(Z, store, *, overwrite=False):
    """Write features to a chunked Zarr store and open it lazily again.

    Computes ``Z`` (a lazy :func:`dask_transform` result runs now, on the
    cluster): each block is written by the worker that computed it, into
    the Zarr chunk of the same rows, so a block that is recomputed (its
    worker died) overwrites the same rows and no row is lost or repeated.
    The store is marked complete only when every block is written;
    :func:`from_zarr` refuses an incomplete one.

    Gradient features (structured arrays) are stored as two 2-D arrays (3-D for
    a layer applied at several positions), ``forward`` and ``backward``, with
    their provenance (model SHA-256, layer, temperature) as attributes; 2-D
    features as one array, ``features``.

    Parameters
    ----------
    Z : dask.array.Array or ndarray
        Features, as returned by :func:`dask_transform` or
        :class:`~skfishing.DeepFisherTransformer`. Row chunks must be
        regular (all equal but the last), as Zarr chunks are.

    store : str, path-like or zarr store
        Where to write: a directory path or any Zarr store. A path is
        written as a new hidden folder beside it (``.<name>.*.partial``),
        renamed to ``store`` only when every block is written: a job that
        fails leaves nothing at ``store`` changed, and ``Z`` may read the
        store it replaces (``to_zarr(f(from_zarr(path)), path,
        overwrite=True)``). After a failure on a cluster, blocks still
        running on other workers may leave the hidden folder: delete it.

    overwrite : bool, default=False
        Replace an existing feature store that :func:`to_zarr` wrote. A
        folder that holds anything else (another Zarr store, or any file
        that :func:`to_zarr` does not write) is never deleted: it is an
        error that names what was found. A Zarr store object (not a path)
        is cleared before writing, and refused if ``Z`` reads from it. By
        default an existing store is an error: nothing is overwritten.

    Returns
    -------
    Z : dask.array.Array
        The stored features, read lazily (:func:`from_zarr`).
    """
    _, da = _dask()
    if not isinstance(Z, da.Array):
        Z = np.asarray(Z)
        Z = da.from_array(Z, chunks=(4096,) + (-1,) * (Z.ndim - 1))
    Z = _regular_rows(Z)
    structured = Z.dtype.names is not None
    if structured:
        check_layout(Z, "Z")
        arrays = {field: Z[field] for field in FIELDS}
    elif Z.ndim == 2:
        arrays = {"features": Z}
    else:
        raise ValueError(f"Z must be a structured array or a 2-D array, got shape {Z.shape}.")
    path = _local_path(store)
    if path is None:
        _write_in_place(Z, arrays, structured, store, overwrite)
    else:
        _write_and_swap(Z, arrays, structured, path, store, overwrite)
    return from_zarr(store)


def _local_path(store):
    """The folder of a store given as a local path; None for store objects and URLs."""
    if isinstance(store, os.PathLike) or (isinstance(store, str) and "://" not in store):
        return Path(os.path.realpath(os.path.expanduser(os.fspath(store))))
    return None


def _shown(store):
    return os.fspath(store) if isinstance(store, os.PathLike) else store


def _write_arrays(Z, arrays, structured, root):
    """Create the arrays of ``root``, compute ``Z`` into them, mark the store complete."""
    dask, da = _dask()
    targets = []
    for name, array in arrays.items():
        targets.append(
            root.create_array(
                name,
                shape=array.shape,
                chunks=(array.chunks[0][0],) + array.shape[1:],
                dtype=array.dtype.base if array.dtype.subdtype is None else array.dtype.subdtype[0],
            )
        )
    _compute_all(da.store(list(arrays.values()), targets, lock=False, compute=False))
    metadata = dict(Z.dtype.metadata or {}) if structured else {}
    root.attrs[ZARR_ATTRIBUTE] = {
        "kind": "gradient" if structured else "dense",
        "source": {key: list(v) if isinstance(v, tuple) else v for key, v in metadata.items()},
        "complete": True,
    }


def _compute_all(delayed):
    """Compute ``delayed``; after a failure, wait for the blocks still running on local threads.

    So that no block writes into the new store's folder after it is removed.
    Blocks still running on the workers of a cluster may: the hidden folder
    they leave (``.<name>.*.partial``) can be deleted.
    """
    import dask.threaded
    from dask.base import get_scheduler

    dask, _ = _dask()
    if get_scheduler(collections=[delayed]) is not dask.threaded.get:
        dask.compute(delayed)
        return
    pool = ThreadPoolExecutor(dask.config.get("num_workers", None) or os.cpu_count() or 1)
    try:
        dask.compute(delayed, scheduler="threads", pool=pool)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _write_and_swap(Z, arrays, structured, target, store, overwrite):
    """Write the store in a new hidden folder beside ``target``, then rename it into place.

    Nothing at ``target`` is touched until every block is written: a job that
    fails leaves the old store as it was, and a ``Z`` that reads the old
    store (whatever the spelling of its path) reads it whole.
    """
    import zarr

    _check_target(target, store, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o777 & ~umask)  # mkdtemp creates it private
        _write_arrays(Z, arrays, structured, zarr.open_group(temporary, mode="w"))
        _swap(temporary, target, store, overwrite)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def _exists_error(store):
    return FileExistsError(
        f"{_shown(store)!r} already exists; pass overwrite=True to replace it, or another path."
    )


def _check_target(target, store, overwrite):
    """Refuse to replace anything but an empty folder or a store that to_zarr wrote."""
    if not os.path.lexists(target) or (target.is_dir() and not any(target.iterdir())):
        return
    if not overwrite:
        raise _exists_error(store)
    foreign = _foreign_entries(target)
    if foreign:
        raise ValueError(
            f"{_shown(store)!r} is not a Zarr store written by skfishing.distributed.to_zarr: it holds "
            f"{', '.join(foreign)}. overwrite=True replaces only a feature store that to_zarr wrote, "
            "holding nothing else, so nothing was deleted: move those files or choose another path."
        )


def _foreign_entries(folder):
    """What in ``folder`` a feature store written by to_zarr does not hold (at most 5 names)."""
    if not folder.is_dir() or folder.is_symlink():
        return [f"{folder.name} (not a folder)"]
    try:
        attrs = json.loads((folder / "zarr.json").read_text()).get("attributes", {})
        kind = attrs[ZARR_ATTRIBUTE]["kind"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        others = sorted(entry.name for entry in folder.iterdir() if entry.name != "zarr.json")
        return [
            "a zarr.json without the skfishing mark" if (folder / "zarr.json").exists() else "no zarr.json"
        ] + others[:5]
    expected = {"zarr.json"} | set(FIELDS if kind == "gradient" else ("features",))
    foreign = []
    for entry in sorted(folder.iterdir()):
        if entry.name not in expected or (entry.name != "zarr.json") != _is_folder(entry):
            foreign.append(entry.name)
        elif entry.name != "zarr.json":
            foreign += [f"{entry.name}/{name}" for name in _foreign_in_array(entry)]
    return foreign[:5]


def _is_folder(entry):
    return entry.is_dir() and not entry.is_symlink()


def _foreign_in_array(folder):
    """Entries of an array folder other than its zarr.json and its chunks ``c/<i>/<j>``."""
    foreign = []
    for entry in folder.iterdir():
        if entry.name == "zarr.json" and entry.is_file() and not entry.is_symlink():
            continue
        if entry.name != "c" or not _is_folder(entry):
            foreign.append(entry.name)
            continue
        for row in entry.iterdir():
            if not (row.name.isdigit() and _is_folder(row)):
                foreign.append(f"c/{row.name}")
                continue
            for chunk in row.iterdir():
                if not (chunk.name.isdigit() and chunk.is_file() and not chunk.is_symlink()):
                    foreign.append(f"c/{row.name}/{chunk.name}")
    return sorted(foreign)


def _swap(new, target, store, overwrite):
    """Rename the complete store ``new`` to ``target``, replacing the old store there."""
    try:
        os.rename(new, target)  # fails if target is a file or a folder that is not empty
        return
    except OSError as exc:
        if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
            raise
        if not overwrite:
            raise _exists_error(store) from None
    _check_target(target, store, overwrite)  # again: it may have changed during the job
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
    os.rename(target, old / "store")
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(old / "store", target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _write_in_place(Z, arrays, structured, store, overwrite):
    """Write to a Zarr store object (no folder to swap): refuse to overwrite what Z reads."""
    import zarr

    if overwrite and _reads_from(Z, store):
        raise ValueError(
            f"Z reads from {store!r}, the store to overwrite: write to another store, then replace it."
        )
    try:
        root = zarr.open_group(store, mode="w" if overwrite else "w-")
    except (FileExistsError, zarr.errors.ContainsGroupError, zarr.errors.ContainsArrayError) as exc:
        raise _exists_error(store) from exc
    _write_arrays(Z, arrays, structured, root)


def _reads_from(Z, store):
    """Whether the task graph of ``Z`` reads a Zarr array of ``store``."""
    import zarr

    for value in dict(Z.__dask_graph__()).values():
        value = getattr(value, "value", value)  # a DataNode holds its object
        # the same store opened read-only is another object with the same URL
        if isinstance(value, zarr.Array) and (value.store is store or str(value.store) == str(store)):
            return True
    return False


def _regular_rows(Z):
    """``Z`` with row chunks that Zarr chunks can match."""
    rows = Z.chunks[0]
    if len(rows) > 1 and (len(set(rows[:-1])) > 1 or rows[-1] > rows[0]):
        Z = Z.rechunk({0: max(rows)})
    return Z.rechunk({axis: -1 for axis in range(1, Z.ndim)})


@validate_params(
    {"store": [str, os.PathLike, HasMethods(["get", "set"])]}, prefer_skip_nested_validation=True
)
def from_zarr(store):
    """Open features written by :func:`to_zarr`, lazily.

    Parameters
    ----------
    store : str, path-like or zarr store
        The store :func:`to_zarr` wrote.

    Returns
    -------
    Z : dask.array.Array
        The features, in row chunks of the store's chunks: a structured
        array with fields ``"forward"`` and ``"backward"`` (float32, with
        the provenance of :class:`~skfishing.DeepFisherTransformer` in the
        dtype's metadata) or a 2-D array. Nothing is read until it is
        computed.
    """
    import zarr

    _, da = _dask()
    path = _local_path(store)
    try:
        root = zarr.open_group(store if path is None else path, mode="r")
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"no Zarr store at {store!r}") from exc
    info = root.attrs.get(ZARR_ATTRIBUTE)
    if not info or not info.get("complete"):
        raise ValueError(
            f"{store!r} is not a complete feature store written by skfishing.distributed.to_zarr "
            "(the job that wrote it may have failed); write it again."
        )
    if info["kind"] == "dense":
        return da.from_zarr(root["features"])
    forward, backward = (da.from_zarr(root[field]) for field in FIELDS)
    source = {key: tuple(v) if isinstance(v, list) else v for key, v in info["source"].items()}
    fields = [(field, array.dtype, array.shape[1:]) for field, array in zip(FIELDS, (forward, backward))]
    dtype = np.dtype(fields, metadata=source) if source else np.dtype(fields)  # no metadata: None is refused
    positions = "p" if forward.ndim == 3 else ""  # a layer applied at several positions
    return da.blockwise(
        _join_fields,
        "i",
        forward,
        "i" + positions + "a",
        backward,
        "i" + positions + "b",
        dtype=dtype,
        meta=np.empty(0, dtype=dtype),
        concatenate=True,
        join_dtype=dtype,
        name="skfishing-join",
    )


def _join_fields(forward, backward, join_dtype):
    Z = np.empty(len(forward), dtype=join_dtype)
    Z["forward"], Z["backward"] = forward, backward
    return Z
