"""The fully connected head of an ONNX classifier, read from its graph.

:func:`find_fc_head` walks the graph back from its output: an optional
Softmax, then fully connected (FC) layers (``Gemm``, or ``MatMul`` with an
optional ``Add``; an inference-mode ``BatchNormalization`` after one is
folded into it) joined by ``Relu``, with ``Dropout``, ``Identity`` and
flattening nodes skipped (``Flatten``, ``Reshape``, ``Squeeze``: each must
provably keep one row per sample, :mod:`skfishing._onnx.flatten`), down to the
tensor the first FC layer flattens: the trunk output (AlexNet's pool5). The
head of an int8 model is read dequantized (:mod:`skfishing._onnx.quantized`). It returns an
:class:`FCHead`: the layers with their weights (as ``(n_inputs,
n_outputs)`` matrices, whatever the graph's ``transB``), numbered as in the
paper, where the classifier is layer 8. Graph surgery
(:mod:`skfishing._onnx.graph`) builds on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import onnx
from sklearn.utils._param_validation import validate_params

from . import quantized
from .flatten import FLATTEN_OPS, ShapeEvaluator, check_flatten
from .graph_index import GraphIndex, attribute

__all__ = ["FCLayer", "FCHead", "HeadStructureError", "Tensor", "find_fc_head", "LAST_LAYER", "PREFIX"]

#: Number of the last FC layer (the classifier), as in the paper's AlexNet.
LAST_LAYER = 8
#: Prefix of every tensor the head adds, so it never clashes with the network.
PREFIX = "fish_"
#: Operators that pass the FC input through unchanged at inference time.
PASS_THROUGH = frozenset({"Dropout", "Identity"})
#: Operators that flatten the trunk output into FC input.
_FLATTEN = FLATTEN_OPS
_MIN_OPSET = 9


class Tensor(NamedTuple):
    r"""A quantity of the FC head, by kind and layer number.

    ``Tensor("x", k)`` is the activation :math:`x_k` (the head input for the
    lowest ``k``, else a ReLU output), ``Tensor("y", k)`` the pre-activation
    :math:`y_k`, ``Tensor("delta", k)`` the backward quantity
    :math:`\delta_k` and ``Tensor("prob", L)`` the softmax of the logits.
    Graph surgery names the tensor it adds :attr:`name`.
    """

    kind: str
    layer: int

    @property
    def name(self):
        """Name of the tensor in the graphs of :mod:`skfishing._onnx.graph`."""
        return f"{PREFIX}{self.kind}{self.layer}"


class HeadStructureError(ValueError):
    """The graph's head is not a stack of fully connected layers with ReLU."""


@dataclass(frozen=True)
class FCLayer:
    r"""One fully connected layer ``y = x @ weight (+ bias)``.

    Attributes
    ----------
    number : int
        Layer number in the paper's numbering (the classifier is 8).
    name : str
        Name of the Gemm/MatMul node, or of its weight when the node has none.
    weight : ndarray of shape (n_inputs, n_outputs)
        The weight matrix, already transposed from the graph's ``transB`` and
        scaled by Gemm's ``alpha``.
    bias : ndarray of shape (n_outputs,) or None
        The bias, scaled by Gemm's ``beta``.
    scale : ndarray of shape (n_outputs,) or None
        The factor :math:`s = \gamma / \sqrt{\sigma^2 + \epsilon}` of an
        inference-mode ``BatchNormalization`` that follows the layer, or None.
        Such a normalisation is folded into ``weight`` and ``bias`` (``y`` is
        its output); the features' :math:`\delta_k` is then
        :math:`s \odot \partial E / \partial y`, so that
        :math:`x_{k-1} \delta_k^T` stays the gradient with respect to the
        layer's own weights.
    """

    number: int
    name: str
    weight: np.ndarray
    bias: np.ndarray | None
    scale: np.ndarray | None = None

    def __post_init__(self):
        weight = self.weight
        if not isinstance(weight, np.ndarray) or weight.ndim != 2 or 0 in weight.shape:
            raise ValueError(f"FCLayer {self.name!r}: weight must be a non-empty 2-D array")
        for field in ("bias", "scale"):
            value = getattr(self, field)
            if value is not None and (not isinstance(value, np.ndarray) or value.shape != weight.shape[1:]):
                raise ValueError(
                    f"FCLayer {self.name!r}: {field} must be None or an array of shape {weight.shape[1:]}"
                )

    @property
    def n_inputs(self):
        """Width of the layer's input ``x_{k-1}``."""
        return self.weight.shape[0]

    @property
    def n_outputs(self):
        """Width of the layer's output ``y_k`` (and of ``delta_k``)."""
        return self.weight.shape[1]


@dataclass(frozen=True)
class FCHead:
    """The fully connected head of a classifier, as found in its graph.

    Attributes
    ----------
    input_name : str
        The tensor the head starts from (the trunk output, e.g. pool5).
    layers : tuple of FCLayer
        The FC layers from the lowest to the classifier.
    opset : int
        The default-domain opset of the source model.
    dtype : numpy dtype
        Element type of the weights (float32 or float64).
    input_source : str, default=""
        The node that computes the head input, in words (where the head
        stopped reading the graph).
    input_quantization : InputQuantization or None, default=None
        How the head input of an int8 model is rounded before the first FC
        layer, as in the model (see :mod:`skfishing._onnx.quantized`); None for a
        float model.
    """

    input_name: str
    layers: tuple
    opset: int
    dtype: np.dtype
    input_source: str = ""
    input_quantization: tuple | None = None

    def __post_init__(self):
        layers = self.layers
        if not layers or not all(isinstance(layer, FCLayer) for layer in layers):
            raise ValueError("FCHead.layers must be a non-empty sequence of FCLayer")
        for below, above in zip(layers[:-1], layers[1:]):
            if below.n_outputs != above.n_inputs or above.number != below.number + 1:
                raise ValueError(
                    f"FCHead: layer {above.name!r} does not follow {below.name!r} "
                    f"({below.n_outputs} outputs, {above.n_inputs} inputs; numbers {below.number}, {above.number})"
                )

    @property
    def numbers(self):
        """Layer numbers from the lowest FC layer to the classifier."""
        return tuple(layer.number for layer in self.layers)

    @property
    def input_number(self):
        """Activation number of the head input (5 for AlexNet's pool5)."""
        return self.layers[0].number - 1

    @property
    def n_classes(self):
        """Number of classes: the width of the logits."""
        return self.layers[-1].n_outputs

    def state(self):
        """The tensors that everything else is computed from.

        The head input and the pre-activation of every FC layer: they do not
        depend on the temperature or the labels, so they are what is cached
        per sample.

        Returns
        -------
        tensors : tuple of Tensor
        """
        return (Tensor("x", self.input_number),) + tuple(Tensor("y", k) for k in self.numbers)

    def features(self, kind, layer):
        r"""The tensors holding one kind of features of a layer.

        Parameters
        ----------
        kind : {"gradient", "activation", "probabilities"}
            ``"gradient"``: :math:`x_{k-1}` and :math:`\delta_k`, the
            factors of :math:`\partial E / \partial W_k`;
            ``"activation"``: :math:`x_k` (the logits :math:`y_L` for the
            classifier); ``"probabilities"``: the softmax output.
        layer : int
            Layer number ``k`` (ignored for probabilities).

        Returns
        -------
        tensors : tuple of Tensor

        Raises
        ------
        ValueError
            If the head has no such layer for that kind, listing the layers.
        """
        last = self.numbers[-1]
        if kind == "probabilities":
            return (Tensor("prob", last),)
        valid = self.numbers if kind == "gradient" else (self.input_number,) + self.numbers
        if layer not in valid:
            raise ValueError(
                f"layer={layer!r} does not exist for features={kind!r} in this model "
                f"(valid: {list(valid)}); its layers are:\n{self.describe()}"
            )
        if kind == "gradient":
            return (Tensor("x", layer - 1), Tensor("delta", layer))
        return (Tensor("y" if layer == last else "x", layer),)

    def width(self, tensor):
        """Number of values per sample of a :class:`Tensor`."""
        if tensor.kind == "x":
            return self.layers[tensor.layer - self.input_number].n_inputs
        return self.layers[tensor.layer - self.numbers[0]].n_outputs

    def describe(self):
        """One line per layer, for error messages."""
        source = f", computed by {self.input_source}" if self.input_source else ""
        lines = [f"  activation {self.input_number}: head input '{self.input_name}'{source}"]
        for layer in self.layers:
            lines.append(f"  layer {layer.number}: '{layer.name}' ({layer.n_inputs} -> {layer.n_outputs})")
        return "\n".join(lines)


def _default_opset(model):
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    raise HeadStructureError("the model imports no default-domain ONNX opset")


def _constant(index, name):
    """A constant tensor, or the dequantized value of a quantized constant."""
    return quantized.constant(index, name)


def skip_ops(index, tensor, ops, *, output=False):
    """Walk down from ``tensor`` through nodes whose op_type is in ``ops``.

    Also through QuantizeLinear and DequantizeLinear of activations
    (rounding, not read into the head) unless their range starts at zero (a
    fused ReLU); with ``output=True`` through all of them.
    """
    while True:
        node = index.producer.get(tensor)
        step = quantized.activation_step(index, tensor)
        if step is not None and (output or not step[1]):
            tensor = step[0]
        elif node is None or node.op_type not in ops:
            return tensor
        else:
            tensor = node.input[0]


def _head_input(index, fc_input, fc_quantization):
    """The trunk output below the lowest FC layer's input, and how the head rounds it.

    Walks down through pass-through and flatten nodes and through the
    QuantizeLinear/DequantizeLinear of activations, so that the trunk ends
    below any flatten (a Caffe-style constant Reshape included). The rounding
    the FC layer's input underwent is kept as a
    :class:`~skfishing._onnx.quantized.InputQuantization` (None for a float input
    that was never rounded): the quantization of a QOperator FC layer's
    input, else the DequantizeLinear nearest to the layer.
    """
    quantized_here = fc_quantization is not None
    rounding = fc_quantization
    tensor = fc_input
    while True:
        node = index.producer.get(tensor)
        if node is None:
            break
        if node.op_type in PASS_THROUGH | _FLATTEN:
            tensor = node.input[0]
            continue
        step = quantized.activation_step(index, tensor)
        if step is None:
            break
        if rounding is None and node.op_type == "DequantizeLinear":
            zero = _constant(index, node.input[2]) if len(node.input) > 2 and node.input[2] else None
            rounding = (_constant(index, node.input[1]), zero)
        quantized_here = node.op_type == "DequantizeLinear"  # below it: the integers
        tensor = step[0]
    if rounding is None or rounding[0] is None:
        return tensor, None
    return tensor, quantized.InputQuantization(rounding[0], rounding[1], quantized_here)


def _relu_input(index, tensor):
    """The input of the ReLU computing ``tensor``, or None.

    A ``Relu`` node, a QuantizeLinear or DequantizeLinear whose range starts
    at zero, or a QOperator FC layer whose output range does (then the
    tensor itself: the layer below is that FC layer, ReLU fused).
    """
    node = index.producer.get(tensor)
    if node is not None and node.op_type == "Relu":
        return node.input[0]
    step = quantized.activation_step(index, tensor)
    if step is not None and step[1]:
        return step[0]
    if quantized.fused_relu(index, tensor):
        return tensor
    return None


def _as_fc(index, tensor):
    """The FC layer producing ``tensor`` as (input, name, W, b, scale, quantization), or None.

    ``scale`` is None, or the factor of a BatchNormalization folded into W and
    b; ``quantization`` is ``(scale, zero_point)`` of a quantized input, or None.
    """
    node = index.producer.get(tensor)
    if node is not None and node.op_type == "BatchNormalization":
        return _folded_batchnorm(index, node)
    fc = _as_plain_fc(index, tensor)
    return None if fc is None else (*fc[:4], None, fc[4])


def _as_plain_fc(index, tensor):
    """A float or quantized FC layer as (input, name, W, b, quantization), or None."""
    fc = _as_linear(index, tensor)
    if fc is not None:
        return (*fc, None)
    fc = quantized.as_fc(index, tensor)
    if fc is None:
        return None
    fc_input, name, weight, bias, input_quantization = fc
    dtype = np.float32
    bias = None if bias is None else bias.astype(dtype)
    return fc_input, name, weight.astype(dtype), bias, input_quantization


def _folded_batchnorm(index, node):
    """A Linear -> BatchNormalization pair as one FC layer, or None."""
    params = [_constant(index, name) for name in node.input[1:5]]
    if len(params) != 4 or any(p is None for p in params) or attribute(node, "training_mode", 0):
        return None
    fc = _as_plain_fc(index, skip_ops(index, node.input[0], PASS_THROUGH, output=True))
    if fc is None:
        return None
    fc_input, name, weight, bias, input_quantization = fc
    gamma, beta, mean, var = (np.asarray(p, dtype=np.float64).reshape(-1) for p in params)
    if any(p.shape != (weight.shape[1],) for p in (gamma, beta, mean, var)):
        return None
    scale = gamma / np.sqrt(var + attribute(node, "epsilon", 1e-5))
    folded_bias = ((0.0 if bias is None else bias.astype(np.float64)) - mean) * scale + beta
    dtype = weight.dtype
    return (
        fc_input,
        name,
        (weight.astype(np.float64) * scale).astype(dtype),
        folded_bias.astype(dtype),
        scale.astype(dtype),
        input_quantization,
    )


def _as_linear(index, tensor):
    """The FC layer producing ``tensor`` as (input, name, W, b), or None."""
    node = index.producer.get(tensor)
    if node is None:
        return None
    if node.op_type == "Gemm":
        weight = _constant(index, node.input[1])
        if weight is None:
            raise HeadStructureError(
                f"Gemm node '{node.name}' takes its weight '{node.input[1]}' from "
                "a computed tensor; only constant weights are supported"
            )
        if attribute(node, "transA", 0):
            raise HeadStructureError(f"Gemm node '{node.name}' has transA=1, which is not supported")
        if attribute(node, "transB", 0):
            weight = weight.T
        weight = weight * attribute(node, "alpha", 1.0)
        bias = None
        if len(node.input) > 2 and node.input[2]:
            bias = _constant(index, node.input[2])
            if bias is None:
                raise HeadStructureError(f"Gemm node '{node.name}' has a computed bias")
            bias = np.broadcast_to((bias * attribute(node, "beta", 1.0)).reshape(-1), weight.shape[1:])
        return node.input[0], node.name or node.input[1], weight, bias
    if node.op_type == "Add":
        for i in (0, 1):
            bias = _constant(index, node.input[1 - i])
            matmul = index.producer.get(skip_ops(index, node.input[i], frozenset(), output=True))
            if bias is not None and matmul is not None and matmul.op_type == "MatMul":
                weight = _constant(index, matmul.input[1])
                if weight is not None and weight.ndim == 2:
                    bias = np.broadcast_to(bias.reshape(-1), weight.shape[1:])
                    return matmul.input[0], matmul.name or matmul.input[1], weight, bias
        return None
    if node.op_type == "MatMul":
        weight = _constant(index, node.input[1])
        if weight is not None and weight.ndim == 2:
            return node.input[0], node.name or node.input[1], weight, None
    return None


@validate_params({"model": [onnx.ModelProto]}, prefer_skip_nested_validation=True)
def find_fc_head(model):
    """Find the fully connected head of an ONNX classifier.

    The head is read from the graph output backwards: an optional final
    Softmax, then FC layers (``Gemm``, or ``MatMul`` with optional ``Add``)
    joined by ``Relu`` with optional ``Dropout``, ``Identity``, ``Flatten`` or
    ``Reshape`` between them, down to the tensor the first FC layer flattens
    (the trunk output).

    Parameters
    ----------
    model : onnx.ModelProto
        A classifier whose (first) graph output is its logits or softmax.

    Returns
    -------
    head : FCHead
        The head input tensor and the FC layers, numbered so that the
        classifier is layer 8.

    Raises
    ------
    HeadStructureError
        If the graph does not end in fully connected layers, with a message
        naming the node that was found instead.
    """
    graph = model.graph
    if len(graph.output) == 0:
        raise HeadStructureError("the ONNX graph has no output")
    opset = _default_opset(model)
    if opset < _MIN_OPSET:
        raise HeadStructureError(
            f"the model uses ONNX opset {opset}; opset {_MIN_OPSET} or newer is needed "
            "(convert it with onnx.version_converter.convert_version)"
        )
    index = GraphIndex(graph)
    shapes = ShapeEvaluator(model, index)
    tensor = skip_ops(index, graph.output[0].name, PASS_THROUGH, output=True)
    node = index.producer.get(tensor)
    if node is not None and node.op_type in ("Softmax", "LogSoftmax", "QLinearSoftmax"):
        tensor = skip_ops(index, node.input[0], PASS_THROUGH, output=True)

    found = []
    while True:
        fc = _as_fc(index, tensor)
        if fc is None:
            break
        fc_input, name, weight, bias, scale, input_quantization = fc
        found.append((name, weight, bias, scale))
        below = skip_ops(index, fc_input, PASS_THROUGH | _FLATTEN)
        check_flatten(shapes, fc_input, below, HeadStructureError)
        source = index.describe(below)
        relu_input = _relu_input(index, below)
        if relu_input is not None:
            # ReLU is idempotent: more ReLUs and zero-floor roundings may follow
            lower = skip_ops(index, relu_input, PASS_THROUGH | _FLATTEN | {"Relu"}, output=True)
            if _as_fc(index, lower) is not None:
                check_flatten(shapes, relu_input, lower, HeadStructureError)
                tensor = lower
                continue
            source += (
                f" of {index.describe(lower)}, where reading the head stopped (not a fully "
                "connected layer with constant weights, nor one followed by an "
                "inference-mode BatchNormalization with constant statistics)"
            )
        head_input, input_quantization = _head_input(index, fc_input, input_quantization)
        check_flatten(shapes, fc_input, head_input, HeadStructureError)
        source = index.describe(head_input) + source[len(index.describe(below)) :]
        break

    if not found:
        raise HeadStructureError(
            f"the graph output '{graph.output[0].name}' is computed by "
            f"{index.describe(tensor)}, not by a fully connected layer (Gemm or "
            "MatMul with constant weights, optionally followed by Softmax); "
            "skfishing needs a classifier whose head is a stack of FC layers"
        )
    found.reverse()
    dtypes = {w.dtype for _, w, _, _ in found}
    if len(dtypes) != 1 or not np.issubdtype(found[0][1].dtype, np.floating):
        raise HeadStructureError(f"FC weights must share one float dtype, found {sorted(map(str, dtypes))}")
    first = LAST_LAYER - len(found) + 1
    layers = []
    for i, (name, weight, bias, scale) in enumerate(found):
        if layers and layers[-1].n_outputs != weight.shape[0]:
            raise HeadStructureError(
                f"FC layer '{name}' takes {weight.shape[0]} inputs but the layer "
                f"below it gives {layers[-1].n_outputs}"
            )
        layers.append(FCLayer(first + i, name, np.ascontiguousarray(weight), bias, scale))
    return FCHead(head_input, tuple(layers), opset, found[0][1].dtype, source, input_quantization)
