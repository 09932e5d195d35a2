"""DeepFisherTransformer(sketch=TensorSketch(...)): features sketched during extraction (issue 21, item 3)."""

import tracemalloc

import joblib
import numpy as np
import onnx
import pytest
from layer_oracle import onnx_factors
from numpy.testing import assert_allclose, assert_array_equal
from sklearn import config_context, get_config
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import SGDClassifier
from sklearn.pipeline import make_pipeline
from sklearn.utils._param_validation import InvalidParameterError

from skfishing import DeepFisherTransformer, TensorSketch, trace_kernel
from skfishing._extraction import lanes
from skfishing._extraction.sketched import sketch_factors
from skfishing._onnx.layers import layer_features
from skfishing.features import gradient_dtype

CPU = ["CPUExecutionProvider"]


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).normal(size=(7, 3, 32, 32)).astype(np.float32)


def fish(model, **params):
    return DeepFisherTransformer(model, providers=CPU, **{"batch_size": 3, **params})


def relative_error(a, b):
    return np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b)


@pytest.mark.parametrize(
    "layer, features",
    [
        ("conv2_w", "gradient"),  # T = 64 positions: sketched batch by batch
        ("conv1_w", "gradient"),  # T = 256
        ("fc7_w", "gradient"),  # the FC layer by its weight's name: the reverse pass, T = 1
        (7, "gradient"),  # the FC head's own path (feature cache and all)
        (6, "activation"),  # plain features: a CountSketch
    ],
)
def test_equals_tensor_sketch_of_the_exact_features(tiny_cnn_file, images, layer, features):
    exact = fish(tiny_cnn_file, layer=layer, features=features).fit_transform(images)
    transformer = fish(tiny_cnn_file, layer=layer, features=features, sketch=TensorSketch(96, random_state=3))
    sketched = transformer.fit_transform(images)
    reference = TensorSketch(96, random_state=3).fit(exact).transform(exact)
    assert sketched.dtype == np.float32 and sketched.shape == (7, 96)
    assert relative_error(sketched, reference) <= 1e-5
    assert_allclose(sketched, reference, rtol=1e-4, atol=1e-6)
    # the fitted sketch is a copy; the parameter is left as given
    assert transformer.sketch_ is not transformer.sketch and not hasattr(transformer.sketch, "hashes_")
    assert_array_equal(transformer.transform(images[2:5]), sketched[2:5])


def test_sketch_of_the_unit_gradient_from_raw_factors_and_its_errors():
    """The normalisation: the sketch of G / ||G||_F, from factors at any scale; zero G gives zeros."""
    rng = np.random.default_rng(1)
    forward, backward = rng.normal(size=(4, 5, 6)) * 1e3, rng.normal(size=(4, 5, 3))
    backward[2] = 0
    sketch = TensorSketch(32, random_state=0).fit(np.zeros(1, dtype=gradient_dtype(6, 3)))
    ours = sketch_factors(sketch, forward.astype(np.float32), backward.astype(np.float32))
    reference = sketch.transform(layer_features(forward, backward))
    assert_allclose(ours, reference, rtol=1e-5, atol=1e-6)
    assert not ours[2].any() and ours[[0, 1, 3]].any(axis=1).all()
    backward[3, 1, 2] = np.inf
    with pytest.raises(ValueError, match="sample 13 gives non-finite gradient factors"):
        sketch_factors(sketch, forward, backward, first_row=10)
    with pytest.raises(ValueError, match=r"widths \(6, 2\).*fitted for widths \(6, 3\)"):
        sketch_factors(sketch, forward, backward[..., :2])


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("working_memory", [None, 1e-3])  # blocks of whole images; blocks within one
def test_same_sketch_for_any_layout_threads_and_blocks(threads, working_memory):
    """Factors with the positions last in memory (the layer graphs' layout), sketched by blocks of rows
    on any number of threads, give TensorSketch.transform of the exact features."""
    rng = np.random.default_rng(4)
    forward, backward = rng.normal(size=(5, 11, 7)), rng.normal(size=(5, 11, 4))
    sketch = TensorSketch(64, random_state=2).fit(np.zeros(1, dtype=gradient_dtype(7, 4)))
    reference = sketch.transform(layer_features(forward, backward))
    last = [
        np.ascontiguousarray(f.transpose(0, 2, 1), dtype=np.float32).transpose(0, 2, 1)
        for f in (forward, backward)
    ]
    assert not last[0].flags.c_contiguous
    with config_context(working_memory=working_memory or get_config()["working_memory"]):
        for factors in (last, [f.astype(np.float32) for f in (forward, backward)]):
            ours = sketch_factors(sketch, *factors, threads=threads)
            assert_allclose(ours, reference, rtol=1e-5, atol=1e-6)


def test_unbiased_over_seeds(tiny_cnn_file, images):
    """The mean over seeds of <sketch_i, sketch_j> is the trace kernel of the unit-norm gradients."""
    forward, backward = onnx_factors(onnx.load(str(tiny_cnn_file)), "conv2_w", images[:4])
    exact = trace_kernel(layer_features(forward, backward))
    layout = np.zeros(1, dtype=gradient_dtype(forward.shape[2], backward.shape[2]))
    seeds = 1500
    estimates = np.empty((seeds, 4, 4))
    for seed in range(seeds):
        z = sketch_factors(TensorSketch(8, random_state=seed).fit(layout), forward, backward).astype(
            np.float64
        )
        estimates[seed] = z @ z.T
    mean = estimates.mean(0)
    standard_error = estimates.std(0) / np.sqrt(seeds)
    assert np.abs(estimates[0] - exact).max() > 10 * standard_error.max()  # one sketch is far off
    assert np.all(np.abs(mean - exact) < 4.5 * standard_error), (mean - exact) / standard_error


def _traced_peak(transformer, X):
    transformer.transform(X[:2])  # sessions built before tracing
    tracemalloc.start()
    try:
        transformer.transform(X)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("cpus", [1, 2])  # batches whole, or split in lanes
def test_memory_does_not_grow_with_the_positions_of_all_images(tiny_cnn_file, monkeypatch, cpus):
    """conv1_w: 256 positions x (27 + 8) floats = 35 KiB of factors per image; its sketch 256 bytes."""
    monkeypatch.setattr(lanes, "cpus", lambda: cpus)
    X = np.random.default_rng(2).normal(size=(300, 3, 32, 32)).astype(np.float32)
    sketched = fish(tiny_cnn_file, layer="conv1_w", batch_size=2, sketch=TensorSketch(64, random_state=0))
    exact = fish(tiny_cnn_file, layer="conv1_w", batch_size=2).fit(X[:1])
    sketched.fit(X[:1])
    # from 30 images to 300: past the first batches, whose parts fill the lanes
    growth = _traced_peak(sketched, X) - _traced_peak(sketched, X[:30])
    exact_growth = _traced_peak(exact, X) - _traced_peak(exact, X[:30])
    per_image = 256 * (27 + 8) * 4
    assert exact_growth > 250 * per_image  # the test sees what holding the factors of all images costs
    # the output (twice over), and slack: in lanes, whether two parts' temporaries peak at the
    # same moment in one run and not in the other moves the peak by up to about 10 images' factors
    assert growth < 270 * 64 * 4 * 2 + 30 * per_image, growth


def test_pipeline_partial_fit_persistence_and_names(tiny_cnn_file, images, tmp_path):
    y = np.array([0, 1, 0, 1, 1, 0, 1])
    sketch = TensorSketch(64, random_state=0)
    pipe = make_pipeline(fish(tiny_cnn_file, layer="conv2_w", sketch=sketch), SGDClassifier(random_state=0))
    pipe.fit(images, y)
    transformer = pipe[0]
    assert list(transformer.get_feature_names_out()) == [f"tensorsketch{i}" for i in range(64)]
    # streamed: partial_fit on the sketches of chunks, as on the sketch of the exact features
    exact = fish(tiny_cnn_file, layer="conv2_w").fit_transform(images)
    offline = TensorSketch(64, random_state=0).fit(exact).transform(exact)
    streamed, reference = SGDClassifier(random_state=0), SGDClassifier(random_state=0)
    for rows in (slice(0, 4), slice(4, 7)):
        streamed.partial_fit(transformer.transform(images[rows]), y[rows], classes=[0, 1])
        reference.partial_fit(offline[rows], y[rows], classes=[0, 1])
    assert_allclose(streamed.coef_, reference.coef_, rtol=1e-4, atol=1e-6)
    # persistence: joblib and skops give the same predictions
    joblib.dump(pipe, tmp_path / "pipe.joblib")
    assert_array_equal(
        joblib.load(tmp_path / "pipe.joblib").decision_function(images), pipe.decision_function(images)
    )
    sio = pytest.importorskip("skops.io")
    from skfishing import persistence

    assert "skfishing._kernels.sketch.TensorSketch" in sio.get_untrusted_types(data=sio.dumps(pipe))
    persistence.dump(pipe, tmp_path / "pipe.skops")
    loaded = persistence.load(tmp_path / "pipe.skops")
    assert_array_equal(loaded.decision_function(images), pipe.decision_function(images))


def test_feature_cache_gives_the_same_sketch(tiny_cnn_file, images, tmp_path):
    plain = fish(tiny_cnn_file, layer=7, sketch=TensorSketch(64, random_state=1)).fit_transform(images)
    cached = fish(tiny_cnn_file, layer=7, sketch=TensorSketch(64, random_state=1), memory=tmp_path / "cache")
    first = cached.fit_transform(images)
    again = clone(cached).fit(images[:1]).transform(images)  # from the cache (disk and memory)
    assert_array_equal(first, plain)
    assert_array_equal(again, plain)
    trunk = fish(
        tiny_cnn_file, layer="conv2_w", sketch=TensorSketch(64, random_state=1), memory=tmp_path / "c2"
    )
    assert_allclose(
        trunk.fit_transform(images),
        fish(tiny_cnn_file, layer="conv2_w", sketch=TensorSketch(64, random_state=1)).fit_transform(images),
    )


def test_dask_and_zarr(tiny_cnn_file, images, tmp_path):
    dask = pytest.importorskip("dask")
    pytest.importorskip("zarr")
    from skfishing.distributed import dask_transform, from_zarr, to_zarr

    transformer = fish(tiny_cnn_file, layer="conv2_w", sketch=TensorSketch(32, random_state=0))
    reference = clone(transformer).fit(images[:1]).transform(images)
    with dask.config.set(scheduler="synchronous"):
        Z = dask_transform(transformer, images, chunk_size=3)  # fitted on a copy, once
        assert Z.dtype == np.float32 and Z.shape == (7, 32)
        to_zarr(Z, tmp_path / "f.zarr")
        assert_array_equal(from_zarr(tmp_path / "f.zarr").compute(), reference)
    assert not hasattr(transformer, "sketch_")


def test_bad_sketch_parameters_and_unfitted_use(tiny_cnn_file, images):
    with pytest.raises(InvalidParameterError, match="'sketch' parameter.*TensorSketch.*Got 'tensor' instead"):
        fish(tiny_cnn_file, layer="conv2_w", sketch="tensor").fit(images)
    with pytest.raises(InvalidParameterError, match="'sketch' parameter"):
        fish(tiny_cnn_file, layer=7, sketch=SGDClassifier()).fit(images)
    transformer = fish(tiny_cnn_file, layer="conv2_w", sketch=TensorSketch(16))
    with pytest.raises(NotFittedError, match="call fit first"):
        transformer.transform(images)
    with pytest.raises(NotFittedError, match="call fit first"):
        transformer.get_feature_names_out()
    # fitted without a sketch, then given one: fit again
    transformer = fish(tiny_cnn_file, layer=7).fit(images)
    with pytest.raises(NotFittedError, match="call fit first"):
        transformer.set_params(sketch=TensorSketch(16)).transform(images)
    # fitted for one layer's widths, asked for another's
    transformer = fish(tiny_cnn_file, layer="conv2_w", sketch=TensorSketch(16)).fit(images)
    with pytest.raises(ValueError, match=r"fitted for widths \(72, 16\): fit the transformer again"):
        transformer.set_params(layer="conv1_w").transform(images)
