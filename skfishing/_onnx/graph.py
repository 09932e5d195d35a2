r"""ONNX graph surgery: the FC head's forward and backward pass as ONNX graphs.

The **trunk** of a classification network computes the input of its fully
connected (FC) head (``pool5`` for AlexNet); it is the original graph pruned
to that tensor, with a dynamic batch dimension. The FC layers found by
:func:`~skfishing.find_fc_head` are rebuilt after it, and the backward
pass of the paper's Eq. (10) is added from standard ONNX operators only
(element-wise arithmetic, ``Exp``, reductions, ``Gemm``, ``Greater``, ``Where``):

.. math::

    \delta_L = g - \operatorname{softmax}(y_L / \tau), \qquad
    \delta_k = (W_{k+1} \delta_{k+1}) \odot [y_k > 0]

for every FC layer :math:`k`. The temperature :math:`\tau` and the label
vector :math:`g` (a probability vector) are graph inputs with defaults (2
and the uniform :math:`1 / P`), so changing them needs no rebuild.
:math:`\delta_L` is computed without the cancellation of :math:`g - \sigma`
at high temperatures, and stays within float range over every temperature
from the smallest to the largest float32; above :math:`\tau = 2^{40}` it is
multiplied by a positive constant that the normalisation of the features
removes.

Every graph here is a pure function of the ONNX model and the requested
:class:`~skfishing._onnx.head.Tensor` outputs; :func:`build_model` makes them all:

* from the network input straight to the requested features (the trunk and
  only the part of the head they need): one run per batch, nothing else
  leaves the device;
* from the network input to the *state* of a sample
  (:meth:`~skfishing.FCHead.state`: the head input and every
  pre-activation), which is what a cache keeps per image;
* from the state to the requested features (``from_state=True``): the cheap
  part that a grid search over the layer and the temperature reruns.

:func:`add_backward` gives the whole network with its backward pass as one
model that can be saved and inspected (for example with Netron).

Layer numbering follows the paper and Caffe: the last FC layer (the
classifier) is number 8, the one below it 7, and so on, so a head of ``n`` FC
layers has layers ``9 - n`` to ``8`` and its input (AlexNet's pool5) is
activation ``8 - n``.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np
import onnx
from onnx import helper, numpy_helper
from sklearn.utils._param_validation import Interval, validate_params

from .graph_index import GraphIndex
from .head import PREFIX, FCHead, Tensor, find_fc_head

__all__ = [
    "add_backward",
    "build_model",
    "network_input",
    "build_trunk_model",
    "build_head_model",
    "build_forward_model",
    "build_backward_model",
    "output_names",
    "INPUT_SUM",
    "LABELS",
    "PREFIX",
    "TEMPERATURE",
]

_F32 = np.finfo(np.float32)
#: Parameters of the graph builders, checked once by validate_params.
#: Constraint of ``temperature`` (here and in DeepFisherTransformer): positive, and
#: represented by float32 with full precision.
TEMPERATURE_RANGE = [Interval(Real, float(_F32.tiny), float(_F32.max), closed="both")]
_CONSTRAINTS = {
    "model": [onnx.ModelProto],
    "head": [FCHead],
    "temperature": TEMPERATURE_RANGE,
    "labels": ["array-like", None],
}


#: How far from one the sum of a label vector may be (float32 rounding of a probability vector).
_LABELS_SUM_TOLERANCE = 1e-5


def check_labels(labels, n_classes):
    """The label vector :math:`g` as float64, checked (a probability vector) and divided by its sum.

    The loss :math:`-\\sum_j g_j \\log \\sigma_j(y_L / \\tau)` has the gradient
    :math:`(\\sigma \\sum_j g_j - g) / \\tau`, the paper's :math:`(\\sigma - g) / \\tau`
    only when :math:`g` sums to one. This is the one place where labels are
    checked (:class:`~skfishing.DeepFisherTransformer` and the graph builders
    call it).

    Parameters
    ----------
    labels : array-like of shape (n_classes,)
        Non-negative, summing to one within ``_LABELS_SUM_TOLERANCE`` (1e-5).
    n_classes : int
        The number of classes of the model (the width of its logits).

    Returns
    -------
    labels : ndarray of shape (n_classes,), float64
        ``labels`` divided by their sum, so that the features are exactly
        the gradient of the loss of the labels given.

    Raises
    ------
    ValueError
        Saying what is wrong: the shape, a value that is not a finite
        non-negative number (naming its class), or the sum.
    """
    try:
        g = np.asarray(labels, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"labels must be numbers (a probability vector over the classes): {error}") from None
    if g.shape != (n_classes,):
        raise ValueError(
            f"labels must have shape ({n_classes},), got {g.shape}: one value per class of the model"
        )
    bad = np.flatnonzero(~(np.isfinite(g) & (g >= 0)))
    if len(bad):
        i = int(bad[0])
        raise ValueError(
            f"labels must be finite and non-negative (a probability vector), got {float(g[i])} for class {i}"
        )
    total = math.fsum(g)
    if abs(total - 1) > _LABELS_SUM_TOLERANCE:
        raise ValueError(
            f"labels must sum to one (a probability vector, within {_LABELS_SUM_TOLERANCE:g}), got a sum "
            f"of {total:.9g}; divide them by their sum (the gradient g - softmax holds only then)"
        )
    return g / total  # then g - softmax is exactly the gradient of this loss


def _validated(*names, **more):
    """``validate_params`` for the parameters ``names`` of a graph builder."""
    return validate_params(
        {**{n: _CONSTRAINTS[n] for n in names}, **more}, prefer_skip_nested_validation=True
    )


#: Graph input holding the temperature :math:`\tau` (a scalar with a default).
TEMPERATURE = f"{PREFIX}temperature"
#: Graph input holding the label vector :math:`g` (with the uniform default).
LABELS = f"{PREFIX}labels"
#: Output of :func:`build_model` (``input_sum=True``): the sum of each
#: sample's network input, finite exactly when the sample is (or its sum
#: overflows), so that the input is checked on the device, not on the host.
INPUT_SUM = f"{PREFIX}input_sum"


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

    def row_max(self, x, output):
        """ReduceMax over axis 1, keeping it (axes is an input from opset 18)."""
        if self.head.opset >= 18:
            axes = f"{PREFIX}axis1"
            if axes not in {i.name for i in self.inits}:
                self.inits.append(numpy_helper.from_array(np.array([1], dtype=np.int64), axes))
            return self.node("ReduceMax", [x, axes], output, keepdims=1)
        return self.node("ReduceMax", [x], output, axes=[1], keepdims=1)

    def info(self, tensor):
        return helper.make_tensor_value_info(tensor.name, self.elem, ["N", self.head.width(tensor)])


def _head_parts(head, temperature, labels):
    """Every node of the head: forward to the softmax, backward to the lowest layer."""
    parts = _Parts(head)
    first, last = head.numbers[0], head.numbers[-1]
    source = head.input_name
    quantization = head.input_quantization
    if quantization is not None:  # an int8 model: round the trunk output as the model does
        names = [f"{PREFIX}input_scale"]
        parts.inits.append(numpy_helper.from_array(np.asarray(quantization.scale), names[0]))
        if quantization.zero_point is not None:
            names.append(f"{PREFIX}input_zero_point")
            parts.inits.append(numpy_helper.from_array(np.asarray(quantization.zero_point), names[1]))
        if not quantization.quantized:
            source = parts.node("QuantizeLinear", [source, *names], f"{PREFIX}input_quantized")
        source = parts.node("DequantizeLinear", [source, *names], f"{PREFIX}input_dequantized")
    x = parts.node("Flatten", [source], Tensor("x", first - 1).name, axis=1)
    for layer in head.layers:
        k = layer.number
        inputs = [x, parts.const(f"{PREFIX}W{k}", layer.weight)]
        if layer.bias is not None:
            inputs.append(parts.const(f"{PREFIX}b{k}", layer.bias))
        elif head.opset < 11:  # Gemm's C is optional from opset 11 on
            inputs.append(parts.const(f"{PREFIX}zero", 0))
        y = parts.node("Gemm", inputs, Tensor("y", k).name)
        if k != last:
            x = parts.node("Relu", [y], Tensor("x", k).name)
    parts.node("Softmax", [y], Tensor("prob", last).name, axis=1)

    g = (
        np.full(head.n_classes, 1.0 / head.n_classes)
        if labels is None
        else check_labels(labels, head.n_classes)
    )
    parts.const(TEMPERATURE, temperature)
    parts.const(LABELS, g)
    # dy is dE/dy_k; delta_k is dy, times the scale of a folded BatchNormalization.
    dy = _delta_last(parts, y, head.n_classes, _dy_name(head, last))
    zero = parts.const(f"{PREFIX}zero", 0)
    _scaled_delta(parts, head, last, dy)
    for k in range(last - 1, first - 1, -1):
        # dE/dy_k = (dE/dy_{k+1} @ W_{k+1}^T) * [y_k > 0]; W is stored (in, out).
        bias = [f"{PREFIX}zero"] if head.opset < 11 else []
        bp = parts.node("Gemm", [dy, f"{PREFIX}W{k + 1}", *bias], f"{PREFIX}bp{k}", transB=1)
        mask = parts.node("Greater", [Tensor("y", k).name, zero], f"{PREFIX}mask{k}")
        dy = parts.node("Where", [mask, bp, zero], _dy_name(head, k))
        _scaled_delta(parts, head, k, dy)
    return parts


#: Below |y_i - max y| / tau = 1/2, expm1 is computed by its Taylor series.
_SERIES_BELOW = 0.5
#: Up to this temperature delta_L is exactly g - softmax(y / tau); see _delta_last.
_EXACT_UP_TO = 2.0**40


def _delta_last(parts, y, n_classes, output):
    r"""Nodes computing :math:`\delta_L = k\,(g - \sigma(y / \tau))` without cancellation.

    With :math:`x = (y - \max y) / \tau`, :math:`\epsilon = \operatorname{expm1}(x)`
    and :math:`u = 1 / P`, exactly

    .. math::

        u - \sigma_i = \frac{\bar\epsilon - \epsilon_i}{\sum_j e^{x_j}},

    and :math:`\epsilon_i - \epsilon_j` does not cancel where :math:`g - \sigma`
    does (a high temperature makes :math:`\sigma` nearly uniform): ``expm1``
    is its Taylor series where :math:`x_i > -1/2` (ONNX has no Expm1) and
    :math:`e^{x_i} - 1` below. Then :math:`\delta_L = (g - u) + (u - \sigma)`.

    The factor :math:`k = \max(1, \min(\tau / 2^{40}, 1 / \max_i |g_i - u|))`
    is 1 up to :math:`\tau = 2^{40}`; above, it keeps :math:`\delta_L` from
    underflowing (with uniform labels it is of order :math:`1 / \tau`), and
    :math:`k (g - u)` from overflowing. It is the same for every sample, and
    the normalisation of the features removes it.
    """
    dtype = np.dtype(parts.head.dtype)
    name = f"{PREFIX}{{}}{parts.head.numbers[-1]}".format
    top = parts.row_max(y, name("max"))
    shifted = parts.node("Sub", [y, top], name("shifted"))  # y - max y <= 0
    x = parts.node("Div", [shifted, TEMPERATURE], name("scaled"))  # no overflow at a tiny tau
    exp = parts.node("Exp", [x], name("exp"))
    # row sums as products with a column of ones: onnxruntime's ReduceSum and ReduceMean sum in an
    # order that depends on the batch size, and a sample's features must not
    ones = parts.const(f"{PREFIX}ones{parts.head.numbers[-1]}", np.ones((n_classes, 1)))
    total = parts.node("MatMul", [exp, ones], name("expsum"))

    centred = parts.node("Sub", [LABELS, parts.const(f"{PREFIX}uniform", 1.0 / n_classes)], name("gu"))
    spread = parts.node(
        "ReduceMax", [parts.node("Abs", [centred], name("gu_abs"))], name("gu_max"), keepdims=0
    )
    one = parts.const(f"{PREFIX}one", 1)
    tau_part = parts.node(
        "Div", [TEMPERATURE, parts.const(f"{PREFIX}exact_up_to", _EXACT_UP_TO)], name("tau_part")
    )
    inverse = parts.node("Reciprocal", [spread], name("gu_inv"))  # inf for uniform labels
    scale = parts.node("Max", [one, parts.node("Min", [tau_part, inverse], name("k_min"))], name("k"))
    scale_tau = parts.node("Div", [scale, TEMPERATURE], name("k_tau"))

    # k * expm1(x): k * (y - max y) / tau * (1 + x/2 + x^2/6 + ...) near 0, k * (e^x - 1) below
    n = 1
    while _SERIES_BELOW ** (n + 1) / math.factorial(n + 2) > np.finfo(dtype).eps / 4:
        n += 1
    series = parts.const(f"{PREFIX}expm1_c{n}", 1 / math.factorial(n + 1))
    for i in range(n - 1, -1, -1):
        series = parts.node("Mul", [series, x], name(f"expm1_x{i}"))
        series = parts.node(
            "Add",
            [series, parts.const(f"{PREFIX}expm1_c{i}", 1 / math.factorial(i + 1))],
            name(f"expm1_p{i}"),
        )
    near = parts.node(
        "Mul", [parts.node("Mul", [shifted, series], name("expm1_near")), scale_tau], name("k_expm1_near")
    )
    far = parts.node("Mul", [parts.node("Sub", [exp, one], name("expm1_far")), scale], name("k_expm1_far"))
    is_near = parts.node(
        "Greater", [x, parts.const(f"{PREFIX}series_below", -_SERIES_BELOW)], name("is_near")
    )
    expm1 = parts.node("Where", [is_near, near, far], name("k_expm1"))
    mean = parts.node(
        "Div",
        [parts.node("MatMul", [expm1, ones], name("k_expm1_sum")), parts.const(f"{PREFIX}P", n_classes)],
        name("k_expm1_mean"),
    )
    uniform_minus_soft = parts.node(
        "Div", [parts.node("Sub", [mean, expm1], name("k_u_sub")), total], name("k_u_soft")
    )
    return parts.node(
        "Add",
        [parts.node("Mul", [centred, scale], name("k_gu")), uniform_minus_soft],
        output,
    )


def _layer(head, k):
    return head.layers[k - head.numbers[0]]


def _dy_name(head, k):
    """Name of dE/dy_k: delta_k itself unless a folded BatchNormalization scales it."""
    return Tensor("delta", k).name if _layer(head, k).scale is None else f"{PREFIX}dy{k}"


def _scaled_delta(parts, head, k, dy):
    scale = _layer(head, k).scale
    if scale is not None:
        parts.node("Mul", [dy, parts.const(f"{PREFIX}s{k}", scale)], Tensor("delta", k).name)


def _input_elem(head):
    """ONNX element type of the head input (quantized for a QOperator model)."""
    quantization = head.input_quantization
    if quantization is not None and quantization.quantized:
        dtype = np.uint8 if quantization.zero_point is None else np.asarray(quantization.zero_point).dtype
        return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    return helper.np_dtype_to_tensor_dtype(head.dtype)


def needed_nodes(nodes, targets, stop):
    """The nodes that ``targets`` depend on, not looking past the ``stop`` tensors.

    Returns the nodes in their original (topological) order and the names of
    every tensor they read.
    """
    producer = {out: node for node in nodes for out in node.output}
    keep, read, stack = set(), set(), [t for t in targets if t not in stop]
    while stack:
        node = producer.get(stack.pop())
        if node is None or id(node) in keep:
            continue
        keep.add(id(node))
        names = list(node.input)
        for attr in node.attribute:  # names used inside subgraphs (If/Loop)
            for sub in [attr.g] + list(attr.graphs):
                names += [name for sub_node in sub.node for name in sub_node.input]
        for name in names:
            if name and name not in read:
                read.add(name)
                if name not in stop:
                    stack.append(name)
    return [n for n in nodes if id(n) in keep], read


def finish_model(graph, opset, source=None):
    """Wrap a graph in a model with the source's opsets (or ``opset``)."""
    if source is None:
        opsets = [helper.make_opsetid("", opset)]
        ir_version = helper.find_min_ir_version_for(opsets)
    else:
        opsets = list(source.opset_import)
        ir_version = max(source.ir_version, helper.find_min_ir_version_for(opsets, ignore_unknown=True), 4)
    model = helper.make_model(graph, opset_imports=opsets, producer_name="skfishing")
    model.ir_version = ir_version
    return model


def dynamic_batch(value_info):
    """Copy of a graph input with its first dimension made symbolic."""
    value_info = onnx.ValueInfoProto.FromString(value_info.SerializeToString())
    dims = value_info.type.tensor_type.shape.dim
    if len(dims):
        dims[0].Clear()
        dims[0].dim_param = "N"
    return value_info


def _trunk(model, head):
    """Nodes, initializers and (batch-dynamic) inputs of ``model`` up to the head input."""
    index = GraphIndex(model.graph)
    if head.input_name in index.graph_inputs:
        inputs = [i for i in model.graph.input if i.name == head.input_name]
        return [], [], [dynamic_batch(i) for i in inputs]
    nodes, read = needed_nodes(list(model.graph.node), [head.input_name], set())
    inits = [i for i in model.graph.initializer if i.name in read]
    inputs = [i for i in model.graph.input if i.name in read and i.name not in index.constants]
    return nodes, inits, [dynamic_batch(i) for i in inputs]


@_validated("model", "head")
def network_input(model, head):
    """The one input of ``model`` that its trunk reads, batch-dynamic.

    Parameters
    ----------
    model : onnx.ModelProto
        The classifier.
    head : FCHead
        Its head, as returned by :func:`~skfishing.find_fc_head`.

    Returns
    -------
    value_info : onnx.ValueInfoProto
        Name, element type and shape (first dimension symbolic).

    Raises
    ------
    ValueError
        If the trunk reads several graph inputs.
    """
    inputs = _trunk(model, head)[2]
    if len(inputs) != 1:
        names = [i.name for i in inputs]
        raise ValueError(f"the network has {len(names)} inputs {names}; one input is supported")
    return inputs[0]


def _input_sum(parts, value_info, opset):
    """Nodes computing :data:`INPUT_SUM` from a float network input, or None."""
    elem = value_info.type.tensor_type.elem_type
    if elem not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16):
        return None
    flat = parts.node("Flatten", [value_info.name], f"{PREFIX}input_flat", axis=1)
    if opset >= 13:
        axes = numpy_helper.from_array(np.array([1], dtype=np.int64), f"{PREFIX}input_axes")
        parts.inits.append(axes)
        parts.node("ReduceSum", [flat, axes.name], INPUT_SUM, keepdims=0)
    else:
        parts.node("ReduceSum", [flat], INPUT_SUM, axes=[1], keepdims=0)
    return helper.make_tensor_value_info(INPUT_SUM, elem, ["N"])


@_validated(
    "head",
    "temperature",
    "labels",
    model=[onnx.ModelProto, None],
    outputs=[list, tuple],
    from_state=["boolean"],
    input_sum=["boolean"],
)
def build_model(model, head, outputs, *, from_state=False, temperature=2.0, labels=None, input_sum=False):
    """A graph from the network input (or the state) to the requested tensors.

    Only what the outputs need is kept: the trunk and the head up to them,
    the backward pass down to the lowest requested :math:`\\delta_k`.

    Parameters
    ----------
    model : onnx.ModelProto or None
        The classifier; unused (may be None) with ``from_state=True``.
    head : FCHead
        Its head, as returned by :func:`~skfishing.find_fc_head`.
    outputs : sequence of Tensor
        What to compute (see :meth:`~skfishing.FCHead.features` and
        :meth:`~skfishing.FCHead.state`).
    from_state : bool, default=False
        Start from the state tensors instead of the network input. Requested
        outputs that are themselves state tensors are not allowed: they need
        no graph.
    temperature : float, default=2.0
        Default of the :data:`TEMPERATURE` input.
    labels : array-like of shape (n_classes,), default=None
        Default of the :data:`LABELS` input, a probability vector (non-negative,
        summing to one); None means uniform :math:`1 / P`.
    input_sum : bool, default=False
        Also output :data:`INPUT_SUM` (not with ``from_state``).

    Returns
    -------
    model : onnx.ModelProto
        Batch-dynamic. Inputs: the network input (or the state tensors that
        are needed), then :data:`TEMPERATURE` and :data:`LABELS` when the
        outputs depend on them; outputs: ``[t.name for t in outputs]``, then
        :data:`INPUT_SUM` if asked.
    """
    parts = _head_parts(head, temperature, labels)
    state = head.state()
    names = [t.name for t in outputs]
    if from_state:
        if input_sum:
            raise ValueError("input_sum needs the network input, not the state")
        inside = sorted(set(outputs) & set(state))
        if inside:
            raise ValueError(f"{inside} are state tensors: read them from the state")
        stop = {t.name for t in state}
    else:
        stop = {head.input_name}
    nodes, read = needed_nodes(parts.nodes, names, stop)
    inits = [i for i in parts.inits if i.name in read]
    tensors = [i for i in inits if i.name in (TEMPERATURE, LABELS)]
    extra_inputs = [helper.make_tensor_value_info(i.name, parts.elem, list(i.dims)) for i in tensors]
    output_infos = [parts.info(t) for t in outputs]
    if from_state:
        inputs = [parts.info(t) for t in state if t.name in read]
        graph = helper.make_graph(
            nodes, "skfishing_from_state", inputs + extra_inputs, output_infos, initializer=inits
        )
        return finish_model(graph, head.opset)
    trunk_nodes, trunk_inits, inputs = _trunk(model, head)
    if len(inputs) != 1:
        network_input(model, head)  # raises, naming the inputs
    if input_sum:
        sum_parts = _Parts(head)
        info = _input_sum(sum_parts, inputs[0], head.opset)
        if info is not None:
            nodes, inits = nodes + sum_parts.nodes, inits + sum_parts.inits
            output_infos.append(info)
    graph = helper.make_graph(
        trunk_nodes + nodes,
        "skfishing_features",
        inputs + extra_inputs,
        output_infos,
    )
    result = finish_model(graph, head.opset, source=model)
    result.graph.initializer.extend(trunk_inits + inits)  # once: make_model copies its graph
    return result


@_validated("model", "head")
def build_trunk_model(model, head):
    """The part of ``model`` that computes the head input, batch-dynamic.

    Parameters
    ----------
    model : onnx.ModelProto
        The classifier.
    head : FCHead
        Its head, as returned by :func:`~skfishing.find_fc_head`.

    Returns
    -------
    model : onnx.ModelProto or None
        From the network input to the head input; None when the head input
        is a graph input (a plain MLP): then there is no trunk to run.
    """
    nodes, inits, inputs = _trunk(model, head)
    if not nodes:
        return None
    output = helper.make_tensor_value_info(head.input_name, _input_elem(head), None)
    graph = helper.make_graph(nodes, "skfishing_trunk", inputs, [output])
    result = finish_model(graph, head.opset, source=model)
    result.graph.initializer.extend(inits)  # once: make_model copies its graph
    return result


@_validated("model", "head")
def build_forward_model(model, head):
    """The network from its input to its state: the head input and every :math:`y_k`.

    Parameters
    ----------
    model : onnx.ModelProto
        The classifier.
    head : FCHead
        Its head, as returned by :func:`~skfishing.find_fc_head`.

    Returns
    -------
    model : onnx.ModelProto
        One input (the network input, batch dimension dynamic); outputs the
        flattened head input and every pre-activation :math:`y_k`, named as
        in :func:`output_names`. They do not depend on the temperature or the
        labels: together they are the *state* of a sample.
    """
    return build_model(model, head, head.state())


@_validated("head", "temperature", "labels", layer=[Integral])
def build_backward_model(head, layer, *, temperature=2.0, labels=None):
    r"""The backward pass of the paper's equation 10, from the logits down to :math:`\delta_{layer}`.

    Parameters
    ----------
    head : FCHead
        As returned by :func:`~skfishing.find_fc_head`.
    layer : int
        Paper number of the FC layer whose :math:`\delta` is computed.
    temperature : float, default=2.0
        Default of the ``fish_temperature`` input.
    labels : array-like of shape (n_classes,), default=None
        Default of the ``fish_labels`` input, a probability vector
        (non-negative, summing to one); None means uniform :math:`1 / P`.

    Returns
    -------
    model : onnx.ModelProto
        Inputs: the pre-activations ``fish_y{k}`` for ``k >= layer`` (the
        logits and the ReLU masks), ``fish_temperature`` and ``fish_labels``
        (both overridable initializers); output: ``fish_delta{layer}``.
    """
    if layer not in head.numbers:
        raise ValueError(f"layer {layer} is not an FC layer of this head {head.numbers}")
    return build_model(
        None, head, [Tensor("delta", layer)], from_state=True, temperature=temperature, labels=labels
    )


def _all_features(head):
    """Every tensor :func:`add_backward` outputs, in the order of :func:`output_names`."""
    return list(dict.fromkeys(t for key, t in _keyed_tensors(head) if key[0] != "preactivation"))


def _keyed_tensors(head):
    last = head.numbers[-1]
    for layer in head.layers:
        k = layer.number
        yield ("forward", k), Tensor("x", k - 1)
        yield ("activation", k - 1), Tensor("x", k - 1)
        yield ("backward", k), Tensor("delta", k)
        yield ("preactivation", k), Tensor("y", k)
    yield ("activation", last), Tensor("y", last)
    yield "probabilities", Tensor("prob", last)


@_validated("head")
def output_names(head):
    """Names of the head's tensors, keyed by what they hold.

    Returns a dict with keys ``("forward", k)`` (:math:`x_{k-1}`, the input
    of FC layer ``k``), ``("backward", k)`` (:math:`\\delta_k`),
    ``("activation", k)`` (:math:`x_k` for the head input and hidden layers,
    the logits :math:`y_L` for the classifier), ``("preactivation", k)``
    (:math:`y_k`) and ``"probabilities"`` (softmax of :math:`y_L`, no
    temperature). The same names are :attr:`~skfishing._onnx.head.Tensor.name`.
    """
    return {key: tensor.name for key, tensor in _keyed_tensors(head)}


@_validated("head", "temperature", "labels")
def build_head_model(head, *, temperature=2.0, labels=None):
    """The FC head with its backward subgraph, as a standalone ONNX model.

    Parameters
    ----------
    head : FCHead
        As returned by :func:`~skfishing.find_fc_head`.
    temperature : float, default=2.0
        Default of the ``fish_temperature`` input.
    labels : array-like of shape (n_classes,), default=None
        Default of the ``fish_labels`` input, a probability vector
        (non-negative, summing to one); None means uniform :math:`1 / P`.

    Returns
    -------
    model : onnx.ModelProto
        Inputs: the head input tensor (any shape whose trailing dimensions
        flatten to the first FC layer's width), ``fish_temperature`` and
        ``fish_labels``; outputs as listed by :func:`output_names` (without
        the pre-activations).
    """
    head_input = helper.make_tensor_value_info(head.input_name, _input_elem(head), None)
    graph_input = helper.make_model(
        helper.make_graph([], "input", [head_input], []), opset_imports=[helper.make_opsetid("", head.opset)]
    )
    # A model whose "trunk" is its input: build_model keeps the head only.
    model = build_model(graph_input, head, _all_features(head), temperature=temperature, labels=labels)
    model.graph.name = "skfishing_head"
    return model


@_validated("model", "temperature", "labels")
def add_backward(model, *, temperature=2.0, labels=None):
    """Append the backward subgraph of the FC head to an ONNX classifier.

    The result runs the trunk, then recomputes the FC head and its backward
    pass; its outputs are those of :func:`output_names` (without the
    pre-activations), its extra inputs ``fish_temperature`` and
    ``fish_labels`` have defaults, and its batch dimension is dynamic. It
    passes ``onnx.checker`` and can be saved with ``onnx.save`` and run by
    any ONNX runtime.

    Parameters
    ----------
    model : onnx.ModelProto
        A classifier without backward subgraph.
    temperature : float, default=2.0
        Default temperature :math:`\\tau`, a positive number float32
        represents with full precision.
    labels : array-like of shape (n_classes,), default=None
        Default label vector :math:`g`, a probability vector (non-negative,
        summing to one); None means uniform.

    Returns
    -------
    model : onnx.ModelProto
    """
    head = find_fc_head(model)
    result = build_model(model, head, _all_features(head), temperature=temperature, labels=labels)
    result.graph.name = "skfishing_fisher"
    return result
