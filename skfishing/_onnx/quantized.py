r"""The FC head of a quantized (int8) classifier, read as the float head it stands for.

Three layouts of ``onnxruntime.quantization`` are read:

* QDQ (``quantize_static(quant_format=QDQ)``): ``QuantizeLinear`` /
  ``DequantizeLinear`` pairs around float ``Gemm``/``MatMul`` nodes whose
  weights are ``DequantizeLinear`` of int8 constants;
* QOperator (``quant_format=QOperator``): ``QGemm``, ``QLinearMatMul`` and
  ``QLinearAdd`` on quantized tensors, a ``DequantizeLinear`` at the output;
* dynamic (``quantize_dynamic``): ``DynamicQuantizeLinear ->
  MatMulInteger -> Cast -> Mul -> Add``.

Each FC layer is read with its weights and bias dequantized,
:math:`(q - z) s`, and a ReLU wherever the quantized output range starts at
zero (the quantizer drops a ``Relu`` and lets the output's zero point clip
instead). The trunk runs quantized, as it is; the head is rebuilt in float
and differentiated in float. So the features of a quantized model are the
exact gradient of the *dequantized* head (without the rounding of its
intermediate activations) at the activations the quantized trunk computes,
rounded as the model rounds the input of its first FC layer.

``quantize_dynamic`` quantizes the activations of a whole batch with one
scale (``DynamicQuantizeLinear``): with such a model, a sample's features
depend on the other samples of its batch, at the level of the quantization
error; ``batch_size=1`` makes them a function of the sample alone.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import onnx
from onnx import helper
from sklearn.utils._param_validation import validate_params

from .graph_index import GraphIndex, attribute

__all__ = ["InputQuantization", "dequantize_model"]

#: Quantized FC operators of the QOperator format.
_QLINEAR_FC = frozenset({"QGemm", "QLinearMatMul", "QLinearAdd"})


class InputQuantization(NamedTuple):
    """How the head input of an int8 model is rounded before the first FC layer.

    ``quantized=True``: the head input holds the integers (a QOperator
    model) and is dequantized, ``(q - zero_point) * scale``; else it is a
    float tensor that the model quantizes and dequantizes again (QDQ).
    """

    scale: np.ndarray
    zero_point: np.ndarray | None
    quantized: bool


def dequantize(q, scale, zero_point=None, axis=1):
    """``(q - zero_point) * scale`` in float64, per tensor or along ``axis``."""
    q = np.asarray(q, dtype=np.float64)
    scale = np.asarray(scale, dtype=np.float64)
    zero = np.zeros(()) if zero_point is None else np.asarray(zero_point, dtype=np.float64)
    if scale.ndim == 1 and scale.size > 1 or zero.ndim == 1 and zero.size > 1:
        shape = [1] * q.ndim
        shape[axis % q.ndim] = -1
        scale, zero = (
            scale.reshape(shape if scale.size > 1 else ()),
            zero.reshape(shape if zero.size > 1 else ()),
        )
    else:
        scale, zero = scale.reshape(()), zero.reshape(())
    return (q - zero) * scale


def constant(index, name):
    """A constant, or ``DequantizeLinear`` of constants evaluated (float, in the scale's dtype)."""
    value = index.constant(name)
    if value is not None:
        return value
    node = index.producer.get(name)
    if node is None or node.op_type != "DequantizeLinear":
        return None
    q, scale = index.constant(node.input[0]), index.constant(node.input[1])
    zero = index.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if q is None or scale is None or (len(node.input) > 2 and node.input[2] and zero is None):
        return None
    return dequantize(q, scale, zero, attribute(node, "axis", 1)).astype(scale.dtype)


def zero_floor(index, zero_point_name):
    """Whether a quantized tensor's range starts at 0 (its zero point is the type's minimum)."""
    zero = index.constant(zero_point_name) if zero_point_name else None
    if zero is None or zero.dtype.kind not in "iu":
        return False
    return bool(np.all(zero == np.iinfo(zero.dtype).min))


def activation_step(index, tensor):
    """``(input, zero floor)`` if ``tensor`` is a QuantizeLinear or DequantizeLinear of an activation.

    "Zero floor": the quantized range starts at 0, so the node clips at 0 (a
    ReLU that the quantizer fused into the zero point).
    """
    node = index.producer.get(tensor)
    if node is None or node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
        return None
    if constant(index, node.input[0]) is not None:
        return None
    return node.input[0], zero_floor(index, node.input[2] if len(node.input) > 2 else "")


def fused_relu(index, tensor):
    """Whether a QOperator FC computing ``tensor`` clips its output at 0 (a fused ReLU)."""
    node = index.producer.get(tensor)
    if node is None or node.op_type not in _QLINEAR_FC:
        return False
    zero_point = node.input[-1] if len(node.input) > 8 or node.op_type != "QGemm" else ""
    return zero_floor(index, zero_point)


def as_fc(index, tensor):
    """A quantized FC layer producing ``tensor``, or None.

    Returns ``(input, name, weight, bias, input_quantization)`` with float64
    ``weight`` (n_inputs, n_outputs) and ``bias``; ``input_quantization`` is
    ``(scale, zero_point)`` of a quantized input, or None for a float input.
    """
    node = index.producer.get(tensor)
    if node is None:
        return None
    if node.op_type == "QGemm":
        return _qgemm(index, node)
    if node.op_type == "QLinearMatMul":
        return _qlinear_matmul(index, node, None)
    if node.op_type == "QLinearAdd":
        for i in (0, 3):
            bias_q = index.constant(node.input[3 - i])
            matmul = index.producer.get(node.input[i])
            if bias_q is not None and matmul is not None and matmul.op_type == "QLinearMatMul":
                bias = constant_dequantized(index, node.input[3 - i : 6 - i])
                return _qlinear_matmul(index, matmul, bias)
        return None
    if node.op_type in ("Add", "Mul"):
        return _dynamic(index, node)
    return None


def constant_dequantized(index, names):
    """Dequantize constant ``(q, scale, zero_point)`` given by tensor names, or None."""
    values = [index.constant(name) if name else None for name in names]
    if values[0] is None or values[1] is None:
        return None
    return dequantize(values[0], values[1], values[2] if len(values) > 2 else None, -1).reshape(-1)


def _qgemm(index, node):
    inputs = list(node.input) + [""] * (9 - len(node.input))
    if attribute(node, "transA", 0):
        return None
    b, b_scale, b_zero = (index.constant(n) if n else None for n in inputs[3:6])
    a_scale, a_zero = index.constant(inputs[1]), index.constant(inputs[2]) if inputs[2] else None
    if b is None or b_scale is None or a_scale is None:
        return None
    trans_b = attribute(node, "transB", 0)
    weight = dequantize(b, b_scale, b_zero, 0 if trans_b else 1)
    weight = (weight.T if trans_b else weight) * attribute(node, "alpha", 1.0)
    bias = None
    if inputs[6]:
        c = index.constant(inputs[6])
        if c is None:
            return None
        bias = np.asarray(c, np.float64).reshape(-1) * (
            np.asarray(a_scale, np.float64).reshape(()) * np.asarray(b_scale, np.float64).reshape(-1)
        )
        bias = np.broadcast_to(bias, weight.shape[1:])
    return node.input[0], node.name or inputs[3], weight, bias, (a_scale, a_zero)


def _qlinear_matmul(index, node, bias):
    b, b_scale = index.constant(node.input[3]), index.constant(node.input[4])
    b_zero = index.constant(node.input[5]) if node.input[5] else None
    a_scale, a_zero = index.constant(node.input[1]), index.constant(node.input[2]) if node.input[2] else None
    if b is None or b.ndim != 2 or b_scale is None or a_scale is None:
        return None
    weight = dequantize(b, b_scale, b_zero, 1)
    if bias is not None:
        bias = np.broadcast_to(bias, weight.shape[1:])
    return node.input[0], node.name or node.input[3], weight, bias, (a_scale, a_zero)


def _dynamic(index, node):
    """``[Add(] Mul(Cast(MatMulInteger(DynamicQuantizeLinear(x), Bq)), scales) [, bias)]``."""
    bias = None
    if node.op_type == "Add":
        for i in (0, 1):
            bias = index.constant(node.input[1 - i])
            mul = index.producer.get(node.input[i])
            if bias is not None and mul is not None and mul.op_type == "Mul":
                break
        else:
            return None
        node = mul
    for i in (0, 1):
        cast = index.producer.get(node.input[i])
        scales = index.producer.get(node.input[1 - i])
        if cast is not None and cast.op_type == "Cast" and scales is not None and scales.op_type == "Mul":
            break
    else:
        return None
    matmul = index.producer.get(cast.input[0])
    if matmul is None or matmul.op_type != "MatMulInteger":
        return None
    quantize = index.producer.get(matmul.input[0])
    if quantize is None or quantize.op_type != "DynamicQuantizeLinear":
        return None
    b = index.constant(matmul.input[1])
    b_zero = index.constant(matmul.input[3]) if len(matmul.input) > 3 and matmul.input[3] else None
    b_scale = next(
        (
            index.constant(n)
            for n in scales.input
            if n != quantize.output[1] and index.constant(n) is not None
        ),
        None,
    )
    if b is None or b.ndim != 2 or b_scale is None or set(scales.input) - {quantize.output[1]} == set():
        return None
    weight = dequantize(b, b_scale, b_zero, 1)
    if bias is not None:
        bias = np.broadcast_to(np.asarray(bias, np.float64).reshape(-1), weight.shape[1:])
    return quantize.input[0], matmul.name or matmul.input[1], weight, bias, None


#: QOperator operators and the float operator each becomes, with the
#: positions of its float inputs (quantized activations) in the node's inputs.
_QLINEAR_FLOAT = {
    "QLinearGlobalAveragePool": ("GlobalAveragePool", (0,)),
    "QLinearAveragePool": ("AveragePool", (0,)),
    "QLinearSigmoid": ("Sigmoid", (0,)),
    "QLinearLeakyRelu": ("LeakyRelu", (0,)),
    "QLinearSoftmax": ("Softmax", (0,)),
    "QLinearMul": ("Mul", (0, 3)),
    "QLinearAdd": ("Add", (0, 3)),
    "QLinearMatMul": ("MatMul", (0, 3)),
}
#: Attributes of QOperator nodes that their float operators do not have.
_QUANTIZED_ATTRIBUTES = frozenset({"channels_last", "opset"})


@validate_params({"model": [onnx.ModelProto]}, prefer_skip_nested_validation=True)
def dequantize_model(model):
    """A float model of the same architecture as an int8 model.

    Every quantized initializer is dequantized, ``(q - zero_point) *
    scale``; ``QuantizeLinear``/``DequantizeLinear`` of activations and
    ``DynamicQuantizeLinear`` are removed; QOperator nodes (``QLinearConv``,
    ``QGemm``, ``QLinearMatMul``, ``QLinearAdd``, ``QLinearMul``,
    ``QLinearGlobalAveragePool``, ``QLinearAveragePool``,
    ``QLinearConcat``, ``QLinearSigmoid``, ``QLinearLeakyRelu``,
    ``QLinearSoftmax``) and ``MatMulInteger``/``ConvInteger`` become their
    float operators, with a ``Relu`` where the quantized output range started
    at zero. The result runs the network in float32 with the int8 model's
    weights (as dequantized), for a user who has only the int8 file; pass it
    to :class:`~skfishing.DeepFisherTransformer` like any model.

    Parameters
    ----------
    model : onnx.ModelProto
        A model quantized by ``onnxruntime.quantization`` (QDQ, QOperator
        or dynamic).

    Returns
    -------
    model : onnx.ModelProto
        The float model; its inputs and outputs keep their names.

    Raises
    ------
    ValueError
        If a quantized operator has no float counterpart here, naming it.
    """
    graph = model.graph
    index = GraphIndex(graph)
    rename, nodes, inits = {}, [], {}
    integer_outputs = set()  # outputs of MatMulInteger/ConvInteger (then Cast, Mul by scales)

    def src(name):
        while name in rename:
            name = rename[name]
        return name

    def float_const(name, value):
        inits[name] = onnx.numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)
        return name

    def add(float_op, float_inputs, output, zero_point_name="", **float_attrs):
        """The float node, then a Relu where the quantized output range started at 0."""
        relu = zero_floor(index, zero_point_name)
        nodes.append(
            helper.make_node(float_op, float_inputs, [f"{output}_prerelu" if relu else output], **float_attrs)
        )
        if relu:
            nodes.append(helper.make_node("Relu", [f"{output}_prerelu"], [output]))

    for node in graph.node:
        op, inputs = node.op_type, list(node.input)
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if op == "DequantizeLinear" and index.constant(inputs[0]) is not None:
            float_const(node.output[0], constant(index, node.output[0]))
        elif op == "QuantizeLinear" and zero_floor(index, inputs[2] if len(inputs) > 2 else ""):
            nodes.append(helper.make_node("Relu", [src(inputs[0])], [node.output[0]]))  # a fused ReLU
        elif op in ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"):
            rename[node.output[0]] = inputs[0]
        elif op in ("MatMulInteger", "ConvInteger"):
            weight = dequantize(
                index.constant(inputs[1]),
                _scale_of(index, node, graph),
                index.constant(inputs[3]) if len(inputs) > 3 and inputs[3] else None,
                1 if op == "MatMulInteger" else 0,
            )
            w = float_const(f"{node.output[0]}_weight", weight)
            float_op = "MatMul" if op == "MatMulInteger" else "Conv"
            nodes.append(helper.make_node(float_op, [src(inputs[0]), w], [node.output[0]], **attrs))
            integer_outputs.add(node.output[0])
        elif op == "Cast" and src(inputs[0]) in integer_outputs:
            rename[node.output[0]] = inputs[0]
            integer_outputs.add(node.output[0])
        elif op == "Mul" and any(src(i) in integer_outputs for i in inputs):
            rename[node.output[0]] = next(i for i in inputs if src(i) in integer_outputs)
        elif op == "QLinearConv":
            weight = float_const(
                f"{node.output[0]}_weight",
                dequantize(
                    index.constant(inputs[3]), index.constant(inputs[4]), index.constant(inputs[5]), 0
                ),
            )
            conv_inputs = [src(inputs[0]), weight]
            if len(inputs) > 8 and inputs[8]:
                bias = index.constant(inputs[8]) * (index.constant(inputs[1]) * index.constant(inputs[4]))
                conv_inputs.append(float_const(f"{node.output[0]}_bias", bias))
            add("Conv", conv_inputs, node.output[0], inputs[7], **attrs)
        elif op == "QGemm":
            fc = _qgemm(index, node)
            if fc is None:
                raise ValueError(f"QGemm node '{node.name}' has weights that are not constant")
            gemm_inputs = [src(inputs[0]), float_const(f"{node.output[0]}_weight", fc[2])]
            if fc[3] is not None:
                gemm_inputs.append(float_const(f"{node.output[0]}_bias", fc[3]))
            add("Gemm", gemm_inputs, node.output[0], inputs[8] if len(inputs) > 8 else "")
        elif op == "QLinearConcat":
            parts = [src(inputs[i]) for i in range(2, len(inputs), 3)]
            nodes.append(helper.make_node("Concat", parts, [node.output[0]], axis=attrs["axis"]))
        elif op in _QLINEAR_FLOAT:
            float_op, positions = _QLINEAR_FLOAT[op]
            float_inputs = []
            for i in positions:
                if index.constant(inputs[i]) is not None:
                    axis = 1 if op == "QLinearMatMul" else -1
                    value = dequantize(
                        index.constant(inputs[i]),
                        index.constant(inputs[i + 1]),
                        index.constant(inputs[i + 2]) if inputs[i + 2] else None,
                        axis,
                    )
                    float_inputs.append(float_const(f"{node.output[0]}_in{i}", value))
                else:
                    float_inputs.append(src(inputs[i]))
            kept = {k: v for k, v in attrs.items() if k not in _QUANTIZED_ATTRIBUTES}
            zero_point = inputs[-1] if op in ("QLinearMatMul", "QLinearAdd", "QLinearMul") else ""
            add(float_op, float_inputs, node.output[0], zero_point, **kept)
        elif op.startswith("QLinear") or op in ("QGemm", "QAttention", "DynamicQuantizeMatMul"):
            raise ValueError(
                f"{op} node '{node.name or node.output[0]}' has no float counterpart in dequantize_model"
            )
        else:
            copy = onnx.NodeProto.FromString(node.SerializeToString())
            del copy.input[:]
            copy.input.extend(src(i) if i else "" for i in inputs)
            nodes.append(copy)

    for output in graph.output:  # outputs keep their names
        if src(output.name) != output.name:
            nodes.append(helper.make_node("Identity", [src(output.name)], [output.name]))
    nodes = _live(nodes, [o.name for o in graph.output])
    used = {name for n in nodes for name in n.input}
    for init in graph.initializer:
        if init.name in used and init.name not in inits and init.data_type not in _QUANTIZED_TYPES:
            inits[init.name] = init
    outputs = [onnx.ValueInfoProto.FromString(o.SerializeToString()) for o in graph.output]
    for output in outputs:
        output.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    float_graph = helper.make_graph(
        nodes, graph.name, list(graph.input), outputs, initializer=[i for n, i in inits.items() if n in used]
    )
    result = helper.make_model(float_graph, opset_imports=list(model.opset_import))
    result.ir_version = model.ir_version
    return result


_QUANTIZED_TYPES = frozenset({2, 3})  # uint8, int8: never read by a float graph


def _live(nodes, outputs):
    """The nodes the outputs depend on, in order (the scales' arithmetic drops out)."""
    producer = {out: i for i, n in enumerate(nodes) for out in n.output}
    keep, stack = set(), list(outputs)
    while stack:
        i = producer.get(stack.pop())
        if i is not None and i not in keep:
            keep.add(i)
            stack.extend(nodes[i].input)
    return [n for i, n in enumerate(nodes) if i in keep]


def _scale_of(index, node, graph):
    """The weight scale of a dynamic MatMulInteger/ConvInteger: a constant factor of the Mul that rescales it."""
    cast = next((n for n in graph.node if n.op_type == "Cast" and n.input[0] == node.output[0]), None)
    mul = cast and next((n for n in graph.node if n.op_type == "Mul" and cast.output[0] in n.input), None)
    scales = mul and next(
        (
            index.producer.get(i)
            for i in mul.input
            if i != cast.output[0] and index.producer.get(i) is not None
        ),
        None,
    )
    if scales is not None and scales.op_type == "Mul":
        for name in scales.input:
            if index.constant(name) is not None:
                return index.constant(name)
    raise ValueError(f"{node.op_type} node '{node.name or node.output[0]}': its weight scale was not found")
