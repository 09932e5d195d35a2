import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numpy.testing import assert_allclose, assert_array_equal

from skfishing import trace_kernel


def factorized(n, d, D, seed=0, dtype="f4"):
    """Random factorized features with L2-normalised rows, as the transformer gives."""
    rng = np.random.default_rng(seed)
    Z = np.empty(n, dtype=[("forward", dtype, (d,)), ("backward", dtype, (D,))])
    for field, width in (("forward", d), ("backward", D)):
        values = rng.normal(size=(n, width))
        Z[field] = values / np.linalg.norm(values, axis=1, keepdims=True)
    return Z


def explicit(Z):
    """vec(outer(forward, backward)) of every row, in float64."""
    f, b = Z["forward"].astype(np.float64), Z["backward"].astype(np.float64)
    return np.einsum("ni,nj->nij", f, b).reshape(len(Z), -1)


def test_equals_linear_kernel_on_explicit_features():
    X, Y = factorized(30, 6, 4, seed=0), factorized(20, 6, 4, seed=1)
    K = trace_kernel(X, Y)
    assert K.dtype == np.float64 and K.shape == (30, 20)
    # float32 products of unit vectors: entries in [-1, 1], rounding ~1e-7.
    assert_allclose(K, explicit(X) @ explicit(Y).T, atol=1e-6)
    assert_allclose(trace_kernel(X), explicit(X) @ explicit(X).T, atol=1e-6)


def test_float64_fields_are_computed_in_float64():
    X = factorized(15, 5, 3, dtype="f8")
    assert_allclose(trace_kernel(X), explicit(X) @ explicit(X).T, rtol=1e-12, atol=1e-14)


def test_field_order_and_byte_order_do_not_matter():
    X = factorized(12, 5, 3)
    swapped = np.empty(12, dtype=[("backward", ">f4", (3,)), ("forward", ">f4", (5,))])
    swapped["forward"], swapped["backward"] = X["forward"], X["backward"]
    assert_array_equal(trace_kernel(swapped, X), trace_kernel(X, X))


def test_plain_2d_input_is_the_linear_kernel():
    rng = np.random.default_rng(0)
    A, B = rng.normal(size=(9, 4)), rng.normal(size=(5, 4))
    assert_allclose(trace_kernel(A, B), A @ B.T, rtol=1e-13)
    assert_allclose(trace_kernel(A.tolist()), A @ A.T, rtol=1e-13)
    K32 = trace_kernel(A.astype(np.float32))
    assert K32.dtype == np.float64
    assert_allclose(K32, A @ A.T, rtol=1e-5)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_property_matches_explicit_features(data):
    d, D = data.draw(st.integers(1, 7)), data.draw(st.integers(1, 7))
    n, m = data.draw(st.integers(1, 6)), data.draw(st.integers(1, 6))
    floats = st.floats(-100, 100, width=32)

    def draw(rows):
        Z = np.empty(rows, dtype=[("forward", "f4", (d,)), ("backward", "f4", (D,))])
        Z["forward"] = data.draw(hnp.arrays(np.float32, (rows, d), elements=floats))
        Z["backward"] = data.draw(hnp.arrays(np.float32, (rows, D), elements=floats))
        return Z

    X, Y = draw(n), draw(m)
    chunk_size = data.draw(st.integers(1, 8))
    expected = explicit(X) @ explicit(Y).T
    # float32 dot products: relative error ~ width * eps on the product of norms.
    norms = lambda Z, f: np.linalg.norm(Z[f].astype(np.float64), axis=1)  # noqa: E731
    scale = np.outer(norms(X, "forward"), norms(Y, "forward")) * np.outer(
        norms(X, "backward"), norms(Y, "backward")
    )
    tol = 1e-6 * (d + D) * scale + 1e-30
    assert np.all(np.abs(trace_kernel(X, Y, chunk_size=chunk_size) - expected) <= tol)
    Kxx = trace_kernel(X, chunk_size=chunk_size)
    assert_array_equal(Kxx, Kxx.T)


@pytest.mark.parametrize("chunk_size", [1, 2, 7, 33, 50, 51, 1000])
def test_chunk_size_changes_only_rounding(chunk_size):
    X, Y = factorized(50, 16, 8, seed=2), factorized(23, 16, 8, seed=3)
    reference = explicit(X) @ explicit(X).T
    K = trace_kernel(X, chunk_size=chunk_size)
    assert_allclose(K, reference, atol=1e-6)
    assert_allclose(K, trace_kernel(X), atol=1e-6)
    assert_array_equal(K, K.T)
    assert_allclose(trace_kernel(X, Y, chunk_size=chunk_size), trace_kernel(X, Y), atol=1e-6)


def test_peak_memory_is_output_plus_one_chunk():
    n, d, D, chunk = 1000, 32, 32, 50
    X = factorized(n, d, D)
    tracemalloc.start()
    try:
        trace_kernel(X, chunk_size=chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The float64 output plus one float32 block of chunk x n, plus NumPy's
    # casting buffers (constant, ~200 kB): an n x n float32 product (4 MB)
    # or an n x d x D tensor would not fit.
    assert peak <= n * n * 8 + chunk * n * 4 + 512 * 1024


def structured(d=4, D=3, n=5, dtype="f4"):
    return np.zeros(n, dtype=[("forward", dtype, (d,)), ("backward", dtype, (D,))])


def with_value(Z, field, value):
    Z = Z.copy()
    Z[field][1, 0] = value
    return Z


@pytest.mark.parametrize(
    "X, Y, message",
    [
        (
            structured(D=12),
            structured(D=10),
            "Y has field 'backward' of width 10 but X has 12",
        ),
        (
            structured(d=4),
            structured(d=5),
            "Y has field 'forward' of width 5 but X has 4",
        ),
        (
            structured(),
            np.zeros((5, 7)),
            "Y is a 2-D array but X is a structured array",
        ),
        (
            np.zeros((5, 7)),
            structured(),
            "Y is a structured array but X is a 2-D array",
        ),
        (np.zeros((5, 7)), np.zeros((5, 6)), "Y has 6 features but X has 7"),
        (
            with_value(structured(), "forward", np.nan),
            None,
            r"X\['forward'\] contains NaN",
        ),
        (
            structured(),
            with_value(structured(), "backward", np.inf),
            r"Y\['backward'\] contains inf",
        ),
        (structured(n=0), None, "X is empty"),
        (np.zeros((0, 3)), None, "0 sample"),
        (np.array([[1.0, np.nan]]), None, "Input X contains NaN"),
        (np.array([["a", "b"]]), None, "could not convert"),
        (
            np.zeros(3, dtype=[("forward", "U3", (2,)), ("backward", "f4", (2,))]),
            None,
            "X field 'forward' must be a non-empty 1-D subarray of floats",
        ),
        (
            np.zeros(3, dtype=[("forward", "f4", (2,)), ("backward", "f4")]),
            None,
            "X field 'backward' must be a non-empty 1-D subarray",
        ),
        (
            np.zeros(3, dtype=[("forward", "f4", (2,)), ("other", "f4", (2,))]),
            None,
            "X must have exactly the fields 'forward' and 'backward'",
        ),
        (structured().reshape(5, 1), None, r"shape \(n_samples,\)"),
        (np.zeros(4), None, "Expected 2D array"),
    ],
)
def test_bad_input_raises_clear_error(X, Y, message):
    with pytest.raises(ValueError, match=message):
        trace_kernel(X, Y)


@pytest.mark.parametrize("chunk_size", [-1, 0, -(2**40), 2.5, "3", [4]])
@pytest.mark.parametrize("Y", [None, "other"])
def test_invalid_chunk_size_is_an_error(chunk_size, Y):
    """Defect 1 (issue 13): chunk_size=-1 returned uninitialised memory."""
    X = factorized(6, 4, 3, seed=4)
    Y = None if Y is None else factorized(3, 4, 3, seed=5)
    message = r"'chunk_size' parameter of trace_kernel must be an int in the range \[1, inf\) or None"
    with pytest.raises(ValueError, match=message):
        trace_kernel(X, Y, chunk_size=chunk_size)


def test_smallest_and_largest_chunk_sizes_are_exact():
    X = factorized(6, 4, 3, seed=4)
    reference = explicit(X) @ explicit(X).T
    for chunk_size in (1, np.int64(2), 6, 2**40):
        assert_allclose(trace_kernel(X, chunk_size=chunk_size), reference, atol=1e-6)
