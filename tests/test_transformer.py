"""DeepFisherTransformer against torch autograd and NumPy references."""

import pickle

import numpy as np
import onnx
import pytest
from sklearn.base import clone

from onnx_models import caffe_alexnet_model, mlp_model, numpy_fisher, torch_gradients, torch_model
from skfishing import DeepFisherTransformer
from skfishing._onnx import network as network_module


def _outer(Z):
    return np.einsum("ni,nj->nij", Z["forward"].astype(np.float64), Z["backward"].astype(np.float64))


@pytest.mark.oracle
@pytest.mark.parametrize("kind", ["alexnet", "vgg"])
@pytest.mark.parametrize("double", [False, True], ids=["float32", "float64"])
def test_gradients_match_torch_autograd(kind, double):
    """outer(forward, backward) = -dE/dW / ||dE/dW|| for layers 6, 7, 8."""
    torch = pytest.importorskip("torch")
    net, model = torch_model(kind, double=double)
    dtype = np.float64 if double else np.float32
    X = np.random.default_rng(0).normal(size=(6, 3, 16, 16)).astype(dtype)
    tol = 1e-5 if double else 1e-4
    for temperature in (1.0, 2.0):
        expected = torch_gradients(net, X, temperature)
        for layer, G in zip((6, 7, 8), expected):
            Z = DeepFisherTransformer(model, layer=layer, temperature=temperature).fit_transform(X)
            assert Z.shape == (6,)
            assert Z.dtype["forward"].base == np.float32
            np.testing.assert_allclose(_outer(Z), -G, atol=tol, rtol=0)
    assert torch.is_grad_enabled()


@pytest.mark.oracle
def test_caffe_style_head_matches_torch_autograd():
    """Autograd on an equivalent torch head fed with the trunk output."""
    torch = pytest.importorskip("torch")
    model, _, _, weights, biases = caffe_alexnet_model()
    X = np.random.default_rng(1).normal(size=(5, 3, 8, 8)).astype(np.float32)
    pool5 = DeepFisherTransformer(model, layer=5, features="activation").fit(X)
    from skfishing._onnx.head import Tensor
    from skfishing._onnx.network import get_network

    (flat,), _ = get_network(model, ["CPUExecutionProvider"]).run(X, (Tensor("x", 5),))
    flat = flat.astype(np.float64)
    for temperature in (1.0, 2.0):
        Ws = [torch.tensor(w, requires_grad=True) for w in weights]
        bs = [torch.tensor(b) for b in biases]
        for layer in (6, 7, 8):
            Z = DeepFisherTransformer(model, layer=layer, temperature=temperature).fit_transform(X)
            for i in range(5):
                x = torch.tensor(flat[i : i + 1])
                for j, (W, b) in enumerate(zip(Ws, bs)):
                    x = x @ W + b
                    if j < 2:
                        x = torch.relu(x)
                loss = -(torch.log_softmax(x / temperature, dim=1)).mean()
                (G,) = torch.autograd.grad(loss, [Ws[layer - 6]])
                G = G.numpy() / np.linalg.norm(G.numpy())
                np.testing.assert_allclose(_outer(Z[i : i + 1])[0], -G, atol=1e-4, rtol=0)
    assert pool5.layer_ == 5


def test_batch_size_never_changes_results():
    model, _, _, _, _ = caffe_alexnet_model()
    X = np.random.default_rng(2).normal(size=(70, 3, 8, 8)).astype(np.float32)
    Z1 = DeepFisherTransformer(model, layer=7, batch_size=1).fit_transform(X)
    Z64 = DeepFisherTransformer(model, layer=7, batch_size=64).fit_transform(X)
    for field in ("forward", "backward"):
        np.testing.assert_allclose(Z1[field], Z64[field], atol=1e-6, rtol=0)


@pytest.mark.parametrize("layer", [5, 6, 7, 8])
def test_activation_features_are_normalised_layer_outputs(layer):
    model, weights, biases = mlp_model(widths=(6, 7, 5, 4))
    X = np.random.default_rng(3).normal(size=(9, 6)).astype(np.float32)
    A = DeepFisherTransformer(model, layer=layer, features="activation").fit_transform(X)
    _, _, acts = numpy_fisher(X, weights, biases)
    ref = acts[layer - 5]
    ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    assert A.dtype == np.float32 and A.shape == ref.shape
    np.testing.assert_allclose(A, ref, atol=1e-6)


def test_probabilities_and_layer_by_name():
    model, weights, biases = mlp_model(widths=(6, 7, 5, 4))
    X = np.random.default_rng(4).normal(size=(5, 6)).astype(np.float32)
    P = DeepFisherTransformer(model, features="probabilities").fit_transform(X)
    logits = numpy_fisher(X, weights, biases)[2][-1]
    e = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(P, e / e.sum(1, keepdims=True), atol=1e-6)
    by_name = DeepFisherTransformer(model, layer="fc1").fit_transform(X)
    by_number = DeepFisherTransformer(model, layer=7).fit_transform(X)
    np.testing.assert_array_equal(by_name, by_number)


def test_labels_parameter_is_used():
    model, weights, biases = mlp_model()
    X = np.random.default_rng(5).normal(size=(4, 6)).astype(np.float32)
    g = [0.0, 1.0, 0.0]
    Z = DeepFisherTransformer(model, layer=8, labels=g).fit_transform(X)
    xs, deltas, _ = numpy_fisher(X, weights, biases, 2.0, labels=g)
    ref = deltas[2] / np.linalg.norm(deltas[2], axis=1, keepdims=True)
    np.testing.assert_allclose(Z["backward"], ref, atol=1e-6)
    with pytest.raises(ValueError, match=r"labels must have shape \(3,\)"):
        DeepFisherTransformer(model, labels=[0.5, 0.5]).fit(X)


def test_missing_layer_error_lists_the_layers():
    model, _, _ = mlp_model()
    X = np.zeros((2, 6), np.float32)
    with pytest.raises(
        ValueError,
        match=r"layer=3 does not exist for features='gradient' in this model \(valid: \[6, 7, 8\]\)",
    ):
        DeepFisherTransformer(model, layer=3).fit(X)
    with pytest.raises(ValueError, match="(?s)no FC layer named 'fc9'.*layer 6: 'fc0'"):
        DeepFisherTransformer(model, layer="fc9").fit(X)
    with pytest.raises(ValueError, match=r"valid: \[5, 6, 7, 8\]"):
        DeepFisherTransformer(model, layer=4, features="activation").fit(X)


@pytest.mark.parametrize(
    "X, message",
    [
        (np.zeros((2, 3, 8)), r"X has shape \(2, 3, 8\) but the network expects \(n_samples, 3, 8, 8\)"),
        (np.zeros((2, 4, 8, 8)), r"X has shape \(2, 4, 8, 8\)"),
        (np.zeros((2, 3, 9, 8)), r"X has shape \(2, 3, 9, 8\)"),
        (np.full((2, 3, 8, 8), np.nan), "NaN"),
        (np.full((2, 3, 8, 8), np.inf), "inf"),
    ],
)
def test_bad_network_input_is_rejected(X, message):
    model, _, _, _, _ = caffe_alexnet_model()
    with pytest.raises(ValueError, match=message):
        DeepFisherTransformer(model).fit_transform(X)


def test_onnx_file_that_is_not_a_classifier(tmp_path):
    from onnx import helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"], name="only_relu")],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 3])],
    )
    path = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    message = r"ONNX model '[^']*relu\.onnx': .*Relu node 'only_relu'.*not by a fully connected layer"
    with pytest.raises(ValueError, match=message):
        DeepFisherTransformer(str(path)).fit(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match=message):  # transform alone (no fit) says the same
        DeepFisherTransformer(str(path)).transform(np.zeros((2, 3), np.float32))
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"this is not protobuf at all")
    with pytest.raises(ValueError, match="garbage.onnx' is not a readable ONNX model"):
        DeepFisherTransformer(str(garbage)).fit(np.zeros((2, 3), np.float32))


def test_model_file_path_works_like_proto(tmp_path):
    model, _, _ = mlp_model()
    path = tmp_path / "mlp.onnx"
    onnx.save(model, path)
    X = np.random.default_rng(6).normal(size=(3, 6)).astype(np.float32)
    np.testing.assert_array_equal(
        DeepFisherTransformer(path).fit_transform(X), DeepFisherTransformer(model).fit_transform(X)
    )


def test_clone_and_pickle_never_rebuild_the_network(monkeypatch):
    model, _, _ = mlp_model(seed=11)
    built = []
    original = network_module.FisherNetwork.__init__

    def counting_init(self, *args, **kwargs):
        built.append(1)
        original(self, *args, **kwargs)

    monkeypatch.setattr(network_module.FisherNetwork, "__init__", counting_init)
    X = np.random.default_rng(7).normal(size=(3, 6)).astype(np.float32)
    fish = DeepFisherTransformer(model, layer=7).fit(X)
    Z = fish.transform(X)
    for _ in range(3):
        np.testing.assert_array_equal(clone(fish).fit_transform(X), Z)
    restored = pickle.loads(pickle.dumps(fish))
    np.testing.assert_array_equal(restored.transform(X), Z)
    assert len(built) == 1


def test_gradient_rows_do_not_depend_on_order_subset_or_refit():
    """What sklearn's common checks test on 2-D output, for structured output."""
    model, _, _, _, _ = caffe_alexnet_model()
    X = np.random.default_rng(8).normal(size=(12, 3, 8, 8)).astype(np.float32)
    fish = DeepFisherTransformer(model, layer=6)
    Z = fish.fit_transform(X)
    order = np.random.default_rng(9).permutation(12)
    Z_perm = fish.fit(X[order]).transform(X[order])
    Z_sub = fish.fit(X).transform(X[3:7])
    for field in ("forward", "backward"):
        np.testing.assert_allclose(Z_perm[field], Z[field][order], atol=1e-6)
        np.testing.assert_allclose(Z_sub[field], Z[field][3:7], atol=1e-6)
        np.testing.assert_allclose(np.linalg.norm(Z[field], axis=1), 1.0, atol=1e-6)


# -- stateless: transform works without fit; tags, docs and behaviour agree -----------------


def test_transform_works_without_fit_and_fit_changes_nothing_but_the_record():
    X = np.random.default_rng(3).normal(size=(5, 3, 8, 8)).astype(np.float32)
    model = caffe_alexnet_model(seed=9)[0]
    fish = DeepFisherTransformer(model, layer=7)
    assert fish.__sklearn_tags__().requires_fit is False
    unfitted = fish.transform(X)
    fitted = clone(fish).fit(X)
    assert fitted.layer_ == 7 and len(fitted.model_sha256_) == 64
    for field in ("forward", "backward"):
        np.testing.assert_array_equal(unfitted[field], fitted.transform(X)[field])


def test_gradient_dtype_with_its_documented_default():
    from skfishing.features import gradient_dtype

    dtype = gradient_dtype(3, 2)
    assert dtype == np.dtype([("forward", "f4", (3,)), ("backward", "f4", (2,))]) and dtype.metadata is None
    assert gradient_dtype(3, 2, {"layer": 7}).metadata == {"layer": 7}
    with pytest.raises(ValueError, match="forward_dim"):
        gradient_dtype(0, 2)


@pytest.mark.parametrize("n_jobs", [-1, -2, 1, 2, None])
def test_n_jobs_follows_joblib_conventions(n_jobs):
    images = np.random.default_rng(4).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    Z = DeepFisherTransformer("tinyalexnet", n_jobs=n_jobs).fit_transform(images)
    reference = DeepFisherTransformer("tinyalexnet", n_jobs=1).transform(images)
    np.testing.assert_array_equal(Z["backward"], reference["backward"])


def test_n_jobs_zero_is_rejected():
    with pytest.raises(ValueError, match="'n_jobs' parameter"):
        DeepFisherTransformer("tinyalexnet", n_jobs=0).fit(np.zeros((1, 32, 32, 3), np.uint8))


# -- scikit-learn's output API ----------------------------------------------------------------


@pytest.mark.parametrize(
    "features, layer, prefix, width",
    [
        ("activation", 5, "x5", 256),
        ("activation", 6, "x6", 64),
        ("activation", 7, "x7", 32),
        ("activation", 8, "y8", 10),
        ("probabilities", 7, "prob8", 10),
    ],
)
def test_feature_names_out_and_pandas_output(tiny_cnn, features, layer, prefix, width):
    pd = pytest.importorskip("pandas")
    images = np.random.default_rng(5).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    fish = DeepFisherTransformer(tiny_cnn, layer=layer, features=features).fit(images)
    names = fish.get_feature_names_out()
    assert list(names[:2]) == [f"{prefix}_0", f"{prefix}_1"] and len(names) == width
    frame = fish.set_output(transform="pandas").transform(images)
    assert isinstance(frame, pd.DataFrame) and list(frame.columns) == list(names)
    np.testing.assert_array_equal(
        frame.to_numpy(), clone(fish).set_output(transform="default").transform(images)
    )


def test_feature_union_of_two_layers_keeps_the_names(tiny_cnn):
    from sklearn.pipeline import FeatureUnion

    images = np.random.default_rng(6).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    union = FeatureUnion(
        [
            (name, DeepFisherTransformer(tiny_cnn, layer=k, features="activation"))
            for name, k in (("x6", 6), ("x7", 7))
        ]
    ).fit(images)
    names = union.get_feature_names_out()
    assert names[0] == "x6__x6_0" and names[-1] == "x7__x7_31" and len(names) == 64 + 32


def test_gradient_features_have_no_column_names(tiny_cnn):
    """A structured array has two fields, not columns: scikit-learn's output API does not apply."""
    fish = DeepFisherTransformer(tiny_cnn, layer=7)
    assert not hasattr(fish, "get_feature_names_out") and not hasattr(fish, "set_output")
    assert hasattr(clone(fish).set_params(features="activation"), "set_output")


# -- inputs the network cannot take: errors that say what to do --------------------------------


def _tiny_cnn_variant(*, dynamic_size=False, batch_one_reshape=False):
    from onnx import helper, numpy_helper

    from onnx_models import tiny_cnn_model

    model = tiny_cnn_model(seed=3)
    if dynamic_size:
        dims = model.graph.input[0].type.tensor_type.shape.dim
        dims[2].Clear()
        dims[2].dim_param = "H"
        dims[3].Clear()
        dims[3].dim_param = "W"
    if batch_one_reshape:  # a trunk that runs one sample at a time: Reshape to a constant (1, 8, 32, 32)
        conv = next(node for node in model.graph.node if node.output[0] == "c1")
        conv.output[0] = "c1_raw"
        model.graph.initializer.append(numpy_helper.from_array(np.array([1, 8, 32, 32], np.int64), "one"))
        model.graph.node.insert(1, helper.make_node("Reshape", ["c1_raw", "one"], ["c1"]))
        dims = model.graph.input[0].type.tensor_type.shape.dim
        dims[0].Clear()
        dims[0].dim_value = 1
    return model


def test_wrong_size_for_a_model_with_free_height_and_width_says_which_size():
    X = np.zeros((2, 3, 16, 16), np.float32)
    fish = DeepFisherTransformer(_tiny_cnn_variant(dynamic_size=True), layer=7)
    with pytest.raises(
        ValueError,
        match=r"batch of shape \(2, 3, 16, 16\).*samples of shape \(3, any, any\).*"
        r"size the network was trained for.*onnxruntime said",
    ):
        fish.transform(X)
    assert fish.transform(np.zeros((2, 3, 32, 32), np.float32)).shape == (2,)


def test_trunk_with_batch_fixed_to_one_suggests_batch_size_1():
    model = _tiny_cnn_variant(batch_one_reshape=True)
    X = np.random.default_rng(9).normal(size=(3, 3, 32, 32)).astype(np.float32)
    with pytest.raises(
        ValueError, match=r"batch of shape \(3, 3, 32, 32\).*pass batch_size=1.*onnxruntime said"
    ):
        DeepFisherTransformer(model, layer=7).transform(X)
    one_at_a_time = DeepFisherTransformer(model, layer=7, batch_size=1).transform(X)
    reference = DeepFisherTransformer(_tiny_cnn_variant(), layer=7, batch_size=3).transform(X)
    np.testing.assert_allclose(one_at_a_time["backward"], reference["backward"], atol=1e-6)


def test_empty_onnx_file_is_named(tmp_path):
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"'[^']*empty\.onnx' is empty \(0 bytes\), not an ONNX model"):
        DeepFisherTransformer(str(empty)).fit(np.zeros((2, 3), np.float32))
