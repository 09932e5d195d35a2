"""Process-wide state: the only module-level mutable objects of skfishing.

Everything skfishing keeps for the life of a Python process is created here,
lazily, and nowhere else; :func:`clear` forgets all of it (files on disk
stay). Estimators own their feature caches (see :mod:`skfishing.cache`);
what lives here is what several estimators of one process share:

* :func:`shared`: objects made once per process by the module that owns
  them, such as the :class:`~skfishing.registry.ModelRegistry` of the
  process (:func:`skfishing.registry.process_registry`): built-in, embedded
  and user-registered models;
* :func:`network`: the last few :class:`~skfishing._onnx.network.FisherNetwork`
  built (onnxruntime sessions), keyed by model content and providers, so
  that clones of an estimator never rebuild a session or reload weights;
* :func:`file_hashes`, :func:`file_sha256` and :func:`memo`: the one memo of
  file checksums (model files, and image files for the feature caches) and
  what is derived from them, computed once per file *identity* (device, inode, size,
  modification and change times: a file replaced by another of the same size
  and modification time, as ``cp -p``, ``rsync -a`` or ``tar`` leave it,
  has a new change time, so it is hashed again);
* :func:`attach_cache`: the feature caches of estimators unpickled in this
  process (joblib workers), so that the tasks a worker runs for one grid
  search share their cache as threads would.

Everything here is bounded and thread-safe.
"""

from __future__ import annotations

import os
import sys
import threading
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Hashable
from numbers import Integral

import pooch
from blake3 import blake3 as _blake3
from sklearn.utils._param_validation import Interval, validate_params

__all__ = [
    "FileHashes",
    "attach_cache",
    "clear",
    "estimator_cache",
    "file_hashes",
    "file_sha256",
    "memo",
    "models",
    "network",
    "shared",
]

_lock = threading.RLock()


class _LRU:
    """A small thread-safe least-recently-used mapping of computed values."""

    def __init__(self, size):
        self.size = size
        self._items = OrderedDict()

    def get(self, key, compute):
        with _lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = compute()  # outside the lock: building a network takes seconds
        with _lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value

    def clear(self):
        with _lock:
            self._items.clear()


# -- objects made once per process ---------------------------------------------

_shared = {}


@validate_params({"name": [str], "create": [callable]}, prefer_skip_nested_validation=True)
def shared(name, create):
    """The object ``name`` of this process, made by ``create()`` on first use.

    The module that owns a kind of object passes its constructor, so that
    this module imports none of them (the model registry:
    :func:`skfishing.registry.process_registry`).

    Parameters
    ----------
    name : str
        Identity of the object.
    create : callable
        Makes it, called once (until :func:`clear`, which keeps it).

    Returns
    -------
    value : object
    """
    with _lock:
        if name not in _shared:
            _shared[name] = create()
        return _shared[name]


def models():
    """The model registry of this process (deprecated).

    .. deprecated:: 0.1
        Use :func:`skfishing.registry.process_registry`.

    Returns
    -------
    registry : skfishing.registry.ModelRegistry
    """
    warnings.warn(
        "skfishing.state.models() is deprecated; use skfishing.registry.process_registry()",
        FutureWarning,
        stacklevel=2,
    )
    # the registry module is loaded with the package (skfishing/__init__.py imports it)
    return sys.modules["skfishing.registry"].process_registry()


# -- networks ----------------------------------------------------------------

_networks = _LRU(4)


@validate_params({"key": [Hashable], "build": [callable]}, prefer_skip_nested_validation=True)
def network(key, build):
    """The network stored under ``key``, built by ``build()`` on a miss.

    Parameters
    ----------
    key : hashable
        Model content and execution providers.
    build : callable
        Returns the :class:`~skfishing._onnx.network.FisherNetwork`.

    Returns
    -------
    network : FisherNetwork
    """
    return _networks.get(key, build)


# -- file hashes -------------------------------------------------------------

_derived = _LRU(256)


class FileHashes:
    """Checksums of files, each computed once while it stays the same file.

    A checksum is remembered under the file's ``(st_dev, st_ino, st_size,
    st_mtime_ns, st_ctime_ns)``. Copying tools keep size and modification
    time (``cp -p``, ``rsync -a``) but cannot keep the inode change time,
    which the kernel sets on every write, rename or ``utime``, so a file
    replaced by another is hashed again (git's index relies on the same
    fields). A change within one tick of the file system clock of the
    previous change is not seen (git's "racy" case).

    Two checksums are kept: SHA-256 (model files, checked against published
    values) and BLAKE3 (image files, keys of the feature caches). The least
    recently used of more than ``max_entries`` are forgotten.

    Parameters
    ----------
    max_entries : int, default=1_000_000
        Bound on the number of checksums remembered.
    """

    @validate_params(
        {"max_entries": [Interval(Integral, 1, None, closed="left")]}, prefer_skip_nested_validation=True
    )
    def __init__(self, max_entries=1_000_000):
        self.max_entries = max_entries
        self._digests = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _key(path):
        stat = os.stat(path)
        return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)

    @validate_params({"path": [str, os.PathLike]}, prefer_skip_nested_validation=True)
    def sha256(self, path):
        """SHA-256 of the file at ``path``, as 64 lowercase hexadecimal digits.

        Parameters
        ----------
        path : str or os.PathLike
            An existing file.

        Returns
        -------
        sha256 : str
        """
        return self._digest(path, "sha256", lambda: pooch.file_hash(str(path), alg="sha256"))

    @validate_params({"path": [str, bytes, os.PathLike]}, prefer_skip_nested_validation=True)
    def blake3(self, path):
        """BLAKE3 of the file at ``path``, as 32 bytes.

        Parameters
        ----------
        path : str, bytes or os.PathLike
            An existing regular file.

        Returns
        -------
        digest : bytes
        """

        def compute():
            with open(path, "rb") as handle:
                return _blake3(handle.read(), max_threads=1).digest()

        return self._digest(path, "blake3", compute)

    def _digest(self, path, algorithm, compute):
        key = (*self._key(path), algorithm)
        with self._lock:
            digest = self._digests.get(key)
            if digest is not None:
                self._digests.move_to_end(key)
                return digest
        digest = compute()
        if self._key(path) == key[:-1]:  # not changed while it was read
            self._store(key, digest)
        return digest

    def _store(self, key, digest):
        with self._lock:
            self._digests[key] = digest
            self._digests.move_to_end(key)
            while len(self._digests) > self.max_entries:
                self._digests.popitem(last=False)

    @validate_params({"path": [str, os.PathLike], "sha256": [str]}, prefer_skip_nested_validation=True)
    def remember(self, path, sha256):
        """Record the checksum of a file verified by other means (a download).

        Parameters
        ----------
        path : str or os.PathLike
            An existing file.
        sha256 : str
            Its SHA-256, 64 lowercase hexadecimal digits.
        """
        self._store((*self._key(path), "sha256"), sha256)

    def clear(self):
        """Forget every checksum: files are hashed again."""
        with self._lock:
            self._digests.clear()


_file_hashes = FileHashes()


def file_hashes():
    """The memo of file checksums of this process.

    Returns
    -------
    hashes : FileHashes
        SHA-256 of model files (the registry verifies downloads with it)
        and BLAKE3 of image files (keys of the feature caches), each
        computed once per file identity.
    """
    return _file_hashes


@validate_params({"path": [str, os.PathLike]}, prefer_skip_nested_validation=True)
def file_sha256(path):
    """SHA-256 of a file's content, computed once per file identity.

    The checksums the model registry verifies downloads with
    (:func:`file_hashes`): one memo for every file of the process.

    Parameters
    ----------
    path : str or path-like
        A regular file.

    Returns
    -------
    sha256 : str
        64 hexadecimal digits.
    """
    return _file_hashes.sha256(path)


@validate_params({"key": [Hashable], "compute": [callable]}, prefer_skip_nested_validation=True)
def memo(key, compute):
    """A value derived from file contents or settings, computed once per ``key``.

    The most recently used 256 values are kept.

    Parameters
    ----------
    key : hashable
        Must include everything the value derives from: the content hash
        of a file, or the (immutable) settings object.
    compute : callable
        Computes the value on a miss.

    Returns
    -------
    value : object
    """
    return _derived.get(key, compute)


# -- caches of estimators ------------------------------------------------------

_estimator_caches = weakref.WeakKeyDictionary()


@validate_params(
    {"estimator": "no_validation", "create": [callable, None]}, prefer_skip_nested_validation=True
)
def estimator_cache(estimator, create=None):
    """The cache ``estimator`` shares with its clones, kept for as long as it lives.

    Kept here rather than on the estimator, so that cloning an estimator
    does not change it (see :class:`~skfishing.cache.SharedCacheMixin`).

    Parameters
    ----------
    estimator : object
        The estimator cloned.
    create : callable, default=None
        Makes its cache on first use; None only looks.

    Returns
    -------
    cache : object or None
        None if it has none and ``create`` is None.
    """
    with _lock:
        cache = _estimator_caches.get(estimator)
        if cache is None and create is not None:
            cache = _estimator_caches[estimator] = create()
        return cache


# -- feature caches of unpickled estimators -----------------------------------

_caches = weakref.WeakValueDictionary()
_kept = _LRU(2)  # caches unpickled in this process, kept alive between tasks


@validate_params(
    {"cache_id": [str], "create": [callable], "keep": ["boolean"]}, prefer_skip_nested_validation=True
)
def attach_cache(cache_id, create, *, keep=False):
    """The live cache with id ``cache_id``, or a new one made by ``create()``.

    Parameters
    ----------
    cache_id : str
        Identity of the cache, the same in every process.
    create : callable
        Makes an empty cache with that id.
    keep : bool, default=False
        Keep it alive while no estimator refers to it (the two most recent
        ones): for caches unpickled in joblib workers, whose estimators live
        one task each.

    Returns
    -------
    cache : object
    """
    with _lock:
        cache = _caches.get(cache_id)
        if cache is None:
            cache = create()
            _caches[cache_id] = cache
    if keep:
        _kept.get(cache_id, lambda: cache)
    return cache


# -- clear -------------------------------------------------------------------


def clear():
    """Forget everything kept for this process (files on disk stay).

    Networks (onnxruntime sessions) are built again, model files hashed again
    and every live feature cache and Gram store emptied. Models registered
    with :func:`~skfishing.registry.register_model` stay registered: they are
    settings, not caches (:func:`~skfishing.registry.unregister_model`
    removes one).
    """
    _networks.clear()
    _derived.clear()
    _kept.clear()
    _file_hashes.clear()
    with _lock:
        caches = list(_caches.values())
    for cache in caches:
        cache.clear()
