"""Tests of the VOC2007 11-point average precision, its scorer and report."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.datasets import make_multilabel_classification
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.multiclass import OneVsRestClassifier
from sklearn.neighbors import KNeighborsClassifier

from skfishing.metrics import (
    average_precision_report,
    voc07_average_precision,
    voc07_scorer,
    voc07_scoring,
)


def devkit_ap(gt, confidence):
    """The loop of VOCevalcls.m / voc_eval.py (use_07_metric=True), written
    plainly: ``gt`` in {1, -1, 0}, difficult entries (0) stay in the ranking
    but count neither as true nor as false positives. Thresholds are k / 10.
    """
    order = sorted(range(len(gt)), key=lambda i: -confidence[i])  # stable
    tp = fp = 0
    n_pos = sum(1 for g in gt if g > 0)
    recall, precision = [], []
    for i in order:
        tp += gt[i] > 0
        fp += gt[i] < 0
        recall.append(tp / n_pos)
        precision.append(tp / (tp + fp) if tp + fp else float("nan"))
    ap = 0.0
    for k in range(11):
        t = k / 10
        candidates = [p for r, p in zip(recall, precision) if r >= t and p == p]
        ap += (max(candidates) if candidates else 0.0) / 11
    return ap


# -- hand-computed cases ------------------------------------------------------


def test_perfect_ranking_is_one():
    y = np.array([0, 1, 0, 1, 1, 0])
    assert voc07_average_precision(y, y + 0.5 * np.arange(6) / 6) == 1.0


def test_worst_ranking_and_interpolation():
    # rank  label  TP  FP  recall  precision
    #  1      0     0   1    0       0
    #  2      0     0   2    0       0
    #  3      0     0   3    0       0
    #  4      1     1   3    0.5     0.25
    #  5      1     2   3    1.0     0.4
    # Every threshold t (0..1) is reached at rank 5 at the latest, and the
    # highest precision at recall >= t is 0.4 (interpolation lifts the 0.25
    # of rank 4), so AP = 11 * 0.4 / 11 = 0.4.
    # sklearn (no interpolation): 0.5 * 0.25 + 0.5 * 0.4 = 0.325.
    y = np.array([0, 0, 0, 1, 1])
    s = np.array([5.0, 4, 3, 2, 1])
    assert voc07_average_precision(y, s) == pytest.approx(0.4)
    assert average_precision_score(y, s) == pytest.approx(0.325)


def test_single_positive_last_of_n():
    # One positive at rank n: precision 1/n at recall 1; AP = 1/n.
    y = np.zeros(8, dtype=int)
    y[-1] = 1
    assert voc07_average_precision(y, -np.arange(8.0)) == pytest.approx(1 / 8)


def test_interpolation_between_thresholds():
    # rank  label  TP  FP  recall  precision
    #  1      1     1   0   0.5     1
    #  2      0     1   1   0.5     0.5
    #  3      1     2   1   1.0     2/3
    #  4      0     2   2   1.0     0.5
    # t = 0, .1, .., .5 (6 thresholds): max precision at recall >= t = 1
    # t = .6, .., 1.0  (5 thresholds):  max precision at recall 1   = 2/3
    # AP = (6 * 1 + 5 * 2/3) / 11 = 28/33.
    y = np.array([1, 0, 1, 0])
    s = np.array([0.9, 0.8, 0.7, 0.1])
    assert voc07_average_precision(y, s) == pytest.approx(28 / 33)


def test_recall_exactly_three_tenths_counts():
    # 10 positives, ranking P P P N P P P P P P P:
    # rank   1  2  3  4    5    6    7    8    9    10   11
    # TP     1  2  3  3    4    5    6    7    8    9    10
    # recall .1 .2 .3 .3   .4   .5   .6   .7   .8   .9   1
    # prec   1  1  1  3/4  4/5  5/6  6/7  7/8  8/9  9/10 10/11
    # t = 0, .1, .2, .3: precision 1 (rank 3 has recall exactly 0.3);
    # t = .4 .. 1 (7 thresholds): max of 4/5 .. 10/11 = 10/11.
    # AP = (4 + 7 * 10/11) / 11 = 114/121. Thresholds built as
    # np.arange(0., 1.1, 0.1) (0.30000000000000004) would skip rank 3 at
    # t = 0.3 and give 113/121.
    y = np.array([1, 1, 1, 0] + [1] * 7)
    s = -np.arange(11.0)
    assert voc07_average_precision(y, s) == pytest.approx(114 / 121)


def test_ties_keep_input_order():
    # Equal scores: the ranking follows the input order (stable sort).
    assert voc07_average_precision([1, 0], [1.0, 1.0]) == 1.0
    # N then P: precision 1/2 at recall 1 -> AP = 0.5.
    assert voc07_average_precision([0, 1], [1.0, 1.0]) == 0.5
    # Long enough for numpy's default (unstable) sort to reorder ties:
    # 50 negatives then 50 positives, all tied except a top negative;
    # in input order: precision at recall 1 = 50/101 everywhere.
    y = np.r_[0, np.zeros(50), np.ones(50)]
    s = np.r_[2.0, np.ones(100)]
    assert voc07_average_precision(y, s) == pytest.approx(50 / 101)


def test_difficult_entry_ignored_by_hand():
    # Devkit encoding, the difficult entry (0) is ranked first; without it
    # the ranking is P N P: AP = (6 * 1 + 5 * 2/3) / 11 = 28/33.
    y = np.array([0, 1, -1, 1])
    s = np.array([0.95, 0.9, 0.8, 0.7])
    assert voc07_average_precision(y, s) == pytest.approx(28 / 33)
    # Same with an indicator and a mask.
    assert voc07_average_precision([1, 1, 0, 1], s, difficult=[True, False, False, False]) == pytest.approx(
        28 / 33
    )


# -- oracle and invariances ---------------------------------------------------

devkit_columns = st.integers(1, 40).flatmap(
    lambda n: st.tuples(
        st.lists(st.sampled_from([1, -1, 0]), min_size=n, max_size=n),
        st.lists(
            st.one_of(
                st.integers(-3, 3).map(float),  # many ties
                st.floats(-1e3, 1e3, allow_nan=False),
            ),
            min_size=n,
            max_size=n,
        ),
    )
)


@settings(max_examples=300, deadline=None)
@given(devkit_columns)
def test_matches_devkit_loop(column):
    gt, confidence = column
    if not any(g == 1 for g in gt):
        with pytest.warns(UndefinedMetricWarning):
            assert np.isnan(voc07_average_precision(gt, confidence))
        return
    expected = devkit_ap(gt, confidence)
    if -1 in gt:
        assert voc07_average_precision(gt, confidence) == pytest.approx(expected)
    gt = np.array(gt)
    got = voc07_average_precision(gt == 1, confidence, difficult=gt == 0)
    assert got == pytest.approx(expected)


@settings(max_examples=100, deadline=None)
@given(devkit_columns, st.randoms(use_true_random=False))
def test_difficult_scores_and_rows_do_not_matter(column, rng):
    gt, confidence = map(np.array, column)
    if not (gt == 1).any():
        return
    difficult = gt == 0
    ap = voc07_average_precision(gt == 1, confidence, difficult=difficult)
    moved = confidence.copy()
    moved[difficult] = [rng.uniform(-1e4, 1e4) for _ in range(difficult.sum())]
    assert voc07_average_precision(gt == 1, moved, difficult=difficult) == ap
    # Labelled positive and difficult: still ignored.
    assert voc07_average_precision((gt != -1), moved, difficult=difficult) == pytest.approx(ap)
    assert voc07_average_precision(gt[~difficult] == 1, confidence[~difficult]) == pytest.approx(ap)


def test_multilabel_per_class_and_macro():
    rng = np.random.RandomState(0)
    y = rng.choice([1, -1, 0], size=(50, 4), p=[0.3, 0.6, 0.1])
    s = rng.randn(50, 4) + y
    per_class = voc07_average_precision(y, s, average=None)
    expected = [devkit_ap(list(y[:, c]), list(s[:, c])) for c in range(4)]
    np.testing.assert_allclose(per_class, expected)
    assert voc07_average_precision(y, s) == pytest.approx(np.mean(expected))


def test_class_without_positive_is_nan_and_left_out_of_macro():
    y = np.array([[1, 0, 0], [0, 0, 1], [1, 0, 0], [0, 0, 1]])
    difficult = np.zeros_like(y, dtype=bool)
    difficult[1, 2] = difficult[3, 2] = True  # class 2: positives all difficult
    s = np.array([[0.9, 0.1, 0.5], [0.2, 0.3, 0.1], [0.8, 0.2, 0.3], [0.1, 0.9, 0.7]])
    with pytest.warns(UndefinedMetricWarning) as record:
        per_class = voc07_average_precision(y, s, difficult=difficult, average=None)
    messages = [str(w.message) for w in record]
    assert len(messages) == 2
    assert "column) 1" in messages[0] and "column) 2" in messages[1]
    assert per_class[0] == 1.0 and np.isnan(per_class[1:]).all()
    with pytest.warns(UndefinedMetricWarning):
        assert voc07_average_precision(y, s, difficult=difficult) == 1.0
    with pytest.warns(UndefinedMetricWarning):
        assert np.isnan(voc07_average_precision(np.zeros((3, 2)), np.ones((3, 2))))


def test_only_positives_is_one():
    # Only positives: precision is 1 everywhere.
    assert voc07_average_precision([1, 1, 1], [0.1, 0.5, 0.2]) == 1.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(y_true=[0, 1, 1], y_score=[0.1, 0.2]), "same shape"),
        (dict(y_true=[0, 2, 1], y_score=[0.1, 0.2, 0.3]), "0/1 indicator"),
        (dict(y_true=[-1, 2, 1], y_score=[0.1, 0.2, 0.3]), "devkit encoding"),
        (
            dict(y_true=[-1, 0, 1], y_score=[0.1, 0.2, 0.3], difficult=[0, 0, 0]),
            "only accepted when difficult is None",
        ),
        (
            dict(y_true=[0, 0, 1], y_score=[0.1, 0.2, 0.3], difficult=[0, 0]),
            "difficult must have the shape",
        ),
        (
            dict(y_true=[0, 0, 1], y_score=[0.1, 0.2, 0.3], difficult=[0, 2, 0]),
            "difficult must be boolean",
        ),
        (dict(y_true=[0, 0, 1], y_score=[0.1, np.nan, 0.3]), "y_score"),
        (dict(y_true=["a", "b", "a"], y_score=[0.1, 0.2, 0.3]), "must hold numbers"),
        (
            dict(y_true=[0, 0, 1], y_score=[0.1, 0.2, 0.3], average="micro"),
            r"'average' parameter of voc07_average_precision must be a str among \{'macro'\} or None",
        ),
    ],
)
def test_input_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        voc07_average_precision(**kwargs)


# -- scorer -------------------------------------------------------------------


@pytest.fixture(scope="module")
def multilabel_data():
    X, y = make_multilabel_classification(n_samples=120, n_features=10, n_classes=4, random_state=0)
    return X, y


def test_scorer_uses_decision_function(multilabel_data):
    X, y = multilabel_data
    clf = OneVsRestClassifier(LogisticRegression()).fit(X, y)
    expected = voc07_average_precision(y, clf.decision_function(X))
    assert voc07_scorer(clf, X, y) == pytest.approx(expected)
    # Not the hard 0/1 output of predict, which ranks with many ties.
    assert voc07_scorer(clf, X, y) != pytest.approx(voc07_average_precision(y, clf.predict(X)))


def test_scorer_falls_back_to_predict_proba(multilabel_data):
    X, y = multilabel_data
    knn = KNeighborsClassifier(n_neighbors=7).fit(X, y)
    proba = np.column_stack([p[:, 1] for p in knn.predict_proba(X)])
    assert voc07_scorer(knn, X, y) == pytest.approx(voc07_average_precision(y, proba))


def test_scorer_in_grid_search(multilabel_data):
    X, y = multilabel_data
    cv = KFold(3, shuffle=True, random_state=0)
    Cs = [1e-3, 1.0]
    search = GridSearchCV(
        OneVsRestClassifier(LogisticRegression()),
        {"estimator__C": Cs},
        scoring=voc07_scorer,
        cv=cv,
    ).fit(X, y)
    for i, C in enumerate(Cs):
        fold_scores = []
        for train, test in cv.split(X):
            clf = OneVsRestClassifier(LogisticRegression(C=C)).fit(X[train], y[train])
            fold_scores.append(voc07_average_precision(y[test], clf.decision_function(X[test])))
        assert search.cv_results_["mean_test_score"][i] == pytest.approx(np.mean(fold_scores))
    assert 0 < search.best_score_ <= 1


def test_scoring_dict_multi_metric(multilabel_data):
    X, y = multilabel_data
    search = GridSearchCV(
        OneVsRestClassifier(LogisticRegression()),
        {"estimator__C": [0.01, 1.0]},
        scoring={**voc07_scoring, "ap": "average_precision"},
        refit="voc07_map",
        cv=3,
    ).fit(X, y)
    assert "mean_test_voc07_map" in search.cv_results_
    assert search.best_index_ == np.argmax(search.cv_results_["mean_test_voc07_map"])


# -- report -------------------------------------------------------------------


def test_report_values_side_by_side():
    rng = np.random.RandomState(1)
    y = rng.choice([1, -1, 0], size=(60, 3), p=[0.3, 0.6, 0.1])
    s = rng.randn(60, 3) + y
    report = average_precision_report(y, s, classes=["cat", "dog", "cow"])
    np.testing.assert_allclose(report.voc07_ap, voc07_average_precision(y, s, average=None))
    for c in range(3):
        keep = y[:, c] != 0
        assert report.sklearn_ap[c] == pytest.approx(average_precision_score(y[keep, c] == 1, s[keep, c]))
    assert report.voc07_map == pytest.approx(report.voc07_ap.mean())
    assert report.sklearn_map == pytest.approx(report.sklearn_ap.mean())
    np.testing.assert_array_equal(report.n_positive, (y == 1).sum(0))
    np.testing.assert_array_equal(report.n_difficult, (y == 0).sum(0))
    lines = report.text.splitlines()
    assert len(lines) == 5 and lines[1].startswith("cat")
    assert f"{report.voc07_ap[1]:.4f}" in lines[2]
    assert f"{report.sklearn_map:.4f}" in lines[4]


def test_report_shows_the_two_aps_differ():
    report = average_precision_report([0, 0, 0, 1, 1], [5.0, 4, 3, 2, 1])
    assert report.voc07_ap[0] == pytest.approx(0.4)
    assert report.sklearn_ap[0] == pytest.approx(0.325)
    assert report.classes.tolist() == ["0"]


def test_report_class_without_positive():
    y = np.array([[1, 0], [0, 0], [1, 0]])
    with pytest.warns(UndefinedMetricWarning, match="'dog'"):
        s = np.array([[0.9, 0.1], [0.2, 0.2], [0.8, 0.3]])
        report = average_precision_report(y, s, classes=["cat", "dog"])
    assert np.isnan(report.voc07_ap[1]) and np.isnan(report.sklearn_ap[1])
    assert report.voc07_map == 1.0 and report.sklearn_map == 1.0


def test_report_classes_length_error():
    with pytest.raises(ValueError, match="one name per class"):
        average_precision_report(np.eye(3), np.eye(3), classes=["a", "b"])
