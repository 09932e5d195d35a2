"""Quantized (int8) classifiers: QDQ, QOperator and dynamic quantization.

The trunk runs quantized; the head is read with its weights dequantized and
differentiated in float. The features must be the exact gradient of the
dequantized head at the quantized trunk's activations (NumPy float64
reference built from the quantized file's initializers), and close to the
float model's (trace kernel correlation).
"""

import numpy as np
import pytest

from onnx_models import (
    dequantized_weights,
    flatten_net,
    head_input_values,
    mlp_model,
    numpy_fisher,
    quantized_models,
    torch_onnx,
)
from skfishing._onnx.head import Tensor
from skfishing._onnx.network import get_network

CPU = ["CPUExecutionProvider"]
FORMATS = ("QDQ", "QOperator", "dynamic")


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    """A float CNN (conv, max-pool, view(x.size(0), -1), three Linear) and its int8 versions."""
    torch = pytest.importorskip("torch")
    model = torch_onnx(flatten_net("view", seed=2), torch.zeros(1, 3, 8, 8), opset=13)
    images = np.random.default_rng(0).normal(size=(40, 3, 8, 8)).astype(np.float32)
    models = quantized_models(model, images[:16], str(tmp_path_factory.mktemp("cnn")))
    layers = [(f"head.{i}.weight", f"head.{i}.bias", True) for i in (0, 2, 4)]
    return model, models, images[16:], layers


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    """A float MLP with MatMul + Add layers (QLinearMatMul + QLinearAdd when quantized)."""
    model = mlp_model(widths=(16, 12, 9, 5), matmul=True, opset=13, seed=3)[0]
    rows = np.random.default_rng(1).normal(size=(40, 16)).astype(np.float32)
    models = quantized_models(model, rows[:16], str(tmp_path_factory.mktemp("mlp")))
    layers = [(f"W{i}", f"b{i}", False) for i in range(3)]
    return model, models, rows[16:], layers


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("which", ["cnn", "mlp"])
def test_features_are_the_gradient_of_the_dequantized_head(which, fmt, request):
    _, models, X, layers = request.getfixturevalue(which)
    qmodel = models[fmt]
    net = get_network(qmodel, CPU)
    assert net.head.numbers == (6, 7, 8)
    # quantize_dynamic quantizes each batch's activations with one scale:
    # the reference runs the same batch
    x5 = head_input_values(qmodel, net.head, X, one_by_one=fmt != "dynamic")
    weights, biases = dequantized_weights(qmodel, layers)
    xs, deltas, acts = numpy_fisher(x5, weights, biases, 2.0)
    tensors = [Tensor("x", 5), Tensor("x", 6), Tensor("x", 7), Tensor("y", 8)]
    tensors += [Tensor("delta", k) for k in (6, 7, 8)]
    got = dict(zip(tensors, net.run(X, tensors)[0]))
    for j in range(3):
        np.testing.assert_allclose(got[Tensor("x", 5 + j)], xs[j], rtol=1e-5, atol=1e-5, err_msg=f"x{5 + j}")
        np.testing.assert_allclose(got[Tensor("delta", 6 + j)], deltas[j], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got[Tensor("y", 8)], acts[-1], rtol=1e-5, atol=1e-5)


def _trace_kernel(net, X, layer):
    (x, delta), _ = net.run(X, (Tensor("x", layer - 1), Tensor("delta", layer)))
    return (x @ x.T) * (delta @ delta.T)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("which", ["cnn", "mlp"])
def test_int8_trace_kernel_follows_the_float_model(which, fmt, request):
    model, models, X, _ = request.getfixturevalue(which)
    float_net, int8_net = get_network(model, CPU), get_network(models[fmt], CPU)
    for layer in (6, 7, 8):
        reference = _trace_kernel(float_net, X, layer)
        approximation = _trace_kernel(int8_net, X, layer)
        assert np.corrcoef(reference.ravel(), approximation.ravel())[0, 1] >= 0.95, layer
