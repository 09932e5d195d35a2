"""Cache of each sample's forward pass, so that the network runs once per image.

A grid search over ``layer`` and ``temperature`` with cross-validation would
otherwise run the whole network for every candidate and fold. What does not
depend on those parameters — the trunk output (e.g. pool5) and the
pre-activations of every FC layer, together the *state* of a sample (see
:class:`skfishing.network.FisherNetwork`) — is kept per sample; only the
cheap backward pass of the FC head reruns. States are kept under a key made
of

* the model identity (file path, size and modification time, or the hash of
  a ``ModelProto``'s content) and the image preprocessing, and
* the sample: path, size and modification time for image files, the hash of
  the pixels or values for PIL images and arrays.

Entries live in a process-wide, size-bounded in-memory store
(:data:`forward_cache`, 1 GiB by default: set its ``max_bytes``) and, when a transformer has ``memory=<directory>``, in
that directory as ``.npy`` files written atomically (a reader never sees a
partly written file), so parallel workers share them. The cache never changes
a result: a sample's state does not depend on the batch it ran in.

The backward rows ``delta_layer`` of each sample, which depend on the layer,
the temperature and the label vector as well, are kept in a second, smaller
in-memory store (:data:`backward_cache`) under keys derived from the state
keys (:func:`derived_keys`): a cross-validation computes each of them once
instead of once per fold. A third store, :data:`gram_cache`, keeps the
training Gram matrices of :class:`~skfishing.TraceKernelSVC` by the content
of the features (:func:`content_key`). :func:`clear_caches` empties all three.
"""

from __future__ import annotations

import os
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from collections import OrderedDict
from pathlib import Path

import numpy as np
from blake3 import blake3

__all__ = [
    "ArrayCache",
    "backward_cache",
    "clear_caches",
    "content_key",
    "derived_keys",
    "forward_cache",
    "gram_cache",
    "sample_keys",
]

_DEFAULT_MAX_BYTES = 1 << 30


class ArrayCache:
    """Least-recently-used store of arrays, bounded by total bytes.

    Parameters
    ----------
    max_bytes : int
        Entries are evicted, oldest use first, beyond this many bytes.
    """

    def __init__(self, max_bytes=_DEFAULT_MAX_BYTES):
        self.max_bytes = max_bytes
        self._entries = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key, directory=None):
        """The array stored under ``key``, or None.

        Parameters
        ----------
        key : str
            The entry's key.
        directory : str or path-like, default=None
            Folder to look in (``<key>.npy``) when the entry is not in memory;
            what is found there is kept in memory too. An absent or partly
            written file is a miss.

        Returns
        -------
        value : ndarray or None
            Read-only.
        """
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
                return value
        if directory is None:
            return None
        try:
            value = np.load(Path(directory) / f"{key}.npy", allow_pickle=False)
        except (OSError, ValueError):  # absent, or not a complete .npy file
            return None
        self._remember(key, value)
        return value

    def put(self, key, value, directory=None):
        """Store a copy of ``value`` (and write it to ``directory``).

        Parameters
        ----------
        key : str
            The entry's key (also the file name in ``directory``).
        value : array-like
            What to store. A value larger than ``max_bytes`` is not kept in
            memory (nor copied).
        directory : str or path-like, default=None
            Folder to write ``<key>.npy`` to, atomically.
        """
        value = np.asarray(value)
        if value.nbytes <= self.max_bytes:
            value = np.array(value, copy=True)
            value.setflags(write=False)
            self._remember(key, value)
        if directory is not None:
            _atomic_save(Path(directory), key, value)

    def _remember(self, key, value):
        if value.nbytes > self.max_bytes:
            return
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
        """Forget every in-memory entry (files on disk stay)."""
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def __len__(self):
        return len(self._entries)

    @property
    def nbytes(self):
        """Bytes held in memory."""
        return self._bytes


def _atomic_save(directory, key, value):
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{key}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, value, allow_pickle=False)
        os.replace(tmp, directory / f"{key}.npy")
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


#: The process-wide store of forward states used by
#: :class:`~skfishing.DeepFisherTransformer` (1 GiB).
forward_cache = ArrayCache()

#: The process-wide store of training Gram matrices of
#: :class:`~skfishing.TraceKernelSVC` (256 MiB), keyed by the content of the
#: features: candidates of a search that differ only in SVM parameters (``C``,
#: ``class_weight``...) fit on one Gram matrix per fold.
gram_cache = ArrayCache(256 << 20)

#: The process-wide store of backward rows (``delta_layer`` of one sample for
#: one layer, temperature and label vector; 256 MiB, in memory only). They
#: are cheap to recompute but a cross-validation asks for each one once per
#: fold; being separate, they never push forward states out.
backward_cache = ArrayCache(256 << 20)


def _sample_token(sample):
    """Bytes that identify one input sample."""
    if isinstance(sample, (str, os.PathLike)):
        path = Path(sample)
        try:
            stat = path.stat()
        except OSError:
            return None  # let the image loader report the missing file
        return f"file:{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()
    if hasattr(sample, "tobytes") and hasattr(sample, "mode") and hasattr(sample, "size"):  # PIL
        try:
            pixels = sample.tobytes()
        except Exception:  # e.g. a closed image: the image loader reports it with its index
            return None
        digest = blake3(pixels).hexdigest()
        return f"pil:{sample.mode}:{sample.size}:{digest}".encode()
    array = np.ascontiguousarray(sample)
    if array.dtype == object:
        return None
    digest = blake3(array.view(np.uint8).reshape(-1)).hexdigest()
    return f"array:{array.dtype.str}:{array.shape}:{digest}".encode()


def clear_caches():
    """Forget every in-memory entry of :data:`forward_cache`,
    :data:`backward_cache` and :data:`gram_cache`.

    Files written to ``memory=`` folders stay.
    """
    forward_cache.clear()
    backward_cache.clear()
    gram_cache.clear()


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
    return digest.hexdigest(length=20)


def derived_keys(keys, context):
    """Keys for what is computed from each keyed sample and ``context``.

    Parameters
    ----------
    keys : list of str or None
        As returned by :func:`sample_keys`.
    context : str
        Everything else the derived value depends on.

    Returns
    -------
    keys : list of str or None
        None where ``keys`` has None.
    """
    prefix = blake3(context.encode()).digest()
    return [None if key is None else blake3(prefix + key.encode()).hexdigest(length=20) for key in keys]


def sample_keys(X, context):
    """One cache key per sample of ``X`` (None where a sample has none).

    Parameters
    ----------
    X : ndarray or sequence
        The input, as given to ``transform``.
    context : str
        Identifies everything besides the sample that the trunk output
        depends on: the model and the preprocessing.

    Returns
    -------
    keys : list of str or None
        40 hexadecimal digits of BLAKE3 per sample.
    """
    prefix = blake3(context.encode()).digest()

    def key(sample):
        token = _sample_token(sample)
        return None if token is None else blake3(prefix + token).hexdigest(length=20)

    n_threads = min(4, os.cpu_count() or 1)
    if len(X) < 2 or n_threads == 1:
        return [key(sample) for sample in X]
    # blake3 releases the GIL on large buffers: hash runs of samples in parallel.
    step = -(-len(X) // (4 * n_threads))
    with ThreadPoolExecutor(max_workers=n_threads) as pool:
        runs = pool.map(lambda start: [key(sample) for sample in X[start : start + step]], range(0, len(X), step))
        return [k for run in runs for k in run]
