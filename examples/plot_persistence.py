"""
====================================
Saving and loading a fitted pipeline
====================================

A fitted skfishing pipeline is saved with :mod:`joblib` like any
scikit-learn model, or with skops (:mod:`skfishing.persistence`), whose
files load without running code. Two things to know:

* the file holds the transformer's *parameters* (the model's registered
  name or path, the layer, the temperature) and the SVM's support vectors,
  **not the network's weights**: the model file must be present where the
  pipeline is loaded (the embedded ``"tinyalexnet"`` always is);
* loading a joblib or pickle file **runs code**; loading a skops file with
  :func:`skfishing.persistence.load` creates only trusted types.

.. warning::

   ``joblib.load`` and ``pickle.load`` can execute arbitrary code embedded in
   the file. Only load files you created yourself or got from someone you
   trust.
"""

# %%
import tempfile
from pathlib import Path

import joblib
import matplotlib.pyplot as plt
import numpy as np
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline

from skfishing import (
    DeepFisherTransformer,
    TraceKernelSVC,
    persistence,
)
from skfishing.datasets import load_digits_images

digits = load_digits_images(size=32)
X_train, X_test, y_train, y_test = train_test_split(
    digits.images,
    digits.target,
    train_size=500,
    test_size=300,
    stratify=digits.target,
    random_state=0,
)
pipe = Pipeline(
    [
        ("fish", DeepFisherTransformer("tinyalexnet", layer=7)),
        ("svc", TraceKernelSVC(C=1.0)),
    ]
)
pipe.fit(X_train, y_train)

# %%
# Save, then load
# ---------------

folder = Path(tempfile.mkdtemp())
path = folder / "digits_fish.joblib"
joblib.dump(pipe, path)
print(f"{path.name}: {path.stat().st_size / 1e3:.0f} kB")

loaded = joblib.load(path)  # only files you trust: this runs code
assert np.array_equal(loaded.predict(X_test), pipe.predict(X_test))
accuracy = loaded.score(X_test, y_test)
print(f"test accuracy after reloading: {accuracy:.3f}")

# %%
# The same with skops
# -------------------
#
# :func:`skfishing.persistence.load` first lists the types in the file and
# refuses any that is not in :data:`skfishing.persistence.TRUSTED_TYPES`
# (or in its ``trusted=`` argument); then it creates the pipeline. The
# decisions are the same, bit for bit.

skops_path = folder / "digits_fish.skops"
persistence.dump(pipe, skops_path)
print(
    f"{skops_path.name}: {skops_path.stat().st_size / 1e3:.0f} kB"
)
from_skops = persistence.load(skops_path)
same = np.array_equal(
    from_skops.decision_function(X_test),
    loaded.decision_function(X_test),
)
print("skops and joblib give the same decisions:", same)
print(
    "trusted skfishing types:",
    ", ".join(persistence.TRUSTED_TYPES[:2]),
)

# %%
# What the file holds
# -------------------
#
# The transformer refers to its network by name and remembers the SHA-256 of
# the model file it was fitted with: if the file found under that name when
# the pipeline is used differs (other weights), ``transform`` refuses to run
# rather than silently computing other features. The SVM keeps only the
# features of its support vectors, two short vectors per support vector.

fish, svc = loaded.named_steps["fish"], loaded.named_steps["svc"]
print("model:", fish.model, "| layer:", fish.layer_)
print("sha256 of the model at fit:", fish.model_sha256_[:16], "...")
n_sv = len(svc.support_)
print(f"support vectors: {n_sv} of {len(X_train)} training images")
print("their fields:", svc.support_vectors_.dtype.names)

# %%
# Predictions of the reloaded pipeline
# ------------------------------------

predicted = loaded.predict(X_test[:16])
fig, axes = plt.subplots(2, 8, figsize=(9, 2.8))
shown = zip(axes.ravel(), X_test[:16], predicted, y_test[:16])
for ax, image, label, truth in shown:
    ax.imshow(image)
    color = "black" if label == truth else "red"
    ax.set_title(str(label), color=color)
    ax.axis("off")
fig.suptitle("Reloaded pipeline: predicted digit (red when wrong)")
fig.tight_layout()
plt.show()

# %%
# Clean up the temporary folder.

path.unlink()
skops_path.unlink()
folder.rmdir()
