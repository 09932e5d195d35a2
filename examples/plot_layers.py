"""
===============================================
Gradients of convolutions: the embedded network
===============================================

The paper takes gradients of FC layers only; skfishing computes the
gradient of any convolution (or ``Gemm``/``MatMul``) layer. A layer applied
at :math:`T` positions has the per-image weight gradient
:math:`G = \\sum_t \\delta_t x_t^\\top`; the features are its per-position
factors, and :func:`~skfishing.trace_kernel` compares them exactly (see
:ref:`layers`).

Here, on the embedded network and scanned digits: list the layers, compute
the gradient features of the last convolution, and compare kernel SVMs on
them with the pool5 activations and the paper's fc7 gradient.
"""

# %%
# The candidate layers
# --------------------
#
# :func:`~skfishing.list_layers` (or ``skfishing layers
# tinyalexnet`` in a shell) lists every layer whose gradient can be
# computed, with its positions :math:`T`, its widths and the floats per
# image of each representation.

import time

import matplotlib.pyplot as plt
from sklearn.model_selection import train_test_split

from skfishing import (
    DeepFisherTransformer,
    TraceKernelSVC,
    list_layers,
)
from skfishing.datasets import load_digits_images
from skfishing.registry import resolve_model

layers = list_layers(resolve_model("tinyalexnet").source)
print(
    f"{'weight':20s} {'T':>5s} {'d_in':>5s} {'d_out':>5s} {'factors':>8s}"
)
for layer in layers:
    print(
        f"{layer['weight']:20s} {layer['T']:5d} {layer['d_in']:5d} "
        f"{layer['d_out']:5d} {layer['factor_floats']:8d}"
    )
convs = [layer for layer in layers if layer["op_type"] == "Conv"]

# %%
# Features of a convolution
# -------------------------
#
# ``layer=`` takes the weight's name (or the node's). The features are a
# structured array whose fields hold the :math:`T` inputs :math:`x_t` and
# output gradients :math:`\delta_t`, scaled so that :math:`\|G\|_F = 1`.

digits = load_digits_images(size=32)
X_train, X_test, y_train, y_test = train_test_split(
    digits.images,
    digits.target,
    train_size=200,
    test_size=200,
    stratify=digits.target,
    random_state=0,
)
conv5 = convs[-1]["weight"]
fish = DeepFisherTransformer("tinyalexnet", layer=conv5)
Z = fish.fit_transform(X_train[:2])
print(conv5, Z.dtype["forward"].shape, Z.dtype["backward"].shape)

# %%
# Kernel SVMs: a convolution, pool5 and fc7
# -----------------------------------------
#
# Each row: the features of the training and test digits, and a
# :class:`~skfishing.TraceKernelSVC` (one-vs-one, :math:`C = 1`). For conv5
# the kernel is computed from :math:`G`, the cheaper way here
# (:math:`d_{in} d_{out}` per pair against :math:`T^2 (d_{in} + d_{out})`
# from the factors).

rows = {
    "pool5 activations": dict(features="activation", layer=5),
    "dE/dW7 (fc7)": dict(layer=7),
    "dE/dW conv5": dict(layer=conv5),
}
accuracy = {}
for name, params in rows.items():
    start = time.perf_counter()
    fish = DeepFisherTransformer("tinyalexnet", **params)
    Z_train, Z_test = (
        fish.fit_transform(X_train),
        fish.transform(X_test),
    )
    svc = TraceKernelSVC(C=1.0).fit(Z_train, y_train)
    accuracy[name] = svc.score(Z_test, y_test)
    seconds = time.perf_counter() - start
    print(
        f"{name:18s} accuracy {accuracy[name]:.3f} ({seconds:.1f} s)"
    )

# %%
# The network was trained on Tiny ImageNet, not on digits: these numbers
# measure how each feature transfers to another task, on 200 test digits
# (one digit is half a point). Compare layers on your own task and data:
# the ranking differs between networks and tasks (:ref:`layers`).

fig, ax = plt.subplots(figsize=(6, 2.2))
ax.barh(list(accuracy), list(accuracy.values()), color="#1f77b4")
ax.invert_yaxis()
ax.set_xlim(0, 1)
ax.set_xlabel("test accuracy, 200 digits")
fig.tight_layout()
plt.show()
