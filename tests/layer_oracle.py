"""Helpers of the layer-gradient tests: factors -> explicit G, and torch's per-image gradients."""

import numpy as np
import onnxruntime as ort

from skfishing._onnx.vjp import BACKWARD, FORWARD, build_layer_model


def explicit_gradients(forward, backward):
    """G_i = sum_t outer(backward[i, t], forward[i, t]), float64, shape (n, d_out, d_in)."""
    forward, backward = np.asarray(forward, np.float64), np.asarray(backward, np.float64)
    if forward.ndim == 2:
        return np.einsum("no,ni->noi", backward, forward)
    return np.einsum("nto,nti->noi", backward, forward)


def unit(rows):
    rows = np.asarray(rows, np.float64).reshape(len(rows), -1)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def onnx_factors(model, layer, images, temperature=2.0, labels=None, positions_last=False):
    """The factors ``(n, T, d)`` of the layer model; built with ``positions_last``, transposed back."""
    built = build_layer_model(
        model, layer, temperature=temperature, labels=labels, positions_last=positions_last
    )
    session = ort.InferenceSession(built.SerializeToString(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    factors = session.run([FORWARD, BACKWARD], {name: images})
    if positions_last:
        factors = [f.transpose(0, 2, 1) if f.ndim == 3 else f for f in factors]
    return factors


def torch_per_sample(module, param_name, images, temperature=2.0, labels=None):
    """Per-image dE/dW of one parameter, E = sum_c g_c log softmax(y / tau)_c, by torch.func."""
    import torch
    from torch.func import functional_call, grad, vmap

    params = {k: v.detach() for k, v in module.named_parameters()}
    buffers = {k: v.detach() for k, v in module.named_buffers()}

    def loss(weight, x):
        p = dict(params)
        p[param_name] = weight
        y = functional_call(module, (p, buffers), (x[None],))[0]
        n = y.shape[-1]
        g = torch.full((n,), 1.0 / n) if labels is None else torch.as_tensor(labels, dtype=y.dtype)
        return (g * torch.log_softmax(y / temperature, dim=-1)).sum()

    x = torch.as_tensor(images)
    with torch.no_grad():
        pass
    return vmap(grad(loss), in_dims=(None, 0))(params[param_name], x).numpy()


def calibrate(module, images):
    """Set every batch norm's statistics to those of ``images``, so that random networks keep unit-scale activations."""
    import torch

    norms = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
        norm.train()
    with torch.no_grad():
        module(torch.as_tensor(images))
    return module.eval()


def layer_named_by(model, weight):
    """Name of the ONNX layer whose constant weight is ``weight`` (a torch parameter), transposed or not."""
    from skfishing._onnx.vjp import layer_candidates

    weight = np.asarray(weight, np.float32)
    for spec in layer_candidates(model):
        for candidate in (spec.weight, spec.weight.T):
            if candidate.shape == weight.shape and np.array_equal(candidate, weight):
                return spec.name
    raise LookupError(
        f"no layer of the ONNX model has a weight of shape {weight.shape} equal to the one given"
    )
