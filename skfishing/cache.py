"""Caches that never change a result: feature caches and Gram stores owned by estimators.

A grid search over ``layer`` and ``temperature`` with cross-validation would
run the whole network for every candidate and fold. What does not depend on
those parameters — the head input (e.g. pool5) and the pre-activations of
every FC layer, together the *state* of a sample
(:meth:`~skfishing.FCHead.state`) — is kept per sample in a
:class:`FeatureCache`; only the cheap head reruns, and its outputs are kept
too (a cross-validation asks for each sample once per fold). For a layer of
the trunk, the cache keeps the tensors that the graph carries past the
layer (its *cut*): that layer and every later one, and the head's state,
are computed from them at any temperature, without the image.

**Who owns a cache.** No cache is process-wide. A
:class:`~skfishing.DeepFisherTransformer` (or
:class:`~skfishing.TraceKernelSVC`) shares one cache with all its clones,
which is what ``GridSearchCV``, ``cross_validate`` and friends make: the
cache lives as long as the estimator that was cloned, and is garbage
collected with it. A transformer that is used directly (a one-off
extraction) caches nothing and hashes nothing: it runs straight from the
input to the features. ``memory=`` asks for a cache explicitly: a folder
(states are also written there, shared between processes and runs) or a
:class:`FeatureCache` object that you create, size and clear yourself.

**Keys are content.** A state is stored under a BLAKE3 key of the model's
content (SHA-256 of the ONNX file and its external data), the execution
providers and their options (a TF32 result is never returned to an exact
run), the image preprocessing and the sample's content: the bytes of an image file (hashed
once per file identity: device, inode, size, modification and change
times, so a file replaced by another of the same size and modification time
is hashed again), the pixels, mode, palette, transparency and EXIF
orientation of a PIL image, the values, dtype and shape of an array.

**Disk entries are verified on read.** Each ``<key>.npy`` file in a
``memory=`` folder is named after its key and the versions of the package
and of what shapes its value (:data:`DISK_VERSIONS`), so that a folder
filled by another version is never read; it ends with a BLAKE3 checksum of
its key and content, and
is written atomically (a reader never sees a partly written file). An entry
whose checksum, dtype or shape is wrong is treated as missing, with a
:class:`CorruptCacheWarning` naming the file, and is recomputed and
replaced.
"""

from __future__ import annotations

import io
import os
import stat
import threading
import uuid
import warnings
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from numbers import Integral
from pathlib import Path

import numpy as np
from blake3 import blake3
from sklearn.utils._param_validation import Interval, validate_params

from . import state
from ._io.files import atomic_path, check_writable_folder

__all__ = [
    "ArrayStore",
    "CorruptCacheWarning",
    "DiskStore",
    "FeatureCache",
    "SharedCacheMixin",
    "clear_caches",
    "content_key",
    "derived_keys",
    "shared_cache",
    "disk_version",
]

_KEY_LENGTH = 20  # bytes of BLAKE3 digest in a key (40 hexadecimal digits)
_CHECKSUM_LENGTH = 32

#: Versions of what shapes a value kept on disk, besides the package's own
#: version: part of the name and checksum of every disk entry, so that an
#: entry written by another version is never read (it is recomputed). Bump
#: one when its code changes what it computes, even within a release.
DISK_VERSIONS = {
    "format": 1,  # the entry file: .npy bytes and checksum (DiskStore)
    "preprocessing": 1,  # image decoding, resizing and normalisation (skfishing._extraction.images, batches)
    "graph": 1,  # the network graph built from the model, states included (skfishing._onnx.graph, network)
    "cuts": 1,  # the tensors kept per image for a trunk layer, and their position (skfishing._onnx.cuts)
}


def disk_version():
    """The version string of disk entries: the package's and :data:`DISK_VERSIONS`."""
    from . import __version__

    return f"skfishing {__version__}|" + "|".join(f"{k} {v}" for k, v in sorted(DISK_VERSIONS.items()))


class CorruptCacheWarning(RuntimeWarning):
    """A cache entry on disk was unreadable or did not match its checksum; it is recomputed."""


class ArrayStore:
    """Least-recently-used in-memory store of arrays, bounded by total bytes.

    Parameters
    ----------
    max_bytes : int, default=256 MiB
        Entries are evicted, oldest use first, beyond this many bytes.
    """

    @validate_params(
        {"max_bytes": [Interval(Integral, 0, None, closed="left")]}, prefer_skip_nested_validation=True
    )
    def __init__(self, max_bytes=256 << 20):
        self.max_bytes = int(max_bytes)
        self.cache_id = uuid.uuid4().hex
        self._entries = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key):
        """The array stored under ``key`` (read-only), or None."""
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
            return value

    def put(self, key, value):
        """Store a read-only copy of ``value`` (nothing if larger than ``max_bytes``)."""
        value = np.asarray(value)
        if value.nbytes > self.max_bytes:
            return
        value = np.array(value, copy=True)
        value.setflags(write=False)
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._entries[key] = value
            self._bytes += value.nbytes
            while self._bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted.nbytes

    def clear(self):
        """Forget every entry."""
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def __len__(self):
        return len(self._entries)

    @property
    def nbytes(self):
        """Bytes held."""
        return self._bytes


class DiskStore:
    """Arrays in a folder, one verified ``<key>.npy`` file each.

    A file is a NumPy ``.npy`` file followed by the 32-byte BLAKE3 digest of
    the key and the ``.npy`` bytes (``np.load`` still reads it). Files are
    written to a temporary name and renamed into place. The file of a key is
    named after the key and the version of the package and of what shapes
    the values (:func:`disk_version`): entries written by another version
    are never read.

    A cache folder is trusted input: the checksum detects damage, not
    tampering (anyone who can write there can write entries that verify).

    Parameters
    ----------
    directory : str or path-like
        The folder (created when missing); ``~`` is the user's home.
    """

    @validate_params({"directory": [str, os.PathLike]}, prefer_skip_nested_validation=True)
    def __init__(self, directory):
        self.directory = Path(directory).expanduser()
        self.version = disk_version()

    def check_writable(self, what="memory"):
        """Create the folder and check that files can be written there.

        Raises
        ------
        OSError
            Naming the folder and ``what`` (the parameter that gave it).
        """
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise type(exc)(
                exc.errno,
                f"{what}={os.fsdecode(self.directory)!r}: cannot create the cache folder "
                f"({exc.strerror or exc}); pass a writable folder or {what}=None",
            ) from exc
        check_writable_folder(self.directory, f"the {what}= cache folder")

    def entry_name(self, key):
        """The name of entry ``key`` on disk, with the version: another version's entry is another file.

        Parameters
        ----------
        key : str
            The entry's key.

        Returns
        -------
        name : str
            Hexadecimal digits; the file is ``name + ".npy"``, and its
            checksum covers this name.
        """
        return blake3(f"{self.version}|{key}".encode()).hexdigest(length=_KEY_LENGTH)

    def path(self, key):
        """The file of entry ``key`` (it may not exist).

        Parameters
        ----------
        key : str
            The entry's key.

        Returns
        -------
        path : pathlib.Path
        """
        return self.directory / f"{self.entry_name(key)}.npy"

    def get(self, key, dtype, shape):
        """The entry ``key`` if present, intact and of this dtype and shape, else None.

        A present but bad entry gives a :class:`CorruptCacheWarning` naming the file.
        """
        path = self.path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            warnings.warn(
                f"cache entry {os.fsdecode(path)} cannot be read ({exc}); recomputing it",
                CorruptCacheWarning,
                stacklevel=3,
            )
            return None
        body, checksum = data[:-_CHECKSUM_LENGTH], data[-_CHECKSUM_LENGTH:]
        problem = None
        if len(data) <= _CHECKSUM_LENGTH or blake3(self.entry_name(key).encode() + body).digest() != checksum:
            problem = "its checksum does not match its content"
        else:
            try:
                value = _read_npy(body)
            except ValueError as exc:
                problem = f"it is not a valid .npy file ({exc})"
            else:
                if value.dtype != np.dtype(dtype) or value.shape != tuple(shape):
                    problem = (
                        f"it holds {value.dtype} values of shape {value.shape}, "
                        f"not {np.dtype(dtype)} of shape {tuple(shape)}"
                    )
        if problem is not None:
            warnings.warn(
                f"cache entry {os.fsdecode(path)} is corrupt: {problem}; recomputing it",
                CorruptCacheWarning,
                stacklevel=3,
            )
            return None
        return value

    def put(self, key, value):
        """Write ``value`` under ``key`` atomically.

        Raises
        ------
        OSError
            If the file cannot be written; no partial file is left behind.
        """
        try:
            buffer = io.BytesIO()
            np.save(buffer, np.ascontiguousarray(value), allow_pickle=False)
            body = buffer.getvalue()
            self.directory.mkdir(parents=True, exist_ok=True)
            with atomic_path(self.path(key), private=True) as temporary, open(temporary, "wb") as f:
                f.write(body)
                f.write(blake3(self.entry_name(key).encode() + body).digest())
        except OSError as exc:
            raise self._error(exc) from exc

    def _error(self, exc):
        return type(exc)(
            exc.errno,
            f"cannot write to the cache folder {os.fsdecode(self.directory)!r} "
            f"({exc.strerror or exc}); free space there or pass another folder",
        )


def _read_npy(body):
    """Parse ``.npy`` bytes without copying the data."""
    f = io.BytesIO(body)
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    count = int(np.prod(shape))
    if fortran or dtype.hasobject or len(body) - f.tell() != count * dtype.itemsize:
        raise ValueError("unexpected layout or length")
    return np.frombuffer(body, dtype=dtype, count=count, offset=f.tell()).reshape(shape)


class FeatureCache:
    """Network states and head outputs of samples, by content.

    Give one to :class:`~skfishing.DeepFisherTransformer` as ``memory=`` to
    share it between transformers, size it or clear it yourself; otherwise a
    transformer makes one for itself and its clones (see the module
    documentation).

    Parameters
    ----------
    directory : str or path-like, default=None
        Folder where states are also written, shared between processes and
        runs; None keeps them in memory only.
    max_bytes : int, default=1 GiB
        Memory for states and cuts (head outputs get a quarter more); least
        recently used entries are evicted beyond it. A state is the head
        input and the FC pre-activations in float32: 4 bytes times their
        widths; a cut, 4 bytes times the ``cache_floats`` of its layer
        (:func:`skfishing.list_layers`).

    Attributes
    ----------
    states : ArrayStore
        States, cuts and the position of each image's cut, in memory.
    outputs : ArrayStore
        Head outputs (per sample, outputs, temperature and labels) in memory.
    disk : DiskStore or None
        The folder's store.

    Notes
    -----
    A cache is saved (pickle, joblib, :func:`skfishing.persistence.dump`)
    as its settings, ``directory`` and ``max_bytes``, never its entries:
    loaded in another process it starts empty, and a ``directory`` is read
    again.
    """

    @validate_params(
        {"directory": [str, os.PathLike, None], "max_bytes": [Interval(Integral, 0, None, closed="left")]},
        prefer_skip_nested_validation=True,
    )
    def __init__(self, directory=None, *, max_bytes=1 << 30):
        self.directory = directory
        self.max_bytes = int(max_bytes)
        self.cache_id = uuid.uuid4().hex
        self.states = ArrayStore(max_bytes)
        self.outputs = ArrayStore(max_bytes // 4)
        self.disk = None if directory is None else DiskStore(directory)
        state.attach_cache(self.cache_id, lambda: self)  # so that clear_caches() reaches it

    def __repr__(self):
        return f"FeatureCache(directory={self.directory!r}, max_bytes={self.max_bytes})"

    def __reduce__(self):
        # pickle (joblib): the settings and the id, so that the tasks of one search
        # share one cache in a worker; never the entries, nor the locks
        return (_attach_feature_cache, (self.cache_id, self.directory, self.max_bytes))

    def __getstate__(self):
        # skops.io, which reads __getstate__ rather than __reduce__: the settings only
        return {"directory": self.directory, "max_bytes": self.max_bytes}

    def __setstate__(self, state_):
        """An empty cache with the saved settings (loading a skops file)."""
        if not isinstance(state_, dict) or set(state_) != {"directory", "max_bytes"}:
            raise ValueError(f"a FeatureCache is saved as its directory and max_bytes, got {state_!r}")
        self.__init__(state_["directory"], max_bytes=state_["max_bytes"])

    def clear(self):
        """Forget the in-memory entries (files on disk stay)."""
        self.states.clear()
        self.outputs.clear()

    def sample_keys(self, X, context):
        """One key per sample of ``X`` (None where a sample has none).

        Parameters
        ----------
        X : ndarray or sequence
            The input, as given to ``transform``.
        context : str
            Everything besides the sample that the state depends on: the
            model's content and the preprocessing.

        Returns
        -------
        keys : list of str or None
            40 hexadecimal digits of BLAKE3 per sample; None for samples
            that cannot be read (the image loader reports them).
        """
        prefix = blake3(context.encode()).digest()

        def key(sample):
            token = self._token(sample)
            return None if token is None else blake3(prefix + token).hexdigest(length=_KEY_LENGTH)

        n_threads = min(4, os.cpu_count() or 1)
        if len(X) < 2 or n_threads == 1:
            return [key(sample) for sample in X]
        # blake3 and file reads release the GIL: hash runs of samples in parallel.
        step = -(-len(X) // (4 * n_threads))
        with ThreadPoolExecutor(max_workers=n_threads) as pool:
            runs = pool.map(lambda start: [key(s) for s in X[start : start + step]], range(0, len(X), step))
            return [k for run in runs for k in run]

    def _token(self, sample):
        """Bytes that identify one input sample by content."""
        if isinstance(sample, (str, bytes, os.PathLike)):
            digest = self._file_digest(sample)
            return None if digest is None else b"file:" + digest
        if hasattr(sample, "tobytes") and hasattr(sample, "mode") and hasattr(sample, "size"):  # PIL
            try:
                return b"pil:" + _pil_digest(sample)
            except Exception:  # e.g. a closed image: the image loader reports it with its index
                return None
        array = np.ascontiguousarray(sample)
        if array.dtype == object:
            return None
        digest = blake3(f"{array.dtype.str}:{array.shape}:".encode())
        digest.update(array.reshape(-1).view(np.uint8))
        return b"array:" + digest.digest()

    def _file_digest(self, path):
        try:
            st = os.stat(path)
        except (OSError, ValueError):
            return None  # the image loader reports the missing file
        if not stat.S_ISREG(st.st_mode):
            return None  # never open a FIFO or a device: the image loader refuses it
        try:
            return state.file_hashes().blake3(path)
        except OSError:
            return None


def _pil_digest(image):
    """Digest of everything of a PIL image that its decoded RGB pixels depend on."""
    digest = blake3(f"{image.mode}:{image.size}:".encode())
    palette = image.getpalette(None) if image.mode in ("P", "PA") else None
    digest.update(repr((palette, image.info.get("transparency"), image.getexif().get(0x0112))).encode())
    digest.update(image.tobytes())
    return digest.digest()


def _attach_feature_cache(cache_id, directory, max_bytes):
    """The live FeatureCache ``cache_id`` of this process, or an empty one (unpickling)."""

    def create():
        cache = FeatureCache(directory, max_bytes=max_bytes)
        cache.cache_id = cache_id
        return cache

    return state.attach_cache(cache_id, create, keep=True)


class SharedCacheMixin:
    """Estimators that share one cache with their clones.

    ``clone(estimator)`` gives the clone the estimator's cache (made on first
    use by ``_make_cache``), so the candidates and folds of a search share it.
    The estimator cloned is not changed: its cache is kept for it in
    :mod:`skfishing.state` (:func:`shared_cache` finds it). Pickled, the
    cache travels as its id: in a joblib worker, the tasks of one search
    attach to one cache (see :func:`skfishing.state.attach_cache`).
    """

    def __sklearn_clone__(self):
        clone = super().__sklearn_clone__()
        clone._shared_cache = self._own_cache()
        return clone

    def _own_cache(self):
        cache = shared_cache(self)
        if cache is None:

            def create():
                made = self._make_cache()
                return state.attach_cache(made.cache_id, lambda: made)

            cache = state.estimator_cache(self, create)
        return cache

    def __getstate__(self):
        state_ = dict(super().__getstate__())  # a copy: object.__getstate__ may return __dict__
        cache = shared_cache(self)
        if cache is not None:  # plain values: safe for skops.io too
            state_["_shared_cache"] = ("skfishing-shared-cache", cache.cache_id, cache.max_bytes)
        return state_

    def __setstate__(self, state_):
        handle = state_.get("_shared_cache")
        if isinstance(handle, tuple):
            _, cache_id, max_bytes = handle

            def create():
                cache = self._make_cache(max_bytes)
                cache.cache_id = cache_id
                return cache

            state_["_shared_cache"] = state.attach_cache(cache_id, create, keep=True)
        super().__setstate__(state_)


@validate_params({"estimator": "no_validation"}, prefer_skip_nested_validation=True)  # any object
def shared_cache(estimator):
    """The cache that ``estimator`` shares with its clones, or None if it has none yet.

    A :class:`~skfishing.DeepFisherTransformer` (a
    :class:`~skfishing.cache.FeatureCache`) or a
    :class:`~skfishing.TraceKernelSVC` (an :class:`ArrayStore` of Gram
    matrices) gets one when it is first cloned; an estimator used directly
    has none.

    Parameters
    ----------
    estimator : object
        Any estimator.

    Returns
    -------
    cache : FeatureCache, ArrayStore or None
    """
    cache = getattr(estimator, "__dict__", {}).get("_shared_cache")
    return state.estimator_cache(estimator) if cache is None else cache


def clear_caches():
    """Forget everything skfishing keeps in memory in this process.

    Empties every live feature cache and Gram store, the networks (onnxruntime
    sessions) and the file hashes (see :func:`skfishing.state.clear`). Files
    written to ``memory=`` folders stay.
    """
    state.clear()


@validate_params(
    {"array": "no_validation", "context": [str]}, prefer_skip_nested_validation=True
)  # any array
def content_key(array, context):
    """Key of the whole content of ``array`` (values, dtype and shape) and ``context``.

    Parameters
    ----------
    array : ndarray
        Any array, structured ones included.
    context : str
        Everything else the keyed value depends on.

    Returns
    -------
    key : str
        40 hexadecimal digits of BLAKE3.
    """
    array = np.ascontiguousarray(array)
    digest = blake3(f"{context}|{array.dtype.descr}|{array.shape}".encode(), max_threads=blake3.AUTO)
    digest.update(array.reshape(-1).view(np.uint8))
    return digest.hexdigest(length=_KEY_LENGTH)


@validate_params({"keys": [list], "context": [str]}, prefer_skip_nested_validation=True)
def derived_keys(keys, context):
    """Keys for what is computed from each keyed sample and ``context``.

    Parameters
    ----------
    keys : list of str or None
        As returned by :meth:`FeatureCache.sample_keys`.
    context : str
        Everything else the derived value depends on.

    Returns
    -------
    keys : list of str or None
        None where ``keys`` has None.
    """
    prefix = blake3(context.encode()).digest()
    return [
        None if key is None else blake3(prefix + key.encode()).hexdigest(length=_KEY_LENGTH) for key in keys
    ]
