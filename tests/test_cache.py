"""Caches never change a result, save work where work repeats, and cannot be fooled."""

import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image
from sklearn.base import clone

from onnx_models import caffe_alexnet_model
from skfishing import DeepFisherTransformer, ImagePreprocessing
from skfishing._onnx.network import FisherNetwork
from skfishing.cache import ArrayStore, CorruptCacheWarning, DiskStore, FeatureCache, shared_cache
from skfishing.registry import register_model

MODEL = caffe_alexnet_model(seed=21)[0]
X = np.random.default_rng(0).normal(size=(10, 3, 8, 8)).astype(np.float32)


def _assert_same(Z1, Z2):
    for field in ("forward", "backward"):
        np.testing.assert_array_equal(Z1[field], Z2[field])


@pytest.fixture
def head_runs(monkeypatch):
    """Count the samples whose head outputs are computed from a cached state."""
    runs = []
    original = FisherNetwork.run_from_state

    def counting(self, state_rows, outputs, **kwargs):
        runs.append(len(state_rows))
        return original(self, state_rows, outputs, **kwargs)

    monkeypatch.setattr(FisherNetwork, "run_from_state", counting)
    return runs


# -- who caches: clones share, one-off runs do not ---------------------------------


def test_one_off_extraction_caches_and_hashes_nothing(trunk_runs, monkeypatch):
    def no_hashing(*args, **kwargs):
        raise AssertionError("a one-off extraction must not hash its input")

    monkeypatch.setattr(FeatureCache, "sample_keys", no_hashing)
    fish = DeepFisherTransformer(MODEL, layer=7, batch_size=4)
    first = fish.fit_transform(X)
    second = fish.transform(X)
    assert sum(trunk_runs) == 20  # the network ran twice: nothing was kept
    assert shared_cache(fish) is None
    _assert_same(first, second)


def test_clones_share_one_forward_pass_per_sample(trunk_runs):
    base = DeepFisherTransformer(MODEL, layer=7, batch_size=4)
    cold = clone(base).fit_transform(X)
    assert sum(trunk_runs) == 10
    # other layers, temperatures and labels reuse the states of the first clone
    for params in [
        dict(),
        dict(layer=6),
        dict(temperature=4.0),
        dict(layer=8, temperature=1.0),
        dict(labels=np.eye(7)[2]),
    ]:
        cached = clone(base).set_params(**params).fit_transform(X)
        direct = DeepFisherTransformer(MODEL, batch_size=3).set_params(**{"layer": 7, **params}).transform(X)
        _assert_same(cached, direct)
    assert sum(trunk_runs) == 10 + 5 * 10  # only the direct (one-off) runs ran the network
    _assert_same(cold, clone(base).transform(X))
    assert sum(trunk_runs) == 60


def test_cache_lives_as_long_as_the_estimator_that_was_cloned():
    import gc
    import weakref

    base = DeepFisherTransformer(MODEL, layer=7)
    clone(base).fit_transform(X)
    cache = weakref.ref(shared_cache(base))
    assert len(cache().states) == 10
    del base
    gc.collect()
    assert cache() is None


def test_partial_hits_keep_sample_order(trunk_runs):
    base = DeepFisherTransformer(MODEL, layer=7, batch_size=3)
    clone(base).transform(X[[1, 4, 7]])
    mixed = clone(base).transform(X)
    assert sum(trunk_runs) == 3 + 7
    _assert_same(mixed, DeepFisherTransformer(MODEL, layer=7).transform(X))


def test_head_outputs_are_computed_once_per_sample_and_parameters(trunk_runs, head_runs):
    base = DeepFisherTransformer(MODEL, layer=6, batch_size=4)
    full = clone(base).transform(X)
    assert sum(head_runs) == 10
    fold = clone(base).transform(X[3:8])  # a cross-validation fold: nothing to recompute
    assert sum(head_runs) == 10
    _assert_same(fold, full[3:8])
    for params in [
        dict(temperature=4.0),
        dict(layer=7),
        dict(labels=np.eye(7)[2]),
        dict(labels=np.eye(7)[3]),
    ]:
        before = sum(head_runs)
        clone(base).set_params(**params).transform(X)
        assert sum(head_runs) == before + 10, params
    assert sum(trunk_runs) == 10


def test_explicit_feature_cache_is_shared_and_cleared_by_its_owner(trunk_runs):
    cache = FeatureCache(max_bytes=1 << 20)
    a = DeepFisherTransformer(MODEL, layer=7, memory=cache).transform(X)
    b = DeepFisherTransformer(MODEL, layer=6, memory=cache).transform(X)
    assert sum(trunk_runs) == 10 and len(cache.states) == 10
    cache.clear()
    _assert_same(a, DeepFisherTransformer(MODEL, layer=7, memory=cache).transform(X))
    _assert_same(b, DeepFisherTransformer(MODEL, layer=6).transform(X))
    assert sum(trunk_runs) == 30


def test_nan_in_an_uncached_sample_is_still_reported(trunk_runs):
    base = DeepFisherTransformer(MODEL)
    clone(base).transform(X)
    X_bad = X.copy()
    X_bad[3, 1, 2, 2] = np.nan  # other content, so a miss among hits
    with pytest.raises(ValueError, match="X contains NaN in sample 3"):
        clone(base).transform(X_bad)


def test_fit_transform_checks_samples(trunk_runs):
    fish = DeepFisherTransformer(MODEL, layer=6)
    _assert_same(fish.fit_transform(X), clone(fish).fit(X).transform(X))
    assert fish.layer_ == 6 and fish.model_sha256_
    X_bad = X.copy()
    X_bad[5, 0, 1, 1] = np.inf
    with pytest.raises(ValueError, match="X contains infinity in sample 5"):
        clone(fish).fit_transform(X_bad)
    with pytest.raises(ValueError, match="X has shape"):
        clone(fish).fit_transform(X[:, :2])
    with pytest.raises(ValueError, match="temperature"):
        clone(fish).set_params(temperature=-1.0).fit_transform(X)


def test_memory_store_is_bounded():
    store = ArrayStore(max_bytes=1000)
    for i in range(10):
        store.put(f"k{i}", np.zeros(50, np.float32))  # 200 bytes each
    assert store.nbytes <= 1000 and len(store) == 5
    assert store.get("k0") is None and store.get("k9") is not None
    store.put("huge", np.zeros(1000, np.float32))
    assert store.get("huge") is None
    stored = store.get("k9")
    with pytest.raises(ValueError):
        stored[0] = 1.0  # entries are read-only, so callers cannot corrupt them


# -- disk entries (memory=folder) ----------------------------------------------------------


def test_disk_cache_matches_memory_cache(trunk_runs, tmp_path):
    reference = DeepFisherTransformer(MODEL, layer=6, memory=tmp_path).transform(X)
    assert len(list(tmp_path.glob("*.npy"))) == 10
    assert not list(tmp_path.glob("*.tmp"))
    from_disk = DeepFisherTransformer(MODEL, layer=6, memory=tmp_path).transform(X)
    assert sum(trunk_runs) == 10
    _assert_same(reference, from_disk)


def _zeros(data, other):
    body = np.zeros(len(data), np.uint8).tobytes()
    return data[:128] + body[128:]  # header kept, content zeroed


def _bit_flip(data, other):
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x04
    return bytes(flipped)


def _rewritten(change):
    """An entry rewritten by np.save, as a careless user would (no checksum)."""

    def rewrite(data, other):
        import io

        original = np.load(io.BytesIO(data))
        buffer = io.BytesIO()
        np.save(buffer, change(original))
        return buffer.getvalue()

    return rewrite


CORRUPTIONS = {
    "zeros": _zeros,
    "bit-flip": _bit_flip,
    "truncated": lambda data, other: data[: len(data) // 2],
    "empty": lambda data, other: b"",
    "another-entry": lambda data, other: other,
    "np.save-zeros": _rewritten(np.zeros_like),  # the reproducer of the issue
    "wrong-dtype": _rewritten(lambda a: a.astype(np.float64)),
    "wrong-shape": _rewritten(lambda a: a[:17]),
}


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_corrupt_disk_entries_are_recomputed_with_a_warning_naming_the_file(tmp_path, trunk_runs, corruption):
    reference = DeepFisherTransformer(MODEL, layer=7, memory=tmp_path).transform(X)
    files = sorted(tmp_path.glob("*.npy"))
    victims = files[:3]
    for victim, other in zip(victims, files[3:]):
        victim.write_bytes(CORRUPTIONS[corruption](victim.read_bytes(), other.read_bytes()))
    with pytest.warns(CorruptCacheWarning) as record:
        again = DeepFisherTransformer(MODEL, layer=7, memory=tmp_path).transform(X)
    _assert_same(reference, again)  # never other features
    named = {str(victim) for victim in victims}
    assert {str(w.message).split("cache entry ")[1].split(" ")[0] for w in record} == named
    assert sum(trunk_runs) == 10 + 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the bad entries were replaced by good ones
        _assert_same(reference, DeepFisherTransformer(MODEL, layer=7, memory=tmp_path).transform(X))
    assert sum(trunk_runs) == 13


def test_the_checks_of_disk_entries_can_fail(tmp_path):
    """A good entry reads back; the same bytes under another key do not."""
    store = DiskStore(tmp_path)
    store.put("a", np.arange(5, dtype=np.float32))
    np.testing.assert_array_equal(store.get("a", np.float32, (5,)), np.arange(5))
    store.path("b").write_bytes(store.path("a").read_bytes())
    with pytest.warns(CorruptCacheWarning, match=f"{store.path('b').name} is corrupt: its checksum"):
        assert store.get("b", np.float32, (5,)) is None
    with pytest.warns(
        CorruptCacheWarning, match="holds float32 values of shape \\(5,\\), not float32 of shape \\(6,\\)"
    ):
        assert store.get("a", np.float32, (6,)) is None
    assert np.load(store.path("a")).tolist() == [0, 1, 2, 3, 4]  # still a .npy file


def test_other_model_never_reads_these_entries(trunk_runs, tmp_path):
    other = caffe_alexnet_model(seed=22)[0]
    DeepFisherTransformer(MODEL, memory=tmp_path).transform(X)
    Z_other = DeepFisherTransformer(other, memory=tmp_path).transform(X)
    assert sum(trunk_runs) == 20
    _assert_same(Z_other, DeepFisherTransformer(other).transform(X))


def test_disk_cache_shared_across_processes(trunk_runs, tmp_path):
    model_path = tmp_path / "model.onnx"
    onnx.save(MODEL, model_path)
    np.save(tmp_path / "X.npy", X)
    cache_dir = tmp_path / "cache"
    script = textwrap.dedent(
        f"""
        import numpy as np
        from skfishing import DeepFisherTransformer
        X = np.load({str(tmp_path / "X.npy")!r})
        DeepFisherTransformer({str(model_path)!r}, layer=7, memory={str(cache_dir)!r},
                              providers=["CPUExecutionProvider"]).fit_transform(X)
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=Path(__file__).parent)
    assert len(list(cache_dir.glob("*.npy"))) == 10
    from_other_process = DeepFisherTransformer(str(model_path), layer=7, memory=cache_dir).fit_transform(X)
    assert sum(trunk_runs) == 0
    uncached = DeepFisherTransformer(str(model_path), layer=7).fit_transform(X)
    _assert_same(from_other_process, uncached)


# -- keys are content ------------------------------------------------------------------------


def _register_tiny(name, tmp_path):
    from onnx_models import tiny_cnn_model

    path = tmp_path / f"{name}.onnx"
    onnx.save(tiny_cnn_model(), str(path))
    register_model(name, path, preprocessing=ImagePreprocessing(size=32), overwrite=True)
    return name


def _same_size_and_mtime(path, data):
    """Replace a file's content, keeping its size and modification time (as cp -p does)."""
    st = os.stat(path)
    assert len(data) == st.st_size
    Path(path).write_bytes(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_replaced_image_file_of_same_size_and_mtime_gives_fresh_features(tmp_path):
    model = _register_tiny("cache-replace", tmp_path)
    rng = np.random.default_rng(5)
    a, b = (rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(2))
    path_a, path_b = tmp_path / "a.bmp", tmp_path / "b.bmp"  # BMP: same size for same shape
    Image.fromarray(a).save(path_a)
    Image.fromarray(b).save(path_b)
    base = DeepFisherTransformer(model, layer=7)
    before = clone(base).transform([str(path_a)])
    _same_size_and_mtime(path_a, path_b.read_bytes())
    after = clone(base).transform([str(path_a)])
    _assert_same(after, DeepFisherTransformer(model, layer=7).transform([b]))
    assert not np.array_equal(after["backward"], before["backward"])


def test_pil_images_that_differ_in_palette_transparency_or_orientation_get_their_own_features(tmp_path):
    model = _register_tiny("cache-pil", tmp_path)
    indices = np.random.default_rng(6).integers(0, 4, (32, 32), dtype=np.uint8)

    def palette_image(palette, **info):
        img = Image.fromarray(indices, mode="P")
        img.putpalette(palette)
        img.info.update(info)
        return img

    grey = palette_image([0, 0, 0, 80, 80, 80, 160, 160, 160, 240, 240, 240])
    colour = palette_image([255, 0, 0, 0, 255, 0, 0, 0, 255, 9, 9, 9])
    transparent = palette_image([0, 0, 0, 80, 80, 80, 160, 160, 160, 240, 240, 240], transparency=1)
    rotated = Image.fromarray(np.dstack([indices * 60] * 3))
    exif = rotated.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    rotated.info["exif"] = exif.tobytes()
    plain = Image.fromarray(np.dstack([indices * 60] * 3))
    base = DeepFisherTransformer(model, layer=7)
    images = [grey, colour, transparent, rotated, plain]
    cached = [clone(base).transform([img]) for img in images]  # each after the others' entries exist
    for img, Z in zip(images, cached):
        _assert_same(Z, DeepFisherTransformer(model, layer=7).transform([img]))
    assert not np.array_equal(cached[0]["backward"], cached[1]["backward"])
    assert not np.array_equal(cached[0]["backward"], cached[2]["backward"])
    assert not np.array_equal(cached[3]["backward"], cached[4]["backward"])


def test_non_utf8_file_names_are_keyed_by_content(tmp_path):
    model = _register_tiny("cache-bytes-name", tmp_path)
    name = os.fsdecode(b"caf\xe9-\xff.png")  # not UTF-8: a surrogate-escaped str
    pixels = np.random.default_rng(7).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(os.path.join(os.fsencode(tmp_path), os.fsencode(name)))
    path = os.path.join(str(tmp_path), name)
    base = DeepFisherTransformer(model, layer=7, memory=tmp_path / "memory")
    Z = clone(base).transform([path])
    _assert_same(Z, DeepFisherTransformer(model, layer=7).transform([pixels]))
    _assert_same(Z, clone(base).transform([path]))


# -- samples without a key, and entries that are not arrays ---------------------------------------


def test_samples_without_a_key_are_computed_every_time_and_reported_by_the_loader(tmp_path):
    cache = FeatureCache()
    assert repr(cache) == f"FeatureCache(directory=None, max_bytes={1 << 30})"
    closed = Image.fromarray(np.zeros((32, 32, 3), np.uint8))
    closed.close()
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    keys = cache.sample_keys(
        [str(tmp_path / "missing.png"), str(fifo), closed, np.array([object()], dtype=object)], "ctx"
    )
    assert keys == [None, None, None, None]
    assert cache.sample_keys([np.zeros(3)], "ctx") == cache.sample_keys([np.zeros(3)], "ctx") != [None]
    with pytest.raises(FileNotFoundError, match=r"image 0 \('[^']*missing.png'\)"):
        DeepFisherTransformer("tinyalexnet", memory=cache).transform([str(tmp_path / "missing.png")])


def test_entry_with_a_good_checksum_but_not_an_array_is_refused(tmp_path):
    from blake3 import blake3

    body = b"not an npy file at all"
    store = DiskStore(tmp_path)
    store.path("k").write_bytes(body + blake3(store.entry_name("k").encode() + body).digest())
    with pytest.warns(
        CorruptCacheWarning, match=f"{store.entry_name('k')}.npy is corrupt: it is not a valid .npy"
    ):
        assert store.get("k", np.float32, (3,)) is None


def test_pickled_clone_attaches_to_the_live_cache_of_its_search(trunk_runs):
    """Unpickled in the same process (joblib's threads, or a worker running several tasks)."""
    import pickle

    base = DeepFisherTransformer(MODEL, layer=7)
    first = clone(base).transform(X)
    again = pickle.loads(pickle.dumps(clone(base).set_params(layer=6))).transform(X)
    assert sum(trunk_runs) == 10  # the unpickled clone read the states of the first
    _assert_same(first, DeepFisherTransformer(MODEL, layer=7).transform(X))
    _assert_same(again, DeepFisherTransformer(MODEL, layer=6).transform(X))
