r"""``skfishing demo``: the paper's comparison, end to end, offline.

Forward features (activations :math:`x_5, x_6, x_7`) and gradient features
(:math:`\partial E / \partial W_k` for :math:`k = 6, 7, 8`, temperature 2)
of a network with an AlexNet-shaped head (three FC layers numbered 6, 7, 8;
activation 5 is pool5) each go through
``Pipeline([("fish", DeepFisherTransformer(...)), ("svc",
TraceKernelSVC(C=1.0))])``, fitted on a training split and scored on a test
split; then a small ``GridSearchCV`` over the layer and the temperature of
the gradient pipeline picks its parameters by cross-validation on the
training split alone and is scored on the test split.

The default network is the embedded ``"tinyalexnet"`` and the default data
scikit-learn's bundled handwritten digits (:func:`~skfishing.datasets.load_digits_images`),
so the demo needs no download. The network runs once per image: all the
pipelines share one :class:`~skfishing.cache.FeatureCache` (``memory=``), so
every later fit reuses the forward pass.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.pipeline import Pipeline
from sklearn.utils import Bunch
from sklearn.utils._param_validation import validate_params
from tqdm.auto import tqdm

from ._extraction.transformer import DeepFisherTransformer
from ._kernels.svm import TraceKernelSVC
from .cache import FeatureCache
from .datasets import load_digits_images, load_voc2007, load_voc2007_npz
from .metrics import voc07_average_precision, voc07_scorer

__all__ = ["run_demo", "ROWS", "PARAM_GRID"]

#: The compared features: (row name, ``features``, ``layer``).
ROWS = (
    ("x5", "activation", 5),
    ("x6", "activation", 6),
    ("x7", "activation", 7),
    ("dE/dW6", "gradient", 6),
    ("dE/dW7", "gradient", 7),
    ("dE/dW8", "gradient", 8),
)
#: Temperature of the gradient rows (the paper's, section 5.2).
TEMPERATURE = 2.0
#: Grid searched on the gradient pipeline, with 3-fold cross-validation.
PARAM_GRID = {"fish__layer": [6, 7, 8], "fish__temperature": [1.0, 2.0, 4.0]}
CV_FOLDS = 3

# Digits: stratified train / test sizes (full mode, quick mode).
_DIGITS_SIZES = {False: (900, 897), True: (150, 150)}
# VOC quick mode: random positive images drawn per class and split.
_VOC_QUICK_PER_CLASS = 12
_SEED = 0


def _take(images, rows):
    """Rows of an image array or of a list of paths."""
    if isinstance(images, np.ndarray):
        return images[rows]
    return [images[i] for i in rows]


def _load_digits(quick):
    digits = load_digits_images(size=32)
    n_train, n_test = _DIGITS_SIZES[quick]
    X_train, X_test, y_train, y_test = train_test_split(
        digits.images,
        digits.target,
        train_size=n_train,
        test_size=n_test,
        stratify=digits.target,
        random_state=_SEED,
    )
    return Bunch(
        X_train=X_train,
        y_train=y_train,
        X_test=X_test,
        y_test=y_test,
        difficult_test=None,
        description="scikit-learn digits (10 classes, 8x8 scans enlarged to 32x32)",
    )


def _voc_quick_rows(labels, rng):
    """Sorted union of a few random positive rows of every class."""
    rows = set()
    for column in labels.T:
        positives = np.flatnonzero(column)
        rows.update(rng.permutation(positives)[:_VOC_QUICK_PER_CLASS].tolist())
    return np.array(sorted(rows))


def _load_voc(data, quick):
    path = Path(data).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"no such data folder or file: {str(path)!r}")
    if path.is_dir():
        train, test = load_voc2007(path, "train"), load_voc2007(path, "val")
    elif path.suffix == ".npz":
        train, test = load_voc2007_npz(path, "train"), load_voc2007_npz(path, "val")
    else:
        raise ValueError(
            f"data must be a VOCdevkit folder or a .npz archive of VOC2007 images; got {str(path)!r}."
        )
    if quick:
        rng = np.random.default_rng(_SEED)
        for bunch in (train, test):
            rows = _voc_quick_rows(bunch.labels, rng)
            bunch.images = _take(bunch.images, rows)
            bunch.labels, bunch.difficult = bunch.labels[rows], bunch.difficult[rows]
    return Bunch(
        X_train=train.images,
        y_train=train.labels,
        X_test=test.images,
        y_test=test.labels,
        difficult_test=test.difficult,
        description=f"PASCAL VOC2007 from {path} (20 classes, train / val splits)",
    )


def _pipeline(model, features, layer, temperature, cache_dir, memory):
    fish = DeepFisherTransformer(
        model,
        layer=layer,
        temperature=temperature,
        features=features,
        batch_size=64,
        cache_dir=cache_dir,
        memory=memory,
    )
    return Pipeline([("fish", fish), ("svc", TraceKernelSVC(C=1.0))])


def _test_score(estimator, data):
    """Accuracy, or VOC07 11-point mAP (difficult ignored) for multilabel."""
    if data.difficult_test is None:
        return float(estimator.score(data.X_test, data.y_test))
    scores = estimator.decision_function(data.X_test)
    return voc07_average_precision(data.y_test, scores, difficult=data.difficult_test)


def _report(results):
    metric = results.metric
    lines = [
        f"Deep Fishing demo: model {results.model} on {results.data}",
        f"{results.n_train} training images, {results.n_test} test images; "
        f"each row is DeepFisherTransformer -> TraceKernelSVC(C=1), scored on "
        f"the test images ({metric}).",
        "",
        f"{'feature':<8}  {'kind':<8}  {'layer':>5}  {'tau':>4}  {metric:>13}",
    ]
    for row in results.rows:
        tau = "-" if row.temperature is None else f"{row.temperature:g}"
        lines.append(f"{row.feature:<8}  {row.kind:<8}  {row.layer:>5}  {tau:>4}  {row.score:>13.4f}")
    grid = results.grid
    best = grid.best_params
    grid_text = " x ".join(f"{k.split('__')[1]} {v}" for k, v in PARAM_GRID.items())
    lines += [
        "",
        f"Grid search on the gradient pipeline ({grid_text}; {CV_FOLDS}-fold CV on the training images):",
        f"  best layer={best['fish__layer']}, temperature="
        f"{best['fish__temperature']:g}: CV {metric} {grid.cv_score:.4f}, "
        f"test {metric} {grid.test_score:.4f}",
    ]
    best_rows = {
        kind: max((r for r in results.rows if r.kind == kind), key=lambda r: r.score)
        for kind in ("forward", "gradient")
    }
    lines.append(
        "Best forward row: {0.feature} ({0.score:.4f}); best gradient row: "
        "{1.feature} ({1.score:.4f}).".format(best_rows["forward"], best_rows["gradient"])
    )
    if results.metric == "accuracy":  # the digits, not the paper's photos
        lines.append(
            "Why not the paper's gap: gradient features gain on PASCAL VOC photos with AlexNet; on "
            "8x8 digits, far from the Tiny ImageNet pictures this small network learned, both kinds "
            "are close and either may lead (the paper's setting: skfishing demo --data VOCdevkit "
            "--model alexnet)."
        )
    return "\n".join(lines)


@validate_params(
    {
        "data": [str, os.PathLike, None],
        "model": [str, os.PathLike],
        "quick": ["boolean"],
        "progress": ["boolean"],
        "cache_dir": [str, os.PathLike, None],
        "out": "no_validation",  # a text stream
    },
    prefer_skip_nested_validation=True,
)
def run_demo(
    data=None,
    *,
    model="tinyalexnet",
    quick=False,
    progress=True,
    cache_dir=None,
    out=None,
):
    """Compare forward and gradient features of a network, and grid-search.

    Parameters
    ----------
    data : str or path-like, default=None
        None: scikit-learn's digits (bundled, offline), a stratified split
        of 900 training and the other 897 test images (150 and 150 with
        ``quick``),
        scored by accuracy. Otherwise PASCAL VOC2007: a VOCdevkit folder
        (:func:`~skfishing.datasets.load_voc2007`) or a ``.npz`` archive
        (:func:`~skfishing.datasets.load_voc2007_npz`); the ``train`` split
        is used for fitting and the ``val`` split for testing, scored by the
        VOC2007 11-point mean AP with difficult entries ignored. With
        ``quick``, each split keeps 12 random positive images per class
        (about 200 images).
    model : str, path-like or onnx.ModelProto, default="tinyalexnet"
        The network, as for :class:`~skfishing.DeepFisherTransformer`. Its
        head must have three FC layers, numbered 6, 7 and 8 (AlexNet's).
    quick : bool, default=False
        Use a much smaller subset of the data, for a fast look.
    progress : bool, default=True
        Show progress bars (on stderr).
    cache_dir : str or path-like, default=None
        Where registered models are downloaded to, see
        :func:`skfishing.registry.get_cache_dir`.
    out : file-like, default=None
        Where to print the table; None means :data:`sys.stdout` (as it is
        when the function is called).

    Returns
    -------
    results : :class:`~sklearn.utils.Bunch`
        With keys ``rows`` (a list of Bunches with ``feature``, ``kind``
        (``"forward"`` or ``"gradient"``), ``layer``, ``temperature`` (None
        for forward rows) and ``score``), ``grid`` (a Bunch with
        ``best_params``, ``cv_score`` and ``test_score``), ``metric``
        (``"accuracy"`` or ``"VOC07 mAP"``), ``model``, ``data``, ``n_train``,
        ``n_test``, ``seconds`` and ``text`` (the printed table).

    Examples
    --------
    >>> from skfishing._demo import run_demo
    >>> results = run_demo(quick=True)  # doctest: +SKIP
    """
    start = time.perf_counter()
    data = _load_digits(quick) if data is None else _load_voc(data, quick)
    multilabel = data.difficult_test is not None
    # Run the network once over every image, with a progress bar; every
    # pipeline below then reads the forward pass from the cache they share.
    cache = FeatureCache()
    network = DeepFisherTransformer(
        model,
        features="probabilities",
        batch_size=64,
        progress=progress,
        cache_dir=cache_dir,
        memory=cache,
    )
    for images in (data.X_train, data.X_test):
        network.fit_transform(images)
    rows = []
    with tqdm(total=len(ROWS) + 1, desc="demo", disable=None if progress else True) as bar:
        for feature, kind, layer in ROWS:
            bar.set_postfix_str(feature)
            pipe = _pipeline(model, kind, layer, TEMPERATURE, cache_dir, cache)
            pipe.fit(data.X_train, data.y_train)
            rows.append(
                Bunch(
                    feature=feature,
                    kind="forward" if kind == "activation" else "gradient",
                    layer=layer,
                    temperature=TEMPERATURE if kind == "gradient" else None,
                    score=_test_score(pipe, data),
                )
            )
            bar.update()
        bar.set_postfix_str("grid search")
        search = GridSearchCV(
            _pipeline(model, "gradient", 7, TEMPERATURE, cache_dir, cache),
            PARAM_GRID,
            cv=CV_FOLDS,
            scoring=voc07_scorer if multilabel else None,
            error_score="raise",
        )
        search.fit(data.X_train, data.y_train)
        grid = Bunch(
            best_params=search.best_params_,
            cv_score=float(search.best_score_),
            test_score=_test_score(search.best_estimator_, data),
        )
        bar.update()
    results = Bunch(
        rows=rows,
        grid=grid,
        metric="VOC07 mAP" if multilabel else "accuracy",
        model=str(model) if isinstance(model, (str, os.PathLike)) else "onnx.ModelProto",
        data=data.description,
        n_train=len(data.X_train),
        n_test=len(data.X_test),
    )
    results.seconds = time.perf_counter() - start
    results.text = _report(results) + f"\nFinished in {results.seconds:.1f} s."
    print(results.text, file=sys.stdout if out is None else out)
    return results
