"""Gradient features of any layer through DeepFisherTransformer, list_layers and ``skfishing layers``."""

import numpy as np
import onnx
import pytest
from layer_oracle import explicit_gradients, onnx_factors

from skfishing import DeepFisherTransformer, list_layers
from skfishing.cli import main


@pytest.fixture
def inputs():
    return np.random.default_rng(0).normal(size=(5, 3, 32, 32)).astype(np.float32)


def test_fc_layer_by_weight_name_matches_the_head(tiny_cnn_file, inputs):
    # the reverse pass through the trunk's rules gives the head's own dE/dW7
    trunk = DeepFisherTransformer(tiny_cnn_file, layer="fc7_w").fit_transform(inputs)
    head = DeepFisherTransformer(tiny_cnn_file, layer=7).fit_transform(inputs)
    assert trunk.dtype.names == head.dtype.names and trunk["forward"].shape == head["forward"].shape
    for field in ("forward", "backward"):
        np.testing.assert_allclose(trunk[field], head[field], atol=2e-6)
    assert trunk.dtype.metadata["layer"] == "fc7"


def test_conv_layer_gives_unit_gradients(tiny_cnn_file, inputs):
    transformer = DeepFisherTransformer(tiny_cnn_file, layer="conv2_w", temperature=3.0)
    Z = transformer.fit_transform(inputs)
    assert transformer.layer_ == "conv2_w"
    assert Z["forward"].shape == (5, 64, 72) and Z["backward"].shape == (5, 64, 16)
    assert Z.dtype.metadata["layer"] == "conv2_w" and Z.dtype.metadata["temperature"] == 3.0
    ours = explicit_gradients(Z["forward"], Z["backward"]).reshape(5, -1)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1, rtol=1e-5)
    forward, backward = onnx_factors(onnx.load(str(tiny_cnn_file)), "conv2_w", inputs, temperature=3.0)
    raw = explicit_gradients(forward, backward).reshape(5, -1)
    np.testing.assert_allclose(ours, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-6)


def test_unknown_layer_names_the_layers(tiny_cnn_file, inputs):
    with pytest.raises(ValueError, match=r"no layer named 'conv9'.*'conv1_w', 'conv2_w', 'fc6'"):
        DeepFisherTransformer(tiny_cnn_file, layer="conv9").fit(inputs)


def test_list_layers(tiny_cnn_file):
    rows = list_layers(tiny_cnn_file)
    assert [r["name"] for r in rows] == ["conv1_w", "conv2_w", "fc6", "fc7", "fc8"]
    conv2 = rows[1]
    assert (conv2["T"], conv2["d_in"], conv2["d_out"]) == (64, 72, 16)
    assert conv2["factor_floats"] == 64 * (72 + 16) and conv2["gradient_floats"] == 16 * 72
    assert all(r["supported"] is True for r in rows)


def test_layers_command(tiny_cnn_file, capsys):
    assert main(["layers", str(tiny_cnn_file)]) == 0
    lines = capsys.readouterr().out.splitlines()
    cut = 8 * 8 * 8  # conv2's input, pooled conv1
    assert lines[2].split() == [
        "Conv", "64", "72", "16", str(64 * 88), str(16 * 72), str(cut), "conv2_w", "(conv2_w)"
    ]  # fmt: skip


def test_factor_normalisation():
    from skfishing._onnx.layers import layer_features

    rng = np.random.default_rng(0)
    forward, backward = rng.normal(size=(3, 5, 4)), rng.normal(size=(3, 5, 2))
    Z = layer_features(forward, backward)
    G = explicit_gradients(Z["forward"], Z["backward"]).reshape(3, -1)
    np.testing.assert_allclose(np.linalg.norm(G, axis=1), 1, rtol=1e-6)
    raw = explicit_gradients(forward, backward).reshape(3, -1)
    np.testing.assert_allclose(G, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-6)
    # one position: 1-D fields, each of unit norm, as for the FC head
    one = layer_features(forward[:, :1], backward[:, :1])
    assert one["forward"].shape == (3, 4) and one["backward"].shape == (3, 2)
    np.testing.assert_allclose(np.linalg.norm(one["backward"], axis=1), 1, rtol=1e-6)
    backward[1, 2, 0] = np.nan
    with pytest.raises(ValueError, match="sample 11 gives non-finite gradient factors"):
        layer_features(forward, backward, first_row=10)


def test_factor_normalisation_writes_straight_into_the_result():
    """No temporary the size of the factors: the exact path holds a batch's factors and its result."""
    import tracemalloc

    from skfishing._onnx.layers import layer_features

    rng = np.random.default_rng(0)
    # positions last in memory, as the layer graphs output them
    forward = rng.normal(size=(8, 600, 49)).astype(np.float32).transpose(0, 2, 1)
    backward = rng.normal(size=(8, 60, 49)).astype(np.float32).transpose(0, 2, 1)
    reference = explicit_gradients(forward.astype(np.float64), backward.astype(np.float64)).reshape(8, -1)
    tracemalloc.start()
    try:
        Z = layer_features(forward, backward)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 * Z.nbytes  # about 1.5 Z; a float64 product of the factors makes it about 3 Z
    G = explicit_gradients(Z["forward"], Z["backward"]).reshape(8, -1)
    np.testing.assert_allclose(G, reference / np.linalg.norm(reference, axis=1, keepdims=True), atol=1e-6)


def test_layers_command_prints_the_preprocessing_found(tiny_cnn_file, capsys, tmp_path):
    import json
    import shutil

    from skfishing.cli import main

    assert main(["layers", str(tiny_cnn_file)]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("preprocessing: none found")
    model = tmp_path / "net.onnx"
    shutil.copy(tiny_cnn_file, model)
    (tmp_path / "net.json").write_text(json.dumps({"size": 12, "resize": 14}), encoding="utf-8")
    assert main(["layers", str(model)]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("preprocessing: ImagePreprocessing(size=12, resize=14"), last


def test_layers_command_names_the_node_that_stops_the_head(tmp_path, capsys):
    import onnx
    from onnx import TensorProto, helper

    from skfishing.cli import main

    graph = helper.make_graph(
        [helper.make_node("Sigmoid", ["x"], ["y"], name="not_a_classifier")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "bad.onnx")
    assert main(["layers", str(tmp_path / "bad.onnx")]) == 1
    err = capsys.readouterr().err
    assert "not_a_classifier" in err and "torch.flatten(x, 1)" in err
