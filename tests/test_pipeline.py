"""End to end: Pipeline + GridSearchCV + joblib with a small ONNX network."""

import subprocess
import sys
import textwrap
from pathlib import Path

import joblib
import numpy as np
import onnx
import pytest
from sklearn.model_selection import GridSearchCV, cross_val_predict
from sklearn.pipeline import Pipeline

from onnx_models import caffe_alexnet_model
from skfishing import DeepFisherTransformer, TraceKernelSVC
from skfishing.cache import clear_caches


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A CNN classifier saved to disk and images of two classes it separates."""
    model = caffe_alexnet_model(seed=5)[0]
    path = tmp_path_factory.mktemp("model") / "cnn.onnx"
    onnx.save(model, path)
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 30)
    X = rng.normal(size=(60, 3, 8, 8)).astype(np.float32)
    X[y == 1, 0] += 1.5  # class 1 is redder
    return path, X, y


def _pipe(path, **fish):
    # CPU: a fresh process must give the same bits (see tests/test_cuda.py for CUDA)
    fish = DeepFisherTransformer(str(path), providers=["CPUExecutionProvider"], **fish)
    return Pipeline([("fish", fish), ("svc", TraceKernelSVC())])


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_grid_search_over_layer_temperature_and_C(data, n_jobs):
    path, X, y = data
    grid = {"fish__layer": [6, 7], "fish__temperature": [1.0, 4.0], "svc__C": [0.1, 10.0]}
    search = GridSearchCV(_pipe(path), grid, cv=3, n_jobs=n_jobs).fit(X, y)
    assert len(search.cv_results_["params"]) == 8
    assert search.best_score_ > 0.8
    # each candidate's score equals the same pipeline fitted by hand on the folds
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    best = search.best_params_
    by_hand = cross_val_score(_pipe(path).set_params(**best), X, y, cv=StratifiedKFold(3)).mean()
    assert search.best_score_ == pytest.approx(by_hand, abs=1e-12)


def test_cross_val_predict_decision_function(data):
    path, X, y = data
    scores = cross_val_predict(_pipe(path, layer=7), X, y, cv=3, method="decision_function")
    assert scores.shape == (60,)
    assert np.mean((scores > 0) == y) > 0.7


def test_joblib_round_trip_in_a_fresh_process_is_bit_identical(data, tmp_path):
    path, X, y = data
    pipe = _pipe(path, layer=7).fit(X, y)
    expected = pipe.decision_function(X)
    dump = tmp_path / "pipe.joblib"
    joblib.dump(pipe, dump)
    assert dump.stat().st_size < 200_000  # the network weights are not inside
    np.save(tmp_path / "X.npy", X)
    script = textwrap.dedent(
        f"""
        import joblib, numpy as np
        pipe = joblib.load({str(dump)!r})
        np.save({str(tmp_path / "out.npy")!r}, pipe.decision_function(np.load({str(tmp_path / "X.npy")!r})))
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=Path(__file__).parent)
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), expected)
    clear_caches()
    np.testing.assert_array_equal(joblib.load(dump).decision_function(X), expected)


def test_multilabel_pipeline(data):
    path, X, y = data
    Y = np.column_stack([y, 1 - y, (X[:, 1].mean(axis=(1, 2)) > 0).astype(int)])
    pipe = _pipe(path, layer=8).fit(X, Y)
    assert pipe.decision_function(X).shape == (60, 3)
    assert pipe.predict(X).shape == (60, 3)


def test_fitted_pipeline_refuses_a_changed_or_missing_model(data, tmp_path):
    path, X, y = data
    copy = tmp_path / "cnn.onnx"
    copy.write_bytes(path.read_bytes())
    pipe = _pipe(copy, layer=7).fit(X, y)
    dump = tmp_path / "pipe.joblib"
    joblib.dump(pipe, dump)
    onnx.save(caffe_alexnet_model(seed=6)[0], copy)  # other weights, same shapes
    with pytest.raises(ValueError, match="has changed since this transformer was fitted"):
        joblib.load(dump).decision_function(X)
    copy.unlink()
    with pytest.raises(FileNotFoundError, match="cnn.onnx"):
        joblib.load(dump).decision_function(X)


def test_changed_external_weights_are_refused_in_a_fresh_process(data, tmp_path):
    """An ONNX model's external data file is part of its identity (model_sha256_)."""
    _, X, y = data
    folder = tmp_path / "model"
    folder.mkdir()
    path = folder / "cnn.onnx"
    onnx.save(
        caffe_alexnet_model(seed=5)[0],
        path,
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
    )
    pipe = _pipe(path, layer=7).fit(X, y)
    dump = tmp_path / "pipe.joblib"
    joblib.dump(pipe, dump)
    onnx_bytes = path.read_bytes()
    other = tmp_path / "other"
    other.mkdir()
    onnx.save(
        caffe_alexnet_model(seed=6)[0],
        other / "cnn.onnx",
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
    )
    assert (other / "cnn.onnx").read_bytes() == onnx_bytes  # only the weights differ
    (folder / "weights.bin").write_bytes((other / "weights.bin").read_bytes())
    script = textwrap.dedent(
        f"""
        import joblib, numpy as np
        try:
            joblib.load({str(dump)!r}).decision_function(np.load({str(tmp_path / "X.npy")!r}))
        except ValueError as exc:
            print(exc)
        """
    )
    np.save(tmp_path / "X.npy", X)
    out = subprocess.run(
        [sys.executable, "-c", script], check=True, cwd=Path(__file__).parent, capture_output=True, text=True
    ).stdout
    assert "has changed since this transformer was fitted" in out
    (folder / "weights.bin").unlink()
    with pytest.raises(FileNotFoundError, match="keeps weights in 'weights.bin', which is missing"):
        joblib.load(dump).decision_function(X)
