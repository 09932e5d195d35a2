"""Walking an ONNX graph: who produces a tensor, which tensors are constants, node attributes.

Graph surgery (:mod:`skfishing._onnx.head`, :mod:`skfishing._onnx.graph`,
:mod:`skfishing._onnx.flatten`, :mod:`skfishing._onnx.quantized`) reads graphs through
these two helpers; nothing here changes a graph.
"""

from __future__ import annotations

from onnx import helper, numpy_helper

__all__ = []  # read by the graph modules; nothing here is user API


def attribute(node, name, default):
    """The value of attribute ``name`` of an ONNX node, or ``default`` if it has none."""
    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default


class GraphIndex:
    """Producers, constants and attributes of a graph, for walking it."""

    def __init__(self, graph):
        self.graph = graph
        self.producer = {}
        for node in graph.node:
            for out in node.output:
                self.producer[out] = node
        self.constants = {init.name: init for init in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant" and node.attribute:
                attr = node.attribute[0]
                if attr.name == "value":
                    self.constants[node.output[0]] = attr.t
            elif node.op_type == "Identity" and node.input[0] in self.constants:
                # exporters share identical weights (VGG's zero biases) through Identity
                self.constants[node.output[0]] = self.constants[node.input[0]]
        self.graph_inputs = {i.name for i in graph.input} - set(self.constants)

    def constant(self, name):
        tensor = self.constants.get(name)
        return None if tensor is None else numpy_helper.to_array(tensor)

    def describe(self, tensor):
        node = self.producer.get(tensor)
        if node is None:
            return f"graph input '{tensor}'" if tensor in self.graph_inputs else f"'{tensor}'"
        return f"{node.op_type} node '{node.name or node.output[0]}'"
