"""
==================================================
Tensor Sketch: the trace kernel as explicit features
==================================================

:class:`~skfishing.TraceKernelSVC` needs the :math:`n \\times n` Gram matrix
of the trace kernel, which stops at a few tens of thousands of images.
:class:`~skfishing.TensorSketch` maps each factorized gradient to
``n_components`` numbers whose dot products estimate the kernel without
bias, so that a linear model, which can be fitted in a stream, replaces the
kernel SVM.

Here, on the embedded network and scanned digits: how far the sketched Gram
matrix is from the exact one, and how a linear SVM on the sketch compares
with the exact kernel SVM, as ``n_components`` grows.
"""

# %%
import matplotlib.pyplot as plt
import numpy as np
from sklearn.model_selection import train_test_split
from sklearn.svm import LinearSVC

from skfishing import DeepFisherTransformer, TensorSketch, TraceKernelSVC, trace_kernel
from skfishing.datasets import load_digits_images

digits = load_digits_images(size=32)
X_train, X_test, y_train, y_test = train_test_split(
    digits.images,
    digits.target,
    train_size=800,
    test_size=600,
    stratify=digits.target,
    random_state=0,
)
fish = DeepFisherTransformer("tinyalexnet", layer=7)  # dE/dW7, factorized
Z_train, Z_test = fish.fit_transform(X_train), fish.transform(X_test)
print("forward and backward widths:", Z_train.dtype["forward"].shape, Z_train.dtype["backward"].shape)

# %%
# The exact kernel SVM
# --------------------

exact = TraceKernelSVC(C=1.0).fit(Z_train, y_train)
exact_accuracy = exact.score(Z_test, y_test)
print(f"TraceKernelSVC test accuracy: {exact_accuracy:.3f}")

# %%
# Sketches of growing size
# ------------------------
#
# For each number of components and three seeds: the relative error
# :math:`\|ZZ^\top - K\|_F / \|K\|_F` of the sketched Gram matrix of the
# test images, and the test accuracy of a linear SVM (same ``C``) fitted on
# the sketched training images.

components = [128, 512, 2048, 8192]
seeds = [0, 1, 2]
K = trace_kernel(Z_test)
errors = np.empty((len(components), len(seeds)))
accuracies = np.empty_like(errors)
for i, m in enumerate(components):
    for j, seed in enumerate(seeds):
        sketch = TensorSketch(n_components=m, random_state=seed).fit(Z_train)
        F_train, F_test = sketch.transform(Z_train), sketch.transform(Z_test)
        errors[i, j] = np.linalg.norm(F_test @ F_test.T - K) / np.linalg.norm(K)
        accuracies[i, j] = LinearSVC(C=1.0).fit(F_train, y_train).score(F_test, y_test)
    print(f"{m:5d} components: Gram error {errors[i].mean():.3f}, accuracy {accuracies[i].mean():.3f}")

# %%
# The curves
# ----------
#
# The error falls as :math:`1/\sqrt{m}` (a line of slope -1/2 on log-log
# axes); the accuracy of the linear model reaches that of the exact kernel
# SVM once the error is small next to the kernel's own spread.

fig, (ax_error, ax_accuracy) = plt.subplots(1, 2, figsize=(9, 3.6))
ax_error.loglog(components, errors.mean(1), "o-", label="TensorSketch (mean of 3 seeds)")
reference = errors.mean(1)[0] * np.sqrt(components[0] / np.array(components))
ax_error.loglog(components, reference, "k--", label=r"$\propto 1/\sqrt{m}$")
ax_error.set_xlabel("n_components m")
ax_error.set_ylabel(r"relative Gram error $\|ZZ^T - K\|_F / \|K\|_F$")
ax_error.set_title("Kernel approximation")
ax_error.legend()

ax_accuracy.errorbar(components, accuracies.mean(1), yerr=accuracies.std(1), fmt="o-",
                     capsize=3, label="LinearSVC on the sketch")
ax_accuracy.axhline(exact_accuracy, color="k", linestyle="--", label="TraceKernelSVC (exact)")
ax_accuracy.set_xscale("log")
ax_accuracy.set_xlabel("n_components m")
ax_accuracy.set_ylabel("test accuracy")
ax_accuracy.set_title("Digits, dE/dW7 of tinyalexnet")
ax_accuracy.legend(loc="lower right")
fig.tight_layout()
plt.show()

# %%
# Which to use? Up to about 20,000 images, the exact kernel SVM; beyond, the
# sketch and a linear model fitted in a stream, and beyond one machine the
# same on a Dask cluster: see :ref:`scaling`.
