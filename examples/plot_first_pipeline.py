"""
=========================
A first gradient pipeline
=========================

Deep Fishing features in a scikit-learn :class:`~sklearn.pipeline.Pipeline`:
a pretrained network turns every image into the gradient of its loss with
respect to the weights of one fully connected layer (kept as two factors),
and a support vector machine on the trace kernel classifies them.

Everything here runs offline: the network is ``"tinyalexnet"``, the small
AlexNet-shaped network embedded in skfishing, and the images are the scans
of handwritten digits that ship with scikit-learn.
"""

# %%
# The images
# ----------
#
# :func:`~skfishing.datasets.load_digits_images` turns scikit-learn's 1797
# scanned 8x8 digits into 32x32 RGB ``uint8`` images, the input size of the
# embedded network. Images may equally be file paths or PIL images.

import matplotlib.pyplot as plt
from sklearn.metrics import ConfusionMatrixDisplay
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline

from skfishing import DeepFisherTransformer, TraceKernelSVC
from skfishing.datasets import load_digits_images

digits = load_digits_images(size=32)
print(digits.images.shape, digits.images.dtype)

fig, axes = plt.subplots(1, 10, figsize=(10, 1.4))
for ax, image, label in zip(axes, digits.images, digits.target):
    ax.imshow(image)
    ax.set_title(str(label))
    ax.axis("off")
plt.show()

# %%
# A train/test split, stratified by digit:

X_train, X_test, y_train, y_test = train_test_split(
    digits.images,
    digits.target,
    train_size=500,
    test_size=500,
    stratify=digits.target,
    random_state=0,
)

# %%
# The pipeline
# ------------
#
# :class:`~skfishing.DeepFisherTransformer` computes the gradient features
# :math:`\partial E / \partial W_7 = x_6 \delta_7^\top` of the paper (the
# layer below the classifier, with temperature 2 and uniform labels, the
# paper's defaults). :class:`~skfishing.TraceKernelSVC` is an SVM on the
# trace kernel between them,
# :math:`K(A, B) = \langle x_6^A, x_6^B \rangle \langle \delta_7^A, \delta_7^B \rangle`,
# computed without ever forming the :math:`512 \times 512` gradient matrices.

fish = DeepFisherTransformer(
    "tinyalexnet", layer=7, temperature=2.0
)
pipe = Pipeline([("fish", fish), ("svc", TraceKernelSVC(C=1.0))])
pipe.fit(X_train, y_train)
print(f"test accuracy: {pipe.score(X_test, y_test):.3f}")

# %%
# What the transformer returns
# ----------------------------
#
# A NumPy structured array with one row per image and two float32 fields,
# each row of unit :math:`\ell_2` norm: ``"forward"`` is the input of layer 7
# (:math:`x_6`, the activation of fc6) and ``"backward"`` the back-propagated
# :math:`\delta_7`. Row ``i`` stands for the matrix
# ``np.outer(Z["forward"][i], Z["backward"][i])``.

Z = pipe.named_steps["fish"].transform(X_test[:5])
print(Z.dtype)
print(Z["forward"].shape, Z["backward"].shape)

# %%
# Where the errors are
# --------------------

ConfusionMatrixDisplay.from_estimator(
    pipe, X_test, y_test, colorbar=False
)
plt.title(
    r"$\partial E / \partial W_7$ + trace-kernel SVM, test set"
)
plt.show()

# sphinx_gallery_thumbnail_number = 2
