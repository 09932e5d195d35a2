"""
====================================
The structure of the trace kernel
====================================

For rank-1 gradients :math:`\\partial E / \\partial W = x \\delta^\top` the trace kernel factorises
(the paper's Eq. 12):

.. math::

   K(A, B) = \\langle x^A, x^B \\rangle \\cdot \\langle \\delta^A, \\delta^B \\rangle,

the *forward kernel* (the usual linear kernel on activations) times the
*backward kernel* between the back-propagated signals. Here are the three
Gram matrices of 200 digits, sorted by class, side by side.
"""

# %%
import matplotlib.pyplot as plt
import numpy as np

from skfishing import DeepFisherTransformer, trace_kernel
from skfishing.datasets import load_digits_images

digits = load_digits_images(size=32)
rng = np.random.default_rng(0)
# 20 images of each digit, sorted by class.
per_class = [np.flatnonzero(digits.target == c) for c in range(10)]
picked = [rng.choice(r, 20, replace=False) for r in per_class]
rows = np.concatenate(picked)
images, labels = digits.images[rows], digits.target[rows]

fish = DeepFisherTransformer("tinyalexnet", layer=7)
Z = fish.fit_transform(images)

# %%
# The three kernels
# -----------------
#
# :func:`~skfishing.trace_kernel` of a 2-D array is the linear kernel, and of
# the structured array the product of the two linear kernels.

K_forward = trace_kernel(Z["forward"])  # <x6^A, x6^B>
K_backward = trace_kernel(Z["backward"])  # <delta7^A, delta7^B>
K_trace = trace_kernel(Z)  # their product
assert np.allclose(K_trace, K_forward * K_backward)

# %%
# It is the explicit gradients' dot product
# -----------------------------------------
#
# The gradient of each image is a 512 x 512 matrix here (16.8 million values
# for AlexNet's fc7). For a few images we can afford to build them and check
# that their dot products are the trace kernel.

F, B = Z["forward"][:5], Z["backward"][:5]
explicit = np.stack([np.outer(f, b).ravel() for f, b in zip(F, B)])
print("explicit gradient features:", explicit.shape)
difference = np.abs(explicit @ explicit.T - K_trace[:5, :5]).max()
print(f"max difference: {difference:.1e}")

# %%
# Side by side
# ------------
#
# Each kernel is shown with its own colour scale; the grid lines separate
# the classes (digits 0 to 9, top to bottom and left to right).

fig, axes = plt.subplots(1, 3, figsize=(12, 4.4))
kernels = {
    "forward kernel  <x6, x6'>": K_forward,
    "backward kernel  <delta7, delta7'>": K_backward,
    "trace kernel  (product)": K_trace,
}
edges = np.flatnonzero(np.diff(labels)) + 0.5
for ax, (title, K) in zip(axes, kernels.items()):
    image = ax.imshow(K, cmap="magma", interpolation="nearest")
    for edge in edges:
        ax.axhline(edge, color="white", linewidth=0.4)
        ax.axvline(edge, color="white", linewidth=0.4)
    centres = [
        np.flatnonzero(labels == c).mean() for c in range(10)
    ]
    ax.set_xticks(centres, range(10))
    ax.set_yticks(centres, range(10))
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
fig.tight_layout()
plt.show()

# %%
# How well each kernel separates the classes
# ------------------------------------------
#
# A simple measure: the mean similarity between images of the same digit
# minus the mean between different digits, relative to the spread of the
# off-diagonal values. The trace kernel is high only for pairs that are
# similar in *both* factors: the product keeps the block structure of the
# forward kernel where the back-propagated signals agree and damps it where
# they do not. Whether that separates the classes better than the forward
# kernel alone depends on the network and the data; the classifiers of
# :ref:`sphx_glr_auto_examples_plot_forward_vs_gradient.py` are the real
# test.

same = labels[:, None] == labels[None, :]
off_diagonal = ~np.eye(len(labels), dtype=bool)
for title, K in kernels.items():
    values = K[off_diagonal]
    within, between = K[same & off_diagonal].mean(), K[~same].mean()
    contrast = (within - between) / values.std()
    print(f"{title:<36} within - between = {contrast:.2f} std")
