"""TensorSketch on gradients of layers applied at several positions, odd
n_components, provenance and range (issues 20 and 21)."""

import tracemalloc

import joblib
import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from sklearn import config_context
from sklearn.linear_model import SGDClassifier
from sklearn.pipeline import make_pipeline
from test_kernel_positions import multi_position
from test_sketch import explicit_count_sketch

from skfishing import TensorSketch, trace_kernel
from skfishing._kernels.sketch import MAX_COMPONENTS
from skfishing.features import gradient_dtype


def forward_major_gradients(Z):
    """vec(sum_t outer(forward[t], backward[t])), forward index first, in float64."""
    f, b = Z["forward"].astype(np.float64), Z["backward"].astype(np.float64)
    if f.ndim == 2:
        f, b = f[:, None], b[:, None]
    return np.einsum("ntd,nte->nde", f, b).reshape(len(Z), -1)


def reference_sketch(sketch, Z):
    """The CountSketch of the explicit G, bucket h1(i) + h2(j) mod m, sign s1(i) s2(j)."""
    m = sketch.n_components
    (h1, h2), (s1, s2) = sketch.hashes_, sketch.signs_
    buckets = (h1[:, None] + h2[None, :]) % m
    signs = s1[:, None].astype(np.float64) * s2[None, :]
    return explicit_count_sketch(forward_major_gradients(Z), buckets.ravel(), signs.ravel(), m)


@pytest.mark.parametrize("m", [16, 15, 63, 1])
@pytest.mark.parametrize("T", [None, 1, 4])
def test_equals_count_sketch_of_the_explicit_gradients(m, T):
    """Odd m (issue 20, item 21): the inverse real FFT needs n=m."""
    Z = multi_position(7, T, 6, 5, dtype="f8")
    sketch = TensorSketch(n_components=m, random_state=0).fit(Z)
    out = sketch.transform(Z)
    assert out.dtype == np.float32 and out.shape == (7, m)
    assert_allclose(out, reference_sketch(sketch, Z), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("m", [7, 8])
def test_unbiased_over_seeds_with_several_positions_and_odd_n_components(m):
    A = multi_position(4, 3, 5, 4, seed=0, dtype="f8")
    B = multi_position(3, 6, 5, 4, seed=1, dtype="f8")  # other positions, same G space
    exact = trace_kernel(A, B)
    seeds = 2500
    estimates = np.empty((seeds,) + exact.shape)
    for seed in range(seeds):
        sketch = TensorSketch(n_components=m, random_state=seed).fit(A)
        estimates[seed] = sketch.transform(A).astype(np.float64) @ sketch.transform(B).T
    mean = estimates.mean(0)
    standard_error = estimates.std(0) / np.sqrt(seeds)
    assert np.abs(estimates[0] - exact).max() > 10 * standard_error.max()
    assert np.all(np.abs(mean - exact) < 4.5 * standard_error), (mean - exact) / standard_error


def test_slabs_of_positions_and_blocks_of_rows_do_not_change_the_result():
    Z = multi_position(30, 40, 8, 6, seed=2)
    sketch = TensorSketch(63, random_state=0).fit(Z)
    whole = sketch.transform(Z)
    assert_allclose(whole, reference_sketch(sketch, Z), rtol=1e-4, atol=1e-5)
    with config_context(working_memory=1e-3):  # one row per block, 1 to 2 positions per slab
        assert_allclose(sketch.transform(Z), whole, rtol=1e-5, atol=1e-6)
    assert_allclose(np.vstack([sketch.transform(Z[i : i + 7]) for i in range(0, 30, 7)]), whole, atol=1e-6)


def test_peak_memory_is_output_plus_one_block_whatever_the_positions():
    """All rows' spectra at all positions would take 105 MB, one row's 4 MB."""
    n, T, m = 200, 64, 1024
    Z = multi_position(n, T, 8, 8, dtype="f8")
    sketch = TensorSketch(m, random_state=0).fit(Z)
    tracemalloc.start()
    try:
        with config_context(working_memory=1):
            sketch.transform(Z)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= n * m * 4 + 2**20 + 512 * 1024


def test_n_features_in_and_other_positions_at_transform():
    Z = multi_position(5, 4, 6, 5)
    sketch = TensorSketch(32, random_state=0).fit(Z)
    assert sketch.n_features_in_ == 30
    other = multi_position(3, 9, 6, 5, dtype="f8")  # the same layer on larger images
    assert_allclose(sketch.transform(other), reference_sketch(sketch, other), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="field 'backward' of width 4 but the data TensorSketch"):
        sketch.transform(multi_position(3, 4, 6, 4))


def test_partial_fit_of_a_linear_model_on_sketched_chunks():
    """Streaming: chunks of rows sketched and fed to partial_fit, as in
    the whole-array run; the model learns a linear function of G."""
    Z = multi_position(400, 6, 5, 4, seed=3)
    y = (forward_major_gradients(Z) @ np.random.default_rng(0).normal(size=20) > 0).astype(int)
    sketch = TensorSketch(512, random_state=0).fit(Z[:1])
    streamed, whole = SGDClassifier(random_state=0), SGDClassifier(random_state=0)
    F = sketch.transform(Z)
    for _ in range(5):
        for start in range(0, 300, 50):
            rows = slice(start, start + 50)
            streamed.partial_fit(sketch.transform(Z[rows]), y[rows], classes=[0, 1])
            whole.partial_fit(F[rows], y[rows], classes=[0, 1])
    assert_array_equal(streamed.coef_, whole.coef_)
    assert streamed.score(sketch.transform(Z[300:]), y[300:]) > 0.75


def test_dask_transform_equals_the_in_memory_sketch():
    dask = pytest.importorskip("dask")
    da = pytest.importorskip("dask.array")
    from skfishing.distributed import dask_transform

    source = {"model_sha256": "ab" * 32, "layer": 3, "temperature": 2.0}
    Z = np.empty(25, dtype=gradient_dtype(6, 5, source, positions=4))
    values = multi_position(25, 4, 6, 5)
    Z["forward"], Z["backward"] = values["forward"], values["backward"]
    sketch = TensorSketch(15, random_state=0).fit(Z[:1])
    with dask.config.set(scheduler="synchronous"):
        F = dask_transform(sketch, da.from_array(Z, chunks=7))
        assert F.chunks == ((7, 7, 7, 4), (15,))
        assert_allclose(F.compute(), sketch.transform(Z), rtol=1e-6)


def with_source(Z, **change):
    source = {"model_sha256": "ab" * 32, "layer": 7, "temperature": 2.0, **change}
    out = np.empty(len(Z), dtype=np.dtype(Z.dtype.descr, metadata=source))
    out["forward"], out["backward"] = Z["forward"], Z["backward"]
    return out


@pytest.mark.parametrize("T", [None, 4])
@pytest.mark.parametrize(
    "change, message",
    [
        ({"temperature": 4.0}, r"temperature 4.0 \(fit: 2.0\)"),
        ({"layer": 6}, r"layer 6 \(fit: 7\)"),
        ({"labels": (0.2, 0.8)}, r"labels \(0.2, 0.8\) \(fit: None\)"),
        ({"model_sha256": "cd" * 32}, "model_sha256 'cdcd"),
    ],
)
def test_features_of_another_source_are_refused(T, change, message, tmp_path):
    """Issue 20, item 9: a sketch fitted on temperature-2 features accepted temperature 4."""
    Z = with_source(multi_position(40, T, 6, 5))
    y = np.arange(40) % 2
    pipe = make_pipeline(TensorSketch(256, random_state=0), SGDClassifier(random_state=0)).fit(Z, y)
    assert pipe[0].feature_source_ == dict(Z.dtype.metadata)
    pipe.predict(with_source(Z[:3]))  # the same source
    joblib.dump(pipe, tmp_path / "pipe.joblib")
    for model in (pipe, joblib.load(tmp_path / "pipe.joblib")):
        with pytest.raises(
            ValueError, match="another model or setting than the training data of TensorSketch"
        ):
            model.predict(with_source(Z, **change))
        with pytest.raises(ValueError, match=message):
            model[0].transform(with_source(Z, **change))
    with pytest.raises(ValueError, match="X carries no record of where its features come from"):
        pipe.predict(multi_position(3, T, 6, 5))
    # features without a record at fit are not checked
    bare = TensorSketch(8, random_state=0).fit(multi_position(3, T, 6, 5))
    assert bare.feature_source_ is None
    assert bare.transform(with_source(Z[:2], temperature=4.0)).shape == (2, 8)


def test_features_of_another_temperature_from_the_transformer_are_refused():
    from skfishing import DeepFisherTransformer
    from skfishing.datasets import load_digits_images

    digits = load_digits_images(size=32)
    X, y = digits.images[:20], digits.target[:20]
    Z2 = DeepFisherTransformer("tinyalexnet", layer=7, temperature=2.0).fit_transform(X)
    Z4 = DeepFisherTransformer("tinyalexnet", layer=7, temperature=4.0).fit_transform(X)
    pipe = make_pipeline(TensorSketch(256, random_state=0), SGDClassifier(random_state=0)).fit(Z2, y)
    pipe.predict(Z2)
    with pytest.raises(ValueError, match=r"temperature 4.0 \(fit: 2.0\)"):
        pipe.predict(Z4)


@pytest.mark.parametrize("T", [None, 3])
def test_sketch_beyond_the_float32_range_is_refused(T):
    """Issue 20, item 19: float64 input whose sketch overflows float32 gave -inf with a warning."""
    Z = multi_position(6, T, 4, 3, dtype="f8")
    sketch = TensorSketch(16, random_state=0).fit(Z)
    Z["forward"][4] *= 1e30
    Z["backward"][4] *= 1e30
    with pytest.raises(
        ValueError, match=r"sketch of row 4 of X is .*e\+\d+ in magnitude, beyond the float32"
    ):
        sketch.transform(Z)
    with config_context(working_memory=1e-4):  # blocks of one row: the index is still X's
        with pytest.raises(ValueError, match="sketch of row 4 of X"):
            sketch.transform(Z)
    big = multi_position(3, T, 1, 1)  # float32: products of 1e20 overflow to inf
    big["forward"], big["backward"] = 1e20, 1e20
    with pytest.raises(
        ValueError, match=r"sketch of row 0 of X is infinite \(an overflow\), beyond the float32 range"
    ):
        TensorSketch(4, random_state=0).fit(big).transform(big)


@pytest.mark.parametrize("n_components", [2**40, MAX_COMPONENTS + 1])
def test_n_components_beyond_the_maximum_is_refused_at_fit(n_components):
    """Issue 20, item 19: 2**40 was accepted, and transform asked for terabytes."""
    Z = multi_position(3, None, 4, 3)
    with pytest.raises(
        ValueError,
        match=r"'n_components' parameter of TensorSketch must be an int in the range \[1, 1048576\]",
    ):
        TensorSketch(n_components).fit(Z)
    assert TensorSketch(MAX_COMPONENTS, random_state=0).fit(Z).hashes_[0].max() < MAX_COMPONENTS
