"""BatchNorm1d in the FC head: folded into the Linear before it, gradients exact."""

import numpy as np
import pytest
from onnx import helper, numpy_helper

from onnx_models import flatten_net, mlp_model, torch_onnx, torch_weight_gradients
from skfishing import find_fc_head
from skfishing._onnx.head import Tensor
from skfishing._onnx.network import get_network

torch = pytest.importorskip("torch")

CPU = ["CPUExecutionProvider"]


@pytest.mark.parametrize("opset", [9, 13, 17])
def test_batchnorm_head_keeps_every_layer_and_its_gradient(opset):
    """Linear -> BatchNorm1d -> ReLU -> Dropout -> Linear -> ReLU -> Linear:
    layers 6, 7 and 8, and dE/dW of the Linear before the BatchNorm is its own
    gradient (torch autograd), not the folded layer's."""
    net = flatten_net("view", seed=4, batchnorm=True)
    model = torch_onnx(net, torch.zeros(1, 3, 8, 8), opset=opset)
    assert "BatchNormalization" in {n.op_type for n in model.graph.node}
    network = get_network(model, CPU)
    head = network.head
    assert head.numbers == (6, 7, 8)
    assert head.layers[0].scale is not None and head.layers[1].scale is None
    X = np.random.default_rng(0).normal(size=(6, 3, 8, 8)).astype(np.float32)
    expected = torch_weight_gradients(net, X)
    for k, want in zip(head.numbers, expected):
        (x, delta), _ = network.run(X, (Tensor("x", k - 1), Tensor("delta", k)))
        got = -np.einsum("ni,nj->nij", x.astype(np.float64), delta) / 2.0
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=1e-4, err_msg=f"layer {k}")
    # the activations are the network's: x6 is relu(bn(fc6(pool)))
    (x6, logits), _ = network.run(X, (Tensor("x", 6), Tensor("y", 8)))
    with torch.no_grad():
        flat = torch.relu(net.conv(torch.as_tensor(X)))
        flat = torch.nn.functional.max_pool2d(flat, 2).flatten(1)
        want6 = torch.relu(net.head[1](net.head[0](flat))).numpy()
        want_logits = net(torch.as_tensor(X)).numpy()
    np.testing.assert_allclose(x6, want6, atol=1e-5)
    np.testing.assert_allclose(logits, want_logits, atol=1e-5)


def test_batchnorm_that_cannot_be_folded_is_named_in_the_layer_list():
    """A BatchNormalization with computed statistics stops the head; the
    error for a missing layer says which node the head input comes from."""
    model, _, _ = mlp_model(widths=(6, 5, 4, 3))
    graph = model.graph
    relu = next(n for n in graph.node if n.op_type == "Relu" and n.input[0] == "y1")
    relu.input[0] = "bn_out"
    mean = helper.make_node("ReduceMean", ["y1"], ["batch_mean"], axes=[0], keepdims=0)
    bn = helper.make_node("BatchNormalization", ["y1", "g", "b", "batch_mean", "v"], ["bn_out"], name="bn7")
    graph.node.insert(list(graph.node).index(relu), mean)
    graph.node.insert(list(graph.node).index(relu), bn)
    graph.initializer.extend(
        [numpy_helper.from_array(np.ones(4, np.float32) * v, n) for n, v in (("g", 1), ("b", 0), ("v", 1))]
    )
    head = find_fc_head(model)
    assert head.numbers == (8,)
    with pytest.raises(ValueError, match="of BatchNormalization node 'bn7', where reading the head stopped"):
        head.features("gradient", 7)


def test_batchnorm_after_gemm_with_alpha_beta_matches_numpy():
    """Gemm(alpha=0.5, beta=2, transB=1) -> BatchNormalization -> Relu -> Gemm,
    in float64: delta_6 is dE/dz of the Gemm output z (before the BatchNorm),
    checked against central finite differences of E in z."""
    rng = np.random.default_rng(7)
    W6, b6 = rng.normal(size=(5, 4)), rng.normal(size=5)  # stored (out, in): transB=1
    W7, b7 = rng.normal(size=(5, 3)), rng.normal(size=3)
    gamma, beta = rng.uniform(0.5, 2, 5), rng.normal(size=5)
    mean, var, eps = rng.normal(size=5), rng.uniform(0.5, 2, 5), 1e-3
    inits = {"W6": W6, "b6": b6, "W7": W7, "b7": b7, "g": gamma, "be": beta, "m": mean, "v": var}
    nodes = [
        helper.make_node("Gemm", ["x", "W6", "b6"], ["z"], name="fc6", alpha=0.5, beta=2.0, transB=1),
        helper.make_node("BatchNormalization", ["z", "g", "be", "m", "v"], ["bn"], epsilon=eps),
        helper.make_node("Relu", ["bn"], ["r"]),
        helper.make_node("Gemm", ["r", "W7", "b7"], ["y"], name="fc7"),
    ]
    graph = helper.make_graph(
        nodes,
        "bn",
        [helper.make_tensor_value_info("x", 11, ["N", 4])],
        [helper.make_tensor_value_info("y", 11, ["N", 3])],
        initializer=[numpy_helper.from_array(v.astype(np.float64), k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    net = get_network(model, CPU)
    assert net.head.numbers == (7, 8)
    X = rng.normal(size=(6, 4))
    (x6, delta7), _ = net.run(X, (Tensor("x", 6), Tensor("delta", 7)))

    def energy(z):
        bn = (z - mean) / np.sqrt(var + eps) * gamma + beta
        logits = np.maximum(bn, 0) @ W7 + b7
        s = logits / 2.0
        log_soft = (
            s - s.max(1, keepdims=True) - np.log(np.exp(s - s.max(1, keepdims=True)).sum(1, keepdims=True))
        )
        return -(log_soft / 3).sum(1)

    z = 0.5 * X @ W6.T + 2.0 * b6
    step = 1e-6
    dz = np.stack(
        [(energy(z + step * np.eye(5)[j]) - energy(z - step * np.eye(5)[j])) / (2 * step) for j in range(5)],
        1,
    )
    # delta is -tau dE/dz (the paper's sign and scale): E's gradient in W is -x delta^T / tau
    np.testing.assert_allclose(-delta7 / 2.0, dz, atol=1e-8)
    np.testing.assert_allclose(x6, X, atol=0)
