"""
=====================================================
Gradients of any layer: an exported torchvision model
=====================================================

Today's classifiers keep a single FC layer, and their capacity in
convolutions. This example exports torchvision's ResNet-18 to ONNX, lists
the layers whose gradient skfishing computes, checks the features of its
last 3x3 convolution against PyTorch's own per-image gradient, and compares
kernel SVMs on scanned digits (see :ref:`layers`).

It needs PyTorch and torchvision, and is not run when the documentation is
built::

    pip install torch torchvision
    python examples/torchvision_layers.py

The weights are **random** (``weights=None``: nothing is downloaded), so
the accuracies below say nothing about ResNet-18's features; with
``weights="DEFAULT"`` (45 MB, downloaded once) and images of 224x224 they
do. Once exported, the model needs only onnxruntime: torch is used here to
build the file and to check the gradients.
"""

import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
import torchvision
from sklearn.model_selection import train_test_split
from torch.nn.utils.fusion import fuse_conv_bn_eval

from skfishing import (
    DeepFisherTransformer,
    ImagePreprocessing,
    TraceKernelSVC,
    list_layers,
)
from skfishing.datasets import load_digits_images

SIZE = 64  # input size; the global average pool takes any

# %%
# Export
# ------
#
# The legacy exporter folds each batch norm into the convolution before it,
# so the ONNX weight is the fused one. To compare gradients with PyTorch,
# the last convolution is fused here in the same way, before the export.

torch.manual_seed(0)
net = torchvision.models.resnet18(weights=None).eval()
block = net.layer4[1]
block.conv2 = fuse_conv_bn_eval(block.conv2, block.bn2)
block.bn2 = torch.nn.Identity()

path = Path(tempfile.mkdtemp()) / "resnet18.onnx"
with warnings.catch_warnings():  # the legacy exporter is deprecated
    warnings.simplefilter("ignore", DeprecationWarning)
    torch.onnx.export(
        net,
        torch.zeros(1, 3, SIZE, SIZE),
        path,
        dynamo=False,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
        opset_version=17,
    )

# %%
# The candidate layers
# --------------------
#
# ``skfishing layers resnet18.onnx`` prints the same list in a shell. A
# layer is named by its node name or its weight's name (the exporter names
# the fused weights ``onnx::Conv_...``).

layers = list_layers(path, input_shape=(3, SIZE, SIZE))
print(f"{len(layers)} layers; the last five:")
for layer in layers[-5:]:
    print(
        f"  {layer['name']:30s} T={layer['T']:4d} "
        f"d_in={layer['d_in']:5d} d_out={layer['d_out']:4d} "
        f"factors={layer['factor_floats']}"
    )

# %%
# The same gradient as PyTorch
# ----------------------------
#
# The features of ``layer4.1.conv2`` stand for the per-image weight
# gradient :math:`G = \\sum_t \\delta_t x_t^\\top`, scaled to unit norm. On
# four random inputs, PyTorch's autograd gives the same matrices (up to a
# global sign: skfishing's loss is the paper's).

LAYER = "layer4.1.conv2.weight"
x = np.random.default_rng(0).normal(size=(4, 3, SIZE, SIZE))
x = x.astype(np.float32)
Z = DeepFisherTransformer(path, layer=LAYER).fit_transform(x)
G = np.einsum(
    "nto,nti->noi",
    Z["backward"].astype(np.float64),
    Z["forward"].astype(np.float64),
).reshape(len(Z), -1)

reference = []
for image in torch.as_tensor(x):
    net.zero_grad()
    logits = net(image[None])[0]
    # E = sum_c g_c log softmax(y / tau)_c, uniform g, tau = 2
    loss = torch.log_softmax(logits / 2.0, dim=0).mean()
    loss.backward()
    g = block.conv2.weight.grad.double().numpy().reshape(-1)
    reference.append(g / np.linalg.norm(g))
reference = np.array(reference)
sign = np.sign(np.sum(G * reference, axis=1, keepdims=True))
difference = np.abs(G - sign * reference).max()
print(f"largest difference from torch autograd: {difference:.2e}")

# %%
# Kernel SVMs on digits
# ---------------------
#
# The pooled activations (the classifier's input, activation 7 in the
# paper's numbering), the classifier's gradient (layer 8) and the gradients
# of two convolutions, on 200 training and 200 test digits.

preprocessing = ImagePreprocessing(
    size=SIZE, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)
)
digits = load_digits_images(size=SIZE)
X_train, X_test, y_train, y_test = train_test_split(
    digits.images,
    digits.target,
    train_size=200,
    test_size=200,
    stratify=digits.target,
    random_state=0,
)
rows = {
    "pooled activations": dict(features="activation", layer=7),
    "dE/dW8 (classifier)": dict(layer=8),
    "dE/dW layer3.1.conv2": dict(
        layer="/layer3/layer3.1/conv2/Conv"
    ),
    "dE/dW layer4.1.conv2": dict(layer=LAYER),
}
for name, params in rows.items():
    fish = DeepFisherTransformer(
        path, preprocessing=preprocessing, **params
    )
    Z_train, Z_test = (
        fish.fit_transform(X_train),
        fish.transform(X_test),
    )
    svc = TraceKernelSVC(C=1.0).fit(Z_train, y_train)
    print(f"{name:22s} accuracy {svc.score(Z_test, y_test):.3f}")

# %%
# With random weights these accuracies only show that every kind of
# feature runs end to end; they rank nothing.
