"""A loaded skops file never chooses where skfishing writes: cache folders are reset (issue 20)."""

import shutil

import numpy as np
import pytest
from sklearn.pipeline import FeatureUnion, make_pipeline
from sklearn.preprocessing import Normalizer

from skfishing import DeepFisherTransformer, TraceKernelSVC, persistence
from skfishing.datasets import load_digits_images
from skfishing.registry import model_path

pytest.importorskip("skops.io")  # the optional extra skops


@pytest.mark.filterwarnings("ignore:metadata on a dtype is not saved")
def test_loaded_cache_folders_are_reset_with_a_warning(tmp_path, monkeypatch):
    data = load_digits_images(size=32)
    X, y = data.images[:40], data.target[:40]
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    model = model_path("tinyalexnet")
    union = FeatureUnion(
        [
            ("a", DeepFisherTransformer(model, layer=6, features="activation", memory=str(tmp_path / "abs"))),
            ("b", DeepFisherTransformer(model, layer=7, features="activation", memory="~/planted")),
        ]
    )
    pipe = make_pipeline(union, Normalizer(), TraceKernelSVC()).fit(X, y)
    gradient = make_pipeline(
        DeepFisherTransformer(model, layer=7, memory="relative", cache_dir=tmp_path / "downloads"),
        TraceKernelSVC(),
    ).fit(X, y)
    for estimator, names, n_fish in ((pipe, ["memory", "memory"], 2), (gradient, ["cache_dir", "memory"], 1)):
        expected = estimator.predict(X)
        for folder in (tmp_path / "abs", home / "planted", tmp_path / "relative", tmp_path / "downloads"):
            if folder.exists():
                shutil.rmtree(folder)
        file = tmp_path / "pipe.skops"
        persistence.dump(estimator, file, overwrite=True)
        with pytest.warns(UserWarning, match="a loaded file never chooses where skfishing writes") as record:
            loaded = persistence.load(file)
        assert sorted(str(w.message).split(" sets ")[1].split("=")[0] for w in record) == names
        fish = _transformers(loaded)
        assert len(fish) == n_fish and all(t.memory is None and t.cache_dir is None for t in fish)
        np.testing.assert_array_equal(loaded.predict(X), expected)  # the cache never changes a result
        # nothing was written in the planted folders
        assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "pipe.skops"]
        assert list(home.iterdir()) == []


def _transformers(estimator):
    params = estimator.get_params(deep=True).values()
    return [p for p in params if isinstance(p, DeepFisherTransformer)]
