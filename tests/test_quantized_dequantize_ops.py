"""skfishing._onnx.quantized.dequantize_model on the QOperator operators of real networks.

A small network with a residual ``Add`` (ResNet), a sigmoid gate ``Mul``
(EfficientNet's squeeze-excitation), a ``Concat`` (DenseNet), LeakyReLU,
average pools, a ``MatMul`` + ``Add`` over tokens (a transformer's Linear)
and a ``Gemm``, quantized per channel by ``onnxruntime.quantization``. The
float model that :func:`dequantize_model` rebuilds must compute what the
original float graph computes once its weights are replaced by the int8
file's, dequantized here in NumPy from the quantizer's initializers.
"""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from onnx_models import quantized_models, torch_onnx
from skfishing import dequantize_model
from skfishing._onnx.network import get_network

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.oracle

CPU = ["CPUExecutionProvider"]


def mixed_net():
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
            self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
            self.gate = nn.Conv2d(4, 2, 1)
            self.mix = nn.Linear(6, 6)
            self.fc = nn.Linear(6, 5)

        def forward(self, x):
            a = torch.relu(self.conv1(x))
            b = torch.relu(self.conv2(a)) + a
            c = torch.cat([b, torch.sigmoid(self.gate(b)) * b[:, :2]], 1)
            c = nn.functional.avg_pool2d(nn.functional.leaky_relu(c, 0.1), 2)
            tokens = self.mix(c.flatten(2).transpose(1, 2))  # (N, 16, 6): MatMul + Add
            c = c + tokens.transpose(1, 2).reshape(c.shape)
            return self.fc(nn.functional.adaptive_avg_pool2d(c, 1).flatten(1))

    torch.manual_seed(3)
    return Net().eval()


@pytest.fixture(scope="module")
def qoperator(tmp_path_factory):
    model = torch_onnx(mixed_net(), torch.zeros(1, 3, 8, 8), opset=13)
    images = np.random.default_rng(4).normal(size=(24, 3, 8, 8)).astype(np.float32)
    models = quantized_models(model, images[:16], str(tmp_path_factory.mktemp("ops")), per_channel=True)
    return model, models["QOperator"], images[16:]


def float_graph_with_int8_weights(model, qmodel):
    """The float graph, each weight and bias replaced by the int8 file's, dequantized in NumPy."""
    q = {i.name: numpy_helper.to_array(i).astype(np.float64) for i in qmodel.graph.initializer}
    bias_scale = {}  # int32 biases of QLinearConv/QGemm: input scale x weight scale
    matmul_weights = {n.input[3] for n in qmodel.graph.node if n.op_type == "QLinearMatMul"}
    for node in qmodel.graph.node:
        if node.op_type == "QLinearConv" and len(node.input) > 8:
            bias_scale[node.input[8]] = q[node.input[1]] * q[node.input[4]]
        if node.op_type == "QGemm" and len(node.input) > 6 and node.input[6]:
            bias_scale[node.input[6]] = q[node.input[1]] * q[node.input[4]]
    result = onnx.ModelProto.FromString(model.SerializeToString())
    replaced = 0
    for init in result.graph.initializer:
        name = f"{init.name}_quantized"
        if name not in q:
            continue
        values = q[name]
        if name in bias_scale:
            values = values * bias_scale[name]
        else:
            scale, zero = q[f"{init.name}_scale"], q[f"{init.name}_zero_point"]
            if scale.size > 1:  # per channel: the output axis (0, or 1 for a MatMul's B)
                shape = [1] * values.ndim
                shape[1 if name in matmul_weights else 0] = -1
                scale, zero = scale.reshape(shape), zero.reshape(shape)
            values = (values - zero) * scale
        init.CopyFrom(numpy_helper.from_array(values.astype(np.float32).reshape(tuple(init.dims)), init.name))
        replaced += 1
    return result, replaced


def test_the_quantized_file_uses_the_operators_under_test(qoperator):
    _, qmodel, _ = qoperator
    ops = {node.op_type for node in qmodel.graph.node}
    assert {
        "QLinearConv",
        "QLinearAdd",
        "QLinearMul",
        "QLinearSigmoid",
        "QLinearConcat",
        "QLinearLeakyRelu",
        "QLinearAveragePool",
        "QLinearGlobalAveragePool",
        "QLinearMatMul",
        "QGemm",
    } <= ops, ops


def test_dequantized_model_computes_the_float_graph_with_the_int8_weights(qoperator):
    model, qmodel, X = qoperator
    expected_model, replaced = float_graph_with_int8_weights(model, qmodel)
    assert replaced >= 8  # four convolution/Gemm weights and biases, the MatMul's weight
    expected = ort.InferenceSession(expected_model.SerializeToString(), providers=CPU).run(
        None, {"input": X}
    )[0]
    float_model = dequantize_model(qmodel)
    onnx.checker.check_model(float_model, full_check=True)
    ops = {node.op_type for node in float_model.graph.node}
    assert not any(op.startswith(("QLinear", "QGemm", "Quantize", "Dequantize")) for op in ops), ops
    got = ort.InferenceSession(float_model.SerializeToString(), providers=CPU).run(None, {"input": X})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    # the int8 file computes the same up to its activations' rounding, not exactly
    int8 = ort.InferenceSession(qmodel.SerializeToString(), providers=CPU).run(None, {"input": X})[0]
    assert not np.allclose(int8, expected, rtol=1e-4, atol=1e-5)
    assert np.abs(int8 - expected).max() < 0.1 * np.abs(expected).max()
    assert get_network(float_model, CPU).head.numbers == (8,)
