"""Helpers that run inside Dask workers (importable there by module name)."""

import onnxruntime
from distributed import Event, Queue, get_worker
from sklearn.base import BaseEstimator, TransformerMixin

#: Attribute of a worker that lists the tasks that created onnxruntime sessions.
SESSION_LOG = "test_session_log"


def log_session_creation(dask_worker):
    """Make this worker record which task creates each onnxruntime session."""
    dask_worker.__dict__.setdefault(SESSION_LOG, [])
    cls = onnxruntime.InferenceSession
    if getattr(cls, "_test_original_init", None) is None:
        cls._test_original_init = cls.__init__

        def init(self, *args, **kwargs):
            worker = get_worker()
            getattr(worker, SESSION_LOG).append(worker.get_current_task())
            cls._test_original_init(self, *args, **kwargs)

        cls.__init__ = init


def session_log(dask_worker):
    return list(getattr(dask_worker, SESSION_LOG, []))


def cached_estimators(dask_worker):
    from skfishing.distributed import WORKER_ATTRIBUTE

    cache = getattr(dask_worker, WORKER_ATTRIBUTE, None)
    return 0 if cache is None else len(cache.estimators)


class Gate(TransformerMixin, BaseEstimator):
    """Wraps a transformer: each block announces itself, then waits.

    ``transform`` puts ``(worker address, first row)`` on the distributed
    queue ``started`` and blocks until the distributed event ``release`` is
    set, so a test can act (kill a worker) while blocks are in flight.
    """

    def __init__(self, estimator, started="started", release="release"):
        self.estimator = estimator
        self.started = started
        self.release = release

    def fit(self, X, y=None):
        return self

    def __sklearn_is_fitted__(self):
        return True

    def transform(self, X):
        if len(X) == 1:
            return self.estimator.fit_transform(X)
        Queue(self.started).put((get_worker().address, str(X[0])))
        Event(self.release).wait()
        return self.estimator.fit_transform(X)
