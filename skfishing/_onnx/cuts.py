r"""Cuts of a classifier's graph: what a cache keeps per image for the layers of its trunk.

The gradient of a layer :math:`L` of the trunk (:mod:`skfishing._onnx.vjp`)
needs a forward pass from :math:`L` to the logits and the reverse pass back
to :math:`L`, at the temperature and labels asked for. None of that needs
the image itself, only the tensors that the graph carries past :math:`L`:
the *cut* at :math:`L` is the set of tensors that depend on the network
input, are produced by nodes before :math:`L` (in the graph's topological
order) and are read by :math:`L` or by a node after it on the way to the
logits. For a plain chain that is :math:`L`'s input; inside a residual
block, the block's input (the residual) too.

Every layer at or after :math:`L` (and the FC head's state, see
:meth:`~skfishing.FCHead.state`) is computed from the cut at
:math:`L` by a graph that starts there (:func:`from_cut`), at any
temperature and labels: a model-selection cache stores the cut of each
image once (:class:`~skfishing._extraction.cache_lookup.CacheLookup`). A cut takes
:attr:`Cut.width` floats per image, the sum of its tensors' per-image
sizes.

Shapes computed from the batch size before the cut (``Shape`` of a tensor
of static per-image shape) are computed again from the cut's batch size
(:attr:`Cut.shape_of`). A layer has no cut (:func:`layer_cut` returns None,
and it is computed from the image every time) when one of its tensors is
not a per-image float tensor of static shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral

import numpy as np
import onnx
from onnx import helper
from sklearn.utils._param_validation import validate_params

from .graph import dynamic_batch, finish_model, needed_nodes
from .head import PREFIX

__all__ = []  # used by skfishing._onnx.network; nothing here is for users

#: Output of :func:`build_cut_model`: the sum of each sample's network input.
CUT_INPUT_SUM = f"{PREFIX}cut_input_sum"


@dataclass(frozen=True, eq=False)
class Cut:
    """The tensors a graph carries past one of its nodes, per image.

    Attributes
    ----------
    position : int
        Index, in the graph's node list, of the layer node the cut is before.
    names : tuple of str
        The tensors, in the order they are stored.
    shapes : tuple of tuple of int
        Their per-image shapes.
    elem_type : int
        Their ONNX element type (that of the network's float computations).
    shape_of : tuple of (str, tuple of int, int, int or None)
        ``Shape`` nodes before the cut whose input has a static per-image
        shape: their output's name, that shape, and the node's ``start`` and
        ``end``. Their value depends on the batch size only, so the graphs
        that start at the cut compute it from the batch size of the cut's
        first tensor instead (a batch-wide shape computation, such as the
        reshapes of an attention block, needs no cut tensor of its own).
    """

    position: int
    names: tuple
    shapes: tuple
    elem_type: int
    shape_of: tuple = ()

    def __post_init__(self):
        if self.position < 0 or len(self.names) != len(self.shapes) or not self.names:
            raise ValueError(f"a Cut needs a position >= 0 and one shape per tensor, got {self!r}")

    @property
    def sizes(self):
        """Floats per image of each tensor."""
        return [int(np.prod(shape)) for shape in self.shapes]

    @property
    def width(self):
        """Floats per image of the whole cut: what a cache stores for each image."""
        return sum(self.sizes)

    def split(self, rows):
        """The tensors of ``rows`` (shape ``(n, width)``), as feeds of :func:`from_cut`'s graph."""
        offsets = np.cumsum([0] + self.sizes)
        return {
            name: np.ascontiguousarray(rows[:, a:b]).reshape((len(rows),) + tuple(shape))
            for name, shape, a, b in zip(self.names, self.shapes, offsets[:-1], offsets[1:])
        }


def _data_inputs(graph):
    constants = {i.name for i in graph.initializer}
    return [i.name for i in graph.input if i.name not in constants]


@validate_params(
    {"builder": "no_validation", "position": [Integral], "logits": [str]}, prefer_skip_nested_validation=True
)  # a vjp.LayerGraphBuilder
def layer_cut(builder, position, logits):
    """The cut before node ``position`` of a graph, or None when it cannot be stored per image.

    Parameters
    ----------
    builder : skfishing._onnx.vjp.LayerGraphBuilder
        The classifier's graph with its inferred shapes (input size fixed).
    position : int
        Index of the layer's node in ``builder.graph.node``.
    logits : str
        Name of the logits tensor.

    Returns
    -------
    cut : Cut or None
    """
    nodes = list(builder.graph.node)
    index = {out: i for i, node in enumerate(nodes) for out in node.output}
    shape_of = {}
    for node in nodes[:position]:
        shape = builder.shapes.get(node.input[0]) if node.op_type == "Shape" else None
        if shape and shape[0] is None and all(d is not None for d in shape[1:]):
            end = next((a.i for a in node.attribute if a.name == "end"), None)
            start = next((a.i for a in node.attribute if a.name == "start"), 0)
            shape_of[node.output[0]] = (tuple(shape[1:]), start, end)
    dynamic = set(_data_inputs(builder.graph))
    for node in nodes:
        if node.output[0] not in shape_of and any(name in dynamic for name in node.input):
            dynamic.update(node.output)
    kept, _ = needed_nodes(nodes, [logits], set())
    names = []
    for node in kept:
        if index[node.output[0]] < position:
            continue
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            return None  # If/Loop: the names their bodies read are not followed here
        for name in node.input:
            if name in dynamic and index.get(name, -1) < position and name not in names:
                names.append(name)
    elem = builder.elem_types.get(logits)
    shapes = []
    for name in names:
        shape = builder.shapes.get(name)
        if (
            not shape
            or shape[0] is not None
            or any(d is None or d < 1 for d in shape[1:])
            or builder.elem_types.get(name) != elem
        ):
            return None
        shapes.append(tuple(shape[1:]))
    if not names or elem not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE):
        return None
    used = {name for node in kept for name in node.input}
    shape_of = tuple((name, *value) for name, value in shape_of.items() if name in used)
    return Cut(position, tuple(names), tuple(shapes), elem, shape_of)


def _shape_nodes(cut, name, dims, start, end):
    """Nodes computing ``Shape`` of a tensor of per-image shape ``dims`` from the batch size of the cut."""
    prefix = f"{PREFIX}cut_shape_{name}"
    full = np.array([0, *dims], dtype=np.int64)
    inits = [
        onnx.numpy_helper.from_array(full[1:], f"{prefix}_dims"),
        onnx.numpy_helper.from_array(np.array([0], dtype=np.int64), f"{prefix}_zero"),
        onnx.numpy_helper.from_array(np.array([1], dtype=np.int64), f"{prefix}_one"),
    ]
    nodes = [
        helper.make_node("Shape", [cut.names[0]], [f"{prefix}_cut"]),
        helper.make_node("Slice", [f"{prefix}_cut", f"{prefix}_zero", f"{prefix}_one"], [f"{prefix}_n"]),
        helper.make_node("Concat", [f"{prefix}_n", f"{prefix}_dims"], [f"{prefix}_all"], axis=0),
    ]
    rank = len(full)
    start = start + rank if start < 0 else start
    end = rank if end is None else (end + rank if end < 0 else end)
    inits += [
        onnx.numpy_helper.from_array(np.array([start], dtype=np.int64), f"{prefix}_start"),
        onnx.numpy_helper.from_array(np.array([max(end, start)], dtype=np.int64), f"{prefix}_end"),
    ]
    nodes.append(helper.make_node("Slice", [f"{prefix}_all", f"{prefix}_start", f"{prefix}_end"], [name]))
    return nodes, inits


@validate_params(
    {"model": [onnx.ModelProto], "cut": [Cut], "input_name": [str]}, prefer_skip_nested_validation=True
)
def build_cut_model(model, cut, input_name):
    """A model from the network input to the tensors of ``cut`` and the sum of each input.

    Parameters
    ----------
    model : onnx.ModelProto
        The classifier.
    cut : Cut
        A cut of it (:func:`layer_cut`).
    input_name : str
        Its network input.

    Returns
    -------
    model : onnx.ModelProto
        Batch-dynamic; outputs ``cut.names``, then :data:`CUT_INPUT_SUM` for a
        float input.
    """
    graph = model.graph
    nodes, read = needed_nodes(list(graph.node), list(cut.names), set())
    (info,) = [i for i in graph.input if i.name == input_name]
    opset = next(i.version for i in model.opset_import if i.domain in ("", "ai.onnx"))
    inits = [i for i in graph.initializer if i.name in read]
    outputs = [helper.make_tensor_value_info(name, cut.elem_type, None) for name in cut.names]
    input_elem = info.type.tensor_type.elem_type
    if input_elem in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16):
        flat = f"{PREFIX}cut_input_flat"
        nodes = nodes + [helper.make_node("Flatten", [input_name], [flat], axis=1)]
        if opset >= 13:
            axes = f"{PREFIX}cut_input_axes"
            inits.append(onnx.numpy_helper.from_array(np.array([1], dtype=np.int64), axes))
            nodes.append(helper.make_node("ReduceSum", [flat, axes], [CUT_INPUT_SUM], keepdims=0))
        else:
            nodes.append(helper.make_node("ReduceSum", [flat], [CUT_INPUT_SUM], axes=[1], keepdims=0))
        outputs.append(helper.make_tensor_value_info(CUT_INPUT_SUM, input_elem, ["N"]))
    made = helper.make_graph(nodes, "skfishing_cut", [dynamic_batch(info)], outputs, initializer=inits)
    return finish_model(made, opset, source=model)


@validate_params(
    {"model": [onnx.ModelProto], "cut": [Cut], "input_name": [str]}, prefer_skip_nested_validation=True
)
def from_cut(model, cut, input_name):
    """``model`` (a graph of :mod:`skfishing._onnx.graph` or :mod:`skfishing._onnx.vjp` on the network input) started at ``cut``.

    Parameters
    ----------
    model : onnx.ModelProto
        A model whose nodes of the classifier keep their tensor names.
    cut : Cut
        A cut of the classifier.
    input_name : str
        The network input, which the result must not read.

    Returns
    -------
    model : onnx.ModelProto
        Inputs: the cut's tensors (batch-dynamic), then the model's other
        inputs that are still read (the temperature and the labels).

    Raises
    ------
    ValueError
        If the outputs need a tensor computed before the cut other than
        those it holds (a layer or state upstream of the cut).
    """
    graph = model.graph
    outputs = [o.name for o in graph.output]
    stop = set(cut.names)
    rewritten = {name: _shape_nodes(cut, name, dims, start, end) for name, dims, start, end in cut.shape_of}
    all_nodes, all_inits = [], list(graph.initializer)
    for node in graph.node:
        if node.op_type == "Shape" and node.output[0] in rewritten:
            made, inits = rewritten[node.output[0]]
            all_nodes += made
            all_inits += inits
        else:
            all_nodes.append(node)
    nodes, read = needed_nodes(all_nodes, outputs, stop)
    if input_name not in stop and (input_name in read or input_name in outputs):
        raise ValueError(f"the outputs {outputs} are not computed from the cut at node {cut.position}")
    inits = [i for i in all_inits if i.name in read]
    cut_inputs = [
        helper.make_tensor_value_info(name, cut.elem_type, ["N", *shape])
        for name, shape in zip(cut.names, cut.shapes)
        if name in read
    ]
    others = [i for i in graph.input if i.name in read and i.name not in stop and i.name != input_name]
    made = helper.make_graph(
        nodes, "skfishing_from_cut", cut_inputs + others, list(graph.output), initializer=inits
    )
    return finish_model(made, 0, source=model)
