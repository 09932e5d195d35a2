"""Trace kernel between factorized gradient features (rank 1, or one rank-1 term per position)."""

import math
from numbers import Integral

import numpy as np
from sklearn import get_config
from sklearn.utils._param_validation import Interval, validate_params

from ..features import FIELDS, check_features, is_structured, positions, widths

#: Bytes of temporaries per block of the kernel of multi-position features
#: (less if scikit-learn's ``working_memory`` is set lower).
_BLOCK_BYTES = 64 * 2**20

#: Constraint of ``chunk_size``, rows of the Gram matrix per chunk (here and in TraceKernelSVC).
CHUNK_SIZE = [Interval(Integral, 1, None, closed="left"), None]


@validate_params(
    {
        # X and Y are checked by check_features, whose messages name the field at fault.
        "X": "no_validation",
        "Y": "no_validation",
        "chunk_size": CHUNK_SIZE,
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

    **Layers applied at several positions.** When the fields are 2-D, of
    shapes ``(T, d)`` and ``(T, D)`` (a convolution's output pixels, a
    linear layer's tokens), a row stands for the weight gradient
    ``G = sum_t outer(backward[t], forward[t])`` and the kernel is
    ``<G_i, G_j>_F``::

        K[i, j] = sum_{t, s} <X.forward[i, t], Y.forward[j, s]>
                             * <X.backward[i, t], Y.backward[j, s]>

    It is computed in float64, in blocks of rows and columns whose
    temporaries stay within 64 MiB (or scikit-learn's ``working_memory``,
    if lower), the cheaper of two ways: from the factors, at
    ``T S (d + D)`` per pair, or from G itself, built block by block in
    slabs of its entries, at ``d D`` per pair. ``X`` and ``Y`` may have
    different numbers of positions (T and S). 1-D fields are the case
    ``T = 1``.

    Parameters
    ----------
    X : ndarray of shape (n_samples_X,) with fields "forward" and "backward", \
            or array-like of shape (n_samples_X, n_features)
        Factorized features (structured array whose fields are float
        subarrays of widths ``d`` and ``D``, or of shapes ``(T, d)`` and
        ``(T, D)``) or plain features.

    Y : same kind and widths as X, default=None
        Second set of features. If None, ``Y = X``.

    chunk_size : int >= 1, default=None
        Number of rows of ``X`` per block. If None, a quarter of the rows
        (half of them when ``Y`` is None, as only the upper triangle is
        computed): for float32 features a block then takes at most an eighth
        of the memory of the result. For fields with several positions, the
        most rows and columns per block (fewer when the temporaries would
        exceed the memory above). It changes the result only by float
        rounding.

    Returns
    -------
    K : ndarray of shape (n_samples_X, n_samples_Y), dtype float64
        The kernel matrix.

    Examples
    --------
    >>> import numpy as np
    >>> from skfishing import trace_kernel
    >>> Z = np.zeros(2, dtype=[("forward", "f4", (3,)), ("backward", "f4", (2,))])
    >>> Z["forward"] = [[1, 0, 0], [1, 1, 0]]
    >>> Z["backward"] = [[1, 1], [0, 2]]
    >>> trace_kernel(Z)
    array([[2., 2.],
           [2., 8.]])
    """
    X = check_features(X, "X")
    symmetric = Y is None
    Y = X if symmetric else check_features(Y, "Y", reference=X, reference_name="X")
    if positions(X) > 1 or positions(Y) > 1:
        return _multi_position_kernel(X, Y, symmetric, chunk_size)
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
    if is_structured(X):
        return [X[field].reshape(len(X), -1).astype(dtype, copy=False) for field in FIELDS]
    return [X.astype(dtype, copy=False)]


def _position_factors(X, rows, cols=(slice(None), slice(None))):
    """``forward`` and ``backward`` of ``X[rows]`` as float64 arrays of shape (rows, T, width).

    ``cols`` selects columns of each: only those are converted.
    """
    T = positions(X)
    return [
        X[field][rows].reshape(-1, T, X.dtype[field].shape[-1])[:, :, keep].astype(np.float64)
        for field, keep in zip(FIELDS, cols)
    ]


def _multi_position_kernel(X, Y, symmetric, chunk_size):
    """The kernel of features at T > 1 positions, in float64, block by block.

    Per pair of rows, the factors cost ``T S (d_in + d_out)`` (the linear
    kernels of all positions' factors, multiplied and summed) and the weight
    gradients ``G = sum_t outer(backward[t], forward[t])`` cost
    ``d_in d_out``, plus building G once, ``T d_in d_out`` per row. The
    cheaper way is used, with temporaries within :data:`_BLOCK_BYTES`.
    """
    (d_in, d_out), T, S = widths(X), positions(X), positions(Y)
    n, m = len(X), len(Y)
    budget = int(min(_BLOCK_BYTES, get_config()["working_memory"] * 2**20))
    limit = min(chunk_size or n, n)
    gradient_cost = d_in * d_out * (1 + T / m + S / n)
    if gradient_cost < T * S * (d_in + d_out):
        K, block = _gradient_kernel(X, Y, symmetric, limit, budget)
    else:
        K, block = _factor_kernel(X, Y, symmetric, limit, budget)
    if symmetric:
        _mirror_upper_triangle(K, block)
    return K


def _factor_kernel(X, Y, symmetric, limit, budget):
    """The upper triangle (or all) of K from the factors, in square blocks of ``size`` rows."""
    (d_in, d_out), T, S = widths(X), positions(X), positions(Y)
    n, m = len(X), len(Y)
    size = min(limit, max(n, m))
    # The float64 factors of a block's rows and columns, and the two products of all their positions.
    while size > 1 and 2 * size * (max(T, S) * (d_in + d_out) + size * T * S) * 8 > budget:
        size //= 2
    K = np.empty((n, m))
    for row_start in range(0, n, size):
        rows = slice(row_start, min(row_start + size, n))
        fx = _position_factors(X, rows)
        for col_start in range(row_start if symmetric else 0, m, size):
            cols = slice(col_start, min(col_start + size, m))
            fy = fx if symmetric and cols == rows else _position_factors(Y, cols)
            _factor_block(K[rows, cols], fx, fy)
    return K, size


def _factor_block(out, fx, fy):
    """``out[i, j] = sum_{t,s} <x_it, x_js> <delta_it, delta_js>`` from the factors."""
    r, T, _ = fx[0].shape
    c, S, _ = fy[0].shape
    product = fx[0].reshape(r * T, -1) @ fy[0].reshape(c * S, -1).T
    product *= fx[1].reshape(r * T, -1) @ fy[1].reshape(c * S, -1).T
    out[...] = product.reshape(r, T, c, S).sum(axis=(1, 3))


def _gradient_kernel(X, Y, symmetric, limit, budget):
    """The upper triangle (or all) of K from the weight gradients G.

    G is built for all rows a slab of its entries at a time (a quarter of
    the budget for the slabs of ``X`` and ``Y``, a quarter for building
    them); each slab adds its products to K in blocks of ``size`` rows (the
    other half).
    """
    (d_in, d_out), n, m = widths(X), len(X), len(Y)
    size = max(1, min(limit, budget // (2 * 8 * m)))
    entries = max(1, budget // (4 * 8 * (n if symmetric else n + m)))
    # Near-square slabs: each slab converts the factors' columns it spans, so
    # (d_in / cols_in) (d_out / rows_out) (cols_in + rows_out) columns in all.
    rows_out = max(1, min(d_out, math.isqrt(entries)))
    cols_in = max(1, min(d_in, entries // rows_out))
    rows_out = max(1, min(d_out, entries // cols_in))
    K = np.zeros((n, m))
    for a in range(0, d_out, rows_out):
        for b in range(0, d_in, cols_in):
            cols = (slice(b, b + cols_in), slice(a, a + rows_out))
            gx = _gradient_slab(X, cols, budget // 4)
            gy = gx if symmetric else _gradient_slab(Y, cols, budget // 4)
            for start in range(0, n, size):
                rows = slice(start, min(start + size, n))
                K[rows, start if symmetric else 0 :] += gx[rows] @ gy[start if symmetric else 0 :].T
    return K, size


def _gradient_slab(X, cols, budget):
    """Entries ``[cols[1], cols[0]]`` of each row's G, flattened, built in chunks of rows."""
    T = positions(X)
    width = sum(len(range(*c.indices(X.dtype[f].shape[-1]))) for f, c in zip(FIELDS, cols))
    chunk = max(1, budget // (8 * T * width))
    out = np.empty((len(X), _slab_size(X, cols)))
    for start in range(0, len(X), chunk):
        rows = slice(start, min(start + chunk, len(X)))
        x, delta = _position_factors(X, rows, cols)
        # A contiguous transpose: NumPy calls BLAS on stacks of C- or F-ordered matrices only.
        out[rows] = np.matmul(np.ascontiguousarray(delta.transpose(0, 2, 1)), x).reshape(len(x), -1)
    return out


def _slab_size(X, cols):
    forward, backward = (len(range(*c.indices(X.dtype[f].shape[-1]))) for f, c in zip(FIELDS, cols))
    return forward * backward


def _mirror_upper_triangle(K, block):
    """Copy the upper triangle of the square ``K`` below its diagonal, a block of rows at a time."""
    n = len(K)
    for start in range(0, n, block):
        rows = slice(start, min(start + block, n))
        # Below its diagonal, a diagonal block's sums ran in another order.
        diagonal = K[rows, rows]
        lower = np.tril_indices(len(diagonal), -1)
        diagonal[lower] = diagonal.T[lower]
        K[rows.stop :, rows] = K[rows, rows.stop :].T


def _precision(X):
    """float32 or float64: the dtype the products of ``X`` run in."""
    dtype = X.dtype[FIELDS[0]].base if is_structured(X) else X.dtype
    return np.result_type(dtype, np.float32)
