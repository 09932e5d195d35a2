"""
======================================
Grid search over layer and temperature
======================================

The layer whose gradient is used and the softmax temperature of the loss
are hyper-parameters of :class:`~skfishing.DeepFisherTransformer`; a
:class:`~sklearn.model_selection.GridSearchCV` picks them by
cross-validation like any other parameter.

It is cheap: the network's forward pass does not depend on either, so it
runs once per image and is cached; each of the candidates and folds below
reruns only the backward pass of the fully connected head and the SVM.
"""

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
from sklearn.model_selection import (
    GridSearchCV,
    StratifiedKFold,
    train_test_split,
)
from sklearn.pipeline import Pipeline

from skfishing import DeepFisherTransformer, TraceKernelSVC
from skfishing.datasets import load_digits_images

digits = load_digits_images(size=32)
X_train, X_test, y_train, y_test = train_test_split(
    digits.images,
    digits.target,
    train_size=450,
    test_size=600,
    stratify=digits.target,
    random_state=0,
)

# %%
# The search
# ----------
#
# Layers 6, 7 and 8 (the three FC layers of the AlexNet-shaped head, in the
# paper's numbering) by five temperatures, with 3-fold cross-validation.

layers = [6, 7, 8]
temperatures = [0.5, 1.0, 2.0, 4.0, 8.0]
pipe = Pipeline(
    [
        ("fish", DeepFisherTransformer("tinyalexnet")),  # gradients
        ("svc", TraceKernelSVC(C=1.0)),
    ]
)
search = GridSearchCV(
    pipe,
    {"fish__layer": layers, "fish__temperature": temperatures},
    cv=StratifiedKFold(3, shuffle=True, random_state=0),
)
start = time.perf_counter()
search.fit(X_train, y_train)
print(
    f"{len(search.cv_results_['params'])} candidates x 3 folds in {time.perf_counter() - start:.1f} s"
)
print("best:", search.best_params_)
print(f"best mean CV accuracy: {search.best_score_:.3f}")
test_accuracy = search.score(X_test, y_test)
print(f"test accuracy of the refitted best: {test_accuracy:.3f}")

# %%
# The scores as a heat map
# ------------------------

results = search.cv_results_
scores = np.empty((len(layers), len(temperatures)))
for params, score in zip(
    results["params"], results["mean_test_score"]
):
    i = layers.index(params["fish__layer"])
    j = temperatures.index(params["fish__temperature"])
    scores[i, j] = score

fig, ax = plt.subplots(figsize=(6.5, 3.6))
image = ax.imshow(scores, cmap="viridis", aspect="auto")
ax.set_xticks(range(len(temperatures)), temperatures)
ax.set_yticks(
    range(len(layers)),
    [rf"$\partial E / \partial W_{k}$" for k in layers],
)
ax.set_xlabel(r"temperature $\tau$")
ax.set_ylabel("layer")
for i in range(len(layers)):
    for j in range(len(temperatures)):
        light = scores[i, j] < scores.min() + 0.6 * np.ptp(scores)
        color = "white" if light else "black"
        text = f"{scores[i, j]:.3f}"
        ax.text(j, i, text, ha="center", va="center", color=color)
fig.colorbar(image, ax=ax, label="mean CV accuracy")
ax.set_title("GridSearchCV over layer and temperature")
fig.tight_layout()
plt.show()

# %%
# The temperature changes only the backward factor :math:`\delta`: a high
# temperature flattens the softmax, so :math:`\delta_8` approaches the
# centred logits; a low one concentrates it on the predicted classes. The
# paper fixes :math:`\tau = 2`; the search shows how much the choice matters
# for this network and data.
