r"""The layers whose gradient skfishing computes, and their features.

Any ``Conv``, ``Gemm`` or ``MatMul`` node with a constant weight is a layer
(:mod:`skfishing._onnx.vjp` has the maths). :func:`list_layers` lists them with the
size of each representation of the per-image gradient :math:`G = \sum_t
\delta_t x_t^\top`: the factors take :math:`T (d_{in} + d_{out})` floats
per image, :math:`G` itself :math:`d_{in} d_{out}`.

Gradient features of a layer applied at :math:`T > 1` positions are a
structured array with float32 fields ``"forward"`` of shape ``(T, d_in)``
and ``"backward"`` of shape ``(T, d_out)``, scaled so that
:math:`\|G\|_F = 1`: both factors are multiplied by :math:`\|G\|_F^{-1/2}`,
with :math:`\|G\|_F^2 = \sum_{t,s} \langle x_t, x_s \rangle \langle
\delta_t, \delta_s \rangle` computed in float64. For :math:`T = 1` (FC
layers) the fields are 1-D and each has unit norm, as for the FC head.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
from sklearn.utils._param_validation import validate_params

from ..features import gradient_dtype
from .cuts import layer_cut
from .head import find_fc_head
from .vjp import RULES, STOP_OPS, LayerGraphBuilder, layer_spec, logits_of, nodes_on_path

__all__ = ["list_layers"]


def squared_norms(forward, backward, dtype=np.float64):
    """:math:`\\|G\\|_F^2` per row of factors ``(n, T, d_in)``, ``(n, T, d_out)``, summed in float64.

    By the cheaper of the two ways: from the Gram matrices of the factors,
    or from :math:`G` itself; their products run in ``dtype``.
    """
    n, positions, d_in = forward.shape
    d_out = backward.shape[2]
    result = np.empty(n)
    for i in range(n):
        x, d = forward[i].astype(dtype, copy=False), backward[i].astype(dtype, copy=False)
        if positions * positions * (d_in + d_out) < positions * d_in * d_out:
            result[i] = np.sum((x @ x.T).astype(np.float64) * (d @ d.T))
        else:
            result[i] = np.sum(np.square(d.T @ x, dtype=np.float64))
    return result


def check_finite_factors(forward, backward, first_row=0):
    """Refuse factors ``(n, T, d)`` holding NaN or infinity, naming the first such sample."""
    finite = np.isfinite(forward).all(axis=(1, 2)) & np.isfinite(backward).all(axis=(1, 2))
    if not finite.all():
        i = int(np.flatnonzero(~finite)[0])
        raise ValueError(
            f"sample {first_row + i} gives non-finite gradient factors (NaN or infinity): the network "
            "overflowed. Check the input values, the temperature or the labels."
        )


def layer_features(forward, backward, source=None, first_row=0):
    """Normalised gradient features from the factors a layer model outputs.

    Parameters
    ----------
    forward : ndarray of shape (n_samples, T, d_in) or (n_samples, d_in)
        The inputs :math:`x_t`.
    backward : ndarray of shape (n_samples, T, d_out) or (n_samples, d_out)
        The output gradients :math:`\\delta_t`.
    source : dict, default=None
        Provenance for the dtype's metadata.
    first_row : int, default=0
        Index of the first row, to name a bad sample in errors.

    Returns
    -------
    features : ndarray of shape (n_samples,)
        Structured, as :func:`skfishing.features.gradient_dtype` describes.

    Raises
    ------
    ValueError
        If a sample's factors are not finite, naming the sample.
    """
    one = forward.ndim == 2 or forward.shape[1] == 1  # T = 1: 1-D fields, each of unit norm
    if forward.ndim == 2:
        forward, backward = forward[:, None], backward[:, None]
    n, positions, d_in = forward.shape
    result = np.empty(
        n, dtype=gradient_dtype(d_in, backward.shape[2], source, positions=1 if one else positions)
    )
    check_finite_factors(forward, backward, first_row)
    if one:
        for name, values in (("forward", forward[:, 0]), ("backward", backward[:, 0])):
            block = values.astype(np.float64)
            norms = np.linalg.norm(block, axis=1, keepdims=True)
            result[name] = np.divide(block, norms, out=np.zeros_like(block), where=norms > 0)
        return result
    scale = np.sqrt(np.sqrt(squared_norms(forward, backward)))
    scale = np.where(scale > 0, 1 / np.where(scale > 0, scale, 1), 0.0)[:, None, None]
    for name, factor in (("forward", forward), ("backward", backward)):  # products in float64, rounded
        np.multiply(factor, scale, out=result[name], casting="same_kind")  # into the field: no temporary
    return result


@validate_params(
    {"model": [str, os.PathLike, onnx.ModelProto], "input_shape": ["array-like", None]},
    prefer_skip_nested_validation=True,
)
def list_layers(model, input_shape=None):
    """The layers of a classifier whose gradient skfishing can compute.

    Parameters
    ----------
    model : str, path-like or onnx.ModelProto
        The classifier (an ONNX file or a loaded model).
    input_shape : array-like of int, default=None
        Per-sample input shape, for graphs whose input size is free.

    Returns
    -------
    layers : list of dict
        One per Conv, Gemm or MatMul node with a constant weight, in graph
        order, with keys ``op_type``, ``name`` (node name), ``weight``
        (weight name), ``T`` (positions, groups folded in; None when the
        shapes are not static), ``d_in``, ``d_out``, ``factor_floats``
        (:math:`T (d_{in} + d_{out})` per image), ``gradient_floats``
        (the number of weights, :math:`G`'s size per image),
        ``cache_floats`` (what a model-selection cache keeps per image so
        that the layer, at any temperature, costs no forward pass of the
        image: the cut of the graph at the layer, see
        :class:`~skfishing.cache.FeatureCache`; for an FC layer of the head,
        the head's state; None when the layer is computed from the image
        every time) and ``supported`` (True when every op between the layer
        and the logits has a reverse-pass rule, else the op types that have
        none).

    """
    if not isinstance(model, onnx.ModelProto):
        from .model_files import load_onnx

        model = load_onnx(model)
    shape = None if input_shape is None else [int(v) for v in np.ravel(input_shape)]
    logits = logits_of(model)
    head = find_fc_head(model)
    head_layers = {fc.name for fc in head.layers}
    builder = LayerGraphBuilder(model, shape)
    rows = []
    for position, node in enumerate(builder.graph.node):
        spec = layer_spec(builder, node)
        if spec is None:
            continue
        if spec.name in head_layers:
            cache_floats = sum(head.width(t) for t in head.state())
        else:
            cut = layer_cut(builder, position, logits)
            cache_floats = None if cut is None else cut.width
        try:
            on_path = nodes_on_path(builder, spec, logits)
            missing = sorted(
                {
                    n.op_type
                    for n in builder.graph.node
                    if any(o in on_path for o in n.output)
                    and n.output[0] != spec.output_name
                    and (n.op_type not in RULES or n.domain not in ("", "ai.onnx"))
                    and n.op_type not in STOP_OPS
                }
            )
        except ValueError:
            missing = ["(the logits do not depend on it)"]
        rows.append(
            {
                "op_type": spec.op_type,
                "name": spec.name,
                "weight": spec.weight_name,
                "T": spec.T,
                "d_in": spec.d_in,
                "d_out": spec.d_out,
                "factor_floats": None if spec.T is None else spec.T * (spec.d_in + spec.d_out),
                "gradient_floats": spec.g_size,
                "cache_floats": cache_floats,
                "supported": True if not missing else missing,
            }
        )
    return rows
