"""The trace kernel of layers applied at several positions (issue 21).

A row with fields of shapes (T, d) and (T, D) stands for the weight gradient
G = sum_t outer(backward[t], forward[t]); the kernel is <G_i, G_j>_F. The
reference below builds G explicitly, in float64.
"""

import tracemalloc

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from sklearn import config_context

from skfishing import trace_kernel
from skfishing._kernels import kernel
from skfishing.features import gradient_dtype


def multi_position(n, T, d, D, seed=0, dtype="f4"):
    """Random features at T positions, normalised so that ||G||_F = 1 (float64)."""
    rng = np.random.default_rng(seed)
    shape = (lambda w: (w,)) if T is None else (lambda w: (T, w))
    Z = np.empty(n, dtype=[("forward", dtype, shape(d)), ("backward", dtype, shape(D))])
    forward = rng.normal(size=(n,) + shape(d))
    backward = rng.normal(size=(n,) + shape(D))
    scale = np.linalg.norm(explicit_gradients_of(forward, backward), axis=1) ** -0.5
    scale = scale.reshape((n,) + (1,) * (forward.ndim - 1))
    Z["forward"], Z["backward"] = forward * scale, backward * scale
    return Z


def explicit_gradients_of(forward, backward):
    if forward.ndim == 2:
        forward, backward = forward[:, None], backward[:, None]
    G = np.einsum("ntd,nte->nde", backward.astype(np.float64), forward.astype(np.float64))
    return G.reshape(len(forward), -1)


def explicit_gradients(Z):
    """vec(sum_t outer(backward[t], forward[t])) of every row, in float64."""
    return explicit_gradients_of(Z["forward"], Z["backward"])


def relative_error(K, reference):
    return np.linalg.norm(K - reference) / np.linalg.norm(reference)


# (T, d, D): per pair, factors cost T^2 (d + D), G costs d D.
FROM_FACTORS = (3, 40, 50)  # 270 < 2000
FROM_GRADIENTS = (12, 5, 4)  # 1296 > 20


@pytest.mark.parametrize("layout", [FROM_FACTORS, FROM_GRADIENTS, (1, 6, 5), (7, 1, 1)])
@pytest.mark.parametrize("dtype", ["f4", "f8"])
def test_equals_gram_of_explicit_gradients(layout, dtype):
    T, d, D = layout
    X, Y = multi_position(23, T, d, D, seed=0, dtype=dtype), multi_position(17, T, d, D, seed=1, dtype=dtype)
    GX, GY = explicit_gradients(X), explicit_gradients(Y)
    K = trace_kernel(X, Y)
    assert K.dtype == np.float64 and K.shape == (23, 17)
    assert relative_error(K, GX @ GY.T) <= 1e-6
    gram = trace_kernel(X)
    assert relative_error(gram, GX @ GX.T) <= 1e-6
    assert_array_equal(gram, gram.T)
    # ||G||_F = 1 up to the rounding of the factors to the dtype.
    assert_allclose(np.diag(gram), 1.0, rtol=1e-5 if dtype == "f4" else 1e-12)


@pytest.mark.parametrize(
    "layout, way", [(FROM_FACTORS, "_factor_kernel"), (FROM_GRADIENTS, "_gradient_kernel")]
)
def test_the_cheaper_way_is_used(monkeypatch, layout, way):
    calls = {"_factor_kernel": 0, "_gradient_kernel": 0}
    for name in calls:
        original = getattr(kernel, name)

        def spy(*args, _name=name, _original=original):
            calls[_name] += 1
            return _original(*args)

        monkeypatch.setattr(kernel, name, spy)
    X = multi_position(10, *layout)
    assert relative_error(trace_kernel(X), explicit_gradients(X) @ explicit_gradients(X).T) <= 1e-6
    assert calls[way] > 0 and sum(calls.values()) == calls[way]


def test_different_numbers_of_positions_and_one_dimensional_fields():
    """The same layer on images of other sizes: T differs, d and D do not."""
    X, Y, F = (
        multi_position(9, 4, 6, 5, seed=0),
        multi_position(7, 9, 6, 5, seed=1),
        multi_position(5, None, 6, 5),
    )
    GX, GY, GF = explicit_gradients(X), explicit_gradients(Y), explicit_gradients(F)
    assert relative_error(trace_kernel(X, Y), GX @ GY.T) <= 1e-6
    assert relative_error(trace_kernel(F, Y), GF @ GY.T) <= 1e-6
    assert relative_error(trace_kernel(Y, F), GY @ GF.T) <= 1e-6


def test_one_position_as_2d_fields_equals_1d_fields():
    F = multi_position(8, None, 6, 5)
    one = np.empty(8, dtype=[("forward", "f4", (1, 6)), ("backward", "f4", (1, 5))])
    one["forward"], one["backward"] = F["forward"][:, None], F["backward"][:, None]
    assert_array_equal(trace_kernel(one), trace_kernel(F))


@pytest.mark.parametrize("layout", [FROM_FACTORS, FROM_GRADIENTS])
@pytest.mark.parametrize("chunk_size", [1, 2, 5, 13, 1000])
def test_chunk_size_and_working_memory_change_only_rounding(layout, chunk_size):
    X, Y = multi_position(13, *layout, seed=2), multi_position(6, *layout, seed=3)
    reference = explicit_gradients(X) @ explicit_gradients(Y).T
    assert_allclose(trace_kernel(X, Y, chunk_size=chunk_size), reference, atol=1e-12)
    gram = trace_kernel(X, chunk_size=chunk_size)
    assert_array_equal(gram, gram.T)
    assert_allclose(gram, explicit_gradients(X) @ explicit_gradients(X).T, atol=1e-12)
    with config_context(working_memory=0.01):  # 10 kB: blocks of one row, G in slabs
        assert_allclose(trace_kernel(X, Y, chunk_size=chunk_size), reference, atol=1e-12)


@pytest.mark.parametrize("layout", [(16, 16, 16), (4, 64, 64)])
def test_peak_memory_is_output_plus_the_working_memory(layout):
    """Unblocked, the products of all positions' factors (31 MB) or all G
    (n d D float64, 1.4 MB for the first layout) would not fit."""
    n = 350
    X = multi_position(n, *layout)
    budget = 2**20
    tracemalloc.start()
    try:
        with config_context(working_memory=1):
            trace_kernel(X)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= n * n * 8 + budget + 512 * 1024


def test_gradient_dtype_builds_multi_position_features():
    source = {"model_sha256": "ab", "layer": 3, "temperature": 2.0}
    dtype = gradient_dtype(6, 5, source, positions=4)
    assert dtype["forward"].shape == (4, 6) and dtype["backward"].shape == (4, 5)
    assert dict(dtype.metadata) == source
    assert (
        gradient_dtype(6, 5, positions=1)
        == gradient_dtype(6, 5)
        == np.dtype([("forward", "f4", (6,)), ("backward", "f4", (5,))])
    )
    Z = np.empty(3, dtype=dtype)
    Z["forward"], Z["backward"] = (
        multi_position(3, 4, 6, 5)["forward"],
        multi_position(3, 4, 6, 5)["backward"],
    )
    assert relative_error(trace_kernel(Z), explicit_gradients(Z) @ explicit_gradients(Z).T) <= 1e-6
    with pytest.raises(ValueError, match="'positions' parameter"):
        gradient_dtype(6, 5, positions=0)


def fields(forward, backward):
    return np.zeros(3, dtype=[("forward", "f4", forward), ("backward", "f4", backward)])


@pytest.mark.parametrize(
    "X, Y, message",
    [
        (fields((4, 6), (5, 5)), None, r"same number of positions .* got shapes \(4, 6\) and \(5, 5\)"),
        (fields((4, 6), (5,)), None, r"same number of positions .* got shapes \(4, 6\) and \(5,\)"),
        (fields((2, 4, 6), (2, 4, 5)), None, "X field 'forward' must be a non-empty 1-D subarray"),
        (fields((0, 6), (0, 5)), None, "X field 'forward' must be a non-empty 1-D subarray"),
        (fields((4, 6), (4, 5)), fields((4, 7), (4, 5)), "Y has field 'forward' of width 7 but X has 6"),
        (fields((4, 6), (4, 5)), fields((6,), (4,)), "Y has field 'backward' of width 4 but X has 5"),
    ],
)
def test_bad_multi_position_layouts_raise_clear_errors(X, Y, message):
    with pytest.raises(ValueError, match=message):
        trace_kernel(X, Y)


def test_non_finite_value_at_a_position_is_named():
    X = multi_position(4, 3, 2, 2)
    X["backward"][2, 1, 0] = np.nan
    with pytest.raises(ValueError, match=r"X\['backward'\] contains NaN"):
        trace_kernel(X)
