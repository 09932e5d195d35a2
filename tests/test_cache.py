"""The forward and backward caches never change a result and save work."""

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from sklearn.base import clone

from onnx_models import caffe_alexnet_model
from skfishing.cache import ArrayCache, clear_caches, forward_cache
from skfishing.network import FisherNetwork
from skfishing.transformer import DeepFisherTransformer

MODEL = caffe_alexnet_model(seed=21)[0]
X = np.random.default_rng(0).normal(size=(10, 3, 8, 8)).astype(np.float32)


def _assert_same(Z1, Z2):
    for field in ("forward", "backward"):
        np.testing.assert_array_equal(Z1[field], Z2[field])


def test_warm_cache_gives_identical_features_without_trunk(trunk_runs):
    fish = DeepFisherTransformer(MODEL, layer=7, batch_size=4).fit(X)
    cold = fish.transform(X)
    assert sum(trunk_runs) == 10
    warm = fish.transform(X)
    assert sum(trunk_runs) == 10
    _assert_same(cold, warm)
    # other layers, temperatures and clones reuse the trunk outputs too
    for params in [dict(layer=6), dict(temperature=4.0), dict(layer=8, temperature=1.0)]:
        cached = clone(fish).set_params(**params).fit_transform(X)
        clear_caches()
        before = sum(trunk_runs)
        uncached = clone(fish).set_params(**params).fit_transform(X)
        assert sum(trunk_runs) == before + 10
        _assert_same(cached, uncached)
    assert sum(trunk_runs) == 40


def test_partial_hits_keep_sample_order(trunk_runs):
    fish = DeepFisherTransformer(MODEL, layer=7, batch_size=3).fit(X)
    fish.transform(X[[1, 4, 7]])
    mixed = fish.transform(X)
    assert trunk_runs[-3:] and sum(trunk_runs) == 3 + 7
    clear_caches()
    _assert_same(mixed, fish.transform(X))


def test_disk_cache_matches_memory_cache(trunk_runs, tmp_path):
    fish = DeepFisherTransformer(MODEL, layer=6, memory=tmp_path).fit(X)
    reference = fish.transform(X)
    assert len(list(tmp_path.glob("*.npy"))) == 10
    assert not list(tmp_path.glob("*.tmp"))
    clear_caches()
    from_disk = fish.transform(X)
    assert sum(trunk_runs) == 10
    _assert_same(reference, from_disk)


def test_truncated_cache_file_is_a_miss_not_an_error(trunk_runs, tmp_path):
    fish = DeepFisherTransformer(MODEL, layer=6, memory=tmp_path).fit(X)
    reference = fish.transform(X)
    for path in sorted(tmp_path.glob("*.npy"))[:3]:
        path.write_bytes(path.read_bytes()[:40])
    clear_caches()
    _assert_same(reference, fish.transform(X))
    assert sum(trunk_runs) == 10 + 3


def test_other_model_never_reads_these_entries(trunk_runs):
    other = caffe_alexnet_model(seed=22)[0]
    DeepFisherTransformer(MODEL).fit_transform(X)
    Z_other = DeepFisherTransformer(other).fit_transform(X)
    assert sum(trunk_runs) == 20
    clear_caches()
    _assert_same(Z_other, DeepFisherTransformer(other).fit_transform(X))


def test_disk_cache_shared_across_processes(trunk_runs, tmp_path):
    model_path = tmp_path / "model.onnx"
    onnx.save(MODEL, model_path)
    np.save(tmp_path / "X.npy", X)
    cache_dir = tmp_path / "cache"
    script = textwrap.dedent(
        f"""
        import numpy as np
        from skfishing.transformer import DeepFisherTransformer
        X = np.load({str(tmp_path / "X.npy")!r})
        DeepFisherTransformer({str(model_path)!r}, layer=7, memory={str(cache_dir)!r}).fit_transform(X)
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=Path(__file__).parent)
    assert len(list(cache_dir.glob("*.npy"))) == 10
    from_other_process = DeepFisherTransformer(str(model_path), layer=7, memory=cache_dir).fit_transform(X)
    assert sum(trunk_runs) == 0
    clear_caches()
    uncached = DeepFisherTransformer(str(model_path), layer=7).fit_transform(X)
    _assert_same(from_other_process, uncached)


def test_memory_store_is_bounded():
    cache = ArrayCache(max_bytes=1000)
    for i in range(10):
        cache.put(f"k{i}", np.zeros(50, np.float32))  # 200 bytes each
    assert cache.nbytes <= 1000 and len(cache) == 5
    assert cache.get("k0") is None and cache.get("k9") is not None
    cache.put("huge", np.zeros(1000, np.float32))
    assert cache.get("huge") is None
    stored = cache.get("k9")
    with pytest.raises(ValueError):
        stored[0] = 1.0  # entries are read-only, so callers cannot corrupt them


def test_nan_in_an_uncached_sample_is_still_reported(trunk_runs):
    fish = DeepFisherTransformer(MODEL).fit(X)
    fish.transform(X)
    X_bad = X.copy()
    X_bad[3, 1, 2, 2] = np.nan  # other content, so a miss among hits
    with pytest.raises(ValueError, match="X contains NaN in sample 3"):
        fish.transform(X_bad)


@pytest.fixture
def backward_rows(monkeypatch):
    """Count the samples whose backward pass runs."""
    runs = []
    original = FisherNetwork.features

    def counting(self, state, keys, **kwargs):
        if any(isinstance(key, tuple) and key[0] == "backward" for key in keys):
            runs.append(len(state))
        return original(self, state, keys, **kwargs)

    monkeypatch.setattr(FisherNetwork, "features", counting)
    return runs


def test_backward_rows_are_computed_once_per_sample_and_parameters(trunk_runs, backward_rows):
    fish = DeepFisherTransformer(MODEL, layer=6, batch_size=4).fit(X)
    full = fish.transform(X)
    assert sum(backward_rows) == 10
    fold = fish.transform(X[3:8])  # a cross-validation fold: nothing to recompute
    assert sum(backward_rows) == 10
    _assert_same(fold, full[3:8])
    # each parameter the backward pass depends on has its own rows, and they
    # equal what a cold run computes
    for params in [dict(temperature=4.0), dict(layer=7), dict(labels=np.eye(7)[2]), dict(labels=np.eye(7)[3])]:
        before = sum(backward_rows)
        warm = clone(fish).set_params(**params).fit_transform(X)
        assert sum(backward_rows) == before + 10, params
        clear_caches()
        _assert_same(warm, clone(fish).set_params(**params).fit_transform(X))


def test_backward_rows_partly_cached_keep_sample_order(trunk_runs, backward_rows):
    fish = DeepFisherTransformer(MODEL, layer=6, batch_size=4).fit(X)
    fish.transform(X[[1, 4, 7, 8]])
    mixed = fish.transform(X)
    assert sum(backward_rows) == 4 + 6
    clear_caches()
    _assert_same(mixed, fish.transform(X))


def test_forward_cache_alone_cleared_still_gives_same_result(trunk_runs, backward_rows):
    fish = DeepFisherTransformer(MODEL, layer=6).fit(X)
    reference = fish.transform(X)
    forward_cache.clear()  # states are recomputed, backward rows come from their own store
    again = fish.transform(X)
    assert sum(trunk_runs) == 20 and sum(backward_rows) == 10
    _assert_same(reference, again)


def test_fit_transform_checks_uncached_samples_once(trunk_runs):
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


def test_progress_bar_counts_the_samples_that_run_the_network(capsys):
    fish = DeepFisherTransformer(MODEL, layer=6, progress=True).fit(X)
    fish.transform(X[[1, 4, 7]])
    assert "network forward pass" in capsys.readouterr().err
    fish.transform(X)
    err = capsys.readouterr().err
    assert "7/7" in err and "10/10" not in err
