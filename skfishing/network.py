"""Run a classifier's trunk and its FC head with backward pass on onnxruntime.

:func:`get_network` builds a :class:`FisherNetwork` once per model file (or
model content) and execution providers, and keeps it in a small
least-recently-used cache, so that cloning an estimator (``GridSearchCV``
clones a lot) never rebuilds a graph or reloads weights.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from .graph import build_head_model, build_trunk_model, find_fc_head, output_names

__all__ = ["FisherNetwork", "get_network", "default_providers", "clear_network_cache"]

_CACHE_SIZE = 4
_cache: OrderedDict = OrderedDict()
_lock = threading.Lock()


def default_providers():
    """CUDA execution provider when onnxruntime has it, then CPU."""
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def _session(model, providers):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # the overridable defaults of tau and g warn
    return ort.InferenceSession(model.SerializeToString(), sess_options=options, providers=providers)


def _per_sample_shape(value_info):
    dims = value_info.type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in dims[1:])


class FisherNetwork:
    """Trunk and head sessions of one classifier.

    Parameters
    ----------
    model : onnx.ModelProto
        A classifier without backward subgraph.
    providers : sequence of str
        onnxruntime execution providers, in order of preference.

    Attributes
    ----------
    head : FCHead
        The FC head found in the graph.
    input_name : str
        Name of the network input.
    input_shape : tuple
        Per-sample input shape (None for dynamic dimensions).
    dtype : numpy dtype
        Element type the network computes in.
    key : str
        Identity of the model (set by :func:`get_network`): file path, size
        and modification time, or the hash of the ModelProto's content.
    """

    key = None

    def __init__(self, model, providers):
        self.head = find_fc_head(model)
        self.dtype = self.head.dtype
        self.providers = tuple(providers)
        self._names = output_names(self.head)
        trunk = build_trunk_model(model, self.head)
        self._trunk = None if trunk is None else _session(trunk, providers)
        self._head = _session(build_head_model(self.head), providers)
        if trunk is None:
            (value_info,) = [i for i in model.graph.input if i.name == self.head.input_name]
        elif len(trunk.graph.input) == 1:
            value_info = trunk.graph.input[0]
        else:
            names = [i.name for i in trunk.graph.input]
            raise ValueError(f"the network trunk has {len(names)} inputs {names}; one image input is supported")
        self.input_name = value_info.name
        self.input_shape = _per_sample_shape(value_info)

    def layer_numbers(self, kind):
        """Layer numbers valid for a feature kind."""
        return sorted(k for key in self._names if isinstance(key, tuple) and key[0] == kind for k in [key[1]])

    def run_trunk(self, batch):
        """The head input (e.g. pool5) for a batch of network inputs."""
        if self._trunk is None:
            return batch
        return self._trunk.run(None, {self.input_name: batch})[0]

    def run_head(self, trunk_output, keys, *, temperature=2.0, labels=None):
        """Head outputs for ``keys`` (see :func:`skfishing.graph.output_names`).

        Returns a list of arrays in the order of ``keys``.
        """
        feeds = {self.head.input_name: trunk_output, "fish_temperature": np.asarray(temperature, dtype=self.dtype)}
        if labels is not None:
            feeds["fish_labels"] = np.asarray(labels, dtype=self.dtype)
        return self._head.run([self._names[key] for key in keys], feeds)


def _model_key(model):
    if isinstance(model, onnx.ModelProto):
        return ("proto", hashlib.sha256(model.SerializeToString()).hexdigest())
    path = Path(model)
    stat = path.stat()
    return ("file", str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def load_onnx(path):
    """Load an ONNX model file with a clear error when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model file '{path}' does not exist")
    try:
        return onnx.load(os.fspath(path))
    except Exception as exc:  # protobuf raises DecodeError and others
        raise ValueError(f"'{path}' is not a readable ONNX model: {exc}") from exc


def get_network(model, providers=None):
    """The cached :class:`FisherNetwork` of a model file or ModelProto.

    Parameters
    ----------
    model : str, path-like or onnx.ModelProto
        The classifier. Files are identified by path, size and modification
        time, protos by the hash of their content.
    providers : sequence of str, default=None
        Execution providers; None means :func:`default_providers`.
    """
    providers = tuple(default_providers() if providers is None else providers)
    key = (_model_key(model), providers)
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    proto = model if isinstance(model, onnx.ModelProto) else load_onnx(model)
    network = FisherNetwork(proto, providers)
    network.key = repr(key[0])
    with _lock:
        _cache[key] = network
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return network


def clear_network_cache():
    """Drop every cached network (and its sessions)."""
    with _lock:
        _cache.clear()
