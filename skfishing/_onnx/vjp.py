r"""Vector-Jacobian products of ONNX operators, and the gradient of any layer.

A layer with a constant weight (a ``Conv``, ``Gemm`` or ``MatMul`` node) is
applied at :math:`T` positions: the output pixels of a convolution, the
tokens of a matrix product. For one image its weight gradient is

.. math::

    G = \sum_{t=1}^{T} \delta_t x_t^\top,

where :math:`x_t` is the layer's input at position :math:`t` (for a
convolution the patch of :math:`C_{in} k_h k_w` values that the kernel
sees) and :math:`\delta_t = \partial E / \partial y_t` the gradient of the
loss with respect to the layer's pre-activation output at :math:`t`. The
loss is the paper's: at the logits :math:`y_L`,

.. math::

    \delta_L = g - \operatorname{softmax}(y_L / \tau),

with the temperature :math:`\tau` and the label vector :math:`g` graph
inputs with defaults (:data:`~skfishing._onnx.graph.TEMPERATURE`,
:data:`~skfishing._onnx.graph.LABELS`), as for the FC head. The kernel of two
images is :math:`\langle G_i, G_j \rangle_F = \sum_{t,s} \langle x_{it},
x_{js} \rangle \langle \delta_{it}, \delta_{js} \rangle`.

:func:`build_layer_model` writes the reverse pass into the ONNX graph with
standard operators only, so that any execution provider runs it exactly: the
network input goes forward to the logits, then :math:`\delta_L` goes back
through every node between the layer's output and the logits, each node by
its rule (:data:`RULES`): :math:`\bar a = J^\top \bar y` for every input
:math:`a` that depends on the layer's output. Gradients of a tensor read by
several nodes are summed; nodes off that path are not differentiated. The
model outputs the factors: :math:`X` of shape ``(N, T, d_in)`` (the patches,
by a convolution with a one-hot kernel) and :math:`D` of shape ``(N, T,
d_out)``.

A grouped convolution with :math:`g` groups is a block-diagonal weight. Its
groups are folded into the positions: position :math:`(t, h)` has the patch
of group :math:`h` (:math:`C_{in} k_h k_w / g` values) and the output
gradient of all :math:`C_{out}` channels with those of the other groups set
to zero, so that :math:`T' = T g` and the same kernel formula gives the
inner products of the block-diagonal gradients.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference
from sklearn.utils._param_validation import validate_params

from .graph import LABELS, TEMPERATURE, TEMPERATURE_RANGE, finish_model, needed_nodes
from .graph_index import GraphIndex, attribute
from .head import PASS_THROUGH, PREFIX, find_fc_head, skip_ops

__all__ = ["LayerSpec", "RULES", "NoRuleError", "build_layer_model", "find_layer", "layer_candidates"]

#: Graph outputs of :func:`build_layer_model`.
FORWARD = f"{PREFIX}layer_forward"
BACKWARD = f"{PREFIX}layer_backward"
#: Operators that have a weight gradient here.
LAYER_OPS = ("Conv", "Gemm", "MatMul")
#: Operators whose outputs carry no gradient (integers, booleans, or piecewise constant).
STOP_OPS = frozenset(
    "Shape Size Equal Greater Less GreaterOrEqual LessOrEqual Not And Or Xor ArgMax ArgMin NonZero "
    "ConstantOfShape EyeLike RandomNormalLike RandomUniformLike IsNaN IsInf Sign Floor Ceil Round".split()
)


class NoRuleError(ValueError):
    """A node between the layer and the logits has no vector-Jacobian product here."""


@dataclass(frozen=True, eq=False)
class LayerSpec:
    """A layer with a constant weight, as found in the graph.

    Attributes
    ----------
    op_type : str
        ``"Conv"``, ``"Gemm"`` or ``"MatMul"``.
    name : str
        Node name (the weight's name when the node has none).
    weight_name : str
        Name of the weight tensor.
    input_name, output_name : str
        The layer's input and (pre-activation) output tensors.
    weight : ndarray
        The weight as stored in the graph.
    T : int or None
        Positions per image after folding groups (None when the shapes are
        not static).
    d_in, d_out : int
        Widths of the factors :math:`x_t` and :math:`\\delta_t`.
    g_size : int
        Number of weights: floats of :math:`G` per image.
    """

    op_type: str
    name: str
    weight_name: str
    input_name: str
    output_name: str
    weight: np.ndarray
    T: int | None
    d_in: int
    d_out: int
    g_size: int

    def __post_init__(self):
        if self.op_type not in ("Conv", "Gemm", "MatMul"):
            raise ValueError(
                f"LayerSpec {self.name!r}: op_type must be Conv, Gemm or MatMul, got {self.op_type!r}"
            )
        if min(self.d_in, self.d_out, self.g_size) < 1 or (self.T is not None and self.T < 1):
            raise ValueError(f"LayerSpec {self.name!r}: positions and widths must be positive")


# --------------------------------------------------------------------------
# graph writing


class LayerGraphBuilder:
    """The forward graph with shapes, and the nodes of its reverse pass."""

    def __init__(self, model, input_shape=None):
        # the model is read, never changed nor copied: its weights stay where they are
        self.inputs = _graph_inputs(model.graph, input_shape)
        inferred = _shape_model(model, self.inputs)
        try:
            inferred = shape_inference.infer_shapes(inferred, data_prop=True)
        except Exception:  # shape inference is a help, not a requirement
            pass
        self.model = model
        self.graph = model.graph
        self.opset = next(i.version for i in model.opset_import if i.domain in ("", "ai.onnx"))
        self.shapes = {}
        self.elem_types = {}  # tensor name -> onnx.TensorProto element type, where inferred
        for info in (
            list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
        ):
            ttype = info.type.tensor_type
            if ttype.elem_type:
                self.elem_types[info.name] = ttype.elem_type
            if ttype.HasField("shape"):
                self.shapes[info.name] = [
                    d.dim_value if d.HasField("dim_value") else None for d in ttype.shape.dim
                ]
        self.constants = {init.name: init for init in self.graph.initializer}
        self.producer = {}
        for node in self.graph.node:
            for out in node.output:
                self.producer[out] = node
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                self.constants[node.output[0]] = node.attribute[0].t
        for init in self.graph.initializer:
            self.shapes[init.name] = list(init.dims)
        self.nodes, self.inits = [], []
        self.count = 0
        self.dtype = np.float32

    # -- reading the forward graph
    def constant(self, name):
        """Value of a constant tensor (through Identity nodes), or None."""
        while name not in self.constants:
            node = self.producer.get(name)
            if node is None or node.op_type != "Identity":
                return None
            name = node.input[0]
        return numpy_helper.to_array(self.constants[name])

    def shape(self, name, node=None):
        shape = self.shapes.get(name)
        if shape is None:
            const = self.constant(name)
            if const is not None:
                return list(const.shape)
            where = f" (input of {node.op_type} node '{node.name}')" if node is not None else ""
            raise NoRuleError(
                f"the shape of tensor '{name}'{where} is unknown; the reverse pass needs static "
                "shapes there (give the network a fixed input size)"
            )
        return shape

    def rank(self, name, node=None):
        return len(self.shape(name, node))

    # -- writing the reverse pass
    def fresh(self, base):
        self.count += 1
        return f"{PREFIX}vjp{self.count}_{base}"

    def const(self, value, dtype=None):
        value = np.asarray(value, dtype=dtype or self.dtype)
        name = self.fresh("c")
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def ints(self, values):
        return self.const(np.asarray(values, dtype=np.int64).reshape(-1), np.int64)

    def op(self, op_type, inputs, n_outputs=1, **attrs):
        outputs = [self.fresh(op_type) for _ in range(n_outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outputs, name=outputs[0], **attrs))
        return outputs[0] if n_outputs == 1 else outputs

    def reduce(self, op_type, x, axes, keepdims=1):
        """ReduceSum/ReduceMean over ``axes``, with the opset's way of giving axes."""
        axes = [int(a) for a in axes]
        new_style = self.opset >= (13 if op_type == "ReduceSum" else 18)
        if new_style:
            return self.op(op_type, [x, self.ints(axes)], keepdims=keepdims)
        return self.op(op_type, [x], axes=axes, keepdims=keepdims)

    def zeros_like(self, x):
        value = helper.make_tensor("value", helper.np_dtype_to_tensor_dtype(np.dtype(self.dtype)), [1], [0])
        return self.op("ConstantOfShape", [self.op("Shape", [x])], value=value)

    def unbroadcast(self, grad, target, out_shape, node, skip_last=0):
        """Sum ``grad`` (of shape ``out_shape``) down to the shape of ``target``."""
        shape = self.shape(target, node)
        lead = len(out_shape) - len(shape)
        axes = list(range(lead))
        for i, dim in enumerate(shape[: len(shape) - skip_last]):
            out = out_shape[lead + i]
            if dim == 1 and out != 1:
                axes.append(lead + i)
        if axes:
            grad = self.reduce("ReduceSum", grad, axes, keepdims=1)
        if lead:
            grad = self.op("Reshape", [grad, self.op("Shape", [target])])
        return grad


def _graph_inputs(graph, input_shape):
    """Copies of the graph inputs, with the per-sample dimensions of those that are not constants fixed."""
    constants = {i.name for i in graph.initializer}
    inputs = []
    for info in graph.input:
        info = onnx.ValueInfoProto.FromString(info.SerializeToString())
        dims = info.type.tensor_type.shape.dim
        if input_shape is not None and info.name not in constants and len(dims) == len(input_shape) + 1:
            for dim, value in zip(dims[1:], input_shape):
                dim.Clear()
                dim.dim_value = int(value)
        inputs.append(info)
    return inputs


#: Initializers with at most this many elements keep their values for shape inference.
_SHAPE_CONSTANT_SIZE = 4096


def _shape_model(model, inputs):
    """The graph for shape inference: large initializers become typed inputs, without their data.

    Shape inference needs the values of the small constants that compute
    shapes, never those of the weights; leaving the weights out keeps the
    copy that inference makes small.
    """
    graph = model.graph
    light = onnx.GraphProto(name=graph.name)
    light.node.extend(graph.node)
    light.input.extend(info for info in inputs)
    names = {info.name for info in inputs}
    for init in graph.initializer:
        if np.prod(init.dims, dtype=np.int64) <= _SHAPE_CONSTANT_SIZE:
            light.initializer.append(init)
        elif init.name not in names:
            light.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    light.output.extend(graph.output)
    light.value_info.extend(graph.value_info)
    result = helper.make_model(light, opset_imports=list(model.opset_import))
    result.ir_version = max(model.ir_version, 4)
    return result


# --------------------------------------------------------------------------
# the rules: rule(builder, node, grads) -> {input index: gradient name}


def _spatial_attrs(node, rank):
    n = rank - 2
    kernel = attribute(node, "kernel_shape", None)
    strides = list(attribute(node, "strides", [1] * n))
    dilations = list(attribute(node, "dilations", [1] * n))
    pads = list(attribute(node, "pads", [0] * (2 * n)))
    auto_pad = attribute(node, "auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad not in ("NOTSET", "VALID"):
        raise NoRuleError(
            f"{node.op_type} node '{node.name}' has auto_pad={auto_pad}; only explicit pads are supported"
        )
    return kernel, strides, dilations, pads


def _output_padding(b, node, x, y, kernel, strides, dilations, pads):
    xs, ys = b.shape(x, node)[2:], b.shape(y, node)[2:]
    result = []
    for i, (xd, yd, k, s, d) in enumerate(zip(xs, ys, kernel, strides, dilations)):
        if xd is None or yd is None:
            raise NoRuleError(
                f"{node.op_type} node '{node.name}': spatial sizes unknown, give the network a fixed input size"
            )
        extra = xd - ((yd - 1) * s - pads[i] - pads[i + len(xs)] + (k - 1) * d + 1)
        if extra < 0 or extra >= max(s, d):
            raise NoRuleError(f"{node.op_type} node '{node.name}': cannot invert its output size")
        result.append(int(extra))
    return result


def _conv(b, node, gy):
    x, w = node.input[0], node.input[1]
    weight = b.constant(w)
    wshape = list(weight.shape) if weight is not None else b.shape(w, node)
    rank = b.rank(x, node)
    kernel, strides, dilations, pads = _spatial_attrs(node, rank)
    kernel = list(kernel or wshape[2:])
    group = attribute(node, "group", 1)
    opad = _output_padding(b, node, x, node.output[0], kernel, strides, dilations, pads)
    gx = b.op(
        "ConvTranspose",
        [gy[0], w],
        strides=strides,
        pads=pads,
        dilations=dilations,
        group=group,
        kernel_shape=kernel,
        output_padding=opad,
    )
    return {0: gx}


def _gemm(b, node, gy):
    if attribute(node, "transA", 0):
        raise NoRuleError(f"Gemm node '{node.name}' has transA=1, which the reverse pass does not support")
    alpha, beta = attribute(node, "alpha", 1.0), attribute(node, "beta", 1.0)
    result = {}
    if b.needs(node.input[0]):
        result[0] = b.op("Gemm", [gy[0], node.input[1]], alpha=alpha, transB=1 - attribute(node, "transB", 0))
    if b.needs(node.input[1]):
        raise NoRuleError(f"Gemm node '{node.name}': its B input depends on the layer; not supported")
    if len(node.input) > 2 and node.input[2] and b.needs(node.input[2]):
        g = gy[0] if beta == 1.0 else b.op("Mul", [gy[0], b.const(beta)])
        result[2] = b.unbroadcast(g, node.input[2], b.shape(node.output[0], node), node)
    return result


def _swap_last(b, x, node):
    rank = b.rank(x, node)
    perm = list(range(rank - 2)) + [rank - 1, rank - 2]
    return b.op("Transpose", [x], perm=perm)


def _matmul(b, node, gy):
    a, c = node.input
    if b.rank(a, node) < 2 or b.rank(c, node) < 2:
        raise NoRuleError(f"MatMul node '{node.name}' multiplies a vector; not supported")
    out_shape = b.shape(node.output[0], node)
    result = {}
    if b.needs(a):
        g = b.op("MatMul", [gy[0], _swap_last(b, c, node)])
        result[0] = b.unbroadcast(g, a, out_shape, node, skip_last=2)
    if b.needs(c):
        g = b.op("MatMul", [_swap_last(b, a, node), gy[0]])
        result[1] = b.unbroadcast(g, c, out_shape, node, skip_last=2)
    return result


def _channel_vector(b, value, rank):
    return b.const(np.asarray(value).reshape([-1] + [1] * (rank - 2)))


def _batchnorm(b, node, gy):
    if attribute(node, "training_mode", 0):
        raise NoRuleError(
            f"BatchNormalization node '{node.name}' is in training mode; only inference is supported"
        )
    scale, var = b.constant(node.input[1]), b.constant(node.input[4])
    if scale is None or var is None or any(b.needs(n) for n in node.input[1:]):
        raise NoRuleError(f"BatchNormalization node '{node.name}' has non-constant parameters")
    eps = attribute(node, "epsilon", 1e-5)
    factor = scale.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps)
    return {0: b.op("Mul", [gy[0], _channel_vector(b, factor, b.rank(node.input[0], node))])}


def _mask(b, condition, g):
    return b.op("Where", [condition, g, b.const(0)])


def _relu(b, node, gy):
    return {0: _mask(b, b.op("Greater", [node.input[0], b.const(0)]), gy[0])}


def _leaky_relu(b, node, gy):
    alpha = attribute(node, "alpha", 0.01)
    positive = b.op("Greater", [node.input[0], b.const(0)])
    return {0: b.op("Where", [positive, gy[0], b.op("Mul", [gy[0], b.const(alpha)])])}


def _clip(b, node, gy):
    x = node.input[0]
    low = node.input[1] if len(node.input) > 1 and node.input[1] else None
    high = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if b.opset < 11:
        low, high = b.const(attribute(node, "min", -np.inf)), b.const(attribute(node, "max", np.inf))
    inside = None
    if low is not None:
        inside = b.op("Greater", [x, low])
    if high is not None:
        below = b.op("Less", [x, high])
        inside = below if inside is None else b.op("And", [inside, below])
    return {0: gy[0] if inside is None else _mask(b, inside, gy[0])}


def _sigmoid(b, node, gy):
    s = node.output[0]
    ds = b.op("Mul", [s, b.op("Sub", [b.const(1), s])])
    return {0: b.op("Mul", [gy[0], ds])}


def _tanh(b, node, gy):
    t = node.output[0]
    return {0: b.op("Mul", [gy[0], b.op("Sub", [b.const(1), b.op("Mul", [t, t])])])}


def _hard_sigmoid(b, node, gy):
    alpha, beta = attribute(node, "alpha", 0.2), attribute(node, "beta", 0.5)
    z = b.op("Add", [b.op("Mul", [node.input[0], b.const(alpha)]), b.const(beta)])
    inside = b.op("And", [b.op("Greater", [z, b.const(0)]), b.op("Less", [z, b.const(1)])])
    return {0: b.op("Where", [inside, b.op("Mul", [gy[0], b.const(alpha)]), b.const(0)])}


def _hard_swish(b, node, gy):
    # y = x * clip(x / 6 + 1/2, 0, 1): y' = 0 below -3, 1 above 3, x / 3 + 1/2 between
    x = node.input[0]
    middle = b.op("Add", [b.op("Mul", [x, b.const(1 / 3)]), b.const(0.5)])
    upper = b.op("Where", [b.op("Greater", [x, b.const(3)]), b.const(1), middle])
    slope = b.op("Where", [b.op("Less", [x, b.const(-3)]), b.const(0), upper])
    return {0: b.op("Mul", [gy[0], slope])}


def _erf(b, node, gy):
    x = node.input[0]
    square = b.op("Mul", [x, x])
    derivative = b.op("Mul", [b.op("Exp", [b.op("Neg", [square])]), b.const(2 / np.sqrt(np.pi))])
    return {0: b.op("Mul", [gy[0], derivative])}


def _exp(b, node, gy):
    return {0: b.op("Mul", [gy[0], node.output[0]])}


def _abs(b, node, gy):
    return {0: b.op("Mul", [gy[0], b.op("Sign", [node.input[0]])])}


def _neg(b, node, gy):
    return {0: b.op("Neg", [gy[0]])}


def _sqrt(b, node, gy):
    return {0: b.op("Div", [gy[0], b.op("Mul", [node.output[0], b.const(2)])])}


def _reciprocal(b, node, gy):
    y = node.output[0]
    return {0: b.op("Neg", [b.op("Mul", [gy[0], b.op("Mul", [y, y])])])}


def _pow(b, node, gy):
    x, p = node.input
    if b.needs(p):
        raise NoRuleError(f"Pow node '{node.name}': its exponent depends on the layer; not supported")
    exponent = b.constant(p)
    if exponent is not None and exponent.size == 1 and float(exponent) == 2.0:
        derivative = b.op("Mul", [x, b.const(2)])
    else:
        p_float = b.op("Cast", [p], to=helper.np_dtype_to_tensor_dtype(np.dtype(b.dtype)))
        derivative = b.op("Mul", [b.op("Pow", [x, b.op("Sub", [p_float, b.const(1)])]), p_float])
    g = b.op("Mul", [gy[0], derivative])
    return {0: b.unbroadcast(g, x, b.shape(node.output[0], node), node)}


def _binary(b, node, gy):
    a, c = node.input
    out = b.shape(node.output[0], node)
    op = node.op_type
    result = {}
    if b.needs(a):
        if op in ("Add", "Sub"):
            g = gy[0]
        elif op == "Mul":
            g = b.op("Mul", [gy[0], c])
        else:  # Div
            g = b.op("Div", [gy[0], c])
        result[0] = b.unbroadcast(g, a, out, node)
    if b.needs(c):
        if op == "Add":
            g = gy[0]
        elif op == "Sub":
            g = b.op("Neg", [gy[0]])
        elif op == "Mul":
            g = b.op("Mul", [gy[0], a])
        else:  # d(a / c) / dc = -y / c
            g = b.op("Neg", [b.op("Div", [b.op("Mul", [gy[0], node.output[0]]), c])])
        result[1] = b.unbroadcast(g, c, out, node)
    return result


def _where(b, node, gy):
    condition, a, c = node.input
    out = b.shape(node.output[0], node)
    result = {}
    if b.needs(a):
        result[1] = b.unbroadcast(_mask(b, condition, gy[0]), a, out, node)
    if b.needs(c):
        g = b.op("Where", [condition, b.const(0), gy[0]])
        result[2] = b.unbroadcast(g, c, out, node)
    return result


def _same_shape(b, node, gy):
    # Reshape, Flatten, Squeeze, Unsqueeze: the gradient takes the input's shape back
    return {0: b.op("Reshape", [gy[0], b.op("Shape", [node.input[0]])])}


def _identity(b, node, gy):
    return {0: gy[0]}


def _cast(b, node, gy):
    to = helper.np_dtype_to_tensor_dtype(np.dtype(b.dtype))
    if attribute(node, "to", to) != to:
        raise NoRuleError(f"Cast node '{node.name}' changes the element type; not supported")
    return {0: gy[0]}


def _expand(b, node, gy):
    return {0: b.unbroadcast(gy[0], node.input[0], b.shape(node.output[0], node), node)}


def _transpose(b, node, gy):
    rank = b.rank(node.input[0], node)
    perm = list(attribute(node, "perm", list(range(rank))[::-1]))
    return {0: b.op("Transpose", [gy[0]], perm=list(np.argsort(perm)))}


def _reduce_axes(b, node):
    rank = b.rank(node.input[0], node)
    axes = attribute(node, "axes", None)
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = b.constant(node.input[1])
        if axes is None:
            raise NoRuleError(f"{node.op_type} node '{node.name}' has computed axes; not supported")
    if axes is None or len(axes) == 0:
        if attribute(node, "noop_with_empty_axes", 0):
            return []
        axes = range(rank)
    return sorted(int(a) % rank for a in np.ravel(axes))


def _reduce(b, node, gy):
    x = node.input[0]
    axes = _reduce_axes(b, node)
    shape = b.shape(x, node)
    kept = b.op("Shape", [b.reduce("ReduceSum", x, axes, keepdims=1)]) if axes else b.op("Shape", [x])
    g = b.op("Expand", [b.op("Reshape", [gy[0], kept]), b.op("Shape", [x])])
    if node.op_type == "ReduceMean" and axes:
        sizes = [shape[a] for a in axes]
        if None in sizes:
            count = b.op("Div", [b.op("Size", [x]), b.op("Size", [node.output[0]])])
            count = b.op("Cast", [count], to=helper.np_dtype_to_tensor_dtype(np.dtype(b.dtype)))
            g = b.op("Div", [g, count])
        else:
            g = b.op("Mul", [g, b.const(1.0 / int(np.prod(sizes)))])
    return {0: g}


def _global_average_pool(b, node, gy):
    x = node.input[0]
    shape = b.shape(x, node)
    g = b.op("Expand", [gy[0], b.op("Shape", [x])])
    sizes = shape[2:]
    if None in sizes:
        count = b.op("Div", [b.op("Size", [x]), b.op("Size", [node.output[0]])])
        count = b.op("Cast", [count], to=helper.np_dtype_to_tensor_dtype(np.dtype(b.dtype)))
        return {0: b.op("Div", [g, count])}
    return {0: b.op("Mul", [g, b.const(1.0 / int(np.prod(sizes)))])}


def _pool_transpose(b, node, g, kernel, strides, dilations, pads, x, value):
    """ConvTranspose of ``g`` with a depthwise kernel of ``value``: spreads each window back."""
    channels = b.shape(x, node)[1]
    if channels is None:
        raise NoRuleError(f"{node.op_type} node '{node.name}': its number of channels is unknown")
    weight = b.const(np.full([channels, 1] + list(kernel), value))
    opad = _output_padding(b, node, x, node.output[0], kernel, strides, dilations, pads)
    return b.op(
        "ConvTranspose",
        [g, weight],
        strides=strides,
        pads=pads,
        dilations=dilations,
        group=channels,
        kernel_shape=list(kernel),
        output_padding=opad,
    )


def _average_pool(b, node, gy):
    x = node.input[0]
    kernel, strides, dilations, pads = _spatial_attrs(node, b.rank(x, node))
    g = gy[0]
    size = int(np.prod(kernel))
    if any(pads) and not attribute(node, "count_include_pad", 0):
        # each window divides by the number of its values inside the input
        ones = b.op("Div", [b.op("Add", [b.zeros_like(x), b.const(1)]), b.const(1)])
        copy = helper.make_node("AveragePool", [ones], [b.fresh("count")], count_include_pad=1)
        for attr in node.attribute:
            if attr.name != "count_include_pad":
                copy.attribute.append(attr)
        copy.name = copy.output[0]
        b.nodes.append(copy)
        g = b.op("Div", [g, b.op("Mul", [copy.output[0], b.const(size)])])
        return {0: _pool_transpose(b, node, g, kernel, strides, dilations, pads, x, 1.0)}
    return {0: _pool_transpose(b, node, g, kernel, strides, dilations, pads, x, 1.0 / size)}


def _max_pool(b, node, gy):
    x = node.input[0]
    kernel, strides, dilations, _ = _spatial_attrs(node, b.rank(x, node))
    if attribute(node, "storage_order", 0):
        raise NoRuleError(f"MaxPool node '{node.name}' has storage_order=1; not supported")
    overlapping = any(k_ * d > s for k_, s, d in zip(kernel, strides, dilations))
    if overlapping and b.opset < 16:
        raise NoRuleError(
            f"MaxPool node '{node.name}' has overlapping windows: its reverse pass needs "
            f"ScatterElements with reduction, ONNX opset >= 16 (the model has {b.opset})"
        )
    pooled = helper.make_node("MaxPool", [x], [b.fresh("max"), b.fresh("indices")])
    pooled.attribute.extend(node.attribute)
    pooled.name = pooled.output[0]
    b.nodes.append(pooled)
    flat = b.ints([-1])
    indices = b.op("Reshape", [pooled.output[1], flat])
    zeros = b.op("Reshape", [b.zeros_like(x), flat])
    attrs = {"reduction": "add"} if b.opset >= 16 else {}
    scattered = b.op("ScatterElements", [zeros, indices, b.op("Reshape", [gy[0], flat])], axis=0, **attrs)
    return {0: b.op("Reshape", [scattered, b.op("Shape", [x])])}


def _softmax(b, node, gy):
    y = node.output[0]
    rank = b.rank(y, node)
    axis = attribute(node, "axis", -1 if b.opset >= 13 else 1) % rank
    axes = [axis] if b.opset >= 13 else list(range(axis, rank))
    inner = b.reduce("ReduceSum", b.op("Mul", [gy[0], y]), axes, keepdims=1)
    return {0: b.op("Mul", [y, b.op("Sub", [gy[0], inner])])}


def _log_softmax(b, node, gy):
    y = node.output[0]
    rank = b.rank(y, node)
    axis = attribute(node, "axis", -1 if b.opset >= 13 else 1) % rank
    axes = [axis] if b.opset >= 13 else list(range(axis, rank))
    total = b.reduce("ReduceSum", gy[0], axes, keepdims=1)
    return {0: b.op("Sub", [gy[0], b.op("Mul", [b.op("Exp", [y]), total])])}


def _layer_norm(b, node, gy):
    x = node.input[0]
    if any(b.needs(n) for n in node.input[1:] if n):
        raise NoRuleError(f"LayerNormalization node '{node.name}' has parameters computed from the layer")
    rank = b.rank(x, node)
    axis = attribute(node, "axis", -1) % rank
    axes = list(range(axis, rank))
    eps = attribute(node, "epsilon", 1e-5)
    mean = b.reduce("ReduceMean", x, axes)
    centred = b.op("Sub", [x, mean])
    var = b.reduce("ReduceMean", b.op("Mul", [centred, centred]), axes)
    rstd = b.op("Reciprocal", [b.op("Sqrt", [b.op("Add", [var, b.const(eps)])])])
    xhat = b.op("Mul", [centred, rstd])
    g = b.op("Mul", [gy[0], node.input[1]])
    g_mean = b.reduce("ReduceMean", g, axes)
    gx_mean = b.reduce("ReduceMean", b.op("Mul", [g, xhat]), axes)
    inner = b.op("Sub", [b.op("Sub", [g, g_mean]), b.op("Mul", [xhat, gx_mean])])
    return {0: b.op("Mul", [inner, rstd])}


def _concat(b, node, gy):
    axis = attribute(node, "axis", None) % b.rank(node.output[0], node)
    result, start = {}, 0  # start: an int while the sizes are static, else a tensor
    for i, name in enumerate(node.input):
        size = (b.shapes.get(name) or [None] * (axis + 1))[axis]
        if size is None:
            size = b.op("Slice", [b.op("Shape", [name]), b.ints([axis]), b.ints([axis + 1])])
        if isinstance(start, int) and isinstance(size, int):
            end = start + size
        else:
            as_tensor = [b.ints([v]) if isinstance(v, int) else v for v in (start, size)]
            end = b.op("Add", as_tensor)
        if b.needs(name):
            bounds = [b.ints([v]) if isinstance(v, int) else v for v in (start, end)]
            result[i] = b.op("Slice", [gy[0], *bounds, b.ints([axis])])
        start = end
    return result


def _split(b, node, gy):
    axis = attribute(node, "axis", 0)
    parts = [g if g is not None else b.zeros_like(out) for g, out in zip(gy, node.output)]
    return {0: b.op("Concat", parts, axis=axis)}


def _slice(b, node, gy):
    x = node.input[0]
    shape = b.shape(x, node)
    if b.opset < 10:
        starts, ends = attribute(node, "starts", None), attribute(node, "ends", None)
        axes, steps = attribute(node, "axes", None), None
    else:
        starts, ends = b.constant(node.input[1]), b.constant(node.input[2])
        axes = b.constant(node.input[3]) if len(node.input) > 3 and node.input[3] else None
        steps = b.constant(node.input[4]) if len(node.input) > 4 and node.input[4] else None
    if starts is None or ends is None or (len(node.input) > 3 and node.input[3] and axes is None):
        raise NoRuleError(f"Slice node '{node.name}' has computed bounds; not supported")
    if steps is not None and (np.asarray(steps) != 1).any():
        raise NoRuleError(f"Slice node '{node.name}' has steps other than 1; not supported")
    axes = list(range(len(starts))) if axes is None else [int(a) % len(shape) for a in np.ravel(axes)]
    pads = [0] * (2 * len(shape))
    for start, end, axis in zip(np.ravel(starts), np.ravel(ends), axes):
        dim = shape[axis]
        if dim is None:
            raise NoRuleError(f"Slice node '{node.name}': size of axis {axis} unknown")
        start, end = int(start), int(end)
        start = min(max(start + dim if start < 0 else start, 0), dim)
        end = min(max(end + dim if end < 0 else end, 0), dim)
        pads[axis], pads[axis + len(shape)] = start, dim - max(end, start)
    return {0: b.op("Pad", [gy[0], b.ints(pads)])}


def _gather(b, node, gy):
    # the gradient goes back to the gathered places, summed where an index repeats
    x, indices = node.input
    rank = b.rank(x, node)
    axis = attribute(node, "axis", 0) % rank
    index = b.constant(indices)
    distinct = index is not None and len(set(np.ravel(index).tolist())) == index.size
    if b.opset < 16 and not distinct:
        raise NoRuleError(
            f"Gather node '{node.name}' has computed or repeated indices: its reverse pass needs "
            f"ScatterElements with reduction, ONNX opset >= 16 (the model has {b.opset})"
        )
    shape = b.op("Shape", [x])
    parts = [b.op("Slice", [shape, b.ints([0]), b.ints([axis])])] if axis else []
    parts.append(b.ints([-1]))
    if axis + 1 < rank:
        parts.append(b.op("Slice", [shape, b.ints([axis + 1]), b.ints([rank])]))
    g = b.op("Reshape", [gy[0], b.op("Concat", parts, axis=0) if len(parts) > 1 else parts[0]])
    flat = b.op("Reshape", [indices, b.ints([-1])])
    dim = b.op("Slice", [shape, b.ints([axis]), b.ints([axis + 1])])
    flat = b.op("Where", [b.op("Less", [flat, b.ints([0])]), b.op("Add", [flat, dim]), flat])
    positions = b.op("Reshape", [flat, b.ints([1] * axis + [-1] + [1] * (rank - axis - 1))])
    positions = b.op("Expand", [positions, b.op("Shape", [g])])
    attrs = {"reduction": "add"} if b.opset >= 16 else {}
    return {0: b.op("ScatterElements", [b.zeros_like(x), positions, g], axis=axis, **attrs)}


def _gelu(b, node, gy):
    x = node.input[0]
    approximate = attribute(node, "approximate", b"none")
    approximate = approximate.decode() if isinstance(approximate, bytes) else approximate
    if approximate == "tanh":
        # y = x (1 + tanh(u)) / 2, u = sqrt(2 / pi) (x + 0.044715 x^3)
        c = np.sqrt(2 / np.pi)
        square = b.op("Mul", [x, x])
        u = b.op(
            "Mul",
            [
                b.op("Mul", [x, b.op("Add", [b.const(1), b.op("Mul", [square, b.const(0.044715)])])]),
                b.const(c),
            ],
        )
        t = b.op("Tanh", [u])
        du = b.op(
            "Mul", [b.op("Add", [b.const(1), b.op("Mul", [square, b.const(3 * 0.044715)])]), b.const(c)]
        )
        sech2 = b.op("Sub", [b.const(1), b.op("Mul", [t, t])])
        slope = b.op(
            "Mul",
            [
                b.op("Add", [b.op("Add", [b.const(1), t]), b.op("Mul", [b.op("Mul", [x, sech2]), du])]),
                b.const(0.5),
            ],
        )
    else:
        # y = x Phi(x): y' = Phi(x) + x phi(x)
        cdf = b.op(
            "Mul",
            [
                b.op("Add", [b.op("Erf", [b.op("Mul", [x, b.const(1 / np.sqrt(2))])]), b.const(1)]),
                b.const(0.5),
            ],
        )
        pdf = b.op(
            "Mul",
            [
                b.op("Exp", [b.op("Mul", [b.op("Mul", [x, x]), b.const(-0.5)])]),
                b.const(1 / np.sqrt(2 * np.pi)),
            ],
        )
        slope = b.op("Add", [cdf, b.op("Mul", [x, pdf])])
    return {0: b.op("Mul", [gy[0], slope])}


#: Operator type -> vector-Jacobian product rule.
RULES = {
    "Conv": _conv,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "BatchNormalization": _batchnorm,
    "Relu": _relu,
    "LeakyRelu": _leaky_relu,
    "Clip": _clip,
    "Sigmoid": _sigmoid,
    "Tanh": _tanh,
    "HardSigmoid": _hard_sigmoid,
    "HardSwish": _hard_swish,
    "Erf": _erf,
    "Gelu": _gelu,
    "Exp": _exp,
    "Neg": _neg,
    "Abs": _abs,
    "Sqrt": _sqrt,
    "Reciprocal": _reciprocal,
    "Pow": _pow,
    "Add": _binary,
    "Sub": _binary,
    "Mul": _binary,
    "Div": _binary,
    "Where": _where,
    "Reshape": _same_shape,
    "Flatten": _same_shape,
    "Squeeze": _same_shape,
    "Unsqueeze": _same_shape,
    "Identity": _identity,
    "Dropout": _identity,
    "Cast": _cast,
    "Expand": _expand,
    "Transpose": _transpose,
    "ReduceMean": _reduce,
    "ReduceSum": _reduce,
    "GlobalAveragePool": _global_average_pool,
    "AveragePool": _average_pool,
    "MaxPool": _max_pool,
    "Softmax": _softmax,
    "LogSoftmax": _log_softmax,
    "LayerNormalization": _layer_norm,
    "Concat": _concat,
    "Split": _split,
    "Slice": _slice,
    "Gather": _gather,
}


# --------------------------------------------------------------------------
# layers


def logits_of(model):
    """Name of the logits tensor: the classifier's output, below any final Softmax."""

    find_fc_head(model)  # raises when the graph does not end in a classifier
    index = GraphIndex(model.graph)
    tensor = skip_ops(index, model.graph.output[0].name, PASS_THROUGH)
    node = index.producer.get(tensor)
    if node is not None and node.op_type in ("Softmax", "LogSoftmax"):
        tensor = skip_ops(index, node.input[0], PASS_THROUGH)
    return tensor


def layer_spec(b, node):
    """The :class:`LayerSpec` of a Conv/Gemm/MatMul node with a constant weight, or None."""
    if node.op_type not in LAYER_OPS or len(node.input) < 2:
        return None
    weight = b.constant(node.input[1])
    if weight is None or not np.issubdtype(weight.dtype, np.floating):
        return None
    x, y = node.input[0], node.output[0]
    name = node.name or node.input[1]
    out_shape = b.shapes.get(y)
    if node.op_type == "Conv":
        group = attribute(node, "group", 1)
        d_in = int(np.prod(weight.shape[1:]))
        d_out = weight.shape[0]
        spatial = out_shape[2:] if out_shape else None
        T = int(np.prod(spatial)) * group if spatial and None not in spatial else None
        return LayerSpec("Conv", name, node.input[1], x, y, weight, T, d_in, d_out, weight.size)
    if weight.ndim != 2:
        return None
    if node.op_type == "Gemm":
        if attribute(node, "transA", 0):
            return None
        d_in, d_out = weight.shape[::-1] if attribute(node, "transB", 0) else weight.shape
        return LayerSpec("Gemm", name, node.input[1], x, y, weight, 1, d_in, d_out, weight.size)
    d_in, d_out = weight.shape
    middle = out_shape[1:-1] if out_shape else None
    T = int(np.prod(middle)) if middle is not None and None not in middle else None
    return LayerSpec("MatMul", name, node.input[1], x, y, weight, T, d_in, d_out, weight.size)


@validate_params(
    {"model": [onnx.ModelProto], "input_shape": ["array-like", None]}, prefer_skip_nested_validation=True
)
def layer_candidates(model, input_shape=None):
    """Every layer with a constant weight, in graph order.

    Parameters
    ----------
    model : onnx.ModelProto
        The classifier.
    input_shape : sequence of int, default=None
        Per-sample input shape to assume where the graph leaves it free.

    Returns
    -------
    layers : list of LayerSpec
    """
    b = LayerGraphBuilder(model, input_shape)
    specs = [layer_spec(b, node) for node in b.graph.node]
    return [s for s in specs if s is not None]


@validate_params(
    {"model": [onnx.ModelProto], "layer": [str], "input_shape": ["array-like", None]},
    prefer_skip_nested_validation=True,
)
def find_layer(model, layer, input_shape=None):
    """The :class:`LayerSpec` named ``layer`` (node name or weight name).

    Parameters
    ----------
    model : onnx.ModelProto
        The classifier.
    layer : str
        Node name or weight name of a Conv, Gemm or MatMul node with a
        constant weight.
    input_shape : sequence of int, default=None
        Per-sample input shape to assume where the graph leaves it free.

    Returns
    -------
    spec : LayerSpec

    Raises
    ------
    ValueError
        If no Conv, Gemm or MatMul node with a constant weight has that
        node or weight name, listing a few of those that exist.
    """
    b = LayerGraphBuilder(model, input_shape)
    for node in b.graph.node:  # the named node's weight only is read: not every layer's
        named = (
            node.op_type in LAYER_OPS
            and len(node.input) > 1
            and layer in (node.name or node.input[1], node.input[1])
        )
        spec = layer_spec(b, node) if named else None
        if spec is not None:
            return spec
    names = [s.name for s in (layer_spec(b, node) for node in b.graph.node) if s is not None]
    shown = ", ".join(repr(n) for n in names[:8]) + (", ..." if len(names) > 8 else "")
    raise ValueError(
        f"model has no layer named {layer!r}: a layer is a Conv, Gemm or MatMul node with a constant "
        f"weight, named by its node name or its weight's name ({len(names)} in this model: {shown}; "
        "skfishing layers MODEL lists them)"
    )


def nodes_on_path(b, spec, logits):
    """Tensors that depend on the layer's output and that the logits depend on."""
    consumers = {}
    for node in b.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    downstream, stack = {spec.output_name}, [spec.output_name]
    while stack:
        for node in consumers.get(stack.pop(), []):
            if node.op_type in STOP_OPS:
                continue
            for out in node.output:
                if out not in downstream:
                    downstream.add(out)
                    stack.append(out)
    if logits not in downstream:
        raise ValueError(f"the logits '{logits}' do not depend on layer '{spec.name}'")
    upstream, stack = {logits}, [logits]
    while stack:
        node = b.producer.get(stack.pop())
        if node is None:
            continue
        for name in node.input:
            if name and name not in upstream:
                upstream.add(name)
                stack.append(name)
    return downstream & upstream


class _Path(LayerGraphBuilder):
    def __init__(self, model, spec, logits, input_shape):
        super().__init__(model, input_shape)
        self.on_path = nodes_on_path(self, spec, logits)

    def needs(self, name):
        return name in self.on_path


def _reverse(b, spec, logits, seed):
    """Write the reverse pass from ``seed`` (gradient of ``logits``) to the layer output."""
    grads = {logits: [seed]}
    layer_node = b.producer[spec.output_name]
    for node in reversed(list(b.graph.node)):
        if node is layer_node:
            break
        if not any(out in b.on_path for out in node.output):
            continue
        gy = []
        for out in node.output:
            parts = grads.pop(out, [])
            gy.append(None if not parts else parts[0] if len(parts) == 1 else b.op("Sum", parts))
        if all(g is None for g in gy):
            continue
        rule = RULES.get(node.op_type)
        if rule is None or (node.domain not in ("", "ai.onnx")):
            raise NoRuleError(
                f"{node.op_type} node '{node.name}' lies between layer '{spec.name}' and the logits, "
                f"and skfishing has no reverse-pass rule for {node.op_type} (it has rules for "
                f"{', '.join(sorted(RULES))})"
            )
        if gy[0] is None and node.op_type != "Split":
            continue
        for i, g in rule(b, node, gy).items():
            name = node.input[i]
            if b.needs(name):
                grads.setdefault(name, []).append(g)
    parts = grads.get(spec.output_name, [])
    if not parts:
        raise ValueError(f"no gradient reaches layer '{spec.name}'")
    return parts[0] if len(parts) == 1 else b.op("Sum", parts)


def _patches(b, spec, node, positions_last=False):
    """Patches ``(N, T', d_in)`` of a Conv layer (``(N, d_in, T')`` with ``positions_last``)."""
    x = node.input[0]
    kernel = list(spec.weight.shape[2:])
    channels = b.shape(x, node)[1] if b.shapes.get(x) else None
    group = attribute(node, "group", 1)
    if channels is None:
        channels = spec.weight.shape[1] * group
    size = int(np.prod(kernel))
    eye = np.zeros([channels * size, 1] + kernel, dtype=b.dtype)
    for c in range(channels):
        for j in range(size):
            eye[(c * size + j, 0) + np.unravel_index(j, kernel)] = 1
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name != "group"}
    attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in attrs.items()}
    attrs["kernel_shape"] = kernel
    patches = b.op("Conv", [x, b.const(eye)], group=channels, **attrs)
    d_in = spec.weight.shape[1] * size
    if group == 1 and positions_last:  # (N, d_in, *out) -> (N, d_in, T): the Conv's own layout
        return b.op("Reshape", [patches, b.ints([0, d_in, -1])])
    # (N, g * d_in, *out) -> (N, g, d_in, T) -> (N, T, g, d_in) -> (N, T * g, d_in)
    patches = b.op("Reshape", [patches, b.ints([0, group, d_in, -1])])
    patches = b.op("Transpose", [patches], perm=[0, 3, 1, 2])
    patches = b.op("Reshape", [patches, b.ints([0, -1, d_in])])
    return b.op("Transpose", [patches], perm=[0, 2, 1]) if positions_last else patches


def _conv_delta(b, spec, node, delta, positions_last=False):
    group = attribute(node, "group", 1)
    d_out = spec.weight.shape[0]
    delta = b.op("Reshape", [delta, b.ints([0, d_out, -1])])  # (N, C_out, T)
    if group == 1 and positions_last:
        return delta
    delta = b.op("Transpose", [delta], perm=[0, 2, 1])  # (N, T, C_out)
    if group == 1:
        return delta
    # position (t, h) keeps the channels of group h only
    mask = np.kron(np.eye(group, dtype=b.dtype), np.ones((1, d_out // group), dtype=b.dtype))
    delta = b.op("Unsqueeze", [delta, b.ints([2])]) if b.opset >= 13 else b.op("Unsqueeze", [delta], axes=[2])
    delta = b.op("Mul", [delta, b.const(mask)])  # (N, T, g, C_out)
    delta = b.op("Reshape", [delta, b.ints([0, -1, d_out])])
    return b.op("Transpose", [delta], perm=[0, 2, 1]) if positions_last else delta


@validate_params(
    {
        "model": [onnx.ModelProto],
        "layer": [str, LayerSpec],
        "temperature": TEMPERATURE_RANGE,
        "labels": ["array-like", None],
        "input_shape": ["array-like", None],
        "positions_last": ["boolean"],
    },
    prefer_skip_nested_validation=True,
)
def build_layer_model(model, layer, *, temperature=2.0, labels=None, input_shape=None, positions_last=False):
    """A model from the network input to the per-position factors of a layer's gradient.

    Parameters
    ----------
    model : onnx.ModelProto
        A classifier (its head as :func:`~skfishing.find_fc_head` finds it).
    layer : str or LayerSpec
        A Conv, Gemm or MatMul node with a constant weight, by node name or
        weight name.
    temperature : float, default=2.0
        Default of the :data:`~skfishing._onnx.graph.TEMPERATURE` input.
    labels : array-like of shape (n_classes,), default=None
        Default of the :data:`~skfishing._onnx.graph.LABELS` input; None means
        uniform :math:`1 / P`.
    input_shape : sequence of int, default=None
        Per-sample input shape, to fix the dimensions that the graph leaves
        free (the reverse pass of a convolution needs static sizes).
    positions_last : bool, default=False
        Output the factors as ``(N, d_in, T)`` and ``(N, d_out, T)``: a
        convolution's own layout (no transpose in the graph), and the one
        in which a sketch reads them (:mod:`skfishing._extraction.sketched`).

    Returns
    -------
    model : onnx.ModelProto
        Inputs: the network input, then the overridable initializers
        :data:`~skfishing._onnx.graph.TEMPERATURE` and
        :data:`~skfishing._onnx.graph.LABELS`. Outputs :data:`FORWARD` and
        :data:`BACKWARD`, of shapes ``(N, T, d_in)`` and ``(N, T, d_out)``
        (``(N, d_in)`` and ``(N, d_out)`` for a Gemm on one row per image;
        the last two axes swapped with ``positions_last``).

    Raises
    ------
    NoRuleError
        If a node between the layer and the logits has no rule (naming the
        node and its op type) or needs shapes that are unknown.
    """
    head = find_fc_head(model)
    spec = layer if isinstance(layer, LayerSpec) else find_layer(model, layer, input_shape)
    logits = logits_of(model)
    b = _Path(model, spec, logits, input_shape)
    b.dtype = head.dtype
    node = b.producer[spec.output_name]

    n_classes = head.n_classes
    g = np.full(n_classes, 1.0 / n_classes) if labels is None else np.asarray(labels, dtype=np.float64)
    if g.shape != (n_classes,):
        raise ValueError(f"labels must have shape ({n_classes},), got {g.shape}")
    b.inits.append(numpy_helper.from_array(np.asarray(temperature, dtype=b.dtype), TEMPERATURE))
    b.inits.append(numpy_helper.from_array(g.astype(b.dtype), LABELS))
    scaled = b.op("Div", [logits, TEMPERATURE])
    seed = b.op("Sub", [LABELS, b.op("Softmax", [scaled], axis=-1)])
    delta = _reverse(b, spec, logits, seed)

    if spec.op_type == "Conv":
        forward = _patches(b, spec, node, positions_last)
        backward = _conv_delta(b, spec, node, delta, positions_last)
    elif spec.op_type == "Gemm":
        forward, backward = node.input[0], delta
    else:
        forward = b.op("Reshape", [node.input[0], b.ints([0, -1, spec.d_in])])
        backward = b.op("Reshape", [delta, b.ints([0, -1, spec.d_out])])
        if positions_last:
            forward, backward = (b.op("Transpose", [t], perm=[0, 2, 1]) for t in (forward, backward))
    b.nodes.append(helper.make_node("Identity", [forward], [FORWARD], name=FORWARD))
    b.nodes.append(helper.make_node("Identity", [backward], [BACKWARD], name=BACKWARD))

    all_nodes = list(b.graph.node) + b.nodes
    all_inits = list(b.graph.initializer) + b.inits
    nodes, read = needed_nodes(all_nodes, [FORWARD, BACKWARD], set())
    inits = [i for i in all_inits if i.name in read]
    init_names = {i.name for i in b.graph.initializer}
    inputs = [i for i in b.inputs if i.name in read and i.name not in init_names]
    from .graph import dynamic_batch

    elem = helper.np_dtype_to_tensor_dtype(np.dtype(b.dtype))
    inputs = [dynamic_batch(i) for i in inputs]
    inputs += [
        helper.make_tensor_value_info(name, elem, shape)
        for name, shape in ((TEMPERATURE, []), (LABELS, [n_classes]))
    ]
    outputs = [helper.make_tensor_value_info(name, elem, None) for name in (FORWARD, BACKWARD)]
    graph = helper.make_graph(nodes, "skfishing_layer_gradient", inputs, outputs)
    model = finish_model(graph, b.opset, source=b.model)
    model.graph.initializer.extend(inits)  # into the model: make_model copies its graph, weights and all
    return model
