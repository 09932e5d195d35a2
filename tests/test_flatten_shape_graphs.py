"""More spellings of the shape subgraph under a flatten, and what stays refused.

Older exporters list the weights among the graph inputs, slice the shape
with attributes (opset 9), gather with a list of indices, or write the
``-1`` as a ``Constant`` node: each is read, and the FC output is checked
against NumPy (or the gradients against torch autograd). A reshape whose
per-sample size cannot be known (spatial dimensions not fixed) is refused
with the node named.
"""

import io
import warnings

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from onnx_models import flatten_net, torch_weight_gradients
from skfishing import HeadStructureError, find_fc_head
from skfishing._onnx.head import Tensor
from skfishing._onnx.network import get_network

CPU = ["CPUExecutionProvider"]


def head_graph(
    nodes, inits=(), *, input_shape=("N", 4, 2, 2), opset=9, fc="Gemm", weight_shape=(16, 3), fc_input="flat"
):
    """input -> nodes -> Gemm (or MatMul) on tensor ``fc_input``; returns the model and its weight."""
    weight = np.random.default_rng(0).normal(size=weight_shape).astype(np.float32)
    graph = helper.make_graph(
        list(nodes) + [helper.make_node(fc, [fc_input, "W"], ["y"], name="fc")],
        "g",
        [helper.make_tensor_value_info("input", 1, list(input_shape))],
        [helper.make_tensor_value_info("y", 1, None)],
        initializer=[numpy_helper.from_array(weight, "W")]
        + [numpy_helper.from_array(np.asarray(v), k) for k, v in inits],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), weight


def reshape_to(target_nodes, inits):
    return list(target_nodes) + [
        helper.make_node("Reshape", ["input", "target"], ["flat"], name="reshape")
    ], inits


READ = {
    # opset 9: Slice takes starts/ends as attributes; x.shape[:1] + (-1,)
    "slice-attributes": reshape_to(
        [
            helper.make_node("Shape", ["input"], ["shape"]),
            helper.make_node("Slice", ["shape"], ["n1"], starts=[0], ends=[1]),
            helper.make_node("Concat", ["n1", "tail"], ["target"], axis=0),
        ],
        [("tail", np.array([-1], np.int64))],
    ),
    # Gather with a list of indices gives a 1-element list directly
    "gather-list": reshape_to(
        [
            helper.make_node("Shape", ["input"], ["shape"]),
            helper.make_node("Gather", ["shape", "idx"], ["n1"], axis=0),
            helper.make_node("Concat", ["n1", "tail"], ["target"], axis=0),
        ],
        [("idx", np.array([0], np.int64)), ("tail", np.array([-1], np.int64))],
    ),
    # the -1 written as a Constant node (value_ints), the batch squeezed and unsqueezed again
    "constant-node-squeeze": reshape_to(
        [
            helper.make_node("Shape", ["input"], ["shape"]),
            helper.make_node("Gather", ["shape", "idx"], ["n1"], axis=0),
            helper.make_node("Squeeze", ["n1"], ["n"], axes=[0]),
            helper.make_node("Unsqueeze", ["n"], ["n1b"], axes=[0]),
            helper.make_node("Constant", [], ["tail"], value_ints=[-1]),
            helper.make_node("Concat", ["n1b", "tail"], ["target"], axis=0),
        ],
        [("idx", np.array([0], np.int64))],
    ),
}


@pytest.mark.parametrize("spelling", list(READ))
def test_shape_subgraphs_of_older_exports_are_read(spelling):
    nodes, inits = READ[spelling]
    model, weight = head_graph(
        nodes, inits, opset=12 if spelling == "constant-node-squeeze" else 9, fc="MatMul"
    )
    assert find_fc_head(model).input_name == "input"
    X = np.random.default_rng(1).normal(size=(3, 4, 2, 2)).astype(np.float32)
    (y,), _ = get_network(model, CPU).run(X, (Tensor("y", 8),))
    np.testing.assert_allclose(y, X.reshape(3, -1) @ weight, rtol=1e-5, atol=1e-6)


def test_constant_reshape_with_unknown_spatial_size_is_refused():
    """[-1, 16] is one row per sample only if each sample holds 16 values: unknowable here."""
    nodes, inits = reshape_to([], [("target", np.array([-1, 16], np.int64))])
    model, _ = head_graph(nodes, inits, input_shape=("N", 4, "H", "W"), opset=13)
    with pytest.raises(HeadStructureError, match="Reshape node 'reshape' below the FC head"):
        find_fc_head(model)


def test_a_reshape_keeping_two_axes_before_a_matmul_is_refused():
    """Reshape to x.shape[:2] + (-1,): a MatMul on it is a Linear on each of the 4 rows of a sample."""
    nodes, inits = reshape_to(
        [
            helper.make_node("Shape", ["input"], ["shape"]),
            helper.make_node("Slice", ["shape", "s0", "s2"], ["n2"]),
            helper.make_node("Concat", ["n2", "tail"], ["target"], axis=0),
        ],
        [
            ("s0", np.array([0], np.int64)),
            ("s2", np.array([2], np.int64)),
            ("tail", np.array([-1], np.int64)),
        ],
    )
    model, _ = head_graph(nodes, inits, opset=13, fc="MatMul", weight_shape=(4, 3))
    with pytest.raises(HeadStructureError, match="the FC layer's input 'flat' has rank 3, not 2"):
        find_fc_head(model)


def test_a_matmul_on_each_token_is_refused():
    """A (N, 5, 4) trunk output times a (4, 3) weight: a per-token Linear, not the head."""
    model, _ = head_graph(
        [], [], input_shape=("N", 5, 4), opset=13, fc="MatMul", weight_shape=(4, 3), fc_input="input"
    )
    with pytest.raises(HeadStructureError, match="input 'input' has rank 3, not 2.*per-position Linear"):
        find_fc_head(model)


@pytest.mark.oracle
def test_weights_listed_as_graph_inputs_give_torch_gradients():
    """``keep_initializers_as_inputs=True`` (the layout of older exports, IR version 3)."""
    torch = pytest.importorskip("torch")
    net = flatten_net("view", seed=4)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            torch.zeros(1, 3, 8, 8),
            buf,
            dynamo=False,
            opset_version=9,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
            keep_initializers_as_inputs=True,
        )
    model = onnx.load_from_string(buf.getvalue())
    init_names = {i.name for i in model.graph.initializer}
    assert init_names & {i.name for i in model.graph.input}
    X = np.random.default_rng(2).normal(size=(4, 3, 8, 8)).astype(np.float32)
    network = get_network(model, CPU)
    assert network.head.numbers == (6, 7, 8)
    expected = torch_weight_gradients(net, X)
    for k, want in zip(network.head.numbers, expected):
        (x, delta), _ = network.run(X, (Tensor("x", k - 1), Tensor("delta", k)), temperature=2.0)
        got = -np.einsum("ni,nj->nij", x.astype(np.float64), delta) / 2.0
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=1e-4, err_msg=f"layer {k}")
