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

import os
import threading
from numbers import Integral

import joblib
import numpy as np
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils._param_validation import HasMethods, Interval, validate_params
from sklearn.utils.validation import check_is_fitted

from .kernel import _FIELDS, _check_layout
from .transformer import DeepFisherTransformer

__all__ = ["dask_transform", "to_zarr", "from_zarr"]

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
    once per worker, not once per task.
    """

    def __init__(self):
        self.lock = threading.Lock()
        self.estimators = {}

    def get(self, estimator):
        key = joblib.hash(estimator)
        with self.lock:
            return self.estimators.setdefault(key, estimator)


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


def _transform_block(block, estimator):
    return _worker_estimator(estimator).transform(_as_input(block))


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
    return da.blockwise(
        _transform_block,
        out_index,
        X,
        in_index,
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
        Where to write: a directory path or any Zarr store.

    overwrite : bool, default=False
        Replace an existing Zarr store (a folder that holds anything else is
        never deleted). By default an existing store is an error: nothing is
        overwritten.

    Returns
    -------
    Z : dask.array.Array
        The stored features, read lazily (:func:`from_zarr`).
    """
    import zarr

    dask, da = _dask()
    if not isinstance(Z, da.Array):
        Z = np.asarray(Z)
        Z = da.from_array(Z, chunks=(4096,) + (-1,) * (Z.ndim - 1))
    Z = _regular_rows(Z)
    structured = Z.dtype.names is not None
    if structured:
        _check_layout(Z, "Z")
        arrays = {field: Z[field] for field in _FIELDS}
    elif Z.ndim == 2:
        arrays = {"features": Z}
    else:
        raise ValueError(f"Z must be a structured array or a 2-D array, got shape {Z.shape}.")
    if overwrite:
        _check_replaceable(store)
    try:
        root = zarr.open_group(store, mode="w" if overwrite else "w-")
    except (FileExistsError, zarr.errors.ContainsGroupError, zarr.errors.ContainsArrayError) as exc:
        raise FileExistsError(
            f"{os.fspath(store) if isinstance(store, os.PathLike) else store!r} already exists; "
            "pass overwrite=True to replace it, or another path."
        ) from exc
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
    da.store(list(arrays.values()), targets, lock=False)
    metadata = dict(Z.dtype.metadata or {}) if structured else {}
    root.attrs[ZARR_ATTRIBUTE] = {
        "kind": "gradient" if structured else "dense",
        "source": {key: list(v) if isinstance(v, tuple) else v for key, v in metadata.items()},
        "complete": True,
    }
    return from_zarr(store)


def _check_replaceable(store):
    """Refuse to delete a folder that holds something else than a Zarr store."""
    import zarr

    if not isinstance(store, (str, os.PathLike)) or not os.path.exists(store):
        return
    try:
        zarr.open_group(store, mode="r")
    except Exception as exc:
        if os.path.isdir(store) and not os.listdir(store):
            return
        raise ValueError(
            f"{os.fspath(store)!r} exists and is not a Zarr store; overwrite=True replaces "
            "only Zarr stores: remove it yourself or choose another path."
        ) from exc


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
    try:
        root = zarr.open_group(store, mode="r")
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
    forward, backward = (da.from_zarr(root[field]) for field in _FIELDS)
    source = {key: tuple(v) if isinstance(v, list) else v for key, v in info["source"].items()}
    dtype = np.dtype(
        [(field, array.dtype, array.shape[1:]) for field, array in zip(_FIELDS, (forward, backward))],
        metadata=source or None,
    )
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
