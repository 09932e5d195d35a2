"""The backward subgraph against NumPy and finite differences (no torch)."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper

from onnx_models import caffe_alexnet_model, mlp_model, numpy_fisher
from skfishing import HeadStructureError, add_backward, find_fc_head
from skfishing._onnx.graph import output_names
from skfishing._onnx.head import Tensor
from skfishing._onnx.network import get_network

CPU = ["CPUExecutionProvider"]  # exactness tests pin the provider; see test_cuda.py for CUDA


def _tensor(head, key):
    """The Tensor of an output_names key."""
    if key == "probabilities":
        return Tensor("prob", head.numbers[-1])
    kind, k = key
    if kind == "activation":
        return Tensor("y" if k == head.numbers[-1] else "x", k)
    return {"forward": Tensor("x", k - 1), "backward": Tensor("delta", k), "preactivation": Tensor("y", k)}[
        kind
    ]


def _run(net, X, keys, *, via_state=False, **options):
    """Outputs for output_names keys: straight from the input, or through the state."""
    tensors = tuple(dict.fromkeys(_tensor(net.head, key) for key in keys))
    if via_state:
        state, _ = net.run_state(X)
        values = net.run_from_state(state, tensors, **options)
    else:
        values, _ = net.run(X, tensors, **options)
    by_tensor = dict(zip(tensors, values))
    return [by_tensor[_tensor(net.head, key)] for key in keys]


VARIANTS = {
    "gemm": {},
    "gemm-transB": dict(trans_b=1),
    "matmul-add": dict(matmul=True),
    "dropout-softmax-flatten": dict(dropout=True, softmax=True, flatten=True),
    "float64": dict(dtype=np.float64),
    "opset12": dict(opset=12, softmax=True),
    "two-layers": dict(widths=(6, 5, 3)),
    "four-layers": dict(widths=(6, 7, 5, 4, 3)),
}


def _all_keys(head):
    return [key for key in output_names(head)]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
@pytest.mark.parametrize("via_state", [False, True], ids=["direct", "via-state"])
def test_head_outputs_match_numpy(variant, temperature, via_state):
    kw = VARIANTS[variant]
    model, weights, biases = mlp_model(**kw)
    dtype = kw.get("dtype", np.float32)
    net = get_network(model, CPU)
    X = np.random.default_rng(1).normal(size=(7, weights[0].shape[0])).astype(dtype)
    xs, deltas, acts = numpy_fisher(X, weights, biases, temperature)
    numbers = net.head.numbers
    assert numbers[-1] == 8 and len(numbers) == len(weights)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    keys = _all_keys(net.head)
    outputs = dict(zip(keys, _run(net, X, keys, temperature=temperature, via_state=via_state)))
    for j, k in enumerate(numbers):
        np.testing.assert_allclose(outputs["forward", k], xs[j], atol=tol, rtol=0)
        np.testing.assert_allclose(outputs["backward", k], deltas[j], atol=tol, rtol=0)
    first = numbers[0]
    for j, act in enumerate(acts):
        np.testing.assert_allclose(outputs["activation", first - 1 + j], act, atol=tol * 10, rtol=0)
    logits = acts[-1]
    probs = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(
        outputs["probabilities"], probs / probs.sum(1, keepdims=True), atol=tol, rtol=0
    )


def test_labels_input_overrides_uniform_default():
    model, weights, biases = mlp_model()
    net = get_network(model, CPU)
    X = np.random.default_rng(3).normal(size=(4, 6)).astype(np.float32)
    g = np.array([1.0, 0.0, 0.0])
    (delta,) = _run(net, X, [("backward", 7)], temperature=2.0, labels=g)
    _, deltas, _ = numpy_fisher(X, weights, biases, 2.0, labels=g)
    np.testing.assert_allclose(delta, deltas[1], atol=1e-6)
    (uniform,) = _run(net, X, [("backward", 7)], temperature=2.0)
    assert np.abs(uniform - delta).max() > 1e-3


def _cross_entropy(X, weights, biases, temperature):
    x = X
    for j, (W, b) in enumerate(zip(weights, biases)):
        x = x @ W + b
        if j < len(weights) - 1:
            x = np.maximum(x, 0)
    z = x / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_soft = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -(log_soft / log_soft.shape[1]).sum(axis=1)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_gradient_matches_central_finite_differences(temperature):
    """dE/dW_k = -outer(x_{k-1}, delta_k) / tau for each sample (float64)."""
    model, weights, biases = mlp_model(widths=(5, 6, 4, 3), dtype=np.float64, seed=4)
    net = get_network(model, CPU)
    X = np.random.default_rng(5).normal(size=(3, 5))
    keys = [(kind, k) for k in (6, 7, 8) for kind in ("forward", "backward")]
    out = dict(zip(keys, _run(net, X, keys, temperature=temperature)))
    eps = 1e-6
    for j, k in enumerate((6, 7, 8)):
        analytic = -np.einsum("ni,nj->nij", out["forward", k], out["backward", k]) / temperature
        numeric = np.zeros_like(analytic)
        for a in range(weights[j].shape[0]):
            for b in range(weights[j].shape[1]):
                plus = [w.copy() for w in weights]
                minus = [w.copy() for w in weights]
                plus[j][a, b] += eps
                minus[j][a, b] -= eps
                numeric[:, a, b] = (
                    _cross_entropy(X, plus, biases, temperature)
                    - _cross_entropy(X, minus, biases, temperature)
                ) / (2 * eps)
        np.testing.assert_allclose(analytic, numeric, atol=1e-8, rtol=0)


def test_caffe_style_graph_runs_batched():
    """bvlcalexnet shape: batch-1 input, constant Reshape, Dropout, Softmax."""
    model, _, _, weights, biases = caffe_alexnet_model()
    net = get_network(model, CPU)
    assert net.head.input_name == "pool5_1"
    assert [layer.name for layer in net.head.layers] == ["fc6", "fc7", "fc8"]
    assert net.input_shape == (3, 8, 8)
    X = np.random.default_rng(2).normal(size=(5, 3, 8, 8)).astype(np.float32)
    (probs, pool5) = _run(net, X, ["probabilities", ("activation", 5)])
    assert pool5.shape == (5, 36)
    one_by_one = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = np.concatenate([one_by_one.run(None, {"data_0": x[None]})[0] for x in X])
    np.testing.assert_allclose(probs, expected, atol=1e-6)
    xs, deltas, _ = numpy_fisher(pool5, weights, biases, 2.0)
    keys = [("backward", 6), ("forward", 6)]
    delta6, x5 = _run(net, X, keys)
    np.testing.assert_allclose(delta6, deltas[0], atol=1e-6)
    np.testing.assert_allclose(x5, xs[0], atol=1e-6)


def test_add_backward_gives_a_valid_saveable_model(tmp_path):
    model, _, _, weights, biases = caffe_alexnet_model()
    full = add_backward(model, temperature=1.5)
    onnx.checker.check_model(full, full_check=True)
    path = tmp_path / "fisher.onnx"
    onnx.save(full, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["data_0"]
    assert {i.name for i in session.get_overridable_initializers()} == {"fish_temperature", "fish_labels"}
    X = np.random.default_rng(0).normal(size=(3, 3, 8, 8)).astype(np.float32)
    default_tau = session.run(["fish_delta7"], {"data_0": X})[0]
    net = get_network(model, CPU)
    (expected,) = _run(net, X, [("backward", 7)], temperature=1.5)
    np.testing.assert_allclose(default_tau, expected, atol=1e-6)
    tau4 = session.run(["fish_delta7"], {"data_0": X, "fish_temperature": np.array(4.0, np.float32)})[0]
    (expected4,) = _run(net, X, [("backward", 7)], temperature=4.0)
    np.testing.assert_allclose(tau4, expected4, atol=1e-6)


def test_add_backward_on_mlp_keeps_tabular_input():
    model, _, _ = mlp_model()
    full = add_backward(model)
    onnx.checker.check_model(full, full_check=True)
    (inp,) = [i for i in full.graph.input if i.name == "input"]
    assert inp.type.tensor_type.shape.dim[0].dim_param == "N"


def _graph(nodes, inits, out, in_shape=("N", 4, 2, 2)):
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, list(in_shape))],
        [helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_graph_without_fc_head_is_rejected_naming_the_node():
    model = _graph([helper.make_node("GlobalAveragePool", ["x"], ["y"], name="gap")], {}, "y")
    with pytest.raises(
        HeadStructureError, match="GlobalAveragePool node 'gap'.*not by a fully connected layer"
    ):
        find_fc_head(model)


def test_fc_layers_joined_by_other_activation_stop_the_head():
    nodes = [
        helper.make_node("Flatten", ["x"], ["f"]),
        helper.make_node("Gemm", ["f", "W1"], ["y1"], name="fc_a"),
        helper.make_node("Sigmoid", ["y1"], ["s1"]),
        helper.make_node("Gemm", ["s1", "W2"], ["y2"], name="fc_b"),
    ]
    model = _graph(nodes, {"W1": np.ones((16, 5)), "W2": np.ones((5, 3))}, "y2")
    head = find_fc_head(model)
    # Only the top layer is FC-with-ReLU shaped: the Sigmoid output is the head input.
    assert head.numbers == (8,) and head.input_name == "s1"


def test_computed_weight_is_rejected():
    nodes = [
        helper.make_node("Flatten", ["x"], ["f"]),
        helper.make_node("Transpose", ["Wt"], ["W"]),
        helper.make_node("Gemm", ["f", "W"], ["y"], name="fc"),
    ]
    model = _graph(nodes, {"Wt": np.ones((3, 16))}, "y")
    with pytest.raises(
        HeadStructureError, match="Gemm node 'fc' takes its weight 'W' from a computed tensor"
    ):
        find_fc_head(model)


def test_flatten_on_other_axis_is_rejected():
    nodes = [
        helper.make_node("Flatten", ["x"], ["f"], axis=2),
        helper.make_node("Gemm", ["f", "W"], ["y"], name="fc"),
    ]
    model = _graph(nodes, {"W": np.ones((4, 3))}, "y")
    with pytest.raises(HeadStructureError, match="axis=2"):
        find_fc_head(model)


def test_old_opset_is_rejected_with_a_fix():
    model, _, _ = mlp_model()
    model.opset_import[0].version = 8
    with pytest.raises(HeadStructureError, match="opset 8.*version_converter"):
        find_fc_head(model)


@settings(max_examples=30, deadline=None)
@given(
    widths=st.lists(st.integers(1, 7), min_size=2, max_size=5),
    trans_b=st.sampled_from([0, 1]),
    matmul=st.booleans(),
    dropout=st.booleans(),
    softmax=st.booleans(),
    flatten=st.booleans(),
    temperature=st.floats(0.25, 8.0),
    seed=st.integers(0, 1000),
)
def test_random_fc_heads_match_numpy(widths, trans_b, matmul, dropout, softmax, flatten, temperature, seed):
    model, weights, biases = mlp_model(
        tuple(widths),
        seed=seed,
        dtype=np.float64,
        trans_b=trans_b,
        matmul=matmul,
        dropout=dropout,
        softmax=softmax,
        flatten=flatten,
    )
    net = get_network(model, CPU)
    assert net.head.numbers == tuple(range(9 - len(weights), 9))
    X = np.random.default_rng(seed).normal(size=(4, widths[0]))
    xs, deltas, _ = numpy_fisher(X, weights, biases, temperature)
    keys = [(kind, k) for k in net.head.numbers for kind in ("forward", "backward")]
    out = _run(net, X, keys, temperature=temperature)
    for (kind, k), value in zip(keys, out):
        expected = (xs if kind == "forward" else deltas)[k - net.head.numbers[0]]
        np.testing.assert_allclose(value, expected, atol=1e-12, rtol=1e-10)


# -- heads that cannot be read, and builder arguments that make no sense ------------------------


def _mlp_with(change):
    """An MLP whose graph ``change(graph)`` edits."""
    model = mlp_model()[0]
    change(model.graph)
    return model


def _node(graph, name):
    return next(node for node in graph.node if node.name == name)


def _set_attribute(node, **values):
    node.attribute.extend(helper.make_attribute(key, value) for key, value in values.items())


def test_unreadable_heads_say_why():
    cases = [
        (lambda g: _set_attribute(_node(g, "fc2"), transA=1), "Gemm node 'fc2' has transA=1"),
        (lambda g: _swap_bias_for_input(g), "Gemm node 'fc2' has a computed bias"),
        (
            lambda g: _cast_weight(g, "W0", np.float64),
            r"FC weights must share one float dtype, found \['float32', 'float64'\]",
        ),
        (lambda g: g.output.pop(), "the ONNX graph has no output"),
    ]
    for change, message in cases:
        with pytest.raises(HeadStructureError, match=message):
            find_fc_head(_mlp_with(change))
    with pytest.raises(
        TypeError, match="'model' parameter of find_fc_head must be an instance of .*ModelProto"
    ):
        find_fc_head("model.onnx")
    no_opset = mlp_model()[0]
    no_opset.opset_import[0].domain = "com.example"
    with pytest.raises(HeadStructureError, match="imports no default-domain ONNX opset"):
        find_fc_head(no_opset)


def _swap_bias_for_input(graph):
    node = _node(graph, "fc2")
    graph.input.append(helper.make_tensor_value_info("bias_in", onnx.TensorProto.FLOAT, [3]))
    node.input[2] = "bias_in"


def _cast_weight(graph, name, dtype):
    init = next(i for i in graph.initializer if i.name == name)
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(dtype), name))


def test_weights_given_by_constant_nodes_are_read():
    """Constant nodes (not initializers) hold the weights of some exporters."""
    model, weights, biases = mlp_model()
    graph = model.graph
    for name in ("W1", "b1"):
        init = next(i for i in graph.initializer if i.name == name)
        graph.node.insert(0, helper.make_node("Constant", [], [name], value=init))
        graph.initializer.remove(init)
    head = find_fc_head(model)
    np.testing.assert_array_equal(head.layers[1].weight, weights[1].astype(np.float32))


def test_builder_arguments_that_make_no_sense_are_refused():
    from skfishing._onnx.graph import build_head_model, build_model, network_input

    model = mlp_model()[0]
    head = find_fc_head(model)
    with pytest.raises(ValueError, match=r"labels must have shape \(3,\), got \(4,\)"):
        build_head_model(head, labels=np.ones(4))
    with pytest.raises(ValueError, match="input_sum needs the network input"):
        build_model(None, head, [Tensor("delta", 7)], from_state=True, input_sum=True)
    with pytest.raises(ValueError, match="are state tensors: read them from the state"):
        build_model(None, head, [Tensor("y", 8)], from_state=True)
    two_inputs = mlp_model()[0]
    two_inputs.graph.input.append(helper.make_tensor_value_info("extra", onnx.TensorProto.FLOAT, ["N", 6]))
    two_inputs.graph.node[0].input[0] = "extra"  # the first FC layer now reads a second input...
    two_inputs.graph.node.insert(0, helper.make_node("Add", ["input", "extra"], ["sum"]))
    two_inputs.graph.node[1].input[0] = "sum"  # ...through an Add of both: the trunk reads two inputs
    head = find_fc_head(two_inputs)
    with pytest.raises(
        ValueError, match=r"the network has 2 inputs \['input', 'extra'\]; one input is supported"
    ):
        network_input(two_inputs, head)


def test_trunk_and_forward_models_compute_the_network():
    from skfishing._onnx.graph import build_forward_model, build_trunk_model

    model, _, _, weights, biases = caffe_alexnet_model(seed=4)
    head = find_fc_head(model)
    X = np.random.default_rng(6).normal(size=(3, 3, 8, 8)).astype(np.float32)
    trunk = ort.InferenceSession(build_trunk_model(model, head).SerializeToString(), providers=CPU)
    pool5 = trunk.run(None, {"data_0": X})[0].reshape(3, -1)
    (expected,), _ = get_network(model, CPU).run(X, (Tensor("x", 5),))
    np.testing.assert_array_equal(pool5, expected)
    forward = ort.InferenceSession(build_forward_model(model, head).SerializeToString(), providers=CPU)
    state = forward.run(None, {"data_0": X})
    np.testing.assert_allclose(state[1], pool5.astype(np.float64) @ weights[0] + biases[0], atol=1e-4)
    assert build_trunk_model(*(lambda m: (m, find_fc_head(m)))(mlp_model()[0])) is None  # an MLP has no trunk
