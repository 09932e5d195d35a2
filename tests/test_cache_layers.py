"""Layers of the trunk through the feature cache: each image's forward pass runs once in a grid search.

The network runs are counted by a test double of onnxruntime's public
``InferenceSession.run``: every sample fed to the network input (the
image) is recorded by its bytes, so that a test can say how many times each
image went forward, whatever graph it went through.
"""

import collections
import warnings

import joblib
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline

from skfishing import DeepFisherTransformer, TraceKernelSVC, list_layers
from skfishing.cache import CorruptCacheWarning, FeatureCache
from skfishing.cli import main

INPUT = "input"
SHAPE = (3, 8, 8)


def residual_model(seed=0, n_classes=5, shape_ops=False):
    """stem conv -> [conv_a -> ReLU -> conv_b] + stem -> ReLU -> global pool -> FC (one residual block).

    The cut at ``conv_a`` is the stem's output (its input and the residual,
    one tensor); the cut at ``conv_b`` is ``conv_a``'s ReLU and the stem's
    output. With ``shape_ops``, the pooling is a Reshape to ``(N, 6, 64)``
    whose shape is computed from the batch size of the stem's output, right
    after the stem (as exporters write the reshapes of attention blocks).
    """
    rng = np.random.default_rng(seed)

    def init(name, shape, scale):
        return numpy_helper.from_array((rng.normal(size=shape) * scale).astype(np.float32), name)

    inits = [
        init("stem_w", (6, 3, 3, 3), 1 / np.sqrt(27)),
        init("conv_a_w", (6, 6, 3, 3), 1 / np.sqrt(54)),
        init("conv_a_b", (6,), 0.1),
        init("conv_b_w", (6, 6, 3, 3), 1 / np.sqrt(54)),
        init("fc_w", (n_classes, 6), 1.0),
        init("fc_b", (n_classes,), 0.1),
    ]
    pads = [1, 1, 1, 1]
    nodes = [
        helper.make_node("Conv", [INPUT, "stem_w"], ["s"], name="stem", pads=pads),
        helper.make_node("Conv", ["s", "conv_a_w", "conv_a_b"], ["a0"], name="conv_a", pads=pads),
        helper.make_node("Relu", ["a0"], ["a"], name="relu_a"),
        helper.make_node("Conv", ["a", "conv_b_w"], ["b"], name="conv_b", pads=pads),
        helper.make_node("Add", ["b", "s"], ["r0"], name="residual"),
        helper.make_node("Relu", ["r0"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], name="fc", transB=1),
    ]
    if shape_ops:
        inits += [
            numpy_helper.from_array(np.array(0, dtype=np.int64), "zero"),
            numpy_helper.from_array(np.array([0], dtype=np.int64), "axis0"),
            numpy_helper.from_array(np.array([6, 64], dtype=np.int64), "per_image"),
        ]
        nodes[1:1] = [
            helper.make_node("Shape", ["s"], ["s_shape"], name="shape"),
            helper.make_node("Gather", ["s_shape", "zero"], ["n"], name="batch", axis=0),
            helper.make_node("Unsqueeze", ["n", "axis0"], ["n1"], name="unsqueeze"),
            helper.make_node("Concat", ["n1", "per_image"], ["target"], name="target", axis=0),
        ]
        nodes[-3:-1] = [
            helper.make_node("Reshape", ["r", "target"], ["rows"], name="reshape"),
            helper.make_node("ReduceMean", ["rows"], ["f"], name="pool", axes=[2], keepdims=0),
        ]
    graph = helper.make_graph(
        nodes,
        "residual",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["N", *SHAPE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", n_classes])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.fixture(scope="module")
def residual_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "residual.onnx"
    onnx.save(residual_model(), str(path))
    return path


def test_batch_wide_shapes_before_the_cut_are_recomputed(images, forward_runs, tmp_path):
    path = tmp_path / "reshaped.onnx"
    onnx.save(residual_model(shape_ops=True), str(path))
    rows = {r["name"]: r for r in list_layers(path)}
    assert [rows[n]["cache_floats"] for n in ("conv_a", "conv_b")] == [384, 768]  # no shape tensor in the cut
    references = {
        layer: DeepFisherTransformer(path, layer=layer).transform(images) for layer in ("conv_a", "conv_b", 8)
    }
    forward_runs.clear()
    cache = FeatureCache()
    for layer, reference in references.items():
        _same(DeepFisherTransformer(path, layer=layer, memory=cache).transform(images), reference, 1e-6)
    assert set(forward_runs.values()) == {1}


@pytest.fixture
def images():
    return np.random.default_rng(1).normal(size=(12, *SHAPE)).astype(np.float32)


@pytest.fixture
def forward_runs(monkeypatch):
    """Counter of the images (by their bytes) fed to the network input of any onnxruntime session."""
    seen = collections.Counter()
    run = ort.InferenceSession.run

    def counting(self, output_names, input_feed, *args, **kwargs):
        for row in input_feed.get(INPUT, ()):
            seen[row.tobytes()] += 1
        return run(self, output_names, input_feed, *args, **kwargs)

    monkeypatch.setattr(ort.InferenceSession, "run", counting)
    return seen


def _same(Z, reference, tolerance=0.0):
    """Equal, or equal to ``tolerance`` times the field's largest value (float32 rounding of another graph)."""
    assert Z.dtype == reference.dtype
    for field in ("forward", "backward"):
        error = np.abs(Z[field].astype(np.float64) - reference[field]).max()
        assert error <= tolerance * np.abs(reference[field]).max(), (field, error)


def test_cuts_are_listed_with_their_floats(residual_file, capsys):
    rows = {r["name"]: r for r in list_layers(residual_file)}
    # stem: the image (3 x 8 x 8); conv_a: the stem's output (6 x 8 x 8); conv_b: that and conv_a's ReLU
    assert [rows[n]["cache_floats"] for n in ("stem", "conv_a", "conv_b")] == [192, 384, 768]
    assert rows["fc"]["cache_floats"] == 6 + 5  # the head's state: its input and the logits
    assert main(["layers", str(residual_file)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "cache floats" in lines[0]
    assert [line.split()[6] for line in lines[1:5]] == ["192", "384", "768", "11"]


@pytest.mark.parametrize(
    "layers, forwards",
    [(["conv_a", "conv_b", 8], 1), (["conv_b", "conv_a", 8], 2)],
    ids=["upstream first", "downstream first"],
)
def test_grid_search_runs_each_image_forward_once(residual_file, images, forward_runs, layers, forwards):
    # upstream layer first: its cut serves the later layers and the head. Downstream first:
    # the upstream layer needs the images once more, and its cut then replaces the first.
    y = np.arange(len(images)) % 2
    pipeline = make_pipeline(DeepFisherTransformer(residual_file), TraceKernelSVC())
    grid = {"deepfishertransformer__layer": layers, "deepfishertransformer__temperature": [1.0, 2.0, 4.0]}
    search = GridSearchCV(pipeline, grid, cv=3).fit(images, y)
    assert len(search.cv_results_["params"]) == 9
    assert set(forward_runs) == {image.tobytes() for image in images}
    assert set(forward_runs.values()) == {forwards}


def test_trunk_layer_after_head_and_head_after_trunk(residual_file, images, forward_runs):
    cache = FeatureCache()
    DeepFisherTransformer(residual_file, layer="conv_b", memory=cache).transform(images)
    assert set(forward_runs.values()) == {1}
    # the head's state and a later trunk layer come from the cut
    DeepFisherTransformer(residual_file, layer=8, memory=cache).transform(images)
    DeepFisherTransformer(residual_file, layer="conv_b", temperature=4.0, memory=cache).transform(images)
    assert set(forward_runs.values()) == {1}
    # a layer before the cut needs the image
    DeepFisherTransformer(residual_file, layer="conv_a", memory=cache).transform(images)
    assert set(forward_runs.values()) == {2}


@pytest.mark.parametrize("layer", ["stem", "conv_a", "conv_b_w", "fc_w", 8])
@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_cached_features_equal_uncached(residual_file, images, layer, temperature):
    reference = DeepFisherTransformer(residual_file, layer=layer, temperature=temperature).transform(images)
    cache = FeatureCache()
    # fill the cache with a cut upstream of the layer, then with the layer's own
    DeepFisherTransformer(residual_file, layer="stem", memory=cache).transform(images[:5])
    for _ in range(2):
        Z = DeepFisherTransformer(
            residual_file, layer=layer, temperature=temperature, memory=cache
        ).transform(images)
        _same(Z, reference, 1e-6)
    assert Z.dtype.metadata == reference.dtype.metadata


def test_corrupt_cut_on_disk_is_detected_and_recomputed(residual_file, images, forward_runs, tmp_path):
    reference = DeepFisherTransformer(residual_file, layer="conv_b").transform(images)
    hotter = DeepFisherTransformer(residual_file, layer="conv_b", temperature=3.0).transform(images)
    forward_runs.clear()
    _same(
        DeepFisherTransformer(residual_file, layer="conv_b", memory=tmp_path).transform(images),
        reference,
        1e-6,
    )
    files = sorted(tmp_path.glob("*.npy"))
    assert len(files) == 2 * len(images)  # per image: the cut and its position
    for path in files:  # flip one bit in the middle of every entry
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 1
        path.write_bytes(bytes(data))
    with pytest.warns(CorruptCacheWarning, match="is corrupt: its checksum does not match"):
        Z = DeepFisherTransformer(residual_file, layer="conv_b", memory=tmp_path).transform(images)
    _same(Z, reference, 1e-6)
    assert set(forward_runs.values()) == {2}  # recomputed from the images
    # the replaced entries verify: a new transformer reads them without a warning and no forward pass
    with warnings.catch_warnings():
        warnings.simplefilter("error", CorruptCacheWarning)
        Z = DeepFisherTransformer(residual_file, layer="conv_b", temperature=3.0, memory=tmp_path).transform(
            images
        )
    _same(Z, hotter, 1e-6)
    assert set(forward_runs.values()) == {2}


def test_fitted_pipeline_with_a_trunk_layer_persists(residual_file, images, tmp_path):
    y = np.arange(len(images)) % 2
    grid = {"deepfishertransformer__layer": ["conv_a", "conv_b"], "tracekernelsvc__C": [0.1, 1.0]}
    pipeline = make_pipeline(DeepFisherTransformer(residual_file), TraceKernelSVC())
    search = GridSearchCV(pipeline, grid, cv=2).fit(images, y)
    fitted = search.best_estimator_
    joblib.dump(fitted, tmp_path / "pipeline.joblib")
    loaded = joblib.load(tmp_path / "pipeline.joblib")
    test = images[::-1] + 0.5
    np.testing.assert_array_equal(loaded.decision_function(test), fitted.decision_function(test))
    fresh = clone(pipeline).set_params(**search.best_params_).fit(images, y)
    np.testing.assert_allclose(loaded.decision_function(test), fresh.decision_function(test), atol=1e-6)


# -- real architectures: residual blocks, downsampling, attention -------------------------

ARCHITECTURES = {
    "resnet18": ["layer1.0.conv1.weight", "layer3.0.downsample.0.weight", "layer4.1.conv2.weight"],
    # not the patch embedding: its cut is the image itself, and the whole network runs from it
    "vit_tiny_patch16_224": [
        "blocks.0.attn.qkv.weight",
        "blocks.0.attn.proj.weight",
        "blocks.11.mlp.fc2.weight",
    ],
}


def _exported(name, images, path, dynamo):
    torch = pytest.importorskip("torch")
    from layer_oracle import calibrate, layer_named_by
    from torch.fx.experimental.optimization import fuse

    torch.manual_seed(0)
    if name == "resnet18":
        torchvision = pytest.importorskip("torchvision")
        module = fuse(calibrate(torchvision.models.resnet18(weights=None).eval(), images))
    else:
        timm = pytest.importorskip("timm")
        module = timm.create_model(name, pretrained=False, img_size=images.shape[-1]).eval()
    kwargs = {"input_names": [INPUT], "output_names": ["logits"]}
    if dynamo:
        kwargs["dynamic_shapes"] = ({0: torch.export.Dim("N")},)
    else:
        kwargs["dynamic_axes"] = {INPUT: {0: "N"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.as_tensor(images),), str(path), dynamo=dynamo, **kwargs)
    model = onnx.load(str(path))
    named = dict(module.named_parameters())
    return [layer_named_by(model, named[p].detach().numpy()) for p in ARCHITECTURES[name]]


@pytest.mark.slow
@pytest.mark.oracle
@pytest.mark.parametrize("dynamo", [False, True])
@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_real_architectures_run_each_image_forward_once(tmp_path, forward_runs, name, dynamo):
    images = np.random.default_rng(0).normal(size=(3, 3, 64, 64)).astype(np.float32)
    path = tmp_path / "model.onnx"
    layers = _exported(name, images, path, dynamo)
    rows = {r["name"]: r for r in list_layers(path)}
    assert all(rows[layer]["cache_floats"] for layer in layers), [rows[layer] for layer in layers]
    references = {
        (layer, t): DeepFisherTransformer(path, layer=layer, temperature=t).transform(images)
        for layer in layers + [8]
        for t in (1.0, 4.0)
    }
    forward_runs.clear()
    cache = FeatureCache()
    for (layer, t), reference in references.items():  # upstream first, then the classifier
        Z = DeepFisherTransformer(path, layer=layer, temperature=t, memory=cache).transform(images)
        # float32 rounding: the CPU provider's blocked-layout convolutions round differently
        # on either side of the cut (bit-equal with ORT_ENABLE_EXTENDED)
        _same(Z, reference, 1e-5)
    assert set(forward_runs.values()) == {1} and len(forward_runs) == len(images)
