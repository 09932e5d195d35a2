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

from .graph import _state_keys, build_backward_model, build_forward_model, output_names
from .head import find_fc_head

__all__ = ["FisherNetwork", "get_network", "default_providers", "clear_network_cache"]

_CACHE_SIZE = 4
_cache: OrderedDict = OrderedDict()
_lock = threading.Lock()


def default_providers():
    """CUDA execution provider when onnxruntime has it, then CPU."""
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def _session(model, providers, *, spinning=True):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # the overridable defaults of tau and g warn
    if not spinning:
        # The small backward graphs run between forward batches: a thread pool
        # that spin-waits would steal the cores from the forward pass.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), sess_options=options, providers=providers)


def _per_sample_shape(value_info):
    dims = value_info.type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in dims[1:])


class FisherNetwork:
    """Trunk, forward-head and backward sessions of one classifier.

    The work is split in two so that each part runs as rarely as it can:

    * :meth:`run_forward`: network input -> the *state* of each sample, the
      concatenation of the flattened head input (e.g. pool5) and the
      pre-activations ``y_k`` of all FC layers. It is the costly part and
      does not depend on the layer, the temperature or the labels, so it is
      what gets cached per image;
    * :meth:`features`: state -> requested features; the backward pass of
      Eq. (10) runs in a small ONNX graph per layer, built on first use,
      that goes from the logits down to that layer only.

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
    sha256 : str
        SHA-256 of the model file or of the serialized ModelProto (set by
        :func:`get_network`).
    """

    key = None
    sha256 = None

    def __init__(self, model, providers):
        self.head = find_fc_head(model)
        self.dtype = self.head.dtype
        self.providers = tuple(providers)
        self._names = output_names(self.head)
        forward = build_forward_model(model, self.head)
        self._forward = _session(forward, providers)
        self._backward = {}
        self._backward_lock = threading.Lock()
        self._state_names = [self._names[key] for key in _state_keys(self.head)]
        widths = [self.head.layers[0].n_inputs] + [layer.n_outputs for layer in self.head.layers]
        offsets = np.cumsum([0] + widths)
        self._slices = {
            key: slice(a, b) for key, a, b in zip(_state_keys(self.head), offsets[:-1], offsets[1:])
        }
        if len(forward.graph.input) != 1:
            names = [i.name for i in forward.graph.input]
            raise ValueError(f"the network has {len(names)} inputs {names}; one input is supported")
        value_info = forward.graph.input[0]
        self.input_name = value_info.name
        self.input_shape = _per_sample_shape(value_info)

    def layer_numbers(self, kind):
        """Layer numbers valid for a feature kind."""
        return sorted(key[1] for key in self._names if isinstance(key, tuple) and key[0] == kind)

    def run_forward(self, batch):
        """States (flattened head input and all ``y_k``) of a batch of network inputs.

        Parameters
        ----------
        batch : ndarray of shape (n_samples, ...)
            Network inputs, each of shape ``input_shape``.

        Returns
        -------
        state : ndarray of shape (n_samples, n_state)
            One row per sample.
        """
        outputs = self._forward.run(self._state_names, {self.input_name: batch})
        return np.concatenate(outputs, axis=1)

    def _state_part(self, state, key):
        return state[:, self._slices[key]]

    def _backward_session(self, layer):
        with self._backward_lock:
            if layer not in self._backward:
                self._backward[layer] = _session(
                    build_backward_model(self.head, layer), self.providers, spinning=False
                )
            return self._backward[layer]

    def features(self, state, keys, *, temperature=2.0, labels=None):
        """Features for ``keys`` (see :func:`skfishing.graph.output_names`).

        Parameters
        ----------
        state : ndarray of shape (n_samples, n_state)
            As returned by :meth:`run_forward`.
        keys : list
            What to compute.
        temperature : float, default=2.0
            Softmax temperature of the loss.
        labels : array-like of shape (n_classes,), default=None
            Label vector of the loss; None means uniform.

        Returns
        -------
        features : list of ndarray
            In the order of ``keys``.
        """
        first, last = self.head.numbers[0], self.head.numbers[-1]
        y = {k: self._state_part(state, ("preactivation", k)) for k in self.head.numbers}
        head_input = self._state_part(state, ("activation", first - 1))
        results = []
        for key in keys:
            kind, k = key if isinstance(key, tuple) else (key, last)
            if kind == "probabilities":
                z = y[last] - y[last].max(axis=1, keepdims=True)
                e = np.exp(z.astype(np.float64))
                results.append((e / e.sum(axis=1, keepdims=True)).astype(self.dtype))
            elif kind == "preactivation" or (kind == "activation" and k == last):
                results.append(y[k])
            elif (kind == "activation" and k == first - 1) or (kind == "forward" and k == first):
                results.append(head_input)
            elif kind in ("activation", "forward"):
                results.append(np.maximum(y[k if kind == "activation" else k - 1], 0))
            elif kind == "backward":
                feeds = {self._names["preactivation", j]: y[j] for j in self.head.numbers if j >= k}
                feeds["fish_temperature"] = np.asarray(temperature, dtype=self.dtype)
                if labels is not None:
                    feeds["fish_labels"] = np.asarray(labels, dtype=self.dtype)
                results.append(self._backward_session(k).run(None, feeds)[0])
            else:
                raise KeyError(key)
        return results

    def run(self, batch, keys, *, temperature=2.0, labels=None):
        """:meth:`features` of a batch of network inputs.

        Parameters
        ----------
        batch : ndarray of shape (n_samples, ...)
            Network inputs, each of shape ``input_shape``.
        keys, temperature, labels
            As in :meth:`features`.

        Returns
        -------
        features : list of ndarray
            In the order of ``keys``.
        """
        return self.features(self.run_forward(batch), keys, temperature=temperature, labels=labels)


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
    if isinstance(model, onnx.ModelProto):
        proto, sha256 = model, key[0][1]
    else:
        proto = load_onnx(model)
        with open(model, "rb") as f:
            sha256 = hashlib.file_digest(f, "sha256").hexdigest()
    network = FisherNetwork(proto, providers)
    network.key = repr(key[0])
    network.sha256 = sha256
    with _lock:
        _cache[key] = network
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return network


def clear_network_cache():
    """Drop every cached network (and its sessions)."""
    with _lock:
        _cache.clear()
