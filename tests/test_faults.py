"""Fault injection (issue 8) not covered elsewhere.

Already tested in other files: interrupted and corrupt downloads leave the
cache clean and the next call recovers (``test_registry.py``:
``test_bad_checksum_leaves_nothing_in_cache``,
``test_interrupted_transfer_leaves_nothing_in_cache``,
``test_corrupt_cached_file_is_replaced``, ``test_server_down_says_how_to_install_by_hand``),
threads of one process fetching at once (``test_concurrent_fetches_download_once``),
a truncated forward-cache file (``test_cache.py::test_truncated_cache_file_is_a_miss_not_an_error``),
a pickled pipeline whose model changed or vanished
(``test_pipeline.py::test_fitted_pipeline_refuses_a_changed_or_missing_model``).

Here: an unusable model cache folder, two *processes* fetching one model, a
forward-cache folder read by one process while another rewrites it, two
processes filling one forward-cache folder at once, an unusable or full
forward-cache folder. Tests run as root, so "read-only" is simulated by a
path below a regular file (``mkdir`` fails whatever the permissions).
"""

import errno
import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

import skfishing.cache as cache_module
from onnx_models import caffe_alexnet_model
from skfishing import DeepFisherTransformer, ImagePreprocessing
from skfishing.cache import CorruptCacheWarning, DiskStore, clear_caches
from skfishing.registry import fetch_model, register_model
from test_registry import Server

TESTS = Path(__file__).parent
MODEL = caffe_alexnet_model(seed=31)[0]
X = np.random.default_rng(3).normal(size=(24, 3, 8, 8)).astype(np.float32)
BODY = np.random.default_rng(4).bytes(6000)  # served in 64-byte chunks: ~0.5 s
BODY_SHA256 = hashlib.sha256(BODY).hexdigest()


@pytest.fixture(autouse=True)
def isolated(restore_models, tmp_path, monkeypatch):
    monkeypatch.setenv("SKFISHING_CACHE_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    clear_caches()
    yield
    clear_caches()


@pytest.fixture
def server():
    served = Server()
    yield served
    served.close()


def _python(script, *args, **kwargs):
    """Start ``script`` in a fresh interpreter (cwd tests/, so helpers import)."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *map(str, args)],
        cwd=TESTS,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def _wait_for(paths, procs, timeout=120):
    """Wait until every process has created its file (it is then past its imports)."""
    deadline = time.monotonic() + timeout
    while not all(Path(p).exists() for p in paths):
        for proc in procs:
            if proc.poll() is not None:
                pytest.fail(proc.stderr.read()[-3000:])
        assert time.monotonic() < deadline
        time.sleep(0.01)


def _finish(proc, timeout=120):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return out


# -- model cache folder that cannot be created -----------------------------------------


def _folder_under_a_file(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a regular file where a folder should be\n")
    return blocker / "models"


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_unusable_model_cache_folder_fails_before_downloading(server, tmp_path, monkeypatch, how):
    server.routes["/m.onnx"] = (BODY, "ok")
    register_model("remote", url=server.url + "/m.onnx", sha256=BODY_SHA256)
    folder = _folder_under_a_file(tmp_path)
    kwargs = {}
    if how == "argument":
        kwargs["cache_dir"] = folder
    else:
        monkeypatch.setenv("SKFISHING_CACHE_DIR", str(folder))
    with pytest.raises(OSError) as info:
        fetch_model("remote", **kwargs)
    assert str(folder) in str(info.value)  # where
    assert server.hits == []  # nothing downloaded for nothing
    assert (tmp_path / "not-a-folder").read_text().startswith("a regular file")


def test_unusable_model_cache_folder_says_what_to_do(server, tmp_path):
    server.routes["/m.onnx"] = (BODY, "ok")
    register_model("remote", url=server.url + "/m.onnx", sha256=BODY_SHA256)
    folder = _folder_under_a_file(tmp_path)
    with pytest.raises(OSError, match="SKFISHING_CACHE_DIR") as info:
        DeepFisherTransformer("remote", cache_dir=folder).fit(X)
    assert "cache_dir" in str(info.value) and str(folder) in str(info.value)


# -- two processes fetch one model ---------------------------------------------------------

FETCH = """
    import sys, time
    from pathlib import Path
    from skfishing.registry import fetch_model, register_model
    url, sha256, ready, go = sys.argv[1:5]
    register_model("remote", url=url, sha256=sha256)
    Path(ready).touch()
    while not Path(go).exists():  # start both downloads at the same moment
        time.sleep(0.005)
    print(fetch_model("remote"))
"""


def test_two_processes_fetch_one_model_download_once(server, tmp_path):
    server.routes["/m.onnx"] = (BODY, "slow")
    go = tmp_path / "go"
    ready = [tmp_path / f"ready{i}" for i in range(2)]
    procs = [_python(FETCH, server.url + "/m.onnx", BODY_SHA256, r, go) for r in ready]
    _wait_for(ready, procs)
    go.touch()
    paths = [_finish(p).strip() for p in procs]
    assert paths[0] == paths[1] == str(tmp_path / "models" / "m.onnx")
    assert Path(paths[0]).read_bytes() == BODY
    assert server.hits == ["/m.onnx"]  # one download, both succeed
    left = sorted(p.name for p in (tmp_path / "models").iterdir())
    assert left == ["m.onnx"]  # no temporary download or lock file left over


# -- forward cache folder: one process writes, another reads --------------------------

WRITER = """
    import sys, time
    from pathlib import Path
    import numpy as np
    from skfishing.cache import DiskStore
    folder, seconds = Path(sys.argv[1]), float(sys.argv[2])
    store = DiskStore(folder)
    version, stop = 0, time.monotonic() + seconds
    while True:
        for k in range(6):
            store.put(f"key{k}", np.full(100_000, version * 10 + k, np.float32))
        if version == 0:
            (folder / "READY").touch()
        version += 1
        if time.monotonic() > stop:
            break
    (folder / "DONE").touch()
    print(version)
"""

READER = """
    import json, sys, time
    from pathlib import Path
    import numpy as np
    from skfishing.cache import DiskStore
    folder = Path(sys.argv[1])
    store = DiskStore(folder)  # every get reads the file
    while not (folder / "READY").exists():
        time.sleep(0.001)
    reads = misses = bad = 0
    examples = []
    while not (folder / "DONE").exists():
        for k in range(6):
            value = store.get(f"key{k}", np.float32, (100_000,))
            reads += 1
            if value is None:
                misses += 1
            elif not (value.shape == (100_000,) and value.dtype == np.float32
                      and (value == value[0]).all() and int(value[0]) % 10 == k):
                bad += 1
                examples.append(repr(value[:3]) + repr(value[-3:]))
    print(json.dumps(dict(reads=reads, misses=misses, bad=bad, examples=examples[:3])))
"""


def test_forward_cache_folder_read_while_written_never_torn(tmp_path):
    folder = tmp_path / "forward"
    writer = _python(WRITER, folder, 3.0)
    reader = _python(READER, folder)
    versions = int(_finish(writer))
    stats = json.loads(_finish(reader))
    assert versions >= 3 and stats["reads"] >= 30, (versions, stats)
    # every read is an exact array; once written, a key never goes missing
    # (files are replaced atomically, never rewritten in place)
    assert stats["bad"] == 0, stats
    assert stats["misses"] == 0, stats
    assert not list(folder.glob("*.tmp")) and len(list(folder.glob("*.npy"))) == 6


def test_in_place_writes_would_be_caught(tmp_path, monkeypatch):
    """The reader's checks can fail: with a non-atomic save, reads miss."""
    folder = tmp_path / "forward"
    folder.mkdir()
    store = DiskStore(folder)
    store.put("key0", np.full(10, 3, np.float32))
    path = store.path("key0")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 8])  # what a reader of an in-place write can see
    with pytest.warns(CorruptCacheWarning):
        assert store.get("key0", np.float32, (10,)) is None


TRANSFORM = """
    import sys, time
    from pathlib import Path
    import numpy as np
    from skfishing import DeepFisherTransformer
    model, X, folder, ready, go, out = sys.argv[1:7]
    fish = DeepFisherTransformer(model, layer=7, batch_size=2, memory=folder,
                                 providers=["CPUExecutionProvider"]).fit(np.load(X)[:1])
    Path(ready).touch()
    while not Path(go).exists():
        time.sleep(0.005)
    Z = fish.transform(np.load(X))
    np.save(out, np.stack([np.concatenate([f, b]) for f, b in zip(Z["forward"], Z["backward"])]))
"""


def test_two_processes_fill_one_forward_cache_folder(tmp_path):
    model = tmp_path / "cnn.onnx"
    onnx.save(MODEL, model)
    np.save(tmp_path / "X.npy", X)
    folder, go = tmp_path / "forward", tmp_path / "go"
    ready = [tmp_path / f"ready{i}" for i in range(2)]
    procs = [
        _python(TRANSFORM, model, tmp_path / "X.npy", folder, ready[i], go, tmp_path / f"Z{i}.npy")
        for i in range(2)
    ]
    _wait_for(ready, procs)
    go.touch()
    for proc in procs:
        _finish(proc)
    Z = DeepFisherTransformer(str(model), layer=7).fit_transform(X)  # no memory=
    expected = np.hstack([Z["forward"], Z["backward"]])
    for i in range(2):
        np.testing.assert_array_equal(np.load(tmp_path / f"Z{i}.npy"), expected)
    assert len(list(folder.glob("*.npy"))) == len(X) and not list(folder.glob("*.tmp"))
    # and what they left on disk reads back exactly
    again = DeepFisherTransformer(str(model), layer=7, memory=folder).fit_transform(X)
    np.testing.assert_array_equal(np.hstack([again["forward"], again["backward"]]), expected)


# -- forward cache folder that cannot be created, or a full disk ------------------


def test_unusable_forward_cache_folder_is_an_error_naming_it(tmp_path):
    folder = _folder_under_a_file(tmp_path)
    with pytest.raises(OSError) as info:
        DeepFisherTransformer(MODEL, memory=folder).fit_transform(X)
    assert str(folder) in str(info.value)
    assert (tmp_path / "not-a-folder").read_text().startswith("a regular file")


def test_unusable_forward_cache_folder_fails_early_and_says_memory(tmp_path, trunk_runs):
    folder = _folder_under_a_file(tmp_path)
    fish = DeepFisherTransformer(MODEL, memory=folder)
    with pytest.raises((OSError, ValueError), match="memory") as info:
        fish.fit(X)
        fish.transform(X)
    assert str(folder) in str(info.value)
    assert trunk_runs == []  # checked before the network runs


def test_full_disk_leaves_no_partial_cache_file(tmp_path, monkeypatch):
    folder = tmp_path / "forward"
    reference = DeepFisherTransformer(MODEL, layer=7).fit_transform(X)
    clear_caches()
    real_save = np.save
    writes = []

    def save_then_fail(file, value, allow_pickle=True):
        writes.append(1)
        if len(writes) > 5:  # the disk fills up half way through a file
            file.write(b"\x93NUMPY partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(file, value, allow_pickle=allow_pickle)

    monkeypatch.setattr(cache_module.np, "save", save_then_fail)
    with pytest.raises(OSError, match="No space left"):
        DeepFisherTransformer(MODEL, layer=7, memory=folder).fit_transform(X)
    monkeypatch.setattr(cache_module.np, "save", real_save)
    assert (
        len(list(folder.glob("*.npy"))) == 5
        and not list(folder.glob("*.tmp"))
        and not list(folder.glob(".*"))
    )
    clear_caches()  # the 5 complete files and the recomputed rest are exact
    Z = DeepFisherTransformer(MODEL, layer=7, memory=folder).fit_transform(X)
    for name in ("forward", "backward"):
        np.testing.assert_array_equal(Z[name], reference[name])


# -- files replaced by others of the same size and modification time --------------------

SWAP_FIT = """
    import sys
    import joblib
    import numpy as np
    from sklearn.pipeline import Pipeline
    from skfishing import DeepFisherTransformer, TraceKernelSVC, register_model
    from skfishing import ImagePreprocessing
    model, folder, memory, dump, out = sys.argv[1:6]
    register_model("swap-cnn", model, preprocessing=ImagePreprocessing(size=32))
    paths = [f"{folder}/{i}.bmp" for i in range(6)]
    fish = DeepFisherTransformer("swap-cnn", layer=7, memory=memory, providers=["CPUExecutionProvider"])
    pipe = Pipeline([("fish", fish), ("svc", TraceKernelSVC())]).fit(paths, [0, 1] * 3)
    joblib.dump(pipe, dump)
    Z = fish.transform(paths)
    np.save(out, np.hstack([Z["forward"], Z["backward"]]))
"""

SWAP_USE = """
    import sys
    import joblib
    import numpy as np
    from skfishing import DeepFisherTransformer, register_model
    from skfishing import ImagePreprocessing
    model, folder, memory, dump, out = sys.argv[1:6]
    register_model("swap-cnn", model, preprocessing=ImagePreprocessing(size=32))
    paths = [f"{folder}/{i}.bmp" for i in range(6)]
    try:
        joblib.load(dump).decision_function(paths)
        refused = ""
    except ValueError as exc:
        refused = str(exc)
    fish = DeepFisherTransformer("swap-cnn", layer=7, memory=memory, providers=["CPUExecutionProvider"])
    Z = fish.transform(paths)
    np.save(out, np.hstack([Z["forward"], Z["backward"]]))
    print(refused)
"""


def _swap_keeping_size_and_mtime(path, data):
    st = path.stat()
    assert len(data) == st.st_size
    path.write_bytes(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_mtime_ns == st.st_mtime_ns


def test_same_size_same_mtime_swaps_give_fresh_features_or_a_refusal(tmp_path):
    """cp -p, rsync -a and tar keep size and mtime: neither the model nor an image may go stale."""
    from PIL import Image

    from onnx_models import tiny_cnn_model

    model = tmp_path / "model.onnx"
    onnx.save(tiny_cnn_model(seed=1), model)
    other_model = tiny_cnn_model(seed=2).SerializeToString()
    assert len(other_model) == model.stat().st_size  # same shapes: same size
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(8)
    pixels = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(7)]
    for i in range(6):
        Image.fromarray(pixels[i]).save(folder / f"{i}.bmp")
    memory, dump = tmp_path / "memory", tmp_path / "pipe.joblib"
    args = (model, folder, memory, dump)
    _finish(_python(SWAP_FIT, *args, tmp_path / "before.npy"))
    before = np.load(tmp_path / "before.npy")

    # an image replaced: the other process computes it afresh, the rest comes from memory=
    replacement = folder / "replacement.bmp"
    Image.fromarray(pixels[6]).save(replacement)
    _swap_keeping_size_and_mtime(folder / "3.bmp", replacement.read_bytes())
    refused = _finish(_python(SWAP_USE, *args, tmp_path / "after.npy"))
    after = np.load(tmp_path / "after.npy")
    assert refused.strip() == ""
    np.testing.assert_array_equal(np.delete(after, 3, axis=0), np.delete(before, 3, axis=0))
    register_model("swap-fresh", model, preprocessing=ImagePreprocessing(size=32))
    fresh = DeepFisherTransformer("swap-fresh", layer=7).transform([pixels[6]])
    np.testing.assert_array_equal(after[3], np.hstack([fresh["forward"], fresh["backward"]])[0])

    # the model replaced: the fitted pipeline refuses, and new features are those of the new model
    _swap_keeping_size_and_mtime(model, other_model)
    refused = _finish(_python(SWAP_USE, *args, tmp_path / "new_model.npy"))
    assert "has changed since this transformer was fitted" in refused
    new = np.load(tmp_path / "new_model.npy")
    second = tmp_path / "second.onnx"
    second.write_bytes(other_model)
    register_model("swap-second", second, preprocessing=ImagePreprocessing(size=32))
    expected = DeepFisherTransformer("swap-second", layer=7).transform(
        [np.asarray(Image.open(folder / f"{i}.bmp")) for i in range(6)]
    )
    np.testing.assert_array_equal(new, np.hstack([expected["forward"], expected["backward"]]))
