"""The flatten between the trunk and the FC head, in every spelling exporters use.

A flatten is recognised from what the graph computes (a symbolic evaluation
of the Reshape's shape subgraph, shape inference with a symbolic batch), so
each spelling, at each opset, gives the exact gradient of torch autograd.
"""

import numpy as np
import pytest
from onnx import helper, numpy_helper

from onnx_models import FLATTEN_SPELLINGS, flatten_net, torch_onnx, torch_weight_gradients
from skfishing import HeadStructureError, find_fc_head
from skfishing._onnx.head import Tensor
from skfishing._onnx.network import get_network

torch = pytest.importorskip("torch")

CPU = ["CPUExecutionProvider"]


def _gradients(model, X, temperature=2.0):
    """dE/dW_k of every FC layer from skfishing's features, lowest first."""
    net = get_network(model, CPU)
    grads = []
    for k in net.head.numbers:
        (x, delta), _ = net.run(X, (Tensor("x", k - 1), Tensor("delta", k)), temperature=temperature)
        grads.append(-np.einsum("ni,nj->nij", x.astype(np.float64), delta) / temperature)
    return net.head, grads


def _check_against_torch(net, model, X):
    head, grads = _gradients(model, X)
    expected = torch_weight_gradients(net, X)
    assert head.numbers == (6, 7, 8)
    for k, got, want in zip(head.numbers, grads, expected):
        assert got.shape == want.shape, k
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=1e-4, err_msg=f"layer {k}")


def _images(n=4, seed=1):
    return np.random.default_rng(seed).normal(size=(n, 3, 8, 8)).astype(np.float32)


#: Each spelling at the oldest, a middle and the newest opset; the three
#: PyTorch spellings of older exports at every opset that changed their nodes.
CASES = [(s, o) for s in FLATTEN_SPELLINGS for o in (9, 13, 21)] + [
    (s, o) for s in ("view", "reshape", "torch.flatten") for o in (10, 11, 12, 17)
]


@pytest.mark.parametrize("spelling, opset", CASES)
def test_flatten_spellings_give_torch_gradients(spelling, opset):
    net = flatten_net(spelling)
    model = torch_onnx(net, torch.zeros(1, 3, 8, 8), opset=opset)
    _check_against_torch(net, model, _images())


@pytest.mark.parametrize("spelling", ["view", "reshape", "gap-view", "mean-squeeze"])
def test_fixed_batch_exports_run_at_any_batch(spelling):
    """An export without dynamic axes (batch fixed to 1) still flattens per sample."""
    net = flatten_net(spelling, seed=3)
    model = torch_onnx(net, torch.zeros(1, 3, 8, 8), opset=13, dynamic=False)
    _check_against_torch(net, model, _images(5, seed=2))


# -- graphs written by hand: what is proven, what is refused ------------------


def _head_graph(flatten_nodes, flat, *, inits=(), input_shape=("N", 4, 2, 2), opset=17):
    """input -> flatten_nodes -> Gemm(fc, 16 -> 3) on tensor ``flat``."""
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(16, 3)).astype(np.float32)
    nodes = list(flatten_nodes) + [helper.make_node("Gemm", [flat, "W"], ["y"], name="fc")]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("input", 1, list(input_shape))],
        [helper.make_tensor_value_info("y", 1, None)],
        initializer=[numpy_helper.from_array(weight, "W")]
        + [numpy_helper.from_array(np.asarray(v), k) for k, v in inits],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _shape_of_batch(target_tail, *, shape_op_input="input"):
    """Shape -> Gather(0) -> Unsqueeze -> Concat(tail) -> Reshape, opset 13 style."""
    nodes = [
        helper.make_node("Shape", [shape_op_input], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "axes0"], ["n1"]),
        helper.make_node("Concat", ["n1", "tail"], ["target"], axis=0),
        helper.make_node("Reshape", ["input", "target"], ["flat"], name="reshape"),
    ]
    inits = [
        ("zero", np.array(0, np.int64)),
        ("axes0", np.array([0], np.int64)),
        ("tail", np.array(target_tail, np.int64)),
    ]
    return nodes, inits


@pytest.mark.parametrize(
    "nodes_inits",
    [
        _shape_of_batch([-1]),
        _shape_of_batch([16]),
        (
            [helper.make_node("Reshape", ["input", "target"], ["flat"], name="reshape")],
            [("target", np.array([0, -1], np.int64))],
        ),
        (
            [helper.make_node("Reshape", ["input", "target"], ["flat"], name="reshape")],
            [("target", np.array([-1, 16], np.int64))],
        ),
        (
            # Shape sliced with Slice (start 0, end 1) instead of Gather
            [
                helper.make_node("Shape", ["input"], ["shape"]),
                helper.make_node("Slice", ["shape", "s0", "s1"], ["n1"]),
                helper.make_node("Cast", ["n1"], ["n1i"], to=7),
                helper.make_node("Concat", ["n1i", "tail"], ["target"], axis=0),
                helper.make_node("Reshape", ["input", "target"], ["flat"], name="reshape"),
            ],
            [
                ("s0", np.array([0], np.int64)),
                ("s1", np.array([1], np.int64)),
                ("tail", np.array([-1], np.int64)),
            ],
        ),
    ],
    ids=["shape-gather-minus1", "shape-gather-16", "zero-minus1", "minus1-16", "shape-slice-cast"],
)
def test_reshapes_proven_per_sample_are_read(nodes_inits):
    nodes, inits = nodes_inits
    head = find_fc_head(_head_graph(nodes, "flat", inits=inits))
    assert head.input_name == "input"
    net = get_network(_head_graph(nodes, "flat", inits=inits), CPU)
    X = np.random.default_rng(0).normal(size=(3, 4, 2, 2)).astype(np.float32)
    (y,), _ = net.run(X, (Tensor("y", 8),))
    weight = numpy_helper.to_array(_head_graph(nodes, "flat", inits=inits).graph.initializer[0])
    np.testing.assert_allclose(y, X.reshape(3, -1) @ weight, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "nodes_inits, message",
    [
        (
            (
                [helper.make_node("Reshape", ["input", "target"], ["flat"], name="reshape")],
                [("target", np.array([2, -1], np.int64))],
            ),
            "Reshape node 'reshape' below the FC head does not reshape to a constant 2-D shape",
        ),
        (
            (
                [helper.make_node("Reshape", ["input", "target"], ["flat"], name="reshape")],
                [("target", np.array([-1, 8], np.int64))],
            ),
            "Reshape node 'reshape' below the FC head",
        ),
        (
            # the batch taken from axis 1 of the shape, not axis 0
            (
                [
                    helper.make_node("Shape", ["input"], ["shape"]),
                    helper.make_node("Gather", ["shape", "one"], ["c"], axis=0),
                    helper.make_node("Unsqueeze", ["c", "axes0"], ["c1"]),
                    helper.make_node("Concat", ["c1", "tail"], ["target"], axis=0),
                    helper.make_node("Reshape", ["input", "target"], ["flat"], name="reshape"),
                ],
                [
                    ("one", np.array(1, np.int64)),
                    ("axes0", np.array([0], np.int64)),
                    ("tail", np.array([-1], np.int64)),
                ],
            ),
            "Reshape node 'reshape' below the FC head",
        ),
        (
            # a target computed from the data itself: nothing to prove
            (
                [
                    helper.make_node("ReduceMax", ["input"], ["m"], keepdims=0),
                    helper.make_node("Cast", ["m"], ["mi"], to=7),
                    helper.make_node("Unsqueeze", ["mi", "axes0"], ["m1"]),
                    helper.make_node("Concat", ["m1", "tail"], ["target"], axis=0),
                    helper.make_node("Reshape", ["input", "target"], ["flat"], name="reshape"),
                ],
                [("axes0", np.array([0], np.int64)), ("tail", np.array([-1], np.int64))],
            ),
            "Reshape node 'reshape' below the FC head",
        ),
        (
            ([helper.make_node("Squeeze", ["input"], ["flat"], name="squeeze")], []),
            "Squeeze node 'squeeze' below the FC head does not name axes",
        ),
        (
            (
                [helper.make_node("Squeeze", ["input", "axes"], ["flat"], name="squeeze")],
                [("axes", np.array([0], np.int64))],
            ),
            "Squeeze node 'squeeze' below the FC head",
        ),
        (
            ([helper.make_node("Flatten", ["input"], ["flat"], name="flat", axis=-2)], []),
            "Flatten node 'flat' below the FC head has axis=-2",
        ),
    ],
    ids=[
        "const-2x",
        "minus1-half-sample",
        "channels-as-batch",
        "data-dependent",
        "squeeze-all",
        "squeeze-batch",
        "flatten-axis2",
    ],
)
def test_what_cannot_be_proven_is_refused(nodes_inits, message):
    nodes, inits = nodes_inits
    with pytest.raises(HeadStructureError, match=message):
        find_fc_head(_head_graph(nodes, "flat", inits=inits))


def test_negative_flatten_axis_that_is_one_is_read():
    nodes = [helper.make_node("Flatten", ["input"], ["flat"], axis=-3)]
    assert find_fc_head(_head_graph(nodes, "flat")).input_name == "input"
