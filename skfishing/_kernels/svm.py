"""Support vector classification on the trace kernel."""

from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, _fit_context, clone
from sklearn.svm import SVC
from sklearn.utils import check_array, column_or_1d
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.multiclass import (
    _ovr_decision_function,
    check_classification_targets,
    type_of_target,
)
from sklearn.utils.validation import (
    check_consistent_length,
    check_is_fitted,
    validate_data,
)

from ..cache import ArrayStore, SharedCacheMixin, content_key, shared_cache
from ..features import check_features, check_same_source, feature_source, is_structured, widths
from .kernel import CHUNK_SIZE, trace_kernel


class TraceKernelSVC(SharedCacheMixin, ClassifierMixin, BaseEstimator):
    """C-support vector classification on the trace kernel.

    Takes factorized gradient features (a structured array with fields
    ``"forward"`` and ``"backward"``, as returned by
    :class:`~skfishing.DeepFisherTransformer`, of a layer applied once or at
    several positions) or plain 2-D features, computes
    the Gram matrix with :func:`~skfishing.trace_kernel` in chunks and
    fits :class:`sklearn.svm.SVC` with ``kernel="precomputed"`` on it.

    Targets may be binary, multiclass (one-vs-one, as in ``SVC``) or
    multilabel: for a 2-D indicator ``y`` one binary SVM is fitted per column,
    all on the same Gram matrix, computed once. After fitting only the
    features of the support vectors (union over labels) are kept; predictions
    need the kernel between the test samples and those alone.

    Parameters
    ----------
    C : float, default=1.0
        Regularization parameter, strictly positive. The strength of the
        regularization is inversely proportional to C.

    class_weight : dict or "balanced", default=None
        Set the parameter C of class i to ``class_weight[i] * C`` (for every
        label in the multilabel case). "balanced" uses weights inversely
        proportional to class frequencies.

    tol : float, default=1e-3
        Tolerance for the stopping criterion of libsvm.

    max_iter : int, default=-1
        Hard limit on libsvm iterations, or -1 for no limit.

    shrinking : bool, default=True
        Whether to use the shrinking heuristic of libsvm.

    cache_size : float, default=200
        Size of the libsvm kernel cache (in MB).

    break_ties : bool, default=False
        If true, ``decision_function_shape="ovr"`` and more than two classes,
        predict breaks ties according to the confidence values of
        ``decision_function``; otherwise the first of the tied classes is
        returned, as in ``SVC``.

    decision_function_shape : {"ovo", "ovr"}, default="ovr"
        Shape of the multiclass decision function, as in ``SVC``. Ignored for
        binary and multilabel targets.

    chunk_size : int, default=None
        Rows per block when computing kernel matrices; see
        :func:`~skfishing.trace_kernel`.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        The class labels; for multilabel ``y``, ``np.arange(n_labels)``.

    estimators_ : list of SVC
        The fitted ``SVC(kernel="precomputed")``, one per label for multilabel
        ``y``, else a single one. Their ``support_`` index the training
        samples.

    support_ : ndarray of shape (n_SV,)
        Sorted indices of the training samples that are support vectors of
        at least one of ``estimators_``.

    support_vectors_ : ndarray of shape (n_SV,) or (n_SV, `n_features_in_`)
        The training features of those samples, of the same kind as ``X``.

    feature_source_ : dict or None
        Where the training features come from (model SHA-256, layer,
        temperature, labels), as :class:`~skfishing.DeepFisherTransformer`
        records it in their dtype; None for features without that record.
        :meth:`predict` and :meth:`decision_function` refuse features of
        another source.

    n_iter_ : ndarray of shape (n_models,)
        Number of libsvm iterations of each binary sub-problem, for all
        ``estimators_`` in turn.

    n_features_in_ : int
        Number of features seen during :meth:`fit`. For structured input, the
        dimension ``d * D`` of the explicit features
        ``vec(outer(forward, backward))`` the trace kernel is linear on (for
        fields of shapes ``(T, d)`` and ``(T, D)``, of the weight gradient
        ``sum_t outer(backward[t], forward[t])``).

    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Names of features seen during :meth:`fit`. Defined only when `X`
        is a DataFrame with string column names.

    See Also
    --------
    skfishing._kernels.kernel.trace_kernel : The kernel used.
    sklearn.svm.SVC : The wrapped classifier.

    Examples
    --------
    >>> import numpy as np
    >>> from skfishing import TraceKernelSVC
    >>> rng = np.random.default_rng(0)
    >>> Z = np.zeros(40, dtype=[("forward", "f4", (8,)), ("backward", "f4", (3,))])
    >>> Z["forward"] = rng.normal(size=(40, 8))
    >>> Z["backward"] = rng.normal(size=(40, 3))
    >>> y = (Z["forward"][:, 0] * Z["backward"][:, 0] > 0).astype(int)
    >>> clf = TraceKernelSVC(C=10.0).fit(Z, y)
    >>> clf.score(Z, y)
    1.0
    """

    _parameter_constraints: dict = {
        "C": [Interval(Real, 0.0, None, closed="neither")],
        "class_weight": [StrOptions({"balanced"}), dict, None],
        "tol": [Interval(Real, 0.0, None, closed="neither")],
        "max_iter": [Interval(Integral, -1, None, closed="left")],
        "shrinking": ["boolean"],
        "cache_size": [Interval(Real, 0, None, closed="neither")],
        "break_ties": ["boolean"],
        "decision_function_shape": [StrOptions({"ovo", "ovr"})],
        "chunk_size": CHUNK_SIZE,
    }

    def __init__(
        self,
        C=1.0,
        *,
        class_weight=None,
        tol=1e-3,
        max_iter=-1,
        shrinking=True,
        cache_size=200,
        break_ties=False,
        decision_function_shape="ovr",
        chunk_size=None,
    ):
        self.C = C
        self.class_weight = class_weight
        self.tol = tol
        self.max_iter = max_iter
        self.shrinking = shrinking
        self.cache_size = cache_size
        self.break_ties = break_ties
        self.decision_function_shape = decision_function_shape
        self.chunk_size = chunk_size

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y):
        """Fit the SVM(s) on the trace-kernel Gram matrix of X.

        Parameters
        ----------
        X : ndarray of shape (n_samples,) with fields "forward" and \
                "backward", or array-like of shape (n_samples, n_features)
            Training features.

        y : array-like of shape (n_samples,) or (n_samples, n_labels)
            Class labels, or a binary indicator matrix for multilabel
            classification.

        Returns
        -------
        self : object
            The fitted estimator.
        """
        X = self._validate_features(X, reset=True)
        targets = self._validate_targets(y)
        check_consistent_length(X, targets[0])
        gram = self._gram(X)
        svc = SVC(
            C=self.C,
            kernel="precomputed",
            class_weight=self.class_weight,
            tol=self.tol,
            max_iter=self.max_iter,
            shrinking=self.shrinking,
            cache_size=self.cache_size,
        )
        self.estimators_ = [clone(svc).fit(gram, t) for t in targets]
        del gram
        self.n_iter_ = np.concatenate([s.n_iter_ for s in self.estimators_])
        self.support_ = np.unique(np.concatenate([s.support_ for s in self.estimators_]))
        self.support_vectors_ = X[self.support_]
        self.feature_source_ = feature_source(X)
        coefs = [_pairwise_coefficients(s, self.support_) for s in self.estimators_]
        self._dual_coef = np.hstack([coef for coef, _ in coefs])
        self._intercept = np.concatenate([intercept for _, intercept in coefs])
        return self

    def _gram(self, X):
        """The training Gram matrix, shared by clones that fit the same features.

        A search over ``C`` or ``class_weight`` fits clones of this estimator
        on the same training folds: they share one store (see
        :class:`~skfishing.cache.SharedCacheMixin`), keyed by the content of
        the features, so each fold's Gram matrix is computed once.
        """
        store = shared_cache(self)
        if store is None:
            return trace_kernel(X, chunk_size=self.chunk_size)
        key = content_key(X, f"trace_kernel|{self.chunk_size}")
        gram = store.get(key)
        if gram is None:
            gram = trace_kernel(X, chunk_size=self.chunk_size)
            store.put(key, gram)
        return gram

    def _make_cache(self, max_bytes=None):
        return ArrayStore(max_bytes or 256 << 20)

    def decision_function(self, X):
        """Evaluate the decision function for the samples in X.

        Parameters
        ----------
        X : ndarray of shape (n_samples,) with fields "forward" and \
                "backward", or array-like of shape (n_samples, n_features)
            Features of the same kind and widths as in :meth:`fit`.

        Returns
        -------
        decision : ndarray
            Of shape (n_samples,) for binary ``y``, (n_samples, n_labels) for
            multilabel ``y`` (positive values predict the label), else
            (n_samples, n_classes) if ``decision_function_shape="ovr"`` or
            (n_samples, n_classes * (n_classes - 1) / 2) for "ovo". Equal to
            ``SVC.decision_function`` on the full test-train kernel.
        """
        decision = self._pairwise_decision(X)
        n_classes = len(self.classes_)
        if self._multilabel():
            return decision
        if n_classes == 2:
            return decision[:, 0]
        if self.decision_function_shape == "ovr":
            return _ovr_decision_function(decision < 0, -decision, n_classes)
        return decision

    def predict(self, X):
        """Predict class labels, or label indicators, for the samples in X.

        Parameters
        ----------
        X : ndarray of shape (n_samples,) with fields "forward" and \
                "backward", or array-like of shape (n_samples, n_features)
            Features of the same kind and widths as in :meth:`fit`.

        Returns
        -------
        y_pred : ndarray of shape (n_samples,) or (n_samples, n_labels)
            Class labels, or the indicator matrix for multilabel ``y``. Same
            as ``SVC.predict`` on the full test-train kernel.
        """
        if self.break_ties and self.decision_function_shape == "ovo":
            raise ValueError("break_ties must be False when decision_function_shape is 'ovo'")
        decision = self._pairwise_decision(X)
        if self._multilabel():
            labels = self.estimators_[0].classes_
            return labels.take((decision >= 0).astype(np.intp))
        n_classes = len(self.classes_)
        if n_classes == 2:
            return self.classes_.take((decision[:, 0] >= 0).astype(np.intp))
        if self.break_ties and self.decision_function_shape == "ovr":
            ovr = _ovr_decision_function(decision < 0, -decision, n_classes)
            return self.classes_.take(ovr.argmax(axis=1))
        # libsvm's one-vs-one vote: pair (i, j) votes for i if its value is > 0.
        first, second = np.triu_indices(n_classes, 1)
        winners = np.where(decision > 0, first, second)
        votes = np.zeros((len(decision), n_classes), dtype=np.intp)
        np.add.at(votes, (np.arange(len(decision))[:, None], winners), 1)
        return self.classes_.take(votes.argmax(axis=1))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags

    def _multilabel(self):
        """Whether y was an indicator matrix (it has two columns or more)."""
        return len(self.estimators_) > 1

    def _pairwise_decision(self, X):
        """One-vs-one decision values of all estimators, one column per pair.

        Binary columns are positive for the second class, as in
        ``SVC.decision_function``.
        """
        X = self._validate_features(X, reset=False)
        kernel = trace_kernel(X, self.support_vectors_, chunk_size=self.chunk_size)
        return kernel @ self._dual_coef + self._intercept

    def _validate_features(self, X, reset):
        if not reset:
            check_is_fitted(self)
            if is_structured(X) or is_structured(self.support_vectors_):
                checked = check_features(
                    X,
                    "X",
                    reference=self.support_vectors_,
                    reference_name=f"the training data of {type(self).__name__}",
                )
                check_same_source(checked, self.feature_source_, type(self).__name__)
                return checked
        if not is_structured(X):
            return validate_data(self, X, reset=reset, dtype=(np.float64, np.float32))
        X = check_features(X, "X")
        self.n_features_in_ = int(np.prod(widths(X)))
        if hasattr(self, "feature_names_in_"):
            del self.feature_names_in_
        return X

    def _validate_targets(self, y):
        """Set ``classes_`` and return the 1-D target of each SVM to fit."""
        check_classification_targets(y)
        if type_of_target(y, input_name="y") != "multilabel-indicator":
            y = column_or_1d(y, warn=True)
            self.classes_ = np.unique(y)
            if len(self.classes_) < 2:
                raise ValueError(
                    f"y has 1 class ({self.classes_.tolist()[0]!r}); "
                    "the number of classes has to be greater than one."
                )
            return [y]
        Y = check_array(y, input_name="y")
        for label, column in enumerate(Y.T):
            if len(np.unique(column)) < 2:
                raise ValueError(
                    f"Label column {label} of y has 1 class "
                    f"({column.tolist()[0]!r}); every label needs positive and "
                    "negative samples."
                )
        self.classes_ = np.arange(Y.shape[1])
        return list(Y.T)


def _pairwise_coefficients(svc, support):
    """Dual coefficients of the one-vs-one decisions of a precomputed SVC.

    Returns ``coef`` of shape (len(support), n_pairs) and ``intercept`` such
    that ``kernel @ coef + intercept`` equals the one-vs-one
    ``svc.decision_function`` (before any "ovr" transformation), where
    ``kernel`` holds only the columns of the training samples ``support``, a
    sorted superset of ``svc.support_``.
    """
    rows = np.searchsorted(support, svc.support_)
    ends = np.cumsum(svc.n_support_)
    by_class = [slice(end - count, end) for end, count in zip(ends, svc.n_support_)]
    n_classes = len(svc.classes_)
    coef = np.zeros((len(support), n_classes * (n_classes - 1) // 2))
    for pair, (i, j) in enumerate(zip(*np.triu_indices(n_classes, 1))):
        coef[rows[by_class[i]], pair] = svc.dual_coef_[j - 1, by_class[i]]
        coef[rows[by_class[j]], pair] = svc.dual_coef_[i, by_class[j]]
    return coef, svc.intercept_
