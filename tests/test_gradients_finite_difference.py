"""Gradient features against central finite differences of the loss, in NumPy.

An oracle that needs no deep learning framework and shares no code with the
analytic backward pass: the loss of each sample is evaluated in float64 with
one FC weight moved by +-h, for every weight of the layer. It runs with the
README's test command (no torch); the torch autograd oracles of
tests/test_transformer.py run where the ``oracle`` extra is installed.
"""

import numpy as np
import pytest

from onnx_models import caffe_alexnet_model, mlp_model
from skfishing import DeepFisherTransformer
from skfishing._onnx.head import Tensor
from skfishing._onnx.network import get_network


def _losses(x, weights, biases, temperature, labels):
    """Cross-entropy of each sample between the tempered softmax and ``labels``."""
    for j, (W, b) in enumerate(zip(weights, biases)):
        x = x @ W + b
        if j < len(weights) - 1:
            x = np.maximum(x, 0)
    z = x / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_soft = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -(log_soft * labels).sum(axis=1)


def _finite_difference(x, weights, biases, layer_index, temperature, labels, h=1e-6):
    """dE/dW of one layer for each sample, shape (n_samples, *W.shape)."""
    W = weights[layer_index]
    G = np.empty((len(x), *W.shape))
    for i in range(W.shape[0]):
        for j in range(W.shape[1]):
            moved = []
            for step in (h, -h):
                changed = [w.copy() for w in weights]
                changed[layer_index][i, j] += step
                moved.append(_losses(x, changed, biases, temperature, labels))
            G[:, i, j] = (moved[0] - moved[1]) / (2 * h)
    return G


def _check(model, X, x, weights, biases, first_layer, temperature, labels=None):
    n_classes = weights[-1].shape[1]
    g = np.full(n_classes, 1 / n_classes) if labels is None else np.asarray(labels, np.float64)
    for k in range(len(weights)):
        Z = DeepFisherTransformer(
            model, layer=first_layer + k, temperature=temperature, labels=labels
        ).fit_transform(X)
        G = _finite_difference(x, weights, biases, k, temperature, g)
        G /= np.linalg.norm(G.reshape(len(G), -1), axis=1)[:, None, None]
        outer = np.einsum("ni,nj->nij", Z["forward"].astype(np.float64), Z["backward"].astype(np.float64))
        # the features are -dE/dW, normalised (up to a global sign, fixed here)
        np.testing.assert_allclose(outer, -G, atol=2e-4, rtol=0)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 5.0])
def test_mlp_gradients_match_finite_differences(temperature):
    model, weights, biases = mlp_model(widths=(6, 7, 5, 4))
    weights = [np.asarray(w, np.float64) for w in weights]
    biases = [np.asarray(b, np.float64) for b in biases]
    X = np.random.default_rng(4).normal(size=(5, 6)).astype(np.float32)
    _check(model, X, X.astype(np.float64), weights, biases, 6, temperature)


def test_mlp_gradients_with_labels_match_finite_differences():
    model, weights, biases = mlp_model(widths=(6, 7, 5, 4))
    weights = [np.asarray(w, np.float64) for w in weights]
    biases = [np.asarray(b, np.float64) for b in biases]
    X = np.random.default_rng(5).normal(size=(4, 6)).astype(np.float32)
    _check(model, X, X.astype(np.float64), weights, biases, 6, 2.0, labels=[0.7, 0.1, 0.1, 0.1])


def test_caffe_alexnet_head_matches_finite_differences():
    """A convolutional trunk (its pool5 read from the network) under a Caffe-style head."""
    model, _, _, weights, biases = caffe_alexnet_model()
    X = np.random.default_rng(1).normal(size=(5, 3, 8, 8)).astype(np.float32)
    (pool5,), _ = get_network(model, ["CPUExecutionProvider"]).run(X, (Tensor("x", 5),))
    _check(model, X, pool5.astype(np.float64), weights, biases, 6, 2.0)


def test_the_oracle_sees_a_wrong_gradient():
    """The finite differences tell a layer's gradient from its neighbour's."""
    model, weights, biases = mlp_model(widths=(6, 6, 6, 4))
    weights = [np.asarray(w, np.float64) for w in weights]
    biases = [np.asarray(b, np.float64) for b in biases]
    X = np.random.default_rng(6).normal(size=(3, 6)).astype(np.float32)
    Z = DeepFisherTransformer(model, layer=6).fit_transform(X)
    G = _finite_difference(X.astype(np.float64), weights, biases, 1, 2.0, np.full(4, 0.25))
    G /= np.linalg.norm(G.reshape(len(G), -1), axis=1)[:, None, None]
    outer = np.einsum("ni,nj->nij", Z["forward"], Z["backward"])
    assert np.abs(outer + G).max() > 1e-2
