r"""Tensor Sketch: explicit random features for the trace kernel.

The trace kernel between factorized gradient features,
:math:`K(A, B) = \langle x^A, x^B \rangle \langle \delta^A, \delta^B \rangle`,
is the linear kernel between the :math:`d D`-dimensional vectors
:math:`x \otimes \delta`. :class:`TensorSketch` maps each pair
:math:`(x, \delta)` to :math:`m` = ``n_components`` numbers whose dot
products estimate it without bias, without ever forming
:math:`x \otimes \delta`, so that a linear model fitted in a stream replaces
the kernel SVM when the :math:`n \times n` Gram matrix no longer fits.
"""

from numbers import Integral

import numpy as np
import scipy.fft
import scipy.sparse as sp
from sklearn import get_config
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    TransformerMixin,
    _fit_context,
)
from sklearn.utils import check_random_state, gen_batches
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_is_fitted, validate_data

from .kernel import _FIELDS, _check_features, _is_structured

__all__ = ["TensorSketch"]

#: Bytes of temporaries per block of rows in :meth:`TensorSketch.transform`.
_BLOCK_BYTES = 16 * 2**20


class TensorSketch(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    r"""Tensor Sketch of factorized gradient features (trace kernel features).

    Maps factorized features (a structured array with fields ``"forward"``
    and ``"backward"``, as returned by
    :class:`~skfishing.DeepFisherTransformer`) to a dense float32 array of
    ``n_components`` columns whose dot products are unbiased estimates of the
    trace kernel (:func:`~skfishing.trace_kernel`):

    .. math::

        \mathbb{E}\,[\langle z(A), z(B) \rangle]
        = \langle x^A, x^B \rangle \, \langle \delta^A, \delta^B \rangle .

    Each factor gets its own CountSketch to :math:`m` buckets: a random
    bucket :math:`h(i)` and sign :math:`s(i)` per coordinate,
    :math:`C(x)_b = \sum_{i: h(i) = b} s(i) x_i`. The two sketches are
    combined by circular convolution, computed with the FFT,

    .. math::

        z(x, \delta) = \mathrm{FFT}^{-1}\big(\mathrm{FFT}(C_1(x)) \odot
        \mathrm{FFT}(C_2(\delta))\big),

    which equals the CountSketch of :math:`x \otimes \delta` with bucket
    :math:`h_1(i) + h_2(j) \bmod m` and sign :math:`s_1(i) s_2(j)` (Pham and
    Pagh, 2013): :math:`d D` products are never formed; the cost per sample
    is :math:`O(d + D + m \log m)`. The variance of an estimate falls as
    :math:`1/m`, so the error of a Gram matrix falls as
    :math:`1/\sqrt{m}`.

    Plain 2-D input (activations, or any features) gets a single CountSketch
    (feature hashing with random signs): ``n_components`` columns whose dot
    products estimate the linear kernel without bias. Both kinds thus give
    the same number of columns, and one pipeline can switch between them.

    Parameters
    ----------
    n_components : int, default=8192
        Dimension :math:`m` of the output. Powers of two are fastest. The
        relative error of the approximated Gram matrix falls as
        ``1 / sqrt(n_components)``. With 8,192 a linear classifier was
        within 1 mAP point of the exact kernel SVM on VOC 2007 (see
        :ref:`scaling`).

    random_state : int, RandomState instance or None, default=None
        Draws the buckets and signs in :meth:`fit`. Pass an int for the same
        features across calls and processes.

    Attributes
    ----------
    hashes_ : tuple of ndarray of int64
        The bucket, in ``[0, n_components)``, of each coordinate of each
        factor: ``(forward, backward)`` of shapes ``(d,)`` and ``(D,)`` for
        structured input, a single array of shape ``(n_features,)`` for 2-D
        input.

    signs_ : tuple of ndarray of float32
        The random sign, +1 or -1, of each coordinate, like ``hashes_``.

    n_features_in_ : int
        Number of features seen during :meth:`fit`. For structured input,
        the dimension ``d * D`` of the vectors ``vec(outer(forward,
        backward))`` that the trace kernel is linear on.

    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Names of features seen during :meth:`fit`. Defined only when `X`
        is a DataFrame with string column names.

    See Also
    --------
    skfishing.trace_kernel : The kernel this transformer approximates.
    skfishing.TraceKernelSVC : The exact kernel SVM, for up to about 20,000
        samples.
    sklearn.kernel_approximation.PolynomialCountSketch : Tensor Sketch of
        the polynomial kernel, :math:`x \otimes x` instead of
        :math:`x \otimes \delta`.

    Notes
    -----
    :meth:`transform` works on blocks of rows whose temporaries take about
    16 MiB (less if scikit-learn's ``working_memory`` is set lower, see
    :func:`sklearn.config_context`): beyond the output, memory does not grow
    with the number of samples. The
    products run in the precision of the input; the output is float32.

    References
    ----------
    N. Pham and R. Pagh, "Fast and scalable polynomial kernels via explicit
    feature maps", KDD 2013.

    Examples
    --------
    >>> import numpy as np
    >>> from skfishing import TensorSketch, trace_kernel
    >>> rng = np.random.default_rng(0)
    >>> Z = np.zeros(3, dtype=[("forward", "f4", (50,)), ("backward", "f4", (20,))])
    >>> Z["forward"] = rng.normal(size=(3, 50)) / np.sqrt(50)
    >>> Z["backward"] = rng.normal(size=(3, 20)) / np.sqrt(20)
    >>> sketch = TensorSketch(n_components=16384, random_state=0).fit(Z)
    >>> features = sketch.transform(Z)
    >>> features.shape, features.dtype
    ((3, 16384), dtype('float32'))
    >>> bool(np.abs(features @ features.T - trace_kernel(Z)).max() < 0.05)
    True
    """

    _parameter_constraints: dict = {
        "n_components": [Interval(Integral, 1, None, closed="left")],
        "random_state": ["random_state"],
    }

    def __init__(self, n_components=8192, *, random_state=None):
        self.n_components = n_components
        self.random_state = random_state

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Draw the buckets and signs of the CountSketches.

        Only the layout of ``X`` (its kind and widths) is used.

        Parameters
        ----------
        X : ndarray of shape (n_samples,) with fields "forward" and \
                "backward", or array-like of shape (n_samples, n_features)
            Factorized or plain features.

        y : None
            Ignored.

        Returns
        -------
        self : TensorSketch
            The fitted transformer.
        """
        X = self._validate_features(X, reset=True)
        random_state = check_random_state(self.random_state)
        widths = [X.dtype[f].shape[0] for f in _FIELDS] if _is_structured(X) else [X.shape[1]]
        hashes, signs = [], []
        for width in widths:
            hashes.append(random_state.randint(0, self.n_components, size=width).astype(np.int64))
            signs.append(random_state.choice([-1.0, 1.0], size=width).astype(np.float32))
        self.hashes_, self.signs_ = tuple(hashes), tuple(signs)
        self._n_features_out = self.n_components
        return self

    def transform(self, X):
        """Sketch ``X``.

        Parameters
        ----------
        X : ndarray of shape (n_samples,) with fields "forward" and \
                "backward", or array-like of shape (n_samples, n_features)
            Features of the same kind and widths as in :meth:`fit`.

        Returns
        -------
        X_new : ndarray of shape (n_samples, n_components), dtype float32
            The sketched features; ``X_new @ Y_new.T`` estimates
            ``trace_kernel(X, Y)``.
        """
        check_is_fitted(self)
        X = self._validate_features(X, reset=False)
        factors = [X[f] for f in _FIELDS] if _is_structured(X) else [X]
        dtype = factors[0].dtype
        sketches = [
            sp.csr_matrix(
                (sign.astype(dtype), (np.arange(len(h)), h)),
                shape=(len(h), self.n_components),
            )
            for h, sign in zip(self.hashes_, self.signs_)
        ]
        out = np.empty((len(X), self.n_components), dtype=np.float32)
        width = sum(f.shape[1] for f in factors)
        row_bytes = (width + 6 * self.n_components) * dtype.itemsize
        # Blocks of a few MiB stay in cache (large blocks are several times
        # slower); never more than scikit-learn's working_memory.
        budget = min(_BLOCK_BYTES, get_config()["working_memory"] * 2**20)
        chunk = max(1, int(budget // row_bytes))
        for rows in gen_batches(len(X), chunk):
            out[rows] = _tensor_sketch([f[rows] for f in factors], sketches, self.n_components)
        return out

    def _validate_features(self, X, reset):
        """Factorized features, or 2-D ones through scikit-learn's checks."""
        if reset:
            if not _is_structured(X):
                return validate_data(self, X, dtype=(np.float64, np.float32))
            X = _check_features(X, "X")
            self.n_features_in_ = X.dtype["forward"].shape[0] * X.dtype["backward"].shape[0]
            if hasattr(self, "feature_names_in_"):
                del self.feature_names_in_
            return X
        if len(self.hashes_) == 1 and not _is_structured(X):
            return validate_data(self, X, reset=False, dtype=(np.float64, np.float32))
        return _check_features(
            X, "X", reference=self._fitted_layout(), reference_name="the data TensorSketch was fitted on"
        )

    def _fitted_layout(self):
        """An empty array of the kind and widths seen by :meth:`fit`."""
        if len(self.hashes_) == 1:
            return np.empty((0, len(self.hashes_[0])), dtype=np.float32)
        return np.empty(0, dtype=[(f, np.float32, (len(h),)) for f, h in zip(_FIELDS, self.hashes_)])

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags


def _tensor_sketch(factors, sketches, n_components):
    """CountSketch each factor, then multiply the sketches' spectra."""
    counts = [np.ascontiguousarray(f @ s) for f, s in zip(factors, sketches)]
    if len(counts) == 1:
        return counts[0]
    spectrum = scipy.fft.rfft(counts[0], axis=1)
    for count in counts[1:]:
        spectrum *= scipy.fft.rfft(count, axis=1)
    return scipy.fft.irfft(spectrum, n=n_components, axis=1)
