"""ONNX graph surgery: find the fully connected head and add its backward pass.

The **trunk** of a classification network computes the input of its fully
connected (FC) head (``pool5`` for AlexNet); it is the original graph pruned
to that tensor, with a dynamic batch dimension. The FC layers are rebuilt
after it, and the backward pass of the paper's Eq. (10) is added from
standard ONNX operators only::

      delta_L = g - softmax(y_L / tau)
      delta_k = (W_{k+1} delta_{k+1}) * [y_k > 0]

for every FC layer ``k``. The temperature ``tau`` and the label vector ``g``
are graph inputs with defaults (2.0 and the uniform ``1 / P``), so changing
them needs no rebuild.

:func:`find_fc_head` reads the head (names, weights, ``transB``) from the
graph. :func:`add_backward` gives the whole network with its backward pass as
one model that can be saved and inspected (for example with Netron). For
running, :func:`build_forward_model` (trunk and FC layers: everything that
does not depend on ``tau`` and ``g``) and :func:`build_backward_model` (one
per layer, from the logits down to it) split the work so that the forward
part runs once per image; :func:`build_head_model` and
:func:`build_trunk_model` give the head and the trunk alone.

Layer numbering follows the paper and Caffe: the last FC layer (the
classifier) is number 8, the one below it 7, and so on, so a head of ``n`` FC
layers has layers ``9 - n`` to ``8`` and its input (AlexNet's pool5) is
activation ``8 - n``.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .head import _GraphIndex, find_fc_head

__all__ = [
    "build_head_model",
    "build_forward_model",
    "build_backward_model",
    "output_names",
    "build_trunk_model",
    "add_backward",
    "PREFIX",
]

#: Prefix of every tensor the head adds, so it never clashes with the network.
PREFIX = "fish_"

def output_names(head):
    """Names of the head's tensors, keyed by what they hold.

    Returns a dict with keys ``("forward", k)`` (``x_{k-1}``, the input of FC
    layer ``k``), ``("backward", k)`` (``delta_k``), ``("activation", k)``
    (``x_k`` for the head input and hidden layers, the logits ``y_L`` for the
    classifier), ``("preactivation", k)`` (``y_k``) and ``"probabilities"``
    (``softmax(y_L)``, no temperature).
    """
    names = {}
    for layer in head.layers:
        k = layer.number
        names["forward", k] = f"{PREFIX}x{k - 1}"
        names["activation", k - 1] = f"{PREFIX}x{k - 1}"
        names["backward", k] = f"{PREFIX}delta{k}"
        names["preactivation", k] = f"{PREFIX}y{k}"
    last = head.layers[-1].number
    names["activation", last] = f"{PREFIX}y{last}"
    names["probabilities"] = f"{PREFIX}prob{last}"
    return names


class _Parts:
    """Nodes and initializers of a graph being built in the head's dtype."""

    def __init__(self, head):
        self.head = head
        self.elem = helper.np_dtype_to_tensor_dtype(head.dtype)
        self.nodes, self.inits = [], []

    def const(self, name, value):
        if name not in {i.name for i in self.inits}:
            self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=self.head.dtype), name))
        return name

    def node(self, op, inputs, output, **attrs):
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def info(self, name, width):
        return helper.make_tensor_value_info(name, self.elem, ["N", width])


def _forward_parts(parts):
    """Flatten the head input, then every FC layer up to the logits."""
    head, p = parts.head, PREFIX
    x = parts.node("Flatten", [head.input_name], f"{p}x{head.input_number}", axis=1)
    for layer in head.layers:
        k = layer.number
        gemm_inputs = [x, parts.const(f"{p}W{k}", layer.weight)]
        if layer.bias is not None:
            gemm_inputs.append(parts.const(f"{p}b{k}", layer.bias))
        y = parts.node("Gemm", gemm_inputs, f"{p}y{k}")
        if layer is not head.layers[-1]:
            x = parts.node("Relu", [y], f"{p}x{k}")
    parts.node("Softmax", [y], f"{p}prob{head.layers[-1].number}", axis=1)


def _backward_parts(parts, lowest, temperature, labels):
    """Eq. (10) from the logits down to ``delta_lowest``; returns the extra inputs."""
    head, p = parts.head, PREFIX
    last = head.layers[-1].number
    n_classes = head.n_classes
    g = np.full(n_classes, 1.0 / n_classes) if labels is None else np.asarray(labels, dtype=np.float64)
    if g.shape != (n_classes,):
        raise ValueError(f"labels must have shape ({n_classes},), got {g.shape}")
    parts.const(f"{p}temperature", temperature)
    parts.const(f"{p}labels", g)
    scaled = parts.node("Div", [f"{p}y{last}", f"{p}temperature"], f"{p}scaled{last}")
    soft = parts.node("Softmax", [scaled], f"{p}soft{last}", axis=1)
    delta = parts.node("Sub", [f"{p}labels", soft], f"{p}delta{last}")
    zero = parts.const(f"{p}zero", 0)
    for k in range(last - 1, lowest - 1, -1):
        # delta_k = (delta_{k+1} @ W_{k+1}^T) * [y_k > 0]; W is stored (in, out).
        weight = parts.const(f"{p}W{k + 1}", head.layers[k + 1 - head.layers[0].number].weight)
        bp = parts.node("Gemm", [delta, weight], f"{p}bp{k}", transB=1)
        mask = parts.node("Greater", [f"{p}y{k}", zero], f"{p}mask{k}")
        delta = parts.node("Where", [mask, bp, zero], f"{p}delta{k}")
    return [
        helper.make_tensor_value_info(f"{p}temperature", parts.elem, []),
        helper.make_tensor_value_info(f"{p}labels", parts.elem, [n_classes]),
    ]


def _outputs(parts, keys):
    names = output_names(parts.head)
    infos, seen = [], set()
    for key in keys:
        if names[key] not in seen:
            seen.add(names[key])
            width = parts.head.n_classes if key == "probabilities" else _width(parts.head, key)
            infos.append(parts.info(names[key], width))
    return infos


def _width(head, key):
    kind, k = key
    by_number = {layer.number: layer for layer in head.layers}
    if kind in ("backward", "preactivation"):
        return by_number[k].n_outputs
    if kind == "forward":
        return by_number[k].n_inputs
    return by_number[k + 1].n_inputs if k + 1 in by_number else by_number[k].n_outputs


def _finish(graph, opset, source=None):
    """Wrap a graph in a model with the source's opsets (or ``opset``)."""
    if source is None:
        opsets = [helper.make_opsetid("", opset)]
        ir_version = helper.find_min_ir_version_for(opsets)
    else:
        opsets = list(source.opset_import)
        ir_version = max(source.ir_version, helper.find_min_ir_version_for(opsets), 4)
    model = helper.make_model(graph, opset_imports=opsets, producer_name="skfishing")
    model.ir_version = ir_version
    return model


def _state_keys(head):
    """What :func:`build_forward_model` outputs: the head input and every y_k."""
    return [("activation", head.input_number)] + [("preactivation", k) for k in head.numbers]


def build_forward_model(model, head):
    """The network from its input to every FC pre-activation, batch-dynamic.

    The trunk of ``model`` (pruned to the head input) followed by the FC
    head's forward pass. Its outputs, the flattened head input and the
    pre-activations ``y_k`` of every FC layer, do not depend on the
    temperature or the labels: together they are the *state* of a sample,
    which is what gets cached per image.

    Parameters
    ----------
    model : onnx.ModelProto
        The classifier.
    head : FCHead
        Its head, as returned by :func:`find_fc_head`.

    Returns
    -------
    model : onnx.ModelProto
        One input (the network input, batch dimension dynamic); outputs the
        flattened head input and every ``y_k``, named as in
        :func:`output_names`.
    """
    parts = _Parts(head)
    _forward_parts(parts)
    outputs = _outputs(parts, _state_keys(head))
    return _with_trunk(model, head, parts, [], outputs, "skfishing_forward")


def build_backward_model(head, layer, *, temperature=2.0, labels=None):
    """The backward pass of Eq. (10) from the logits down to ``delta_layer``.

    Parameters
    ----------
    head : FCHead
        As returned by :func:`find_fc_head`.
    layer : int
        Paper number of the FC layer whose ``delta`` is computed.
    temperature : float, default=2.0
        Default of the ``fish_temperature`` input.
    labels : array-like of shape (n_classes,), default=None
        Default of the ``fish_labels`` input; None means uniform ``1 / P``.

    Returns
    -------
    model : onnx.ModelProto
        Inputs: the pre-activations ``fish_y{k}`` for ``k >= layer`` (the
        logits and the ReLU masks), ``fish_temperature`` and ``fish_labels``
        (both overridable initializers); output: ``fish_delta{layer}``.
    """
    if layer not in head.numbers:
        raise ValueError(f"layer {layer} is not an FC layer of this head {head.numbers}")
    parts = _Parts(head)
    extra_inputs = _backward_parts(parts, layer, temperature, labels)
    inputs = [parts.info(f"{PREFIX}y{k}", _width(head, ("preactivation", k))) for k in head.numbers if k >= layer]
    graph = helper.make_graph(
        parts.nodes,
        "skfishing_backward",
        inputs + extra_inputs,
        _outputs(parts, [("backward", layer)]),
        initializer=parts.inits,
    )
    return _finish(graph, head.opset)


def _full_head_parts(head, temperature, labels):
    parts = _Parts(head)
    _forward_parts(parts)
    extra_inputs = _backward_parts(parts, head.numbers[0], temperature, labels)
    keys = [key for key in output_names(head) if key[0] != "preactivation"]
    return parts, extra_inputs, _outputs(parts, keys)


def build_head_model(head, *, temperature=2.0, labels=None):
    """The FC head with its backward subgraph, as a standalone ONNX model.

    Parameters
    ----------
    head : FCHead
        As returned by :func:`find_fc_head`.
    temperature : float, default=2.0
        Default of the ``fish_temperature`` input.
    labels : array-like of shape (n_classes,), default=None
        Default of the ``fish_labels`` input; None means uniform ``1 / P``.

    Returns
    -------
    model : onnx.ModelProto
        Inputs: the head input tensor (any shape whose trailing dimensions
        flatten to the first FC layer's width), ``fish_temperature`` and
        ``fish_labels``; outputs as listed by :func:`output_names` (without
        the pre-activations).
    """
    parts, extra_inputs, outputs = _full_head_parts(head, temperature, labels)
    head_input = helper.make_tensor_value_info(head.input_name, parts.elem, None)
    graph = helper.make_graph(
        parts.nodes, "skfishing_head", [head_input] + extra_inputs, outputs, initializer=parts.inits
    )
    return _finish(graph, head.opset)


def _pruned_graph_parts(model, target):
    """Nodes and initializers of ``model`` needed to compute ``target``."""
    index = _GraphIndex(model.graph)
    needed, stack, keep = {target}, [target], set()
    while stack:
        node = index.producer.get(stack.pop())
        if node is None or id(node) in keep:
            continue
        keep.add(id(node))
        for name in node.input:
            if name and name not in needed:
                needed.add(name)
                stack.append(name)
        for attr in node.attribute:  # names used inside subgraphs (If/Loop)
            for sub in [attr.g] + list(attr.graphs):
                for sub_node in sub.node:
                    for name in sub_node.input:
                        if name and name not in needed:
                            needed.add(name)
                            stack.append(name)
    nodes = [n for n in model.graph.node if id(n) in keep]
    inits = [i for i in model.graph.initializer if i.name in needed]
    inputs = [i for i in model.graph.input if i.name in needed and i.name not in index.constants]
    return nodes, inits, inputs


def _dynamic_batch(value_info):
    """Copy of a graph input with its first dimension made symbolic."""
    value_info = onnx.ValueInfoProto.FromString(value_info.SerializeToString())
    dims = value_info.type.tensor_type.shape.dim
    if len(dims):
        dims[0].Clear()
        dims[0].dim_param = "N"
    return value_info


def build_trunk_model(model, head):
    """The part of ``model`` that computes the head input, batch-dynamic.

    Parameters
    ----------
    model : onnx.ModelProto
        The classifier.
    head : FCHead
        Its head, as returned by :func:`find_fc_head`.

    Returns
    -------
    model : onnx.ModelProto or None
        From the network input to the head input; None when the head input
        is a graph input (a plain MLP): then there is no trunk to run.
    """
    index = _GraphIndex(model.graph)
    if head.input_name in index.graph_inputs:
        return None
    nodes, inits, inputs = _pruned_graph_parts(model, head.input_name)
    elem = helper.np_dtype_to_tensor_dtype(head.dtype)
    output = helper.make_tensor_value_info(head.input_name, elem, None)
    graph = helper.make_graph(
        nodes, "skfishing_trunk", [_dynamic_batch(i) for i in inputs], [output], initializer=inits
    )
    return _finish(graph, head.opset, source=model)


def add_backward(model, *, temperature=2.0, labels=None):
    """Append the backward subgraph of the FC head to an ONNX classifier.

    The result runs the trunk, then recomputes the FC head and its backward
    pass; its outputs are those of :func:`output_names`, its extra inputs
    ``fish_temperature`` and ``fish_labels`` have defaults, and its batch
    dimension is dynamic. It passes ``onnx.checker`` and can be saved with
    ``onnx.save`` and run by any ONNX runtime.

    Parameters
    ----------
    model : onnx.ModelProto
        A classifier without backward subgraph.
    temperature : float, default=2.0
        Default temperature ``tau``.
    labels : array-like of shape (n_classes,), default=None
        Default label vector ``g``; None means uniform.

    Returns
    -------
    model : onnx.ModelProto
    """
    head = find_fc_head(model)
    parts, extra_inputs, outputs = _full_head_parts(head, temperature, labels)
    return _with_trunk(model, head, parts, extra_inputs, outputs, "skfishing_fisher")


def _with_trunk(model, head, parts, extra_inputs, outputs, name):
    """A model of the trunk of ``model`` followed by ``parts``."""
    trunk = build_trunk_model(model, head)
    if trunk is None:
        graph_inputs = [_dynamic_batch(i) for i in model.graph.input if i.name == head.input_name]
        trunk_nodes, trunk_inits = [], []
    else:
        graph_inputs = list(trunk.graph.input)
        trunk_nodes, trunk_inits = list(trunk.graph.node), list(trunk.graph.initializer)
    graph = helper.make_graph(
        trunk_nodes + parts.nodes,
        name,
        graph_inputs + extra_inputs,
        outputs,
        initializer=trunk_inits + parts.inits,
    )
    return _finish(graph, head.opset, source=model)
