"""Trace kernel between factorized (rank-1) gradient features."""

from numbers import Integral

import numpy as np
from sklearn.utils import check_array
from sklearn.utils._param_validation import Interval, validate_params
from sklearn.utils.validation import assert_all_finite

_FIELDS = ("forward", "backward")


@validate_params(
    {
        # X and Y are checked by _check_features, whose messages name the field at fault.
        "X": "no_validation",
        "Y": "no_validation",
        "chunk_size": [Interval(Integral, 1, None, closed="left"), None],
    },
    prefer_skip_nested_validation=True,
)
def trace_kernel(X, Y=None, *, chunk_size=None):
    """Gram matrix of the trace kernel between factorized features.

    A row of a structured array ``Z`` with fields ``"forward"`` and
    ``"backward"`` stands for the rank-1 matrix
    ``outer(Z["forward"][i], Z["backward"][i])``. The trace kernel between two
    such matrices is the linear kernel between their vectorisations (Gordo et
    al., BMVC 2015, Eq. 12)::

        K[i, j] = <X.forward[i], Y.forward[j]> * <X.backward[i], Y.backward[j]>

    so the Gram matrix is two matrix products and an element-wise product,
    without ever forming the ``d * D`` dimensional vectors. For plain 2-D
    input it is the linear kernel ``X @ Y.T``.

    The products run in the precision of the features (float32 for the
    output of :class:`~skfishing.DeepFisherTransformer`) over chunks of
    ``chunk_size`` rows of ``X``, and are accumulated into the float64 result,
    so the extra memory is one chunk's block. When ``Y`` is None only the upper
    triangle is computed and then mirrored: the result is exactly symmetric.

    Parameters
    ----------
    X : ndarray of shape (n_samples_X,) with fields "forward" and "backward", \
            or array-like of shape (n_samples_X, n_features)
        Factorized features (structured array whose fields are float
        subarrays of widths ``d`` and ``D``) or plain features.

    Y : same kind and widths as X, default=None
        Second set of features. If None, ``Y = X``.

    chunk_size : int >= 1, default=None
        Number of rows of ``X`` per block. If None, a quarter of the rows
        (half of them when ``Y`` is None, as only the upper triangle is
        computed): for float32 features a block then takes at most an eighth
        of the memory of the result. It changes the result only by float
        rounding.

    Returns
    -------
    K : ndarray of shape (n_samples_X, n_samples_Y), dtype float64
        The kernel matrix.

    Examples
    --------
    >>> import numpy as np
    >>> from skfishing.kernel import trace_kernel
    >>> Z = np.zeros(2, dtype=[("forward", "f4", (3,)), ("backward", "f4", (2,))])
    >>> Z["forward"] = [[1, 0, 0], [1, 1, 0]]
    >>> Z["backward"] = [[1, 1], [0, 2]]
    >>> trace_kernel(Z)
    array([[2., 2.],
           [2., 8.]])
    """
    X = _check_features(X, "X")
    symmetric = Y is None
    Y = X if symmetric else _check_features(Y, "Y", reference=X, reference_name="X")
    dtype = np.result_type(_precision(X), _precision(Y))
    fx, fy = _factors(X, dtype), _factors(Y, dtype)
    n, m = len(fx[0]), len(fy[0])
    if chunk_size is None:
        # Blocks of at most n * m / 4 entries: c x m, or c x c and c x (n - c).
        chunk_size = -(-n // (2 if symmetric else 4))
    K = np.empty((n, m))
    for start in range(0, n, chunk_size):
        rows = slice(start, min(start + chunk_size, n))
        if not symmetric:
            _fill(K[rows], fx, fy, rows, slice(None))
            continue
        right = slice(rows.stop, n)
        _fill(K[rows, rows], fx, fx, rows, rows)
        _fill(K[rows, right], fx, fx, rows, right)
        K[right, rows] = K[rows, right].T
    return K


def _fill(out, fx, fy, rows, cols):
    """Write the product of the linear kernels of the factors into ``out``.

    One temporary block lives at a time. ``a[rows] @ a[rows].T`` is detected
    by NumPy, which then calls the symmetric rank-k BLAS update.
    """
    out[...] = fx[0][rows] @ fy[0][cols].T
    for a, b in zip(fx[1:], fy[1:]):
        out *= a[rows] @ b[cols].T


def _factors(X, dtype):
    """The 2-D arrays whose linear kernels multiply to the kernel of ``X``."""
    if _is_structured(X):
        return [X[field].astype(dtype, copy=False) for field in _FIELDS]
    return [X.astype(dtype, copy=False)]


def _precision(X):
    """float32 or float64: the dtype the products of ``X`` run in."""
    dtype = X.dtype[_FIELDS[0]].base if _is_structured(X) else X.dtype
    return np.result_type(dtype, np.float32)


def _is_structured(X):
    """Whether ``X`` is a NumPy structured array."""
    return isinstance(X, np.ndarray) and X.dtype.names is not None


def _check_features(X, name="X", *, reference=None, reference_name="X"):
    """Validate factorized or plain features.

    Parameters
    ----------
    X : structured ndarray or array-like
        Features to check.
    name : str, default="X"
        Name of ``X`` in error messages.
    reference : ndarray, default=None
        Already validated features that ``X`` must match in kind and widths.
    reference_name : str, default="X"
        Name of ``reference`` in error messages.

    Returns
    -------
    X : ndarray
        A structured array with native float32 or float64 fields, or a 2-D
        float32 or float64 array.
    """
    if isinstance(X, np.void) and X.dtype.names is not None:
        raise ValueError(f"{name} is one row of a structured array; pass Z[i:i + 1] for one sample.")
    if isinstance(X, (list, tuple)) and X and all(isinstance(x, np.void) for x in X):
        X = _stack_rows(X, name)
    if _is_structured(X):
        X = _check_structured(X, name)
    else:
        X = check_array(X, dtype=(np.float64, np.float32), input_name=name)
    if reference is not None:
        _check_same_layout(X, name, reference, reference_name)
    return X


def _stack_rows(rows, name):
    """A structured array from a list of its rows, keeping their dtype and provenance."""
    dtypes = {row.dtype for row in rows}
    metadata = {repr(row.dtype.metadata) for row in rows}
    if len(dtypes) != 1 or len(metadata) != 1:
        raise ValueError(
            f"{name} is a list of rows of structured arrays of different kinds (dtypes or provenance); "
            "pass one structured array."
        )
    return np.array(rows, dtype=rows[0].dtype)


def _check_structured(X, name):
    if X.ndim != 1:
        raise ValueError(f"{name} must be a structured array of shape (n_samples,), got shape {X.shape}.")
    if sorted(X.dtype.names) != sorted(_FIELDS):
        raise ValueError(
            f"{name} must have exactly the fields 'forward' and 'backward', got {X.dtype.names}."
        )
    for field in _FIELDS:
        dtype = X.dtype[field]
        if dtype.base.kind != "f" or dtype.ndim != 1 or dtype.shape[0] == 0:
            raise ValueError(
                f"{name} field {field!r} must be a non-empty 1-D subarray of floats, got dtype {dtype}."
            )
    if X.shape[0] == 0:
        raise ValueError(f"{name} is empty: found 0 samples, at least 1 is required.")
    precision = np.result_type(*(X.dtype[f].base for f in _FIELDS), np.float32)
    # Same field order: NumPy casts structured arrays field by position. Provenance is kept.
    fields = [(f, precision, X.dtype[f].shape) for f in X.dtype.names]
    metadata = X.dtype.metadata
    native = np.dtype(fields) if metadata is None else np.dtype(fields, metadata=dict(metadata))
    if X.dtype != native:
        X = X.astype(native)
    for field in _FIELDS:
        assert_all_finite(X[field], input_name=f"{name}[{field!r}]")
    return X


def _check_same_layout(X, name, reference, reference_name):
    if _is_structured(X) != _is_structured(reference):
        kinds = {True: "a structured array", False: "a 2-D array"}
        raise ValueError(
            f"{name} is {kinds[_is_structured(X)]} but {reference_name} is "
            f"{kinds[_is_structured(reference)]}; both must be structured arrays "
            "with fields 'forward' and 'backward' or both 2-D arrays."
        )
    if not _is_structured(X):
        if X.shape[1] != reference.shape[1]:
            raise ValueError(
                f"{name} has {X.shape[1]} features but {reference_name} has {reference.shape[1]}."
            )
        return
    for field in _FIELDS:
        width, expected = X.dtype[field].shape[0], reference.dtype[field].shape[0]
        if width != expected:
            raise ValueError(
                f"{name} has field {field!r} of width {width} but {reference_name} has {expected}."
            )
