"""Extraction, sketching and training on a real dask.distributed cluster.

A LocalCluster of two worker processes runs the embedded network on PNG
files; results are compared with the same transformers run in this process.
"""

import logging
import os
import signal
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

dask = pytest.importorskip("dask")
da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")
pytest.importorskip("zarr")

import dask_helpers  # noqa: E402
import joblib  # noqa: E402
from distributed import Client, Event, LocalCluster, Queue, get_task_stream  # noqa: E402
from PIL import Image  # noqa: E402
from sklearn.linear_model import SGDClassifier  # noqa: E402
from sklearn.model_selection import GridSearchCV, StratifiedKFold  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402

from skfishing import DeepFisherTransformer, TensorSketch  # noqa: E402
from skfishing.datasets import load_digits_images  # noqa: E402
from skfishing.distributed import dask_transform, from_zarr, to_zarr  # noqa: E402

N_IMAGES = 48


@pytest.fixture(scope="module")
def client():
    # distributed's nanny sets OMP_NUM_THREADS=1 and the like in this process's
    # environment for its workers: restore it, so that later tests' subprocesses
    # run with the threads (and the float rounding) of this process.
    environ = dict(os.environ)
    try:
        with (
            LocalCluster(
                n_workers=2,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                silence_logs=logging.ERROR,
            ) as cluster,
            Client(cluster) as client,
        ):
            yield client
    finally:
        os.environ.clear()
        os.environ.update(environ)


@pytest.fixture(scope="module")
def digits():
    data = load_digits_images(size=32)
    return data.images[:N_IMAGES], data.target[:N_IMAGES]


@pytest.fixture(scope="module")
def paths(tmp_path_factory, digits):
    folder = tmp_path_factory.mktemp("digits")
    paths = []
    for i, image in enumerate(digits[0]):
        paths.append(str(folder / f"{i:03d}.png"))
        Image.fromarray(image).save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def reference(paths):
    """Features of the paths computed in this process, in one call."""
    return DeepFisherTransformer("tinyalexnet", layer=7).fit_transform(paths)


def assert_same_features(Z, reference):
    assert Z.dtype == reference.dtype and Z.shape == reference.shape
    for field in ("forward", "backward"):
        assert_array_equal(Z[field], reference[field])


def test_cluster_features_are_bit_identical_and_each_worker_loads_the_network_once(client, paths, reference):
    client.run(dask_helpers.log_session_creation)
    fish = DeepFisherTransformer("tinyalexnet", layer=7)
    Z = dask_transform(fish, paths, chunk_size=4)
    assert Z.numblocks == (N_IMAGES // 4,)
    with get_task_stream(client) as stream:
        computed = Z.compute()
    assert_same_features(computed, reference)
    assert dict(computed.dtype.metadata) == dict(reference.dtype.metadata)
    # the network's sessions were created by one task per worker, not per task
    ran = {t["worker"] for t in stream.data if "skfishing-transform" in str(t["key"])}
    log = client.run(dask_helpers.session_log)
    assert ran and all(log[w] for w in ran)  # the workers that ran blocks built a network
    for worker, tasks in log.items():
        assert len(set(tasks)) == 1, (worker, tasks)
    cached = client.run(dask_helpers.cached_estimators)
    assert all(cached[w] == 1 for w in ran), cached  # one transformer kept per worker
    # a second job with an equal transformer builds nothing new
    dask_transform(DeepFisherTransformer("tinyalexnet", layer=7), paths, chunk_size=3).compute()
    assert client.run(dask_helpers.session_log) == log


def test_killed_worker_blocks_are_retried_without_losing_or_repeating_rows(
    client, paths, reference, tmp_path
):
    release = Event("release", client=client)
    release.clear()
    started = Queue("started", client=client)
    gate = dask_helpers.Gate(DeepFisherTransformer("tinyalexnet", layer=7))
    Z = dask_transform(gate, paths, chunk_size=6)  # 8 blocks
    with ThreadPoolExecutor(1) as thread:
        job = thread.submit(to_zarr, Z, tmp_path / "features.zarr")
        # wait until both workers are inside a block, then kill one of them
        busy = [started.get(timeout=60)[0], started.get(timeout=60)[0]]
        assert len(set(busy)) == 2, busy  # one thread per worker: one block each
        pid = client.run(os.getpid, workers=[busy[0]])[busy[0]]
        os.kill(pid, signal.SIGKILL)
        release.set()
        stored = job.result(timeout=120).compute()
    assert_same_features(stored, reference)
    # the killed block ran again: more blocks started than there are blocks
    assert 2 + started.qsize() > Z.numblocks[0]
    client.wait_for_workers(2, timeout=60)


def test_store_reopens_lazily_in_a_fresh_process(client, paths, reference, tmp_path):
    store = tmp_path / "features.zarr"
    lazy = to_zarr(dask_transform(DeepFisherTransformer("tinyalexnet", layer=7), paths, chunk_size=16), store)
    assert isinstance(lazy, da.Array) and lazy.numblocks == (3,)
    script = textwrap.dedent(
        f"""
        import numpy as np
        from skfishing.distributed import from_zarr
        Z = from_zarr({str(store)!r})
        assert Z.numblocks == (3,), Z.numblocks
        np.save({str(tmp_path / "forward.npy")!r}, Z["forward"].compute())
        np.save({str(tmp_path / "backward.npy")!r}, Z["backward"].compute())
        print(dict(Z.dtype.metadata))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True)
    assert_array_equal(np.load(tmp_path / "forward.npy"), reference["forward"])
    assert_array_equal(np.load(tmp_path / "backward.npy"), reference["backward"])
    assert result.stdout.strip() == str(dict(reference.dtype.metadata))


def test_sketch_and_incremental_training_on_the_cluster(client, paths, reference, digits, tmp_path):
    dask_ml_wrappers = pytest.importorskip("dask_ml.wrappers")
    y = digits[1]
    Z = to_zarr(
        dask_transform(DeepFisherTransformer("tinyalexnet", layer=7), paths, chunk_size=12),
        tmp_path / "features.zarr",
    )
    sketch = TensorSketch(n_components=256, random_state=0).fit(Z[:1].compute())
    F = dask_transform(sketch, Z)
    assert F.shape == (N_IMAGES, 256) and F.chunks[0] == (12,) * 4
    model = dask_ml_wrappers.Incremental(SGDClassifier(random_state=0), shuffle_blocks=False)
    with get_task_stream(client) as stream:
        model.fit(F, da.from_array(y, chunks=12), classes=np.arange(10))
    assert any("skfishing-transform" in str(t["key"]) for t in stream.data)
    # the same blocks fed to partial_fit in this process, in the same order
    expected = SGDClassifier(random_state=0)
    local = sketch.transform(reference)
    for start in range(0, N_IMAGES, 12):
        expected.partial_fit(local[start : start + 12], y[start : start + 12], classes=np.arange(10))
    assert_allclose(model.estimator_.coef_, expected.coef_, rtol=1e-5, atol=1e-6)
    assert_allclose(model.estimator_.intercept_, expected.intercept_, rtol=1e-5, atol=1e-6)


def test_grid_search_under_joblib_dask_backend(client, digits):
    images, y = digits
    pipe = make_pipeline(
        DeepFisherTransformer("tinyalexnet"), TensorSketch(512, random_state=0), SGDClassifier(random_state=0)
    )
    grid = {"deepfishertransformer__layer": [6, 7], "sgdclassifier__alpha": [1e-4, 1e-2]}
    cv = StratifiedKFold(3, shuffle=True, random_state=0)
    local = GridSearchCV(pipe, grid, cv=cv).fit(images, y)
    with joblib.parallel_backend("dask"), get_task_stream(client) as stream:
        remote = GridSearchCV(pipe, grid, cv=cv, n_jobs=-1).fit(images, y)
    assert stream.data  # the fits ran on the workers
    assert_array_equal(remote.cv_results_["mean_test_score"], local.cv_results_["mean_test_score"])
    assert remote.best_params_ == local.best_params_


def test_existing_store_is_not_overwritten(tmp_path):
    Z = np.zeros((5, 3), dtype=np.float32)
    store = tmp_path / "features.zarr"
    with dask.config.set(scheduler="synchronous"):
        to_zarr(Z + 1, store)
        with pytest.raises(FileExistsError, match="already exists; pass overwrite=True"):
            to_zarr(Z, store)
        assert_array_equal(from_zarr(store).compute(), Z + 1)
        assert_array_equal(to_zarr(Z, store, overwrite=True).compute(), Z)


def test_incomplete_or_foreign_store_is_refused(tmp_path):
    import zarr

    zarr.open_group(tmp_path / "other.zarr", mode="w").create_array("x", shape=(2,), dtype="f4")
    with pytest.raises(ValueError, match="not a complete feature store"):
        from_zarr(tmp_path / "other.zarr")
    with pytest.raises(FileNotFoundError, match="no Zarr store"):
        from_zarr(tmp_path / "missing.zarr")


def test_unfitted_estimators_are_refused_but_the_transformer_is_fitted_on_a_copy():
    from sklearn.exceptions import NotFittedError

    with (
        dask.config.set(scheduler="synchronous"),
        pytest.raises(NotFittedError, match="needs a fitted TensorSketch"),
    ):
        dask_transform(TensorSketch(8), np.ones((4, 3)))
    # the stateless transformer is fitted on a copy: the caller's object is unchanged
    fish = DeepFisherTransformer("tinyalexnet", features="activation")
    with dask.config.set(scheduler="synchronous"):
        Z = dask_transform(fish, np.zeros((3, 32, 32, 3), np.uint8)).compute()
    assert Z.shape[0] == 3 and not hasattr(fish, "layer_")


def test_sketch_of_a_dask_array_equals_the_in_memory_sketch():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(25, 6)).astype(np.float32)
    sketch = TensorSketch(16, random_state=0).fit(X)
    with dask.config.set(scheduler="synchronous"):
        F = dask_transform(sketch, da.from_array(X, chunks=(7, 3)))
        assert F.chunks == ((7, 7, 7, 4), (16,))
        assert_allclose(F.compute(), sketch.transform(X), rtol=1e-6)


def test_bad_input_raises_clear_errors(tmp_path):
    fish = DeepFisherTransformer("tinyalexnet")
    with pytest.raises(TypeError, match=r"X\[1\] is a ndarray"):
        dask_transform(fish, ["a.png", np.zeros((8, 8, 3), np.uint8)])
    with pytest.raises(ValueError, match="at least one sample"):
        dask_transform(fish, [])
    with pytest.raises(ValueError, match="chunk_size"):
        dask_transform(fish, ["a.png"], chunk_size=0)
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="is not a Zarr store"):
        to_zarr(np.ones((2, 2)), folder, overwrite=True)
    assert (folder / "notes.txt").read_text() == "keep me"


# -- Zarr stores: overwriting never loses what the user had (issue 20) --------


def _spellings(store, tmp_path, monkeypatch):
    """The same store, named in the ways a user may name it."""
    link = tmp_path / "link.zarr"
    if not link.exists():
        link.symlink_to(store, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    return [store, str(store) + "/", os.path.relpath(store), link, f"{tmp_path}/./{store.name}"]


def test_overwriting_the_store_that_z_reads_writes_the_new_values(tmp_path, monkeypatch):
    # the new store is written beside the old one and swapped in at the end:
    # the graph reads the old chunks whole, whatever the spelling of the path
    store = tmp_path / "features.zarr"
    rng = np.random.default_rng(0)
    with dask.config.set(scheduler="threads", num_workers=4):
        for trial, spelling in enumerate(_spellings(store, tmp_path, monkeypatch) * 8):  # 40 trials
            X = rng.normal(size=(23, 5)).astype(np.float32)
            to_zarr(da.from_array(X, chunks=(3, 5)), store, overwrite=trial > 0)
            out = to_zarr(from_zarr(spelling) * 2 + 1, spelling, overwrite=True)
            assert_array_equal(out.compute(), X * 2 + 1, err_msg=f"trial {trial}, path {spelling!r}")
            assert_array_equal(from_zarr(store).compute(), X * 2 + 1)
            assert store.is_dir() and not store.is_symlink()
            assert (tmp_path / "link.zarr").resolve() == store  # the link still points to the store
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features.zarr", "link.zarr"]  # nothing left


def test_overwriting_a_store_object_that_z_reads_is_refused():
    import zarr

    memory = zarr.storage.MemoryStore()
    with dask.config.set(scheduler="synchronous"):
        to_zarr(np.ones((4, 2), np.float32), memory)
        with pytest.raises(ValueError, match="Z reads from .* the store to overwrite"):
            to_zarr(from_zarr(memory) + 1, memory, overwrite=True)
        assert_array_equal(from_zarr(memory).compute(), np.ones((4, 2)))


def test_sketch_of_a_store_overwrites_it_on_the_cluster(client, paths, reference, tmp_path):
    store = tmp_path / "features.zarr"
    fish = DeepFisherTransformer("tinyalexnet", layer=7)
    sketch = TensorSketch(64, random_state=0).fit(reference[:1])
    for trial in range(3):
        to_zarr(dask_transform(fish, paths, chunk_size=8), store, overwrite=trial > 0)
        out = to_zarr(dask_transform(sketch, from_zarr(store)), store, overwrite=True).compute()
        assert_allclose(out, sketch.transform(reference), rtol=1e-5, atol=1e-6, err_msg=f"trial {trial}")


def _folder(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def test_overwrite_replaces_only_a_store_that_to_zarr_wrote_holding_nothing_else(tmp_path):
    import zarr

    Z = np.ones((4, 3), np.float32)
    with dask.config.set(scheduler="synchronous"):
        # a Zarr group of the user's, with their files: the reproducer of issue 20
        thesis = tmp_path / "thesis"
        zarr.open_group(thesis, mode="w")
        (thesis / "thesis.tex").write_text("chapter 1")
        (thesis / "photos").mkdir()
        # a store that to_zarr wrote, with one file more at its top or in an array
        extra_top, extra_array = tmp_path / "top.zarr", tmp_path / "array.zarr"
        for store, extra in ((extra_top, "notes.txt"), (extra_array, "features/notes.txt")):
            to_zarr(Z, store)
            (store / extra).write_text("keep me")
        # a Zarr store that looks like ours but was not written by to_zarr
        foreign = tmp_path / "foreign.zarr"
        zarr.open_group(foreign, mode="w").create_array("features", shape=(2, 3), dtype="f4")[:] = 5
        # a file
        (tmp_path / "file.zarr").write_text("not a folder")
        cases = {
            thesis: r"a zarr.json without the skfishing mark, photos, thesis\.tex",
            extra_top: "notes.txt",
            extra_array: "features/notes.txt",
            foreign: "zarr.json without the skfishing mark, features",
            tmp_path / "file.zarr": "not a folder",
        }
        for store, found in cases.items():
            before = _folder(store) if store.is_dir() else store.read_text()
            with pytest.raises(ValueError, match=rf"{store.name}.* is not a Zarr store written by .*{found}"):
                to_zarr(Z, store, overwrite=True)
            assert (_folder(store) if store.is_dir() else store.read_text()) == before, store
        assert (thesis / "thesis.tex").read_text() == "chapter 1"
        # ours alone, of another kind, and an empty folder are replaced
        (extra_top / "notes.txt").unlink()
        gradient = np.zeros(4, dtype=[("forward", "f4", (3,)), ("backward", "f4", (2,))])
        assert_array_equal(to_zarr(gradient, extra_top, overwrite=True).compute(), gradient)
        assert_array_equal(to_zarr(Z, extra_top, overwrite=True).compute(), Z)
        (tmp_path / "empty").mkdir()
        assert_array_equal(to_zarr(Z, tmp_path / "empty", overwrite=True).compute(), Z)


def _fail_in_block(block, block_info=None, bad=0):
    if block_info[None]["chunk-location"][0] == bad:
        raise ValueError(f"block {bad} fails")
    return block


def test_a_failed_overwrite_leaves_the_old_store_intact(tmp_path, monkeypatch):
    store = tmp_path / "features.zarr"
    old = np.arange(30, dtype=np.float32).reshape(10, 3)
    with dask.config.set(scheduler="threads", num_workers=4):
        to_zarr(old, store)
        for trial, spelling in enumerate(_spellings(store, tmp_path, monkeypatch) * 6):  # 30 trials
            Z = da.from_array(old[::-1] + 1, chunks=(2, 3)).map_blocks(
                _fail_in_block, bad=trial % 5, dtype=old.dtype
            )
            with pytest.raises(ValueError, match=f"block {trial % 5} fails"):
                to_zarr(Z, spelling, overwrite=True)
            assert_array_equal(from_zarr(store).compute(), old, err_msg=f"trial {trial}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features.zarr", "link.zarr"]  # nothing left


def test_a_corrupt_image_leaves_the_old_store_intact_and_is_named_by_its_index_in_x(
    client, paths, reference, tmp_path
):
    store = tmp_path / "features.zarr"
    fish = DeepFisherTransformer("tinyalexnet", layer=7)
    to_zarr(dask_transform(fish, paths, chunk_size=8), store)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    bad = paths[:9] + [str(corrupt)] + paths[10:]
    for chunk_size, scheduler in ((4, None), (4, "synchronous"), (3, None), (7, "threads")):
        with dask.config.set(scheduler=scheduler) if scheduler else client.as_current():
            with pytest.raises(
                Exception, match=r"image 9 \('.*corrupt\.png'\).*rows \d+ to \d+ of X"
            ) as info:
                to_zarr(dask_transform(fish, bad, chunk_size=chunk_size), store, overwrite=True)
        assert "image 1 " not in str(info.value)
        assert_same_features(from_zarr(store).compute(), reference)
    # (a block still running on the other worker may leave a hidden .partial folder: not checked here)
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix != ".partial") == [
        "corrupt.png",
        "features.zarr",
    ]


def test_two_writers_without_overwrite_never_both_succeed(tmp_path):
    import threading

    with dask.config.set(scheduler="synchronous"):
        for trial in range(20):
            store = tmp_path / f"features{trial}.zarr"
            barrier = threading.Barrier(2)

            def write(value, store=store, barrier=barrier):
                barrier.wait()
                try:
                    to_zarr(np.full((6, 2), value, np.float32), store)
                    return value
                except FileExistsError:
                    return None

            with ThreadPoolExecutor(2) as pool:
                results = list(pool.map(write, (1, 2)))
            winners = [r for r in results if r is not None]
            assert len(winners) == 1, (trial, results)
            assert_array_equal(from_zarr(store).compute(), np.full((6, 2), winners[0]))
