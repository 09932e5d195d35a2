"""Weights shared through ``Identity``: the legacy torch exporter stores
identical tensors once (torchvision's VGG initialises every classifier bias
to zero), and the others become ``Identity`` of it. The head is read with
those weights, and its gradients are torch autograd's.
"""

import numpy as np
import pytest

from onnx_models import torch_onnx, torch_weight_gradients
from skfishing._onnx.head import Tensor
from skfishing._onnx.network import get_network

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.oracle

CPU = ["CPUExecutionProvider"]


def test_biases_shared_through_identity_give_torch_gradients():
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64, 12),
        nn.ReLU(),
        nn.Linear(12, 12),
        nn.ReLU(),
        nn.Linear(12, 5),
    ).eval()
    with torch.no_grad():
        net[4].bias.zero_()
        net[6].bias.zero_()
        net[8].bias.fill_(0.25)
    model = torch_onnx(net, torch.zeros(1, 3, 8, 8), opset=17)
    identities = [n for n in model.graph.node if n.op_type == "Identity"]
    assert identities, "the exporter no longer shares identical initializers: the test needs another graph"
    X = np.random.default_rng(0).normal(size=(4, 3, 8, 8)).astype(np.float32)
    network = get_network(model, CPU)
    assert network.head.numbers == (6, 7, 8)
    for k, want in zip(network.head.numbers, torch_weight_gradients(net, X)):
        (x, delta), _ = network.run(X, (Tensor("x", k - 1), Tensor("delta", k)), temperature=2.0)
        got = -np.einsum("ni,nj->nij", x.astype(np.float64), delta) / 2.0
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=1e-4, err_msg=f"layer {k}")
