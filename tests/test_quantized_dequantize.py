"""skfishing._onnx.quantized.dequantize_model: an int8 file run in float32.

The float model it gives must compute what the original architecture
computes with the int8 file's weights as dequantized: checked against a
torch copy of the network whose weights are set, in NumPy, from the
quantized file's initializers.
"""

import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnx_models import dequantized_weights, flatten_net, quantized_models, torch_onnx
from skfishing import dequantize_model
from skfishing._onnx.network import get_network

torch = pytest.importorskip("torch")

CPU = ["CPUExecutionProvider"]
LAYERS = [("conv.weight", "conv.bias", False)] + [
    (f"head.{i}.weight", f"head.{i}.bias", True) for i in (0, 2, 4)
]


@pytest.fixture(scope="module")
def int8(tmp_path_factory):
    net = flatten_net("view", seed=5)
    model = torch_onnx(net, torch.zeros(1, 3, 8, 8), opset=13)
    images = np.random.default_rng(2).normal(size=(24, 3, 8, 8)).astype(np.float32)
    return net, quantized_models(model, images[:16], str(tmp_path_factory.mktemp("int8"))), images[16:]


@pytest.mark.parametrize("fmt", ["QDQ", "QOperator", "dynamic"])
def test_dequantized_model_is_the_architecture_with_dequantized_weights(fmt, int8):
    net, models, X = int8
    float_model = dequantize_model(models[fmt])
    onnx.checker.check_model(float_model, full_check=True)
    ops = {node.op_type for node in float_model.graph.node}
    assert not any(op.startswith(("QLinear", "Quantize", "Dequantize", "Dynamic", "QGemm")) for op in ops), (
        ops
    )
    assert not any(op.endswith("Integer") for op in ops), ops
    assert {i.data_type for i in float_model.graph.initializer} <= {
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.INT64,
    }

    twin = copy.deepcopy(net)
    weights, biases = dequantized_weights(models[fmt], LAYERS)
    modules = [twin.conv] + [twin.head[i] for i in (0, 2, 4)]
    with torch.no_grad():
        for module, w, b, (_, _, out_in) in zip(modules, weights, biases, LAYERS):
            module.weight.copy_(torch.as_tensor(w.T if out_in else w))
            module.bias.copy_(torch.as_tensor(b))
        expected = twin(torch.as_tensor(X)).numpy()
    session = ort.InferenceSession(float_model.SerializeToString(), providers=CPU)
    got = session.run(None, {"input": X})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    # and skfishing reads it as a float model with the three FC layers
    assert get_network(float_model, CPU).head.numbers == (6, 7, 8)


def test_a_quantized_operator_without_float_counterpart_is_named():
    from onnx import helper

    node = helper.make_node("QLinearWhere", ["a"], ["b"], name="odd", domain="com.microsoft")
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("a", 1, [1])],
        [helper.make_tensor_value_info("b", 1, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    with pytest.raises(ValueError, match="QLinearWhere node 'odd' has no float counterpart"):
        dequantize_model(model)
