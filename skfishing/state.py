"""Process-wide state: the only module-level mutable objects of skfishing.

Everything skfishing keeps for the life of a Python process is created here,
lazily, and nowhere else; :func:`clear` forgets all of it (files on disk
stay). Estimators own their feature caches (see :mod:`skfishing.cache`);
what lives here is what several estimators of one process share:

* :func:`models`: the :class:`~skfishing.registry.ModelRegistry` of the
  process: built-in, embedded and user-registered models;
* :func:`network`: the last few :class:`~skfishing.network.FisherNetwork`
  built (onnxruntime sessions), keyed by model content and providers, so
  that clones of an estimator never rebuild a session or reload weights;
* :func:`file_sha256` and :func:`memo`: hashes of model files and what is
  derived from them, computed once per file *identity* (device, inode, size,
  modification and change times: a file replaced by another of the same size
  and modification time, as ``cp -p``, ``rsync -a`` or ``tar`` leave it,
  has a new change time, so it is hashed again);
* :func:`attach_cache`: the feature caches of estimators unpickled in this
  process (joblib workers), so that the tasks a worker runs for one grid
  search share their cache as threads would.

Everything here is bounded and thread-safe.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict

__all__ = ["attach_cache", "clear", "file_sha256", "memo", "models", "network"]

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


# -- models ------------------------------------------------------------------

_models = None


def models():
    """The model registry of this process (created on first use).

    Returns
    -------
    registry : skfishing.registry.ModelRegistry
        Built from the package data on the first call (the built-in table
        and the embedded model's metadata are read then, and only then);
        the same object afterwards, until :func:`clear`.
    """
    global _models
    with _lock:
        if _models is None:
            from .registry import ModelRegistry

            _models = ModelRegistry()
        return _models


# -- networks ----------------------------------------------------------------

_networks = _LRU(4)


def network(key, build):
    """The network stored under ``key``, built by ``build()`` on a miss.

    Parameters
    ----------
    key : hashable
        Model content and execution providers.
    build : callable
        Returns the :class:`~skfishing.network.FisherNetwork`.

    Returns
    -------
    network : FisherNetwork
    """
    return _networks.get(key, build)


# -- file hashes -------------------------------------------------------------

_derived = _LRU(256)


def file_sha256(path):
    """SHA-256 of a file's content, computed once per file identity.

    The checksums the model registry verifies downloads with
    (:class:`~skfishing.download.FileHashes` of :func:`models`): one memo
    for every model file of the process.

    Parameters
    ----------
    path : str or path-like
        A regular file.

    Returns
    -------
    sha256 : str
        64 hexadecimal digits.
    """
    return models().hashes.sha256(path)


def memo(key, compute):
    """A value derived from file contents, computed once per ``key``.

    Parameters
    ----------
    key : hashable
        Must include the content hash the value derives from.
    compute : callable
        Computes the value on a miss.

    Returns
    -------
    value : object
    """
    return _derived.get(key, compute)


# -- feature caches of unpickled estimators -----------------------------------

_caches = weakref.WeakValueDictionary()
_kept = _LRU(2)  # caches unpickled in this process, kept alive between tasks


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
    with _lock:
        if _models is not None:
            _models.hashes.clear()
        caches = list(_caches.values())
    for cache in caches:
        cache.clear()
