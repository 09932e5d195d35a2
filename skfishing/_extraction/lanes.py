"""Lanes: a batch split across the CPUs, each part run and post-processed on one thread.

On the CPU, onnxruntime parallelises each operator of a run over its
threads, and the NumPy work on the outputs (sketching a trunk layer's
factors, normalising them) waits for the run to end. For throughput the
other way round is better: the batch split into one part per CPU, each
part run by a single-threaded session and post-processed on the same
thread, the parts running side by side. A core is then never idle at an
operator's barrier or while another part is sketched, and the images in
flight are still about one batch.

:func:`lanes_for` says how many lanes a run gets (1: run as before);
:func:`in_lanes` runs the parts and yields their results in order.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
from threadpoolctl import threadpool_limits

__all__ = ["cpus", "in_lanes", "lanes_for"]


def cpus():
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def lanes_for(network, batch_size):
    """Lanes for runs of ``batch_size`` images: the CPUs, or 1 (no split).

    Parameters
    ----------
    network : FisherNetwork
        Split only when it runs on the CPU alone (a GPU runs one batch at a
        time).
    batch_size : int
        Split only when each CPU gets at least one image of a batch;
        otherwise one multi-threaded run uses all of them.

    Returns
    -------
    lanes : int
    """
    n = cpus()
    if n < 2 or batch_size < n or [name for name, _ in network.providers] != ["CPUExecutionProvider"]:
        return 1
    return n


class _OneBlasThread:
    """BLAS on one thread while any run in lanes goes on in this process.

    BLAS's thread count is one setting for the whole process. Runs that each
    restored what they found when they began would, when they overlap
    (transforms in several threads), restore the count under a run still
    going, or leave it at one for good. So the first run to begin sets it
    and the last to end restores it.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._runs = 0
        self._limits = None

    @contextmanager
    def __call__(self):
        with self._lock:
            if self._runs == 0:
                self._limits = threadpool_limits(1, user_api="blas")
            self._runs += 1
        try:
            yield
        finally:
            with self._lock:
                self._runs -= 1
                if self._runs == 0:
                    self._limits.restore_original_limits()
                    self._limits = None


_one_blas_thread = _OneBlasThread()


def in_lanes(batches, job, lanes):
    """``job(rows, part)`` on each part of each batch, ``lanes`` at a time; results in order.

    Parameters
    ----------
    batches : iterable of ndarray
        Consecutive batches of samples.
    job : callable
        ``job(rows, part)``, with ``rows`` the indices of the part's samples
        among all; runs on one thread, with BLAS on one thread too.
    lanes : int
        Parts per batch, run side by side.

    Yields
    ------
    result
        What ``job`` returned, part by part in the order of the samples.
        An error of a part is raised when its turn comes, after the parts
        before it.
    """
    with (
        _one_blas_thread(),
        ThreadPoolExecutor(lanes, thread_name_prefix="skfishing-lane") as pool,
    ):
        pending = deque()
        start = 0
        for batch in batches:
            for part in np.array_split(np.arange(len(batch)), lanes):
                if len(part):
                    pending.append(pool.submit(job, start + part, batch[part[0] : part[-1] + 1]))
            start += len(batch)
            while len(pending) > lanes:  # the next batch is cut while these run
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
