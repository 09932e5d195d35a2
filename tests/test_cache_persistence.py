"""A fitted pipeline with a feature cache saves as settings and loads (skops, joblib)."""

import pickle
import subprocess
import sys
import textwrap

import joblib
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.pipeline import Pipeline

from skfishing import DeepFisherTransformer, TraceKernelSVC, persistence
from skfishing.cache import FeatureCache, shared_cache
from skfishing.datasets import load_digits_images

sio = pytest.importorskip("skops.io")  # the optional extra skops

MEMORIES = ["FeatureCache", "FeatureCache-folder", "folder"]


def _memory(kind, tmp_path):
    if kind == "FeatureCache":
        return FeatureCache(max_bytes=50 << 20)
    if kind == "FeatureCache-folder":
        return FeatureCache(tmp_path / "cache", max_bytes=50 << 20)
    return str(tmp_path / "folder")


@pytest.mark.filterwarnings("ignore:metadata on a dtype is not saved")
def test_pipeline_with_a_cache_saves_as_settings_and_loads_empty(tmp_path):
    """skops and joblib files of fitted pipelines with memory= (a FeatureCache,
    with or without folder, or a folder) load in a fresh process, predict as
    the original, and their caches start empty: no entry, lock or store is saved."""
    data = load_digits_images(size=32)
    X, y = data.images[:60], data.target[:60]
    np.save(tmp_path / "X.npy", X[40:])
    expected = {}
    for kind in MEMORIES:
        pipe = Pipeline(
            [
                ("fish", DeepFisherTransformer("tinyalexnet", layer=7, memory=_memory(kind, tmp_path))),
                ("svc", TraceKernelSVC()),
            ]
        )
        # a clone shares its original's cache: this is what model selection fits
        fitted = clone(pipe).fit(X[:40], y[:40])
        expected[kind] = fitted.decision_function(X[40:])
        fish = fitted[0]
        used = fish.memory if isinstance(fish.memory, FeatureCache) else shared_cache(fish)
        assert len(used.states) > 0  # filled: there is something not to save
        for data_ in (sio.dumps(fitted), pickle.dumps(fitted)):
            for leak in (b"ArrayStore", b"DiskStore", b"_thread", b"lock", b"_digests"):
                assert leak not in data_, (kind, leak)
        found = sio.get_untrusted_types(data=sio.dumps(fitted))
        assert set(found) <= set(persistence.TRUSTED_TYPES), set(found) - set(persistence.TRUSTED_TYPES)
        persistence.dump(fitted, tmp_path / f"{kind}.skops")
        joblib.dump(fitted, tmp_path / f"{kind}.joblib")
    script = textwrap.dedent(
        f"""
        import joblib, numpy as np, warnings
        from skfishing import persistence
        from skfishing.cache import FeatureCache, shared_cache
        X = np.load({str(tmp_path / "X.npy")!r})
        loaded = {{}}
        for kind in {MEMORIES!r}:
            for how in ("skops", "joblib"):
                file = f"{str(tmp_path)}/{{kind}}.{{how}}"
                with warnings.catch_warnings():  # skops files never choose a cache folder
                    warnings.simplefilter("ignore")
                    loaded[kind, how] = persistence.load(file) if how == "skops" else joblib.load(file)
        for (kind, how), pipe in loaded.items():  # all loaded before any predicts
            fish = pipe[0]
            caches = [shared_cache(fish)]
            folder = kind != "FeatureCache"
            if folder and how == "skops":  # reset by persistence.load: a file never chooses a folder
                assert fish.memory is None, (kind, fish.memory)
            elif isinstance(fish.memory, FeatureCache):
                caches.append(fish.memory)
                assert fish.memory.max_bytes == 50 << 20
                assert (fish.memory.directory is None) == (kind == "FeatureCache")
            else:
                assert fish.memory == f"{str(tmp_path)}/folder", fish.memory
            assert [len(c.states) + len(c.outputs) for c in caches] == [0] * len(caches), (kind, how)
        for (kind, how), pipe in loaded.items():
            np.save(f"{str(tmp_path)}/{{kind}}-{{how}}.npy", pipe.decision_function(X))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    for kind in MEMORIES:
        for how in ("skops", "joblib"):
            np.testing.assert_array_equal(
                np.load(tmp_path / f"{kind}-{how}.npy"), expected[kind], err_msg=kind
            )


def test_feature_cache_state_is_its_settings_only(tmp_path):
    """skops restores a FeatureCache through __setstate__: only settings, validated."""
    cache = FeatureCache(tmp_path, max_bytes=1000)
    cache.states.put("k", np.ones(3))
    assert cache.__getstate__() == {"directory": tmp_path, "max_bytes": 1000}
    loaded = sio.loads(sio.dumps(cache), trusted=persistence.TRUSTED_TYPES)
    assert isinstance(loaded, FeatureCache) and len(loaded.states) == 0
    assert loaded.directory == tmp_path and loaded.max_bytes == 1000 and loaded.disk.directory == tmp_path
    assert loaded.cache_id != cache.cache_id
    fresh = FeatureCache.__new__(FeatureCache)
    with pytest.raises(ValueError, match="directory and max_bytes"):
        fresh.__setstate__({"directory": None, "max_bytes": 1, "states": {}})
    with pytest.raises(ValueError, match="max_bytes"):
        fresh.__setstate__({"directory": None, "max_bytes": -1})
