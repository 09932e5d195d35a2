"""Process-wide state: the only module-level mutable objects of skfishing.

Everything skfishing keeps for the life of a Python process is created here,
lazily, and nowhere else; :func:`clear` forgets all of it. Estimators own
their caches (see :mod:`skfishing.cache`); what lives here is what several
estimators must share within one process:

* ``models()``: the :class:`~skfishing.registry.ModelRegistry` of this
  process: built-in, embedded and user-registered models.

The lead adds the network and cache stores in their own sections below.
"""

from __future__ import annotations

import threading

__all__ = ["models", "clear"]

_lock = threading.RLock()

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


# -- clear -------------------------------------------------------------------


def clear():
    """Forget everything kept for this process (files on disk stay).

    Model files are hashed again on their next use. Models registered with
    :func:`~skfishing.registry.register_model` stay registered: they are
    settings, not caches (:func:`~skfishing.registry.unregister_model`
    removes one).
    """
    with _lock:
        if _models is not None:
            _models.hashes.clear()
