"""Whether the nodes between a trunk and its FC head flatten each sample.

The graph surgery of :mod:`skfishing._onnx.graph` drops the nodes between the trunk
output and the first FC layer and flattens the trunk output itself
(``Flatten(axis=1)``). That is right only when those nodes compute exactly
that: one row per sample, its values in C order. Exporters spell it many
ways (``Flatten``, ``Squeeze`` of 1x1 dimensions, ``Reshape`` to a constant,
or to ``[x.size(0), -1]`` computed by ``Shape -> Gather -> Unsqueeze ->
Concat``), so :func:`check_flatten` decides from what the graph computes:
the shape subgraph of a ``Reshape`` is evaluated symbolically, with the batch
dimension as a symbol, and the target must provably keep the batch as its
first dimension. Anything else is refused with a
:class:`~skfishing.HeadStructureError` naming the node.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from .graph_index import attribute

__all__ = []  # what is here serves head.py (find_fc_head); nothing is user API

#: The symbolic batch dimension of the evaluated shapes.
BATCH = ("batch",)
#: Name of the symbolic batch dimension given to the graph inputs for shape inference.
_BATCH_PARAM = "fish_batch"
_INT_TYPES = frozenset({onnx.TensorProto.INT64, onnx.TensorProto.INT32})
#: Operators :func:`check_flatten` can prove to keep one row per sample.
FLATTEN_OPS = frozenset({"Flatten", "Reshape", "Squeeze"})


def _light_model(model):
    """A copy of ``model`` without float weights, batch made symbolic, for shape inference."""
    graph = model.graph
    light = onnx.GraphProto(name=graph.name)
    light.node.extend(graph.node)
    init_names = {init.name for init in graph.initializer}
    for value_info in graph.input:
        if value_info.name in init_names:
            continue
        value_info = onnx.ValueInfoProto.FromString(value_info.SerializeToString())
        dims = value_info.type.tensor_type.shape.dim
        if len(dims):
            dims[0].Clear()
            dims[0].dim_param = _BATCH_PARAM
        light.input.append(value_info)
    for init in graph.initializer:
        if init.data_type in _INT_TYPES and np.prod(init.dims, dtype=np.int64) <= 64:
            light.initializer.append(init)
        else:
            light.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    light.output.extend(graph.output)
    result = helper.make_model(light, opset_imports=list(model.opset_import))
    result.ir_version = max(model.ir_version, 4)
    return result


def _fixed_batch(model):
    """The batch size fixed by the graph inputs' first dimension, or None."""
    init_names = {init.name for init in model.graph.initializer}
    sizes = set()
    for value_info in model.graph.input:
        dims = value_info.type.tensor_type.shape.dim
        if value_info.name not in init_names and len(dims):
            sizes.add(dims[0].dim_value if dims[0].HasField("dim_value") else None)
    return sizes.pop() if len(sizes) == 1 else None


class ShapeEvaluator:
    """Symbolic values of the small integer tensors that compute shapes.

    Values are ints or lists whose elements are ints, :data:`BATCH`, or
    ``("dim", tensor, axis)`` for a dimension nobody knows statically.
    """

    def __init__(self, model, index):
        self.model = model
        self.index = index
        self.batch_tensors = set()
        self._dims = None
        self.fixed_batch = _fixed_batch(model)

    def dims(self, tensor):
        """Inferred shape of ``tensor``: a list of int, BATCH or None; None if unknown."""
        if self._dims is None:
            self._dims = {}
            try:
                inferred = onnx.shape_inference.infer_shapes(_light_model(self.model))
            except Exception:  # noqa: BLE001 - inference is a best effort
                inferred = None
            if inferred is not None:
                graph = inferred.graph
                for value_info in list(graph.value_info) + list(graph.input) + list(graph.output):
                    type_ = value_info.type.tensor_type
                    if not type_.HasField("shape"):
                        continue
                    self._dims[value_info.name] = [
                        d.dim_value
                        if d.HasField("dim_value")
                        else (BATCH if d.dim_param == _BATCH_PARAM else None)
                        for d in type_.shape.dim
                    ]
        dims = self._dims.get(tensor)
        if dims is not None and tensor in self.batch_tensors and dims:
            dims = [BATCH] + dims[1:]
        return dims

    def is_batch(self, tensor):
        """Whether the first dimension of ``tensor`` is the batch."""
        if tensor in self.batch_tensors or tensor in self.index.graph_inputs:
            return True
        dims = self.dims(tensor)
        return bool(dims) and dims[0] is BATCH

    def rank(self, tensor):
        dims = self.dims(tensor)
        return None if dims is None else len(dims)

    def value(self, name, depth=0):
        """The symbolic value of tensor ``name``, or None when it cannot be evaluated."""
        if not name or depth > 64:
            return None
        const = self.index.constant(name)
        if const is not None:
            if const.dtype.kind not in "iu" or const.ndim > 1:
                return None
            return const.tolist()
        node = self.index.producer.get(name)
        if node is None:
            return None
        op = node.op_type
        if op == "Constant":
            value = attribute(node, "value_int", None)
            return value if value is not None else attribute(node, "value_ints", None)
        if op == "Shape":
            return self._shape(node)
        if op in ("Cast", "Identity"):
            return self.value(node.input[0], depth + 1)
        inputs = [self.value(i, depth + 1) if i else None for i in node.input]
        if op == "Gather":
            return _gather(inputs[0], inputs[1], attribute(node, "axis", 0))
        if op in ("Unsqueeze", "Squeeze"):
            axes = attribute(node, "axes", None) if len(node.input) < 2 else inputs[1]
            if op == "Unsqueeze" and _is_scalar(inputs[0]) and axes in ([0], [-1]):
                return [inputs[0]]
            if (
                op == "Squeeze"
                and isinstance(inputs[0], list)
                and len(inputs[0]) == 1
                and axes in (None, [0], [-1])
            ):
                return inputs[0][0]
            return None
        if op == "Concat":
            if attribute(node, "axis", 0) not in (0, -1) or not all(isinstance(v, list) for v in inputs):
                return None
            return [e for v in inputs for e in v]
        if op == "Slice":
            return self._slice(node, inputs)
        return None

    def _shape(self, node):
        tensor = node.input[0]
        dims = self.dims(tensor)
        if dims is None:
            return None
        values = []
        for axis, dim in enumerate(dims):
            if axis == 0 and self.is_batch(tensor):
                values.append(BATCH)
            elif isinstance(dim, int) and dim > 0:
                values.append(dim)
            else:
                values.append(("dim", tensor, axis))
        start, end = attribute(node, "start", 0), attribute(node, "end", None)
        return values[start:end]

    def _slice(self, node, inputs):
        data = inputs[0]
        if not isinstance(data, list):
            return None
        if len(node.input) == 1:  # opset < 10: attributes
            starts, ends = attribute(node, "starts", None), attribute(node, "ends", None)
            axes, steps = attribute(node, "axes", [0]), [1]
        else:
            starts, ends = inputs[1], inputs[2]
            axes = inputs[3] if len(inputs) > 3 and node.input[3] else [0]
            steps = inputs[4] if len(inputs) > 4 and node.input[4] else [1]
        parts = (starts, ends, axes, steps)
        if not all(isinstance(p, list) and len(p) == 1 and isinstance(p[0], int) for p in parts):
            return None
        if axes[0] not in (0, -1) or steps[0] == 0:
            return None
        return data[slice(starts[0], ends[0], steps[0])]


def _is_scalar(value):
    """Whether a symbolic value is one element (int, BATCH or unknown dimension)."""
    return value is not None and not isinstance(value, list)


def _gather(data, indices, axis):
    if not isinstance(data, list) or axis not in (0, -1):
        return None
    n = len(data)

    def pick(i):
        return data[i] if isinstance(i, int) and -n <= i < n else None

    if isinstance(indices, int):
        return pick(indices)
    if isinstance(indices, list):
        picked = [pick(i) for i in indices]
        return None if any(p is None for p in picked) else picked
    return None


def _normalised_axes(axes, rank):
    if rank is None and any(a < 0 for a in axes):
        return None
    return sorted(a + rank if a < 0 else a for a in axes)


def _per_sample_target(evaluator, node):
    """Whether Reshape ``node`` keeps the batch as its first dimension."""
    data = node.input[0]
    target = evaluator.value(node.input[1])
    if not isinstance(target, list) or not target:
        return False
    first, rest = target[0], target[1:]
    allowzero = attribute(node, "allowzero", 0)
    if first is BATCH or (first == 0 and not allowzero):
        return True
    if evaluator.fixed_batch is not None and first == evaluator.fixed_batch:
        return True  # the graph runs at that batch size only (Caffe's [1, 9216])
    # [-1, d1, ...] or [1, d1, ...]: per sample when the target's trailing
    # dimensions hold exactly one sample.
    if first not in (-1, 1):
        return False
    if not all(isinstance(d, int) and d > 0 for d in rest):
        return False
    dims = evaluator.dims(data)
    if not dims or not all(isinstance(d, int) and d > 0 for d in dims[1:]):
        return False
    return int(np.prod(rest, dtype=np.int64)) == int(np.prod(dims[1:], dtype=np.int64))


def check_flatten(evaluator, top, bottom, error):
    """Check that the nodes from ``bottom`` up to ``top`` keep one row per sample.

    Parameters
    ----------
    evaluator : ShapeEvaluator
    top, bottom : str
        Tensor names: the FC input and the tensor below the flatten nodes
        (whose first dimension is the batch).
    error : type
        Exception class raised when a node cannot be proven to flatten.
    """
    chain, tensor = [], top
    while tensor != bottom:
        node = evaluator.index.producer[tensor]
        chain.append(node)
        tensor = node.input[0]
    evaluator.batch_tensors.add(bottom)
    rank = evaluator.rank(bottom)
    for node in reversed(chain):
        name = node.name or node.output[0]
        rank = _rank_after(evaluator, node, rank)
        if node.op_type == "Flatten":
            axis = attribute(node, "axis", 1)
            if axis < 0 and evaluator.rank(node.input[0]) is not None:
                axis += evaluator.rank(node.input[0])
            if axis != 1:
                raise error(
                    f"Flatten node '{name}' below the FC head has axis="
                    f"{attribute(node, 'axis', 1)}; only axis=1 (one row per sample) is supported"
                )
        elif node.op_type == "Squeeze":
            axes = attribute(node, "axes", None) if len(node.input) < 2 else evaluator.value(node.input[1])
            if isinstance(axes, list):
                axes = _normalised_axes(axes, evaluator.rank(node.input[0]))
            if not isinstance(axes, list) or not axes or 0 in axes:
                raise error(
                    f"Squeeze node '{name}' below the FC head does not name axes that "
                    "leave the batch dimension (axis 0) in place; cannot tell that it "
                    "flattens each sample"
                )
        elif node.op_type == "Reshape" and not _per_sample_target(evaluator, node):
            raise error(
                f"Reshape node '{name}' below the FC head does not reshape to a constant 2-D shape "
                "or to one whose first dimension is provably the batch (such as "
                "[x.size(0), -1]); cannot tell that it flattens each sample"
            )
        evaluator.batch_tensors.add(node.output[0])
    if rank is not None and rank != 2:
        raise error(
            f"the FC layer's input '{top}' has rank {rank}, not 2: a Gemm or MatMul on it acts on "
            "each row of a sample separately (a per-position Linear, such as a transformer's on "
            "each token), not on one row per sample; export the model with the features "
            "pooled or flattened before its classifier"
        )


def _rank_after(evaluator, node, rank):
    """The rank of the output of a node of the flatten chain, None if unknown."""
    if node.op_type == "Flatten":
        return 2
    if node.op_type == "Reshape":
        target = evaluator.value(node.input[1])
        return len(target) if isinstance(target, list) else evaluator.rank(node.output[0])
    if node.op_type == "Squeeze":
        axes = attribute(node, "axes", None) if len(node.input) < 2 else evaluator.value(node.input[1])
        if rank is not None and isinstance(axes, list):
            return rank - len(axes)
        return evaluator.rank(node.output[0])
    return rank
