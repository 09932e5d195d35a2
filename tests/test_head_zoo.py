"""The registry's real models: the op structure of the zoo's bvlcalexnet-12
and vgg16-12, rebuilt small with random weights, read and differentiated
exactly at batch sizes above 1.

The trunk is checked against the original graph run image by image (its
batch is fixed to 1); the FC head's features against NumPy float64.
"""

import numpy as np
import onnxruntime as ort
import pytest

from onnx_models import (
    dequantized_weights,
    head_input_values,
    numpy_fisher,
    quantized_models,
    with_output,
    zoo_alexnet_model,
    zoo_vgg16_model,
)
from skfishing._onnx.head import Tensor
from skfishing._onnx.network import get_network

CPU = ["CPUExecutionProvider"]

ZOO = {
    "bvlcalexnet-12": (zoo_alexnet_model, "data_0", "pool5_1", ["fc6_w_0", "fc7_w_0", "fc8_w_0"]),
    "vgg16-12": (
        zoo_vgg16_model,
        "data",
        "vgg0_pool4_fwd",
        ["vgg0_dense0_fwd", "vgg0_dense1_fwd", "vgg0_dense2_fwd"],
    ),
}


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("name", ZOO)
def test_zoo_structure_gives_exact_features_in_batches(name, temperature):
    build, input_name, pool5, fc_names = ZOO[name]
    model, weights, biases = build()
    net = get_network(model, CPU)
    head = net.head
    assert head.input_name == pool5
    assert [layer.name for layer in head.layers] == fc_names
    assert head.numbers == (6, 7, 8)
    size = model.graph.input[0].type.tensor_type.shape.dim[2].dim_value
    X = np.random.default_rng(3).uniform(-1, 1, size=(5, 3, size, size)).astype(np.float32)

    # the trunk: pool5 of the original graph, one image at a time
    session = ort.InferenceSession(with_output(model, pool5).SerializeToString(), providers=CPU)
    one_by_one = [session.run(None, {input_name: x[None]}) for x in X]
    expected_pool5 = np.concatenate([out[1].reshape(1, -1) for out in one_by_one])
    expected_output = np.concatenate([out[0] for out in one_by_one])

    tensors = [Tensor("x", 5), Tensor("prob", 8), Tensor("y", 8)]
    tensors += [Tensor(kind, k) for k in (6, 7, 8) for kind in ("delta",)] + [Tensor("x", 6), Tensor("x", 7)]
    values, _ = net.run(X, tensors, temperature=temperature)
    got = dict(zip(tensors, values))
    np.testing.assert_allclose(got[Tensor("x", 5)], expected_pool5, rtol=1e-5, atol=1e-6)
    final = got[Tensor("prob", 8)] if name == "bvlcalexnet-12" else got[Tensor("y", 8)]
    np.testing.assert_allclose(final, expected_output, rtol=1e-5, atol=1e-6)

    # the head: NumPy float64 from the same pool5
    xs, deltas, _ = numpy_fisher(expected_pool5, weights, biases, temperature)
    for j, k in enumerate((6, 7, 8)):
        np.testing.assert_allclose(got[Tensor("x", k - 1)], xs[j], rtol=1e-5, atol=1e-5, err_msg=f"x{k - 1}")
        np.testing.assert_allclose(
            got[Tensor("delta", k)], deltas[j], rtol=1e-4, atol=1e-6, err_msg=f"delta{k}"
        )


@pytest.fixture(scope="module")
def zoo_int8(tmp_path_factory):
    """The two zoo structures quantized (QDQ, QOperator, dynamic), as the zoo publishes int8 variants."""
    result = {}
    for name, (build, input_name, _, _) in ZOO.items():
        model, _, _ = build()
        size = model.graph.input[0].type.tensor_type.shape.dim[2].dim_value
        images = np.random.default_rng(4).uniform(-1, 1, size=(12, 3, size, size)).astype(np.float32)
        directory = str(tmp_path_factory.mktemp(name))
        result[name] = quantized_models(model, images[:8], directory, input_name=input_name), images[8:]
    return result


ZOO_LAYERS = {
    "bvlcalexnet-12": [(f"fc{k}_w_0", f"fc{k}_b_0", True) for k in (6, 7, 8)],
    "vgg16-12": [(f"vgg0_dense{i}_weight", f"vgg0_dense{i}_bias", True) for i in range(3)],
}


@pytest.mark.parametrize("fmt", ["QDQ", "QOperator", "dynamic"])
@pytest.mark.parametrize("name", ZOO)
def test_zoo_int8_variants_give_the_gradient_of_the_dequantized_head(name, fmt, zoo_int8):
    models, X = zoo_int8[name]
    qmodel = models[fmt]
    net = get_network(qmodel, CPU)
    assert net.head.numbers == (6, 7, 8)
    x5 = head_input_values(qmodel, net.head, X, input_name=ZOO[name][1])
    weights, biases = dequantized_weights(qmodel, ZOO_LAYERS[name])
    xs, deltas, _ = numpy_fisher(x5, weights, biases, 2.0)
    tensors = [Tensor("x", k - 1) for k in (6, 7, 8)] + [Tensor("delta", k) for k in (6, 7, 8)]
    if fmt == "dynamic":  # its activations are quantized per batch: compare one image at a time
        values = [net.run(x[None], tensors)[0] for x in X]
        values = [np.concatenate(column) for column in zip(*values)]
    else:
        values = net.run(X, tensors)[0]
    got = dict(zip(tensors, values))
    for j, k in enumerate((6, 7, 8)):
        np.testing.assert_allclose(got[Tensor("x", k - 1)], xs[j], rtol=1e-5, atol=1e-5, err_msg=f"x{k - 1}")
        np.testing.assert_allclose(
            got[Tensor("delta", k)], deltas[j], rtol=1e-4, atol=1e-6, err_msg=f"delta{k}"
        )
