"""PASCAL VOC2007 classification metric: 11-point interpolated average precision.

The PASCAL VOC2007 development kit (``VOCevalcls.m``) scores a ranking of the
images by the *11-point interpolated average precision*: for each recall
threshold ``t`` in ``0, 0.1, ..., 1.0`` it takes the highest precision reached
at a recall of at least ``t`` (0 when the ranking never reaches ``t``) and
averages the 11 values. Images whose label is "difficult" (label ``0`` in the
devkit's ``ImageSets/Main/<class>_<split>.txt`` files) count as neither
positive nor negative. Published VOC2007 results, including those of the
Deep Fishing paper, use this number.

scikit-learn's :func:`sklearn.metrics.average_precision_score` is a different
number: the non-interpolated, step-wise area under the precision-recall curve.
:func:`average_precision_report` shows both side by side.
"""

import warnings

import numpy as np
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import average_precision_score, make_scorer
from sklearn.utils import Bunch, check_array
from sklearn.utils._param_validation import StrOptions, validate_params

__all__ = [
    "average_precision_report",
    "voc07_average_precision",
    "voc07_scorer",
    "voc07_scoring",
]


def _check_targets(y_true, y_score, difficult):
    """Validate the inputs; return 2-D ``positive``, ``difficult``, ``score``.

    Also returns whether the input was 1-D.
    """
    y_score = check_array(y_score, ensure_2d=False, dtype=np.float64, input_name="y_score")
    y_true = check_array(y_true, ensure_2d=False, dtype=None, input_name="y_true")
    if y_true.ndim not in (1, 2) or y_score.ndim not in (1, 2):
        raise ValueError(
            "y_true and y_score must be 1-D (one class) or 2-D (n_samples, "
            f"n_classes); got y_true.ndim={y_true.ndim}, "
            f"y_score.ndim={y_score.ndim}."
        )
    if y_true.shape != y_score.shape:
        raise ValueError(
            f"y_true and y_score must have the same shape; got {y_true.shape} and {y_score.shape}."
        )
    if y_true.dtype.kind not in "biuf":
        raise ValueError(f"y_true must hold numbers (0/1, or the devkit's 1/-1/0); got dtype {y_true.dtype}.")
    values = set(np.unique(y_true).tolist())
    if difficult is None and -1 in values:
        if not values <= {-1, 0, 1}:
            raise ValueError(
                "y_true contains -1, so it is read in the devkit encoding "
                "(1 = positive, -1 = negative, 0 = difficult), but it also "
                f"contains {sorted(values - {-1, 0, 1})}."
            )
        positive = y_true == 1
        difficult = y_true == 0
    else:
        if not values <= {0, 1}:
            hint = (
                " The devkit encoding with -1 is only accepted when difficult is None."
                if difficult is not None
                else ""
            )
            raise ValueError(f"y_true must be a 0/1 indicator; got values {sorted(values)}." + hint)
        positive = y_true == 1
        if difficult is None:
            difficult = np.zeros(y_true.shape, dtype=bool)
        else:
            difficult = check_array(difficult, ensure_2d=False, dtype=None, input_name="difficult")
            if difficult.shape != y_true.shape:
                raise ValueError(
                    f"difficult must have the shape of y_true {y_true.shape}; got {difficult.shape}."
                )
            if not set(np.unique(difficult).tolist()) <= {0, 1}:
                raise ValueError("difficult must be boolean (or 0/1).")
            difficult = difficult.astype(bool)
    is_1d = y_true.ndim == 1
    if is_1d:
        positive, difficult, y_score = (
            positive[:, None],
            difficult[:, None],
            y_score[:, None],
        )
    return positive, difficult, y_score, is_1d


def _voc07_ap_column(positive, score):
    """11-point AP of one class; ``positive`` and ``score`` exclude difficult.

    Returns nan when there is no positive entry.
    """
    n_pos = int(positive.sum())
    if n_pos == 0:
        return np.nan
    # Stable sort on the negated score: tied scores keep the input order,
    # like MATLAB's sort(-confidence) in the devkit.
    order = np.argsort(-score, kind="stable")
    hits = positive[order]
    tp = np.cumsum(hits)
    precision = tp / np.arange(1, len(hits) + 1)
    # Highest precision at this rank or any later one (= at recall >= the
    # recall of this rank, since recall never decreases down the ranking).
    best_after = np.maximum.accumulate(precision[::-1])[::-1]
    # recall >= k / 10  <=>  10 * tp >= k * n_pos, in exact integer arithmetic.
    thresholds = np.arange(11) * n_pos
    first = np.searchsorted(10 * tp, thresholds, side="left")
    reached = first < len(hits)
    interpolated = np.zeros(11)
    interpolated[reached] = best_after[first[reached]]
    return float(interpolated.mean())


def _macro(values):
    """Mean over the classes whose AP is defined (nan if none is)."""
    defined = ~np.isnan(values)
    return float(values[defined].mean()) if defined.any() else np.nan


@validate_params(
    {
        "y_true": ["array-like"],
        "y_score": ["array-like"],
        "difficult": ["array-like", None],
        "average": [StrOptions({"macro"}), None],
    },
    prefer_skip_nested_validation=True,
)
def voc07_average_precision(y_true, y_score, *, difficult=None, average="macro"):
    """PASCAL VOC2007 11-point interpolated average precision.

    This is the metric of the VOC2007 classification devkit (``VOCevalcls.m``,
    and ``use_07_metric=True`` in its Python ports): the entries are ranked
    by decreasing score, and for each recall threshold
    ``t in {0, 0.1, ..., 1.0}`` the interpolated precision is the highest
    precision reached at a recall of at least ``t`` (0 if the ranking never
    reaches recall ``t``); the AP is the mean of these 11 values.

    It is *not* :func:`sklearn.metrics.average_precision_score`, which is the
    non-interpolated step-wise area under the precision-recall curve; see
    :func:`average_precision_report` to get both.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,) or (n_samples, n_classes)
        Ground truth, either a 0/1 indicator (1 = the class is present), or,
        only when ``difficult`` is None, the devkit's encoding
        ``1`` = positive, ``-1`` = negative, ``0`` = difficult. The devkit
        encoding is recognised by the presence of at least one ``-1``; an
        array of only 0 and 1 is always read as an indicator.

    y_score : array-like of the shape of `y_true`
        Confidence scores (e.g. ``decision_function`` output); higher means
        more likely positive. Must be finite.

    difficult : array-like of bool of the shape of `y_true`, default=None
        Entries marked True count as neither positive nor negative: they are
        removed before ranking, whatever their label and score. Removing them
        gives exactly the devkit's result, which keeps them in the ranking
        but counts them neither as true nor as false positives.

    average : {"macro"} or None, default="macro"
        ``"macro"``: the mean AP over the classes (the VOC "mAP"). None: the
        per-class APs as an array. Ignored for 1-D input, which gives the AP
        of its single class as a float.

    Returns
    -------
    ap : float or ndarray of shape (n_classes,)
        The AP in [0, 1]. A class without any positive (non-difficult) entry
        has no defined AP: it gets nan, an
        :class:`~sklearn.exceptions.UndefinedMetricWarning` names its column,
        and the macro average is the mean over the other classes (nan if no
        class has a positive). The devkit would instead report 0 for such a
        class; leaving it out keeps a cross-validation fold that happens to
        miss a rare class from being scored as if the classifier had failed.

    Notes
    -----
    **Ties.** Entries with equal scores keep their input order in the
    ranking (a stable sort on the negated score, as MATLAB's
    ``sort(-confidence)`` in the devkit), so a tie between a positive and a
    negative scores higher when the positive comes first in the input.
    :func:`sklearn.metrics.average_precision_score` instead treats tied
    scores as a single threshold.

    **Thresholds.** The recall thresholds are the exact fractions ``k / 10``
    (recall ``>= k / 10`` is tested as ``10 * TP >= k * n_positives``). The
    reference code builds them in floating point (``0:0.1:1`` in MATLAB,
    ``np.arange(0., 1.1, 0.1)`` in the Python ports), where, e.g.,
    ``3 * 0.1 > 0.3``; such code can skip a recall of exactly 0.3 (and, for
    numpy, 0.6 and 0.7), which here counts.

    Examples
    --------
    >>> import numpy as np
    >>> from skfishing.metrics import voc07_average_precision
    >>> y_true = np.array([1, 0, 1, 0])
    >>> y_score = np.array([0.9, 0.8, 0.7, 0.1])
    >>> round(voc07_average_precision(y_true, y_score), 4)
    0.8485

    The devkit's encoding, with a difficult entry (label 0) ignored:

    >>> round(voc07_average_precision([1, 0, 1, -1], [0.9, 0.8, 0.7, 0.1]), 4)
    1.0

    Per-class APs of a multilabel problem:

    >>> Y = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    >>> S = np.array([[0.9, 0.2], [0.3, 0.8], [0.6, 0.1], [0.1, 0.5]])
    >>> voc07_average_precision(Y, S, average=None)
    array([1.        , 0.77272727])
    """
    positive, difficult, y_score, is_1d = _check_targets(y_true, y_score, difficult)
    ap = np.empty(positive.shape[1])
    for c in range(positive.shape[1]):
        keep = ~difficult[:, c]
        ap[c] = _voc07_ap_column(positive[keep, c], y_score[keep, c])
        if np.isnan(ap[c]):
            where = "y_true" if is_1d else f"class (column) {c} of y_true"
            warnings.warn(
                f"No positive (non-difficult) entry in {where}: its average "
                "precision is undefined and set to nan"
                + ("." if is_1d else "; the macro average leaves it out."),
                UndefinedMetricWarning,
                stacklevel=2,
            )
    if is_1d:
        return float(ap[0])
    if average is None:
        return ap
    return _macro(ap)


voc07_scorer = make_scorer(
    voc07_average_precision,
    response_method=("decision_function", "predict_proba"),
)
voc07_scorer.__doc__ = """Scorer for the VOC2007 11-point mean average precision.

Use it as ``GridSearchCV(..., scoring=voc07_scorer)`` or in
:func:`~sklearn.model_selection.cross_val_score`. It ranks by the estimator's
``decision_function``, or by ``predict_proba`` when the estimator has no
``decision_function``, and returns :func:`voc07_average_precision` with
``average="macro"``: the mean AP over the columns of a multilabel indicator
``y``, or the AP of a binary ``y``.

A scorer only sees ``y``, so it cannot ignore "difficult" entries the way the
VOC evaluation does: during a grid search they are whatever ``y`` says they
are (e.g. negatives, with the 0/1 labels of
:func:`skfishing.datasets.load_voc2007`). Report final results with
:func:`voc07_average_precision` and ``difficult=`` on held-out data.

See also ``voc07_scoring``, a ``{"voc07_map": voc07_scorer}`` dictionary to
combine with other metrics in multi-metric evaluation.
"""

#: ``{"voc07_map": voc07_scorer}``, for multi-metric evaluation, e.g.
#: ``GridSearchCV(..., scoring={**voc07_scoring, "ap": "average_precision"},
#: refit="voc07_map")``.
voc07_scoring = {"voc07_map": voc07_scorer}


@validate_params(
    {
        "y_true": ["array-like"],
        "y_score": ["array-like"],
        "difficult": ["array-like", None],
        "classes": ["array-like", None],
    },
    prefer_skip_nested_validation=True,
)
def average_precision_report(y_true, y_score, *, difficult=None, classes=None):
    """Per-class VOC2007 11-point AP and scikit-learn's AP side by side.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,) or (n_samples, n_classes)
        Ground truth, as in :func:`voc07_average_precision`: a 0/1 indicator,
        or the devkit's 1/-1/0 encoding when `difficult` is None.

    y_score : array-like of the shape of `y_true`
        Confidence scores, higher = more likely positive.

    difficult : array-like of bool of the shape of `y_true`, default=None
        Entries to ignore in both metrics.

    classes : sequence of str of length n_classes, default=None
        Class names for the table; default ``"0"``, ``"1"``, ...

    Returns
    -------
    report : :class:`~sklearn.utils.Bunch`
        With keys

        - ``classes``: ndarray of str, shape (n_classes,);
        - ``voc07_ap``: ndarray, shape (n_classes,), the VOC2007 11-point
          interpolated AP (:func:`voc07_average_precision`);
        - ``sklearn_ap``: ndarray, shape (n_classes,),
          :func:`sklearn.metrics.average_precision_score` on the
          non-difficult entries;
        - ``n_positive``, ``n_difficult``: ndarrays of int, shape
          (n_classes,), counts of positive (non-difficult) and difficult
          entries;
        - ``voc07_map``, ``sklearn_map``: floats, the means over the classes
          that have a positive entry;
        - ``text``: the same as a printable table.

        Classes without any positive (non-difficult) entry get nan in both AP
        columns (with one :class:`~sklearn.exceptions.UndefinedMetricWarning`
        per class) and are left out of the means.

    Notes
    -----
    **Which AP is which.** ``voc07_ap`` is the number the PASCAL VOC2007
    devkit computes and that published VOC2007 results (and the Deep Fishing
    paper) report: the mean, over recall thresholds 0, 0.1, ..., 1, of the
    highest precision reached at a recall of at least that threshold. It
    is usually a little higher than ``sklearn_ap``,
    because it takes the best precision to the right of each threshold.
    ``sklearn_ap`` is scikit-learn's non-interpolated average precision,
    ``sum_n (R_n - R_{n-1}) P_n``, the step-wise area under the
    precision-recall curve, with tied scores grouped into one threshold. Use
    ``voc07_ap`` to compare with VOC2007 literature.

    Examples
    --------
    >>> import numpy as np
    >>> from skfishing.metrics import average_precision_report
    >>> Y = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    >>> S = np.array([[0.9, 0.2], [0.3, 0.8], [0.6, 0.1], [0.1, 0.5]])
    >>> report = average_precision_report(Y, S, classes=["cat", "dog"])
    >>> print(report.text)
    class     VOC07 AP  sklearn AP  positives  difficult
    cat         1.0000      1.0000          2          0
    dog         0.7727      0.7500          2          0
    mean        0.8864      0.8750
    >>> round(report.voc07_map, 4)
    0.8864
    """
    positive, difficult, y_score, _ = _check_targets(y_true, y_score, difficult)
    n_classes = positive.shape[1]
    if classes is None:
        classes = [str(c) for c in range(n_classes)]
    classes = np.asarray(classes, dtype=str)
    if classes.shape != (n_classes,):
        raise ValueError(f"classes must hold one name per class ({n_classes}); got {classes.size}.")
    voc07_ap = np.empty(n_classes)
    sklearn_ap = np.empty(n_classes)
    for c in range(n_classes):
        keep = ~difficult[:, c]
        pos, score = positive[keep, c], y_score[keep, c]
        voc07_ap[c] = _voc07_ap_column(pos, score)
        if np.isnan(voc07_ap[c]):
            warnings.warn(
                f"No positive (non-difficult) entry for class {classes[c]!r} "
                f"(column {c}): its average precision is undefined and set to "
                "nan; the means leave it out.",
                UndefinedMetricWarning,
                stacklevel=2,
            )
            sklearn_ap[c] = np.nan
        else:
            sklearn_ap[c] = average_precision_score(pos, score)
    n_positive = (positive & ~difficult).sum(axis=0)
    n_difficult = difficult.sum(axis=0)
    voc07_map, sklearn_map = _macro(voc07_ap), _macro(sklearn_ap)

    width = max(8, max(len(name) for name in classes))
    lines = [
        f"{'class':<{width}}  VOC07 AP  sklearn AP  positives  difficult",
        *(
            f"{name:<{width}}  {a:8.4f}  {b:10.4f}  {p:9d}  {d:9d}"
            for name, a, b, p, d in zip(classes, voc07_ap, sklearn_ap, n_positive, n_difficult)
        ),
        f"{'mean':<{width}}  {voc07_map:8.4f}  {sklearn_map:10.4f}",
    ]
    return Bunch(
        classes=classes,
        voc07_ap=voc07_ap,
        sklearn_ap=sklearn_ap,
        n_positive=n_positive,
        n_difficult=n_difficult,
        voc07_map=voc07_map,
        sklearn_map=sklearn_map,
        text="\n".join(lines),
    )
