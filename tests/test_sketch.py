"""TensorSketch: explicit random features of the trace kernel."""

import pickle
import subprocess
import sys
import textwrap
import tracemalloc

import joblib
import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from sklearn import config_context
from sklearn.linear_model import SGDClassifier
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.pipeline import make_pipeline
from sklearn.utils.estimator_checks import parametrize_with_checks
from test_kernel import explicit, factorized

from skfishing import TensorSketch, trace_kernel


def explicit_count_sketch(X, hashes, signs, m):
    """CountSketch of the columns of X, one column at a time (reference)."""
    out = np.zeros((len(X), m))
    for j, (bucket, sign) in enumerate(zip(hashes, signs)):
        out[:, bucket] += sign * X[:, j]
    return out


@parametrize_with_checks([TensorSketch(n_components=64, random_state=0)])
def test_sklearn_compatible_on_2d_input(estimator, check):
    check(estimator)


def test_equals_count_sketch_of_the_explicit_outer_products():
    """The FFT product is the CountSketch of vec(x (x) delta) with bucket
    h1(i) + h2(j) mod m and sign s1(i) s2(j) (Pham & Pagh)."""
    Z, m = factorized(7, 6, 5, dtype="f8"), 16
    sketch = TensorSketch(n_components=m, random_state=0).fit(Z)
    (h1, h2), (s1, s2) = sketch.hashes_, sketch.signs_
    buckets = (h1[:, None] + h2[None, :]) % m
    signs = s1[:, None].astype(np.float64) * s2[None, :]
    expected = explicit_count_sketch(explicit(Z), buckets.ravel(), signs.ravel(), m)
    out = sketch.transform(Z)
    assert out.dtype == np.float32 and out.shape == (7, m)
    assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_2d_input_gets_a_count_sketch_of_the_linear_kernel():
    X = np.random.default_rng(0).normal(size=(9, 20))
    sketch = TensorSketch(n_components=8, random_state=1).fit(X)
    assert len(sketch.hashes_) == 1 and sketch.hashes_[0].shape == (20,)
    expected = explicit_count_sketch(X, sketch.hashes_[0], sketch.signs_[0], 8)
    assert_allclose(sketch.transform(X), expected, rtol=1e-6)


@pytest.mark.parametrize("structured", [True, False])
def test_unbiased_mean_over_seeds_converges_to_the_kernel(structured):
    A = factorized(4, 6, 5, seed=0, dtype="f8")
    B = factorized(3, 6, 5, seed=1, dtype="f8")
    if not structured:
        A, B = explicit(A), explicit(B)
    exact = trace_kernel(A, B)
    m, seeds = 8, 3000  # few buckets: a large variance, and any bias is large too
    estimates = np.empty((seeds,) + exact.shape)
    for seed in range(seeds):
        sketch = TensorSketch(n_components=m, random_state=seed).fit(A)
        estimates[seed] = sketch.transform(A).astype(np.float64) @ sketch.transform(B).T
    mean = estimates.mean(0)
    standard_error = estimates.std(0) / np.sqrt(seeds)
    # each estimate is off by ~0.3; the mean of 3000 is within a few standard errors
    assert np.abs(estimates[0] - exact).max() > 10 * standard_error.max()
    assert np.all(np.abs(mean - exact) < 4.5 * standard_error), (mean - exact) / standard_error


def test_relative_gram_error_falls_as_one_over_sqrt_n_components():
    Z = factorized(120, 64, 32, seed=3)
    exact = trace_kernel(Z)
    errors = {}
    for m in (256, 1024, 4096, 16384):
        relative = [
            np.linalg.norm(F @ F.T.astype(np.float64) - exact) / np.linalg.norm(exact)
            for F in (TensorSketch(m, random_state=seed).fit_transform(Z) for seed in range(8))
        ]
        errors[m] = np.mean(relative)
    scaled = np.array([errors[m] * np.sqrt(m) for m in errors])
    # sqrt(m) * error is about constant: each 4x more components halves the error
    assert scaled.max() / scaled.min() < 1.25, errors
    assert errors[16384] < 0.15


def test_same_seed_same_features_other_seed_other_features():
    Z = factorized(20, 10, 7)
    first = TensorSketch(64, random_state=5).fit_transform(Z)
    assert_array_equal(TensorSketch(64, random_state=5).fit_transform(Z), first)
    assert_array_equal(TensorSketch(64, random_state=np.random.RandomState(5)).fit_transform(Z), first)
    assert not np.allclose(TensorSketch(64, random_state=6).fit_transform(Z), first)
    # random_state=None: new hashes at every fit
    assert not np.allclose(TensorSketch(64).fit_transform(Z), TensorSketch(64).fit_transform(Z))


def test_same_seed_same_features_in_a_fresh_process(tmp_path):
    Z = factorized(30, 12, 9, seed=2)
    np.save(tmp_path / "Z.npy", Z)
    script = textwrap.dedent(
        f"""
        import numpy as np
        from skfishing import TensorSketch
        Z = np.load({str(tmp_path / "Z.npy")!r})
        np.save({str(tmp_path / "out.npy")!r}, TensorSketch(128, random_state=7).fit_transform(Z))
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True)
    assert_array_equal(np.load(tmp_path / "out.npy"), TensorSketch(128, random_state=7).fit_transform(Z))


def test_blocks_do_not_change_the_result():
    Z = factorized(50, 16, 8, seed=4)
    sketch = TensorSketch(32, random_state=0).fit(Z)
    whole = sketch.transform(Z)
    with config_context(working_memory=1e-3):  # one row per block
        assert_allclose(sketch.transform(Z), whole, rtol=1e-5, atol=1e-6)
    assert_allclose(
        np.vstack([sketch.transform(Z[i : i + 7]) for i in range(0, 50, 7)]), whole, rtol=1e-5, atol=1e-6
    )


def test_peak_memory_is_output_plus_one_block():
    n, m = 4000, 1024
    Z = factorized(n, 64, 64)
    sketch = TensorSketch(m, random_state=0).fit(Z)
    tracemalloc.start()
    try:
        with config_context(working_memory=1):  # blocks of about 1 MiB of temporaries
            sketch.transform(Z)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # the float32 output (16 MB) and one block; all rows at once would need
    # about six times the output in temporaries
    assert peak <= n * m * 4 + 3 * 2**20


def test_hashes_depend_on_the_seed_and_widths_only():
    """A stream fits the sketch on its first chunk: later chunks get the
    same features as from a sketch fitted on all the data."""
    Z = factorized(40, 10, 7, seed=8)
    on_first = TensorSketch(64, random_state=3).fit(Z[:1])
    on_all = TensorSketch(64, random_state=3).fit(Z)
    assert_array_equal(on_first.transform(Z[20:]), on_all.transform(Z[20:]))


def test_float64_fields_give_float32_features_of_the_same_value():
    Z32 = factorized(10, 8, 6, seed=5)
    Z64 = Z32.astype([("forward", "f8", (8,)), ("backward", "f8", (6,))])
    sketch = TensorSketch(16, random_state=0).fit(Z32)
    out = sketch.transform(Z64)
    assert out.dtype == np.float32
    assert_allclose(out, sketch.transform(Z32), rtol=1e-5, atol=1e-6)


def test_pickle_round_trip_gives_the_same_features():
    Z = factorized(10, 8, 6)
    sketch = TensorSketch(32, random_state=0).fit(Z)
    restored = pickle.loads(pickle.dumps(sketch))
    assert_array_equal(restored.transform(Z), sketch.transform(Z))


def test_feature_names_and_n_features_in():
    Z = factorized(4, 8, 6)
    sketch = TensorSketch(5, random_state=0).fit(Z)
    assert sketch.n_features_in_ == 48
    assert list(sketch.get_feature_names_out()) == [f"tensorsketch{i}" for i in range(5)]


@pytest.mark.parametrize(
    "fit_on, X, message",
    [
        (factorized(5, 8, 6), factorized(5, 8, 7), "field 'backward' of width 7 but the data TensorSketch"),
        (
            factorized(5, 8, 6),
            np.ones((5, 48)),
            "X is a 2-D array but the data TensorSketch was fitted on is a structured array",
        ),
        (np.ones((5, 48)), factorized(5, 8, 6), "X is a structured array but the data TensorSketch"),
        (np.ones((5, 48)), np.ones((5, 47)), "X has 47 features, but TensorSketch is expecting 48"),
    ],
)
def test_other_layout_at_transform_raises(fit_on, X, message):
    sketch = TensorSketch(8, random_state=0).fit(fit_on)
    with pytest.raises(ValueError, match=message):
        sketch.transform(X)


def test_bad_input_and_parameters_raise_clear_errors():
    Z = factorized(5, 8, 6)
    with pytest.raises(ValueError, match="n_components"):
        TensorSketch(0).fit(Z)
    bad = Z.copy()
    bad["backward"][2, 1] = np.nan
    with pytest.raises(ValueError, match=r"X\['backward'\] contains NaN"):
        TensorSketch(8).fit(bad)
    with pytest.raises(ValueError, match="one row of a structured array"):
        TensorSketch(8).fit(Z).transform(Z[0])


def test_pipeline_grid_search_and_joblib_persistence(tmp_path):
    """The sketch pipeline goes through GridSearchCV and joblib like the kernel one."""
    Z = factorized(120, 10, 4, seed=6)
    y = (Z["forward"][:, 0] * Z["backward"][:, 0] > 0).astype(int)
    folds = list(KFold(3, shuffle=True, random_state=0).split(Z))
    grid = {"tensorsketch__n_components": [16, 512], "sgdclassifier__alpha": [1e-4, 1e-2]}
    pipe = make_pipeline(TensorSketch(random_state=0), SGDClassifier(random_state=0))
    search = GridSearchCV(pipe, grid, cv=folds).fit(Z, y)
    # every candidate scores as the same pipeline built and fitted by hand on each fold
    for params, score in zip(search.cv_results_["params"], search.cv_results_["mean_test_score"]):
        manual = [
            make_pipeline(
                TensorSketch(params["tensorsketch__n_components"], random_state=0),
                SGDClassifier(alpha=params["sgdclassifier__alpha"], random_state=0),
            )
            .fit(Z[train], y[train])
            .score(Z[test], y[test])
            for train, test in folds
        ]
        assert score == pytest.approx(np.mean(manual), abs=1e-12)
    joblib.dump(search.best_estimator_, tmp_path / "model.joblib")
    restored = joblib.load(tmp_path / "model.joblib")
    test = factorized(30, 10, 4, seed=7)
    assert_array_equal(restored.decision_function(test), search.best_estimator_.decision_function(test))


def test_extraction_sketch_linear_pipeline_round_trips_through_joblib(tmp_path):
    from skfishing import DeepFisherTransformer
    from skfishing.datasets import load_digits_images

    digits = load_digits_images(size=32)
    X, y = digits.images[:90], digits.target[:90]
    pipe = make_pipeline(
        DeepFisherTransformer("tinyalexnet", layer=7),
        TensorSketch(1024, random_state=0),
        SGDClassifier(random_state=0),
    ).fit(X[:60], y[:60])
    joblib.dump(pipe, tmp_path / "pipe.joblib")
    restored = joblib.load(tmp_path / "pipe.joblib")
    assert_array_equal(restored.decision_function(X[60:]), pipe.decision_function(X[60:]))
    # the same as the steps run by hand
    Z = DeepFisherTransformer("tinyalexnet", layer=7).fit_transform(X)
    F = TensorSketch(1024, random_state=0).fit(Z).transform(Z)
    manual = SGDClassifier(random_state=0).fit(F[:60], y[:60])
    assert_array_equal(pipe.decision_function(X[60:]), manual.decision_function(F[60:]))
    assert pipe.score(X[60:], y[60:]) > 0.5  # ten classes: chance is 0.1
