"""TraceKernelSVC on gradient features of layers applied at several positions."""

import joblib
import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.svm import SVC
from test_kernel_positions import explicit_gradients, multi_position

from skfishing import TraceKernelSVC
from skfishing.features import gradient_dtype

T, d, D = 5, 6, 4


def with_source(Z, **source):
    source = {"model_sha256": "ab" * 32, "layer": 3, "temperature": 2.0, **source}
    out = np.empty(len(Z), dtype=gradient_dtype(d, D, source, positions=T))
    out["forward"], out["backward"] = Z["forward"], Z["backward"]
    return out


def targets(Z, n_classes, seed=0):
    """Classes from a linear function of the explicit gradients, so that G matters."""
    score = explicit_gradients(Z) @ np.random.default_rng(seed).normal(size=(d * D, 1))
    edges = np.quantile(score, np.linspace(0, 1, n_classes + 1)[1:-1])
    return np.digitize(score.ravel(), edges)


@pytest.mark.parametrize("n_classes", [2, 3])
def test_same_decisions_as_svc_on_the_gram_of_explicit_gradients(n_classes):
    train, test = multi_position(60, T, d, D, seed=0), multi_position(25, T, d, D, seed=1)
    y = targets(train, n_classes)
    G_train, G_test = explicit_gradients(train), explicit_gradients(test)
    clf = TraceKernelSVC(C=10.0).fit(train, y)
    reference = SVC(C=10.0, kernel="precomputed").fit(G_train @ G_train.T, y)
    assert clf.n_features_in_ == d * D
    assert_array_equal(clf.predict(test), reference.predict(G_test @ G_train.T))
    assert_allclose(
        clf.decision_function(test), reference.decision_function(G_test @ G_train.T), rtol=1e-5, atol=1e-6
    )
    assert clf.score(train, y) > 0.9


def test_multilabel_matches_one_svc_per_label_on_explicit_gradients():
    train, test = multi_position(50, T, d, D, seed=2), multi_position(20, T, d, D, seed=3)
    Y = np.column_stack([targets(train, 2, seed=s) for s in range(3)])
    G_train, G_test = explicit_gradients(train), explicit_gradients(test)
    clf = TraceKernelSVC(C=5.0).fit(train, Y)
    decision = clf.decision_function(test)
    for label in range(3):
        svc = SVC(C=5.0, kernel="precomputed").fit(G_train @ G_train.T, Y[:, label])
        assert_allclose(decision[:, label], svc.decision_function(G_test @ G_train.T), rtol=1e-5, atol=1e-6)
        assert_array_equal(clf.predict(test)[:, label], svc.predict(G_test @ G_train.T))


def test_grid_search_and_joblib_round_trip(tmp_path):
    Z = with_source(multi_position(60, T, d, D, seed=4))
    y = targets(Z, 2)
    search = GridSearchCV(TraceKernelSVC(), {"C": [0.1, 10.0]}, cv=KFold(3)).fit(Z, y)
    G = explicit_gradients(Z)
    reference = GridSearchCV(SVC(kernel="precomputed"), {"C": [0.1, 10.0]}, cv=KFold(3)).fit(G @ G.T, y)
    assert search.best_params_ == reference.best_params_
    assert_allclose(search.cv_results_["mean_test_score"], reference.cv_results_["mean_test_score"])
    joblib.dump(search.best_estimator_, tmp_path / "svc.joblib")
    loaded = joblib.load(tmp_path / "svc.joblib")
    assert_array_equal(loaded.decision_function(Z), search.best_estimator_.decision_function(Z))
    with pytest.raises(ValueError, match="temperature 4.0 \\(fit: 2.0\\)"):
        loaded.predict(with_source(Z, temperature=4.0))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"layer": 5}, r"layer 5 \(fit: 3\)"),
        ({"temperature": 4.0}, r"temperature 4.0 \(fit: 2.0\)"),
        ({"labels": (0.5, 0.5)}, r"labels \(0.5, 0.5\) \(fit: None\)"),
        ({"model_sha256": "cd" * 32}, "model_sha256"),
    ],
)
def test_features_of_another_source_are_refused(change, message):
    Z = with_source(multi_position(30, T, d, D, seed=5))
    clf = TraceKernelSVC().fit(Z, targets(Z, 2))
    with pytest.raises(ValueError, match="another model or setting than the training data of TraceKernelSVC"):
        clf.predict(with_source(Z, **change))
    with pytest.raises(ValueError, match=message):
        clf.decision_function(with_source(Z, **change))


def test_other_widths_are_refused_other_positions_accepted():
    Z = multi_position(30, T, d, D, seed=6)
    clf = TraceKernelSVC().fit(Z, targets(Z, 2))
    with pytest.raises(ValueError, match="field 'forward' of width 7 but the training data"):
        clf.predict(multi_position(4, T, 7, D))
    # The same layer on larger images: more positions, the same G.
    other = multi_position(8, 9, d, D, seed=7)
    G = explicit_gradients(Z)
    reference = SVC(kernel="precomputed").fit(G @ G.T, targets(Z, 2))
    assert_allclose(
        clf.decision_function(other),
        reference.decision_function(explicit_gradients(other) @ G.T),
        rtol=1e-5,
        atol=1e-6,
    )
