"""skops persistence: trusted types, fresh-process round trip, refusals."""

import subprocess
import sys
import textwrap

import joblib
import numpy as np
import pytest
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.pipeline import FeatureUnion, Pipeline, make_pipeline
from sklearn.preprocessing import Normalizer

from skfishing import DeepFisherTransformer, TraceKernelSVC, persistence
from skfishing.datasets import load_digits_images
from skfishing.registry import model_path

sio = pytest.importorskip("skops.io")  # the optional extra skops


@pytest.fixture(scope="module")
def digits():
    data = load_digits_images(size=32)
    return data.images[:160], data.target[:160]


def _pipe(model="tinyalexnet", **fish):
    return Pipeline([("fish", DeepFisherTransformer(model, **fish)), ("svc", TraceKernelSVC())])


def _union(model="tinyalexnet"):
    union = FeatureUnion(
        [(f"x{layer}", DeepFisherTransformer(model, layer=layer, features="activation")) for layer in (6, 7)]
    )
    return make_pipeline(union, Normalizer(), TraceKernelSVC())


PIPELINES = {
    "gradient": lambda: _pipe(),
    "gradient-labels": lambda: _pipe(layer=8, temperature=4.0, labels=np.linspace(1, 2, 200) / 300),
    "activation": lambda: _pipe(features="activation", layer=6),
    "probabilities": lambda: _pipe(features="probabilities"),
    "model-as-path": lambda: _pipe(model_path("tinyalexnet")),
    "feature-union": _union,
    "multilabel": lambda: _pipe(layer=6),
}


@pytest.mark.filterwarnings("ignore:metadata on a dtype is not saved")
@pytest.mark.parametrize("name", list(PIPELINES))
def test_trusted_types_cover_every_fitted_pipeline(name, digits):
    """Catches a new attribute type in the estimators' state: it would be
    untrusted, and files of such pipelines would be refused."""
    X, y = digits
    if name == "multilabel":
        y = np.column_stack([y % 2, y < 5])
    pipe = PIPELINES[name]().fit(X[:40], y[:40])
    pipe.predict(X[40:60])  # sessions and caches exist now
    found = sio.get_untrusted_types(data=sio.dumps(pipe))
    assert set(found) <= set(persistence.TRUSTED_TYPES), set(found) - set(persistence.TRUSTED_TYPES)
    assert "skfishing._extraction.transformer.DeepFisherTransformer" in found


def test_trusted_types_are_not_broader_than_needed():
    assert len(set(persistence.TRUSTED_TYPES)) == len(persistence.TRUSTED_TYPES)
    for name in persistence.TRUSTED_TYPES:
        assert name.split(".")[0] in {"skfishing", "pathlib", "onnx"}, name


def test_fresh_process_gives_the_predictions_of_joblib(digits, tmp_path):
    X, y = digits
    pipe = _pipe(layer=7, temperature=2.0).fit(X[:100], y[:100])
    expected = pipe.decision_function(X[100:])
    persistence.dump(pipe, tmp_path / "pipe.skops")
    joblib.dump(pipe, tmp_path / "pipe.joblib")
    np.save(tmp_path / "X.npy", X[100:])
    script = textwrap.dedent(
        f"""
        import joblib, numpy as np
        from skfishing import persistence
        X = np.load({str(tmp_path / "X.npy")!r})
        from_skops = persistence.load({str(tmp_path / "pipe.skops")!r})
        from_joblib = joblib.load({str(tmp_path / "pipe.joblib")!r})
        np.save({str(tmp_path / "skops.npy")!r}, from_skops.decision_function(X))
        np.save({str(tmp_path / "joblib.npy")!r}, from_joblib.decision_function(X))
        np.save({str(tmp_path / "predict.npy")!r}, from_skops.predict(X))
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path, timeout=300)
    np.testing.assert_array_equal(np.load(tmp_path / "skops.npy"), np.load(tmp_path / "joblib.npy"))
    np.testing.assert_array_equal(np.load(tmp_path / "skops.npy"), expected)
    np.testing.assert_array_equal(np.load(tmp_path / "predict.npy"), pipe.predict(X[100:]))


def test_loaded_classifier_still_refuses_features_of_another_setting(digits, tmp_path):
    X, y = digits
    pipe = _pipe(layer=7, temperature=2.0, labels=np.full(200, 0.005)).fit(X[:80], y[:80])
    persistence.dump(pipe, tmp_path / "pipe.skops")
    loaded = persistence.load(tmp_path / "pipe.skops")
    source = loaded[-1].feature_source_
    assert source == pipe[-1].feature_source_ == dict(pipe[-1].support_vectors_.dtype.metadata)
    assert source["temperature"] == 2.0 and len(source["labels"]) == 200
    Z = pipe[0].transform(X[80:])
    np.testing.assert_array_equal(loaded[-1].predict(Z), pipe.predict(X[80:]))
    other = DeepFisherTransformer("tinyalexnet", layer=7, temperature=4.0).fit_transform(X[80:])
    with pytest.raises(ValueError, match=r"another model or setting.*temperature 4\.0 \(fit: 2\.0\)"):
        loaded[-1].predict(other)


class Shady(BaseEstimator, TransformerMixin):
    """A transformer skfishing has never heard of."""

    created = 0

    def __setstate__(self, state):
        type(self).created += 1
        super().__setstate__(state)

    def fit(self, X, y=None):
        return self

    def transform(self, X):
        return X


def test_untrusted_type_is_refused_and_nothing_is_created(digits, tmp_path):
    X, y = digits
    pipe = make_pipeline(Shady(), _pipe()).fit(X[:60], y[:60])
    path = tmp_path / "shady.skops"
    persistence.dump(pipe, path)
    name = f"{Shady.__module__}.Shady"
    Shady.created = 0
    with pytest.raises(ValueError) as error:
        persistence.load(path)
    message = str(error.value)
    assert "shady.skops" in message and name in message and "does not trust" in message
    assert "trusted=" in message and "skfishing._extraction.transformer" not in message
    assert Shady.created == 0
    loaded = persistence.load(path, trusted=[name])
    assert Shady.created == 1
    np.testing.assert_array_equal(loaded.predict(X[60:80]), pipe.predict(X[60:80]))


def test_dump_and_load_errors(digits, tmp_path):
    X, y = digits
    pipe = _pipe().fit(X[:40], y[:40])
    path = tmp_path / "pipe.skops"
    path.write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="pass overwrite=True"):
        persistence.dump(pipe, path)
    assert path.read_bytes() == b"precious"
    with pytest.raises(ValueError, match=r"pipe\.skops' is not a skops file"):
        persistence.load(path)
    persistence.dump(pipe, path, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe.skops"]
    with pytest.raises(FileNotFoundError, match="nope.skops"):
        persistence.load(tmp_path / "nope.skops")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        persistence.dump(pipe, tmp_path / "no" / "pipe.skops")
    joblib.dump(pipe, tmp_path / "pipe.joblib")
    with pytest.raises(ValueError, match="is not a skops file"):
        persistence.load(tmp_path / "pipe.joblib")


def test_plain_skops_files_load_too(digits, tmp_path):
    """A file written by skops.io.dump itself loads (without provenance to restore)."""
    X, y = digits
    pipe = _pipe(features="activation").fit(X[:40], y[:40])
    sio.dump(pipe, tmp_path / "plain.skops")
    loaded = persistence.load(tmp_path / "plain.skops")
    np.testing.assert_array_equal(loaded.predict(X[40:60]), pipe.predict(X[40:60]))
