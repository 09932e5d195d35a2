"""Disk caches: ``~`` is the home folder, and entries of another version are never read (issue 20)."""

import numpy as np
import pytest

import skfishing
from onnx_models import caffe_alexnet_model
from skfishing import DeepFisherTransformer
from skfishing import cache as cache_module
from skfishing.cache import DiskStore, FeatureCache

MODEL = caffe_alexnet_model(seed=21)[0]
X = np.random.default_rng(0).normal(size=(6, 3, 8, 8)).astype(np.float32)


def _assert_same(Z1, Z2):
    for field in ("forward", "backward"):
        np.testing.assert_array_equal(Z1[field], Z2[field])


def test_memory_folder_under_home_is_expanded(tmp_path, monkeypatch, trunk_runs):
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    reference = DeepFisherTransformer(MODEL, layer=7).transform(X)
    for memory in ("~/fish_cache", FeatureCache("~/fish_cache")):
        _assert_same(DeepFisherTransformer(MODEL, layer=7, memory=memory).transform(X), reference)
    assert len(list((home / "fish_cache").glob("*.npy"))) == len(X)
    assert sum(trunk_runs) == 2 * len(X)  # the second transformer read the states of the first
    assert list(work.iterdir()) == []  # no literal "~" folder in the working directory
    assert DiskStore("~/x").directory == home / "x"


def _fill_with_shifted_states(monkeypatch, folder):
    """Entries as another version could have written them: other values, good checksums."""
    put = DiskStore.put
    with monkeypatch.context() as patch:
        patch.setattr(DiskStore, "put", lambda self, key, value: put(self, key, np.asarray(value) + 1))
        DeepFisherTransformer(MODEL, layer=7, memory=folder).transform(X)
    assert len(list(folder.glob("*.npy"))) == len(X)


@pytest.mark.parametrize(
    "change",
    [
        lambda patch: patch.setattr(skfishing, "__version__", "0.0.1"),
        lambda patch: patch.setitem(cache_module.DISK_VERSIONS, "preprocessing", 0),
        lambda patch: patch.setitem(cache_module.DISK_VERSIONS, "graph", 0),
        lambda patch: patch.setitem(cache_module.DISK_VERSIONS, "format", 0),
    ],
    ids=["package", "preprocessing", "graph", "format"],
)
def test_entries_written_by_another_version_are_never_read(tmp_path, monkeypatch, trunk_runs, change):
    reference = DeepFisherTransformer(MODEL, layer=7).transform(X)
    with monkeypatch.context() as patch:
        change(patch)  # "the old version" fills the folder
        _fill_with_shifted_states(monkeypatch, tmp_path)
        old = DeepFisherTransformer(MODEL, layer=7, memory=tmp_path).transform(X)
        assert not np.array_equal(old["backward"], reference["backward"])  # that version reads them
    del trunk_runs[:]
    new = DeepFisherTransformer(MODEL, layer=7, memory=tmp_path).transform(X)
    _assert_same(new, reference)  # this version recomputes
    assert sum(trunk_runs) == len(X)
    assert len(list(tmp_path.glob("*.npy"))) == 2 * len(X)  # both versions' entries are there
    assert "0.0.1" not in cache_module.disk_version()
