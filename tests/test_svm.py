import pickle

import joblib
import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.base import clone
from sklearn.model_selection import (
    GridSearchCV,
    KFold,
    cross_val_predict,
    cross_val_score,
)
from sklearn.svm import SVC
from sklearn.utils.estimator_checks import parametrize_with_checks

import skfishing._kernels.svm
from skfishing import TraceKernelSVC, trace_kernel
from skfishing.cache import shared_cache


def factorized(n, d=6, D=5, seed=0):
    """Random factorized features with L2-normalised rows."""
    rng = np.random.default_rng(seed)
    Z = np.empty(n, dtype=[("forward", "f4", (d,)), ("backward", "f4", (D,))])
    for field, width in (("forward", d), ("backward", D)):
        values = rng.normal(size=(n, width))
        Z[field] = values / np.linalg.norm(values, axis=1, keepdims=True)
    return Z


def explicit(Z):
    f, b = Z["forward"].astype(np.float64), Z["backward"].astype(np.float64)
    return np.einsum("ni,nj->nij", f, b).reshape(len(Z), -1)


def labels(Z, n_classes):
    """Classes that depend on the outer-product features, with 10% noise."""
    score = explicit(Z) @ np.random.default_rng(7).normal(size=(explicit(Z).shape[1], n_classes))
    y = score.argmax(axis=1)
    flip = np.random.default_rng(8).random(len(Z)) < 0.1
    y[flip] = (y[flip] + 1) % n_classes
    return y


def multilabel(Z, n_labels=4):
    score = explicit(Z) @ np.random.default_rng(9).normal(size=(explicit(Z).shape[1], n_labels))
    return (score > 0.1).astype(int)


def count_kernel_calls(monkeypatch):
    """Record (len(X), len(Y) or None) of each trace_kernel call of the SVC."""
    calls = []

    def counted(X, Y=None, **kwargs):
        calls.append((len(X), None if Y is None else len(Y)))
        return trace_kernel(X, Y, **kwargs)

    monkeypatch.setattr(skfishing._kernels.svm, "trace_kernel", counted)
    return calls


@parametrize_with_checks([TraceKernelSVC()])
def test_sklearn_compatible_on_2d_input(estimator, check):
    check(estimator)


@pytest.mark.parametrize("n_classes", [2, 3, 4])
def test_same_decisions_as_linear_svc_on_explicit_features(n_classes):
    Z, Zt = factorized(80, seed=0), factorized(30, seed=1)
    y = labels(Z, n_classes)
    # Tight solver tolerance so both reach the optimum; the kernels differ by
    # float32 rounding (~1e-7), hence decision values agree to 1e-5.
    ours = TraceKernelSVC(C=10.0, tol=1e-8).fit(Z, y)
    reference = SVC(kernel="linear", C=10.0, tol=1e-8).fit(explicit(Z), y)
    assert_allclose(ours.decision_function(Zt), reference.decision_function(explicit(Zt)), atol=1e-5)
    assert_array_equal(ours.predict(Zt), reference.predict(explicit(Zt)))
    assert_array_equal(ours.classes_, reference.classes_)
    assert ours.n_features_in_ == reference.n_features_in_ == 6 * 5


@pytest.mark.parametrize(
    "n_classes, params",
    [
        (2, {}),
        (3, {}),
        (4, {"decision_function_shape": "ovo"}),
        (4, {"break_ties": True}),
        (3, {"class_weight": "balanced"}),
    ],
)
def test_support_vector_kernel_matches_svc_on_full_kernel(n_classes, params):
    Z, Zt = factorized(90, seed=2), factorized(40, seed=3)
    y = labels(Z, n_classes)
    clf = TraceKernelSVC(**params).fit(Z, y)
    (svc,) = clf.estimators_
    assert svc.kernel == "precomputed"
    full = trace_kernel(Zt, Z)
    assert_allclose(
        clf.decision_function(Zt),
        svc.set_params(**params).decision_function(full),
        atol=1e-6,
    )
    assert_array_equal(clf.predict(Zt), svc.predict(full))


def test_keeps_only_support_vectors_and_uses_them_alone(monkeypatch):
    Z, Zt = factorized(120, seed=4), factorized(10, seed=5)
    Y = multilabel(Z)
    clf = TraceKernelSVC(C=10.0).fit(Z, Y)
    union = np.unique(np.concatenate([svc.support_ for svc in clf.estimators_]))
    assert_array_equal(clf.support_, union)
    assert 0 < len(union) < len(Z)
    assert clf.support_vectors_.shape == (len(union),)
    assert_array_equal(clf.support_vectors_, Z[union])
    calls = count_kernel_calls(monkeypatch)
    clf.decision_function(Zt)
    assert calls == [(len(Zt), len(union))]


def test_gram_matrix_is_shared_by_clones_that_differ_in_svm_parameters(monkeypatch):
    Z, Zt = factorized(60, seed=3), factorized(20, seed=4)
    y = labels(Z, 3)
    calls = count_kernel_calls(monkeypatch)
    base = TraceKernelSVC()
    fits = {C: clone(base).set_params(C=C).fit(Z, y) for C in (0.1, 1.0, 10.0)}
    assert [call for call in calls if call[1] is None] == [(60, None)]
    for C, clf in fits.items():
        assert_array_equal(clf.decision_function(Zt), TraceKernelSVC(C=C).fit(Z, y).decision_function(Zt))
    # features that differ in one value get their own Gram matrix
    Z2 = Z.copy()
    Z2["backward"][7, 2] += 1e-6
    before = len(calls)
    clone(base).fit(Z2, y)
    assert calls[before:] == [(60, None)]
    # an estimator used directly keeps no Gram matrix: nothing to hold memory
    before = len(calls)
    direct = TraceKernelSVC()
    direct.fit(Z, y)
    direct.fit(Z, y)
    assert calls[before:] == [(60, None), (60, None)]
    assert shared_cache(direct) is None


def test_multilabel_shares_one_gram_and_matches_per_label_svcs(monkeypatch):
    Z, Zt = factorized(100, seed=6), factorized(25, seed=7)
    Y = multilabel(Z, n_labels=5)
    calls = count_kernel_calls(monkeypatch)
    clf = TraceKernelSVC(C=3.0, class_weight="balanced").fit(Z, Y)
    assert calls == [(len(Z), None)]  # one Gram matrix for the five SVMs
    gram, test = trace_kernel(Z), trace_kernel(Zt, Z)
    by_hand = [SVC(kernel="precomputed", C=3.0, class_weight="balanced").fit(gram, y) for y in Y.T]
    expected = np.column_stack([svc.decision_function(test) for svc in by_hand])
    decision = clf.decision_function(Zt)
    assert decision.shape == (25, 5)
    assert_allclose(decision, expected, atol=1e-6)
    assert_array_equal(clf.predict(Zt), np.column_stack([svc.predict(test) for svc in by_hand]))
    assert_array_equal(clf.classes_, np.arange(5))


def test_multilabel_column_with_one_class_is_rejected():
    Z = factorized(30)
    Y = multilabel(Z)
    Y[:, 2] = 0
    with pytest.raises(ValueError, match="Label column 2 of y has 1 class"):
        TraceKernelSVC().fit(Z, Y)


def test_single_class_is_rejected_before_computing_the_gram(monkeypatch):
    monkeypatch.setattr(skfishing._kernels.svm, "trace_kernel", lambda *a, **kw: pytest.fail("Gram computed"))
    with pytest.raises(ValueError, match=r"y has 1 class \('cat'\)"):
        TraceKernelSVC().fit(factorized(10), ["cat"] * 10)


@pytest.mark.parametrize(
    "X_test, message",
    [
        (
            factorized(5, d=6, D=4),
            "X has field 'backward' of width 4 but the training data of TraceKernelSVC has 5",
        ),
        (
            np.zeros((5, 30)),
            "X is a 2-D array but the training data of TraceKernelSVC is a structured array",
        ),
    ],
)
def test_predict_on_other_layout_raises(X_test, message):
    Z = factorized(40)
    clf = TraceKernelSVC().fit(Z, labels(Z, 2))
    with pytest.raises(ValueError, match=message):
        clf.predict(X_test)


def test_structured_input_after_2d_fit_raises():
    clf = TraceKernelSVC().fit(explicit(factorized(40)), labels(factorized(40), 2))
    with pytest.raises(ValueError, match="X is a structured array but the training data"):
        clf.decision_function(factorized(3))


def test_break_ties_with_ovo_raises():
    Z = factorized(40)
    clf = TraceKernelSVC(break_ties=True, decision_function_shape="ovo").fit(Z, labels(Z, 3))
    with pytest.raises(ValueError, match="break_ties must be False"):
        clf.predict(Z)


def test_grid_search_and_cross_val_predict_on_structured_input():
    Z = factorized(90, seed=8)
    y = labels(Z, 3)
    search = GridSearchCV(TraceKernelSVC(), {"C": [0.1, 1.0, 10.0]}, cv=3).fit(Z, y)
    assert search.best_params_["C"] in (0.1, 1.0, 10.0)
    assert search.best_estimator_.support_vectors_.dtype == Z.dtype
    cv = KFold(3, shuffle=True, random_state=0)
    decision = cross_val_predict(TraceKernelSVC(), Z, y, cv=cv, method="decision_function")
    assert decision.shape == (90, 3)
    fold = next(cv.split(Z))
    expected = TraceKernelSVC().fit(Z[fold[0]], y[fold[0]]).decision_function(Z[fold[1]])
    assert_allclose(decision[fold[1]], expected)


def test_multilabel_average_precision_and_cross_val_predict():
    Z = factorized(120, seed=9)
    Y = multilabel(Z)
    scores = cross_val_score(TraceKernelSVC(C=10.0), Z, Y, cv=3, scoring="average_precision")
    assert scores.shape == (3,) and np.all(scores > 0.6)
    decision = cross_val_predict(TraceKernelSVC(), Z, Y, cv=3, method="decision_function")
    assert decision.shape == Y.shape


@pytest.mark.parametrize("n_classes", [2, 3])
def test_pickle_round_trip(tmp_path, n_classes):
    Z, Zt = factorized(60), factorized(20, seed=1)
    y = multilabel(Z) if n_classes == 2 else labels(Z, n_classes)
    clf = TraceKernelSVC().fit(Z, y)
    joblib.dump(clf, tmp_path / "clf.joblib")
    for loaded in (
        pickle.loads(pickle.dumps(clf)),
        joblib.load(tmp_path / "clf.joblib"),
    ):
        assert_array_equal(loaded.decision_function(Zt), clf.decision_function(Zt))
        assert_array_equal(loaded.predict(Zt), clf.predict(Zt))


def test_gradient_features_of_another_layer_or_temperature_are_refused():
    """DeepFisherTransformer's provenance metadata is checked at predict."""
    from onnx_models import mlp_model
    from skfishing import DeepFisherTransformer

    model, _, _ = mlp_model(widths=(6, 5, 5, 3))  # layers 7 and 8 share nothing, 6 and 7 same widths
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 6)).astype(np.float32)
    y = rng.integers(0, 2, 30)
    Z7 = DeepFisherTransformer(model, layer=7).fit_transform(X)
    svc = TraceKernelSVC().fit(Z7, y)
    np.testing.assert_array_equal(svc.predict(Z7[:5]), TraceKernelSVC().fit(Z7, y).predict(Z7[:5]))
    Z7_hot = DeepFisherTransformer(model, layer=7, temperature=4.0).fit_transform(X)
    with pytest.raises(ValueError, match=r"temperature 4.0 \(fit: 2.0\)"):
        svc.predict(Z7_hot)
    import pickle

    assert pickle.loads(pickle.dumps(Z7)).dtype.metadata["layer"] == 7
    with pytest.raises(ValueError, match="another model or setting"):
        pickle.loads(pickle.dumps(svc)).predict(Z7_hot)
