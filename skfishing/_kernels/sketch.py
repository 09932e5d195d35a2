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

from ..features import (
    FIELDS,
    check_features,
    check_same_source,
    feature_source,
    is_structured,
    positions,
    widths,
)

__all__ = ["TensorSketch"]

#: Bytes of temporaries per block of rows in :meth:`TensorSketch.transform`.
_BLOCK_BYTES = 16 * 2**20

#: Largest ``n_components``: 4 MiB of float32 per sample. The error of the
#: sketched kernel falls as ``1 / sqrt(n_components)``; past this, the exact
#: kernel is the better tool.
MAX_COMPONENTS = 2**20

#: Largest magnitude of the float32 output.
_FLOAT32_MAX = float(np.finfo(np.float32).max)


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

    **Layers applied at several positions.** For fields of shapes
    ``(T, d)`` and ``(T, D)`` (a convolution's output pixels, a linear
    layer's tokens), a row stands for the weight gradient
    :math:`G = \sum_t x_t \otimes \delta_t` and the output is the
    CountSketch of :math:`G`: the sketch is linear, so it is the sum over
    positions of the sketches of :math:`x_t \otimes \delta_t`, computed
    from the factors as above (the spectra summed before the inverse FFT).
    Its dot products estimate :math:`\langle G^A, G^B \rangle_F` (see
    :func:`~skfishing.trace_kernel`) without bias, with ``n_components``
    numbers per sample whatever T; :math:`G` is never formed.

    Plain 2-D input (activations, or any features) gets a single CountSketch
    (feature hashing with random signs): ``n_components`` columns whose dot
    products estimate the linear kernel without bias. Both kinds thus give
    the same number of columns, and one pipeline can switch between them.

    Parameters
    ----------
    n_components : int, default=8192
        Dimension :math:`m` of the output, at most 2**20
        (``skfishing._kernels.sketch.MAX_COMPONENTS``, 4 MiB of float32 per sample). Powers of two
        are fastest; odd numbers work too. The
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

    feature_source_ : dict or None
        Where the structured features seen by :meth:`fit` come from (model
        SHA-256, layer, temperature, labels), as
        :class:`~skfishing.DeepFisherTransformer` records it in their dtype;
        None for 2-D features and features without that record.
        :meth:`transform` refuses features of another source, as
        :class:`~skfishing.TraceKernelSVC` does.

    n_features_in_ : int
        Number of features seen during :meth:`fit`. For structured input,
        the dimension ``d * D`` of the vectors ``vec(outer(forward,
        backward))`` (or of the weight gradients, for several positions)
        that the trace kernel is linear on.

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
    :func:`sklearn.config_context`), positions of a row in slabs when one
    row's would not fit: beyond the output, memory does not grow with the
    number of samples or positions. The products run in the precision of
    the input; the output is float32, and a sketch beyond its range is
    refused with an error naming the row.

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
        "n_components": [Interval(Integral, 1, MAX_COMPONENTS, closed="both")],
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
        structured = is_structured(X)
        hashes, signs = [], []
        for width in widths(X) if structured else [X.shape[1]]:
            hashes.append(random_state.randint(0, self.n_components, size=width).astype(np.int64))
            signs.append(random_state.choice([-1.0, 1.0], size=width).astype(np.float32))
        self.hashes_, self.signs_ = tuple(hashes), tuple(signs)
        self.feature_source_ = feature_source(X) if structured else None
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

        Raises
        ------
        ValueError
            If ``X`` is not of the kind and widths seen by :meth:`fit`, comes
            from another model, layer, temperature or labels than the
            features :meth:`fit` saw, or a row's sketch exceeds the float32
            range.
        """
        check_is_fitted(self)
        X = self._validate_features(X, reset=False)
        factors = [X[f] for f in FIELDS] if is_structured(X) else [X]
        dtype = factors[0].dtype
        m = self.n_components
        sketches = [
            sp.csr_matrix((sign.astype(dtype), (np.arange(len(h)), h)), shape=(len(h), m))
            for h, sign in zip(self.hashes_, self.signs_)
        ]
        out = np.empty((len(X), m), dtype=np.float32)
        # Temporaries of one position of one row: its factors, their counts
        # and spectra, and the spectra's product.
        position_bytes = (sum(f.shape[-1] for f in factors) + 6 * m) * dtype.itemsize
        T = positions(X)
        # Blocks of a few MiB stay in cache (large blocks are several times
        # slower); never more than scikit-learn's working_memory. A row of
        # many positions is sketched a slab of positions at a time.
        budget = min(_BLOCK_BYTES, get_config()["working_memory"] * 2**20)
        chunk = max(1, int(budget // (T * position_bytes)))
        slab = T if chunk > 1 else max(1, int(budget // position_bytes))
        for rows in gen_batches(len(X), chunk):
            with np.errstate(over="ignore", invalid="ignore"):  # refused below, naming the row
                block = _tensor_sketch([f[rows] for f in factors], sketches, m, slab)
            _check_float32_range(block, rows.start)
            out[rows] = block
        return out

    def _validate_features(self, X, reset):
        """Factorized features, or 2-D ones through scikit-learn's checks."""
        if reset:
            if not is_structured(X):
                return validate_data(self, X, dtype=(np.float64, np.float32))
            X = check_features(X, "X")
            self.n_features_in_ = int(np.prod(widths(X)))
            if hasattr(self, "feature_names_in_"):
                del self.feature_names_in_
            return X
        if len(self.hashes_) == 1 and not is_structured(X):
            return validate_data(self, X, reset=False, dtype=(np.float64, np.float32))
        X = check_features(
            X, "X", reference=self._fitted_layout(), reference_name="the data TensorSketch was fitted on"
        )
        check_same_source(X, getattr(self, "feature_source_", None), type(self).__name__)
        return X

    def _fitted_layout(self):
        """An empty array of the kind and widths seen by :meth:`fit`."""
        if len(self.hashes_) == 1:
            return np.empty((0, len(self.hashes_[0])), dtype=np.float32)
        return np.empty(0, dtype=[(f, np.float32, (len(h),)) for f, h in zip(FIELDS, self.hashes_)])

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags


def _tensor_sketch(factors, sketches, n_components, slab):
    """CountSketch each factor, then multiply the sketches' spectra.

    Factors of shape (rows, T, width) are sketched ``slab`` positions at a
    time, and the spectra of all positions of a row summed: the sketch is
    linear, so this is the sketch of ``sum_t outer(x_t, delta_t)``.
    """
    if len(factors) == 1:
        return np.ascontiguousarray(factors[0] @ sketches[0])
    if factors[0].ndim == 2:
        factors = [f[:, None] for f in factors]
    rows, T = factors[0].shape[:2]
    spectrum = None
    for start in range(0, T, slab):
        part = None
        for f, s in zip(factors, sketches):
            count = np.ascontiguousarray(f[:, start : start + slab].reshape(-1, f.shape[2]) @ s)
            fft = scipy.fft.rfft(count, axis=1)
            part = fft if part is None else part * fft
        part = part.reshape(rows, -1, part.shape[1]).sum(axis=1)
        spectrum = part if spectrum is None else spectrum + part
    return scipy.fft.irfft(spectrum, n=n_components, axis=1)


def _check_float32_range(block, first_row):
    """Refuse a sketch that the float32 output cannot hold (row numbers are ``X``'s)."""
    magnitude = np.abs(block).max(axis=1)
    bad = ~(magnitude <= _FLOAT32_MAX)  # NaN too
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        size = (
            f"{magnitude[row]:.3g} in magnitude" if np.isfinite(magnitude[row]) else "infinite (an overflow)"
        )
        raise ValueError(
            f"the sketch of row {first_row + row} of X is {size}, beyond the "
            f"float32 range of the output ({_FLOAT32_MAX:.3g}). Scale the features down: "
            "DeepFisherTransformer's have unit norm."
        )
