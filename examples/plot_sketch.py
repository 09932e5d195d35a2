"""
====================================================
Tensor Sketch: the trace kernel as explicit features
====================================================

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
from sklearn.svm import SVC, LinearSVC

from skfishing import (
    DeepFisherTransformer,
    TensorSketch,
    TraceKernelSVC,
    trace_kernel,
)
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
fish = DeepFisherTransformer(
    "tinyalexnet", layer=7
)  # dE/dW7, factorized
Z_train, Z_test = (
    fish.fit_transform(X_train),
    fish.transform(X_test),
)
print(
    "forward and backward widths:",
    Z_train.dtype["forward"].shape,
    Z_train.dtype["backward"].shape,
)

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
# For each number of components :math:`m`: the relative error
# :math:`\|ZZ^\top - K\|_F / \|K\|_F` of the sketched Gram matrix of the
# test images (mean over ten seeds), and the test accuracy (mean over three
# seeds) of two linear SVMs on the sketched images: ``SVC(kernel="linear")``
# solves the same problem as :class:`~skfishing.TraceKernelSVC` with the
# sketched kernel in place of the exact one, and ``LinearSVC``, the solver
# that scales to millions of samples, uses the squared hinge loss and
# regularises the intercept.

components = [128, 512, 2048, 8192]
K = trace_kernel(Z_test)
errors = np.empty((len(components), 10))
svc_accuracy = np.empty((len(components), 3))
linear_accuracy = np.empty_like(svc_accuracy)
for i, m in enumerate(components):
    for seed in range(errors.shape[1]):
        sketch = TensorSketch(
            n_components=m, random_state=seed
        ).fit(Z_train)
        F_test = sketch.transform(Z_test)
        errors[i, seed] = np.linalg.norm(
            F_test @ F_test.T - K
        ) / np.linalg.norm(K)
        if seed < svc_accuracy.shape[1]:
            F_train = sketch.transform(Z_train)
            # the linear kernel of the sketch, precomputed: SVC(kernel="linear") faster
            svc = SVC(C=1.0, kernel="precomputed").fit(
                F_train @ F_train.T, y_train
            )
            svc_accuracy[i, seed] = svc.score(
                F_test @ F_train.T, y_test
            )
            linear_accuracy[i, seed] = (
                LinearSVC(C=1.0)
                .fit(F_train, y_train)
                .score(F_test, y_test)
            )
    print(
        f"{m:5d} components: Gram error {errors[i].mean():.3f}, accuracy "
        f"{svc_accuracy[i].mean():.3f} (SVC), {linear_accuracy[i].mean():.3f} (LinearSVC)"
    )

# %%
# The curves
# ----------
#
# The error falls as :math:`1/\sqrt{m}`, a line of slope -1/2 on log-log
# axes (the digits' gradients are much alike, :math:`K \approx 0.87` between
# two images on average, so the error is mostly that of their common part
# and varies from seed to seed). The SVM on the sketch reaches the accuracy of
# the exact kernel SVM as the error shrinks; ``LinearSVC``, another loss, ends
# up above it on this data.

fig, (ax_error, ax_accuracy) = plt.subplots(
    1, 2, figsize=(9.5, 3.8)
)
ax_error.loglog(
    components,
    errors.mean(1),
    "o-",
    label="TensorSketch (mean of 10 seeds)",
)
reference = errors.mean(1)[-1] * np.sqrt(
    components[-1] / np.array(components)
)
ax_error.loglog(
    components, reference, "k--", label=r"$\propto 1/\sqrt{m}$"
)
ax_error.set_xlabel("n_components m")
ax_error.set_ylabel(
    r"relative Gram error $\|ZZ^T - K\|_F / \|K\|_F$"
)
ax_error.set_title("Kernel approximation")
ax_error.legend()

for accuracy, label in [
    (svc_accuracy, 'SVC(kernel="linear") on the sketch'),
    (linear_accuracy, "LinearSVC on the sketch"),
]:
    ax_accuracy.errorbar(
        components,
        accuracy.mean(1),
        yerr=accuracy.std(1),
        fmt="o-",
        capsize=3,
        label=label,
    )
ax_accuracy.axhline(
    exact_accuracy,
    color="k",
    linestyle="--",
    label="TraceKernelSVC (exact kernel)",
)
ax_accuracy.set_xscale("log")
ax_accuracy.set_xlabel("n_components m")
ax_accuracy.set_ylabel("test accuracy (C = 1)")
ax_accuracy.set_title("Digits, dE/dW7 of tinyalexnet")
ax_accuracy.legend(loc="center right", fontsize="small")
fig.tight_layout()
plt.show()

# %%
# Which to use? Up to about 20,000 images, the exact kernel SVM; beyond, the
# sketch and a linear model fitted in a stream, and beyond one machine the
# same on a Dask cluster: see :ref:`scaling`.
