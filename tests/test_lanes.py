"""Batches split across the CPUs (skfishing._extraction.lanes): same features, order and errors as one run."""

import threading

import numpy as np
import pytest
from numpy.testing import assert_allclose
from threadpoolctl import threadpool_info

from skfishing import DeepFisherTransformer, TensorSketch
from skfishing._extraction import lanes
from skfishing._extraction.lanes import in_lanes, lanes_for

CPU = ["CPUExecutionProvider"]


class _Network:
    def __init__(self, providers):
        self.providers = [(name, {}) for name in providers]


@pytest.mark.parametrize(
    "cpus, providers, batch_size, expected",
    [
        (4, CPU, 32, 4),
        (4, CPU, 4, 4),
        (4, CPU, 3, 1),  # fewer images than CPUs: one run on all of them
        (1, CPU, 32, 1),
        (4, ["CUDAExecutionProvider", "CPUExecutionProvider"], 32, 1),  # a GPU runs one batch at a time
    ],
)
def test_lanes_for(monkeypatch, cpus, providers, batch_size, expected):
    monkeypatch.setattr(lanes, "cpus", lambda: cpus)
    assert lanes_for(_Network(providers), batch_size) == expected


def test_parts_come_back_in_order_with_their_rows():
    batches = [np.arange(0, 5), np.arange(5, 8), np.arange(8, 15), np.arange(15, 16)]
    seen = []
    together = threading.Barrier(3, timeout=30)  # the 3 parts of the first batch run side by side

    def job(rows, part):
        if rows[0] < 5:
            together.wait()
        blas = [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]
        seen.append(blas)
        assert_allclose(rows, part)  # the rows are the indices of the part's samples among all
        return rows.copy()

    results = list(in_lanes(iter(batches), job, 3))
    assert [len(r) for r in results] == [2, 2, 1, 1, 1, 1, 3, 2, 2, 1]  # each batch cut in 3 (or fewer)
    assert_allclose(np.concatenate(results), np.arange(16))
    assert all(n == 1 for blas in seen for n in blas)  # BLAS on one thread inside a lane


def test_an_error_comes_in_its_turn():
    def job(rows, part):
        if 6 in rows:
            raise ValueError(f"bad sample {rows[0]}")
        return rows

    results = in_lanes(iter([np.arange(4), np.arange(4, 8), np.arange(8, 12)]), job, 2)
    assert [list(next(results)) for _ in range(3)] == [[0, 1], [2, 3], [4, 5]]
    with pytest.raises(ValueError, match="bad sample 6"):
        next(results)


@pytest.fixture
def images():
    return np.random.default_rng(5).normal(size=(11, 3, 32, 32)).astype(np.float32)


@pytest.fixture
def runs(monkeypatch):
    """(samples, onnxruntime's threads) of every run of an onnxruntime session."""
    import onnxruntime as ort

    seen = []
    run = ort.InferenceSession.run

    def recording(self, output_names, feeds, *args, **kwargs):
        samples = max(len(v) for v in feeds.values() if getattr(v, "ndim", 0) > 0)
        threads = self.get_session_options().intra_op_num_threads
        seen.append((samples, threads))
        return run(self, output_names, feeds, *args, **kwargs)

    monkeypatch.setattr(ort.InferenceSession, "run", recording)
    return seen


@pytest.mark.parametrize("sketch", [None, TensorSketch(64, random_state=1)])
def test_features_in_lanes_equal_one_run(monkeypatch, runs, tiny_cnn_file, images, sketch):
    params = dict(layer="conv2_w", providers=CPU, batch_size=4, sketch=sketch)
    monkeypatch.setattr(lanes, "cpus", lambda: 1)
    one = DeepFisherTransformer(tiny_cnn_file, **params).fit(images[:1])
    runs.clear()
    serial = one.transform(images)
    assert [samples for samples, _ in runs] == [4, 4, 3] and all(threads != 1 for _, threads in runs)
    monkeypatch.setattr(lanes, "cpus", lambda: 3)
    runs.clear()
    split = one.transform(images)  # batches of 4, 4 and 3 images, each cut in 3 parts
    assert sorted(samples for samples, _ in runs) == [1] * 7 + [2] * 2  # parts run in any order
    assert all(threads == 1 for _, threads in runs)  # each part on one thread
    assert split.dtype == serial.dtype
    if sketch is None:
        assert split.dtype.metadata == serial.dtype.metadata
        for field in ("forward", "backward"):
            assert_allclose(split[field], serial[field], rtol=1e-5, atol=1e-7)
    else:
        assert_allclose(split, serial, rtol=1e-5, atol=1e-7)


def test_a_bad_sample_is_named_in_lanes(monkeypatch, tiny_cnn_file, images):
    monkeypatch.setattr(lanes, "cpus", lambda: 3)
    bad = images.copy()
    bad[6, 0, 3, 3] = np.inf
    fish = DeepFisherTransformer(tiny_cnn_file, layer="conv2_w", providers=CPU, batch_size=4).fit(images[:1])
    with pytest.raises(ValueError, match="sample 6 gives non-finite gradient factors"):
        fish.transform(bad)


class _Blas:
    """A test double of threadpoolctl's ``threadpool_limits`` over one process-wide BLAS setting.

    (The OpenBLAS builds of NumPy and SciPy here ignore a limit set from a
    thread other than the main one once the main thread has set one, so the
    real libraries cannot show the race.)
    """

    threads = 2

    def __init__(self, limits, user_api):
        assert user_api == "blas"
        self.original, _Blas.threads = _Blas.threads, limits

    def restore_original_limits(self):
        _Blas.threads = self.original

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.restore_original_limits()


def test_overlapping_runs_in_lanes_leave_blas_threads_as_they_were(monkeypatch):
    """Two transforms in lanes at once (in two threads of a process): the first to end must not
    restore BLAS's threads under the second, nor the second leave them at one."""
    monkeypatch.setattr(lanes, "threadpool_limits", _Blas)
    monkeypatch.setattr(_Blas, "threads", 2)
    inside = []
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()

    def first():
        def job(rows, part):
            first_in.set()
            assert second_in.wait(30)
            return rows

        list(in_lanes(iter([np.arange(2)]), job, 2))
        first_out.set()

    def second():
        def job(rows, part):
            second_in.set()
            assert first_out.wait(30)  # goes on after the first run has ended
            inside.append(_Blas.threads)
            return rows

        assert first_in.wait(30)
        list(in_lanes(iter([np.arange(2)]), job, 2))

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert inside == [1, 1]  # one thread while a lane runs
    assert _Blas.threads == 2  # as they were once both have ended
