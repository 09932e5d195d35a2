"""scikit-learn's common checks, restated for structured (gradient) output.

``tests/test_common.py`` runs scikit-learn's estimator checks on
:class:`~skfishing.DeepFisherTransformer`. Ten of them compare transform
outputs with ``numpy.testing.assert_allclose``, which cannot compare the
structured arrays of ``features="gradient"``, so they are expected to fail
there. This module tests the same properties on the structured arrays, field
by field, with the public API only:

============================================  ==========================================
scikit-learn check                             here
============================================  ==========================================
check_pipeline_consistency                     test_pipeline_consistency
check_estimators_pickle (and readonly memmap)  test_pickle_round_trip
check_transformer_data_not_an_array            test_non_array_input
check_transformer_general (and readonly        test_transformer_general
memmap)
check_transformer_preserve_dtypes              test_dtypes
check_methods_sample_order_invariance          test_sample_order_invariance
check_methods_subset_invariance                test_subset_invariance
check_fit_idempotent                           test_fit_idempotent
============================================  ==========================================

Each runs on two networks: a tabular classifier that takes any number of
features (``onnx_models.any_width_model``, as in ``test_common.py``) and the
embedded image network ``"tinyalexnet"`` on uint8 images.
"""

import pickle

import joblib
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.utils import gen_batches

from onnx_models import any_width_model
from skfishing import DeepFisherTransformer, TraceKernelSVC

FIELDS = ("forward", "backward")
# Rows have unit norm and are float32: 1e-6 is a few float32 roundings
# (batches of other sizes may change the order of the sums).
ATOL = 1e-6
TABULAR = any_width_model(seed=3)


class Case:
    """A network, its estimator and data: X_train, X_test, y_train."""

    def __init__(self, name, estimator, X, y, widths):
        self.name, self.estimator, self.widths = name, estimator, widths
        self.X_train, self.X_test, self.y = X[:14], X[14:], y[:14]

    def __repr__(self):
        return self.name


def _tabular(dtype=np.float32):
    rng = np.random.default_rng(0)
    X = (3 * rng.uniform(size=(20, 7))).astype(dtype)  # the data of scikit-learn's checks
    # head 4 -> 6 -> 5 -> 3: layer 7 has forward width 6 (x6), backward width 5 (delta7)
    estimator = DeepFisherTransformer(TABULAR, layer=7, temperature=3.0, labels=[0.2, 0.3, 0.5], batch_size=4)
    return Case("tabular", estimator, X, np.arange(20) % 2, (6, 5))


def _images():
    rng = np.random.default_rng(1)
    X = rng.integers(0, 256, size=(20, 32, 32, 3), dtype=np.uint8)
    estimator = DeepFisherTransformer("tinyalexnet", layer=7, temperature=3.0, batch_size=4)
    Z = estimator.fit_transform(X[:1])
    return Case(
        "images", estimator, X, np.arange(20) % 2, (Z.dtype["forward"].shape[0], Z.dtype["backward"].shape[0])
    )


@pytest.fixture(params=["tabular", "images"])
def case(request):
    return _tabular() if request.param == "tabular" else _images()


def assert_same_features(actual, expected, atol=ATOL):
    """Two outputs of ``features="gradient"`` hold the same rows, field by field."""
    assert isinstance(actual, np.ndarray) and isinstance(expected, np.ndarray)
    assert actual.shape == expected.shape and actual.ndim == 1
    assert actual.dtype.names == expected.dtype.names == FIELDS
    for field in FIELDS:
        assert actual.dtype[field] == expected.dtype[field], field
        np.testing.assert_allclose(actual[field], expected[field], rtol=0, atol=atol, err_msg=field)


def test_the_comparison_can_fail(case):
    """assert_same_features sees a changed value, row order, width or dtype."""
    Z = clone(case.estimator).fit_transform(case.X_test)
    assert_same_features(Z.copy(), Z)
    changed = Z.copy()
    changed["backward"][2, 1] += 1e-4
    reordered = Z[[1, 0, *range(2, len(Z))]]
    wider = np.zeros(
        len(Z), dtype=[("forward", "f4", (case.widths[0] + 1,)), ("backward", "f4", (case.widths[1],))]
    )
    wider_dtype = np.zeros(
        len(Z), dtype=[("forward", "f8", (case.widths[0],)), ("backward", "f8", (case.widths[1],))]
    )
    for other in (changed, reordered, Z[:-1], wider, wider_dtype, np.hstack([Z["forward"], Z["backward"]])):
        with pytest.raises(AssertionError):
            assert_same_features(other, Z)


# -- check_pipeline_consistency ----------------------------------------------------


def test_pipeline_consistency(case):
    """In a Pipeline, cloned or not, with y passed along, the features are the same."""
    expected = clone(case.estimator).fit_transform(case.X_train)
    pipe = make_pipeline(clone(case.estimator))
    assert_same_features(pipe.fit_transform(case.X_train, case.y), expected)
    assert_same_features(clone(pipe).fit(case.X_train, case.y).transform(case.X_train), expected)
    # a structured array goes through Pipeline to the next step unchanged
    svc_pipe = Pipeline([("fish", clone(case.estimator)), ("svc", TraceKernelSVC(C=10.0))])
    scores = svc_pipe.fit(case.X_train, case.y).decision_function(case.X_test)
    fish = clone(case.estimator).fit(case.X_train)
    svc = TraceKernelSVC(C=10.0).fit(fish.transform(case.X_train), case.y)
    np.testing.assert_allclose(
        scores, svc.decision_function(fish.transform(case.X_test)), rtol=1e-6, atol=1e-9
    )


# -- check_estimators_pickle ----------------------------------------------------------


def _read_only_memmap(X, path):
    np.save(path, X)
    memmap = np.load(path, mmap_mode="r")
    assert isinstance(memmap, np.memmap) and not memmap.flags.writeable
    return memmap


@pytest.mark.parametrize("readonly_memmap", [False, True])
def test_pickle_round_trip(case, readonly_memmap, tmp_path):
    """A fitted transformer, pickled and restored, gives the same features."""
    X_train, X_test = case.X_train, case.X_test
    if readonly_memmap:
        X_train, X_test = (
            _read_only_memmap(X_train, tmp_path / "train.npy"),
            _read_only_memmap(X_test, tmp_path / "test.npy"),
        )
    fish = clone(case.estimator).fit(X_train)
    expected = fish.transform(X_test)
    for restored in (
        pickle.loads(pickle.dumps(fish)),
        joblib.load(joblib.dump(fish, tmp_path / "fish.joblib")[0]),
    ):
        assert restored.get_params().keys() == fish.get_params().keys()
        assert_same_features(restored.transform(X_test), expected)
    # and the features themselves, with their provenance
    Z = pickle.loads(pickle.dumps(expected))
    assert_same_features(Z, expected)
    assert Z.dtype.metadata == expected.dtype.metadata


# -- check_transformer_data_not_an_array ----------------------------------------------


class _ArrayOnly:
    """Not a sequence nor an ndarray: only ``__array__`` (scikit-learn's ``_NotAnArray``)."""

    def __init__(self, data):
        self.data = np.asarray(data)

    def __array__(self, dtype=None, copy=None):
        return self.data if dtype is None else self.data.astype(dtype)


def test_non_array_input(case):
    """Lists (of rows, or of images) give the features of the stacked array."""
    expected = clone(case.estimator).fit(case.X_train).transform(case.X_test)
    kinds = [list, tuple] if case.name == "images" else [np.ndarray.tolist, _ArrayOnly]
    for kind in kinds:
        X_train, X_test = kind(case.X_train), kind(case.X_test)
        assert not isinstance(X_test, np.ndarray)
        assert_same_features(clone(case.estimator).fit(X_train).transform(X_test), expected)
        assert_same_features(clone(case.estimator).fit_transform(X_test), expected)
        assert_same_features(clone(case.estimator).fit(case.X_train).transform(X_test), expected)


# -- check_transformer_general ----------------------------------------------------


@pytest.mark.parametrize("readonly_memmap", [False, True])
def test_transformer_general(case, readonly_memmap, tmp_path):
    """fit returns self; fit_transform = fit + transform, with or without y; one row per sample."""
    X = _read_only_memmap(case.X_train, tmp_path / "X.npy") if readonly_memmap else case.X_train
    fish = clone(case.estimator)
    assert fish.fit(X) is fish
    Z = fish.transform(X)
    assert Z.shape == (len(X),)
    for y in (None, case.y, np.c_[case.y, case.y]):  # y is ignored, 1-D or 2-D
        assert_same_features(clone(case.estimator).fit_transform(X, y), Z)
        assert_same_features(clone(case.estimator).fit(X, y).transform(X), Z)
    assert_same_features(fish.fit_transform(X), Z)  # fit_transform of a fitted transformer
    if case.name == "tabular":  # inputs of another width are refused after fit
        with pytest.raises(ValueError, match=r"X has 6 features, but DeepFisherTransformer is expecting 7"):
            fish.transform(case.X_test[:, :-1])


# -- check_transformer_preserve_dtypes --------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtypes(dtype):
    """Fields are float32 (the preserved dtype) for float32 and float64 input alike."""
    case = _tabular(dtype)
    fish = clone(case.estimator)
    for Z in (fish.fit_transform(case.X_train), fish.fit(case.X_train).transform(case.X_train)):
        assert Z.dtype.names == FIELDS
        assert Z.dtype["forward"] == np.dtype((np.float32, (6,)))
        assert Z.dtype["backward"] == np.dtype((np.float32, (5,)))
        np.testing.assert_allclose(np.linalg.norm(Z["forward"], axis=1), 1, atol=ATOL)
        np.testing.assert_allclose(np.linalg.norm(Z["backward"], axis=1), 1, atol=ATOL)
    # the network runs in float32: float64 input changes nothing but rounding
    single = clone(case.estimator).fit_transform(case.X_train.astype(np.float32))
    assert_same_features(Z, single)


def test_images_give_float32_fields():
    case = _images()
    Z = clone(case.estimator).fit_transform(case.X_test)
    assert {Z.dtype[field].base for field in FIELDS} == {np.dtype(np.float32)}


# -- check_methods_sample_order_invariance, check_methods_subset_invariance ---------


def test_sample_order_invariance(case):
    fish = clone(case.estimator).fit(case.X_train)
    X = np.concatenate([case.X_train, case.X_test])
    order = np.random.default_rng(2).permutation(len(X))
    assert_same_features(fish.transform(X[order]), fish.transform(X)[order])


def test_subset_invariance(case):
    """Features of a row do not depend on the other rows of the call (nor on batch_size)."""
    fish = clone(case.estimator).fit(case.X_train)
    X = np.concatenate([case.X_train, case.X_test])
    Z = fish.transform(X)
    for batch in gen_batches(len(X), 3):  # 3 does not divide batch_size=4
        assert_same_features(fish.transform(X[batch]), Z[batch])
    assert_same_features(fish.transform(X[7:8]), Z[7:8])


# -- check_fit_idempotent ----------------------------------------------------------


def test_fit_idempotent(case):
    """Fitting again, on the same or on other data, leaves transform unchanged."""
    fish = clone(case.estimator)
    expected = fish.fit(case.X_train).transform(case.X_test)
    assert_same_features(fish.fit(case.X_train).transform(case.X_test), expected)
    assert_same_features(fish.fit(case.X_test[::-1]).transform(case.X_test), expected)
    assert_same_features(fish.fit(case.X_train).transform(case.X_test), expected)
