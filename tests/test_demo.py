"""``skfishing._demo.run_demo`` on a small random CNN and on the embedded network."""

import io

import numpy as np
import pytest
from PIL import Image

from skfishing import registry
from skfishing._demo import PARAM_GRID, ROWS, run_demo
from skfishing.cache import clear_caches
from skfishing.datasets import VOC2007_CLASSES, load_digits_images


def _numbers(results):
    return (
        [(row.feature, row.kind, row.layer, row.temperature, row.score) for row in results.rows],
        results.grid.best_params,
        results.grid.cv_score,
        results.grid.test_score,
    )


def test_quick_demo_on_digits(tiny_cnn):
    out = io.StringIO()
    clear_caches()
    first = run_demo(model=tiny_cnn, quick=True, progress=False, out=out)
    assert out.getvalue() == first.text + "\n"
    assert first.metric == "accuracy"
    assert (first.n_train, first.n_test) == (150, 150)
    assert [(r.feature, r.layer) for r in first.rows] == [(name, layer) for name, _, layer in ROWS]
    assert [r.kind for r in first.rows] == ["forward"] * 3 + ["gradient"] * 3
    assert [r.temperature for r in first.rows] == [None] * 3 + [2.0] * 3
    # Even a random CNN separates digits far better than chance (0.1).
    for row in first.rows:
        assert 0.3 < row.score <= 1.0, row
    grid = first.grid
    assert grid.best_params["fish__layer"] in PARAM_GRID["fish__layer"]
    assert grid.best_params["fish__temperature"] in PARAM_GRID["fish__temperature"]
    assert 0.3 < grid.cv_score <= 1.0 and 0.3 < grid.test_score <= 1.0
    # The table shows every row with its score.
    for row in first.rows:
        assert any(
            line.startswith(row.feature) and line.endswith(f"{row.score:.4f}")
            for line in first.text.splitlines()
        ), row.feature
    assert f"test accuracy {grid.test_score:.4f}" in first.text
    assert "Why not the paper's gap: gradient features gain on PASCAL VOC photos" in first.text
    # A second run, with the network rerun from scratch, gives the same numbers.
    clear_caches()
    second = run_demo(model=tiny_cnn, quick=True, progress=False, out=io.StringIO())
    assert _numbers(second) == _numbers(first)


def test_row_scores_match_a_hand_built_pipeline(tiny_cnn):
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline

    from skfishing import DeepFisherTransformer, TraceKernelSVC

    results = run_demo(model=tiny_cnn, quick=True, progress=False, out=io.StringIO())
    digits = load_digits_images(size=32)
    X_train, X_test, y_train, y_test = train_test_split(
        digits.images, digits.target, train_size=150, test_size=150, stratify=digits.target, random_state=0
    )
    pipe = make_pipeline(DeepFisherTransformer(tiny_cnn, layer=7, temperature=2.0), TraceKernelSVC(C=1.0))
    score = pipe.fit(X_train, y_train).score(X_test, y_test)
    assert {row.feature: row.score for row in results.rows}["dE/dW7"] == score


def _digit_labels(target):
    """20 multilabel columns: column d and column 10 + d mark digit d."""
    onehot = (target[:, None] == np.arange(10)).astype(np.uint8)
    return np.hstack([onehot, onehot])


def _voc_npz(path, n_per_split):
    digits = load_digits_images(size=32)
    rows = np.random.default_rng(1).permutation(len(digits.target))[: 2 * n_per_split]
    labels = _digit_labels(digits.target[rows])
    difficult = np.zeros_like(labels)
    difficult[::7, 3] = 1  # a few difficult entries; the loaders keep them
    np.savez(
        path,
        images=digits.images[rows],
        labels=labels,
        difficult=difficult,
        classes=np.array(VOC2007_CLASSES),
        split=np.repeat(["train", "val"], n_per_split),
        ids=np.array([f"{i:06d}" for i in range(2 * n_per_split)]),
    )
    target = digits.target[rows]
    return path, (target[:n_per_split], target[n_per_split:])


def _voc_devkit(root, n_per_split):
    digits = load_digits_images(size=32)
    rows = np.random.default_rng(2).permutation(len(digits.target))[: 2 * n_per_split]
    folder = root / "VOC2007"
    (folder / "JPEGImages").mkdir(parents=True)
    main = folder / "ImageSets" / "Main"
    main.mkdir(parents=True)
    parts = (rows[:n_per_split], rows[n_per_split:])
    for split, part in zip(("train", "val"), parts):
        ids = [f"{split}{i:04d}" for i in range(len(part))]
        for image_id, row in zip(ids, part):
            Image.fromarray(digits.images[row]).save(folder / "JPEGImages" / f"{image_id}.jpg", quality=95)
        (main / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
        labels = _digit_labels(digits.target[part])
        for c, name in enumerate(VOC2007_CLASSES):
            (main / f"{name}_{split}.txt").write_text(
                "".join(f"{i} {1 if y else -1}\n" for i, y in zip(ids, labels[:, c]))
            )
    return root, tuple(digits.target[part] for part in parts)


@pytest.mark.parametrize("source", ["npz", "devkit"])
def test_quick_demo_on_voc_layout(tiny_cnn, tmp_path, source):
    if source == "npz":
        data, targets = _voc_npz(tmp_path / "voc.npz", 300)
    else:
        data, targets = _voc_devkit(tmp_path / "VOCdevkit", 100)
    results = run_demo(data, model=tiny_cnn, quick=True, progress=False, out=io.StringIO())
    assert results.metric == "VOC07 mAP"
    assert "VOC07 mAP" in results.text and str(data) in results.text
    assert "paper's gap" not in results.text  # said for the digits only
    # Quick mode keeps 12 random positives per class and split; the 20
    # columns are 10 digits twice, so each digit keeps 12 to 24 images.
    for n, target in zip((results.n_train, results.n_test), targets):
        counts = np.bincount(target, minlength=10)
        assert np.minimum(counts, 12).sum() <= n <= np.minimum(counts, 24).sum()
    # Chance mAP is about 0.1 (one digit in ten); random-CNN features do better.
    for row in results.rows:
        assert 0.3 < row.score <= 1.0, row
    assert 0.3 < results.grid.test_score <= 1.0


def test_bad_data_path(tiny_cnn, tmp_path):
    text = tmp_path / "data.txt"
    with pytest.raises(FileNotFoundError, match="no such data folder or file: .*data.txt"):
        run_demo(text, model=tiny_cnn, quick=True, progress=False, out=io.StringIO())
    text.write_text("not a data set")
    with pytest.raises(ValueError, match="VOCdevkit folder or a .npz .*data.txt"):
        run_demo(text, model=tiny_cnn, quick=True, progress=False, out=io.StringIO())


@pytest.mark.skipif(
    "tinyalexnet" not in [spec.name for spec in registry.list_models()],
    reason="the embedded model is not in the package data yet",
)
def test_quick_demo_on_the_embedded_network():
    results = run_demo(quick=True, progress=False, out=io.StringIO())
    assert results.model == "tinyalexnet"
    for row in results.rows:
        assert 0.3 < row.score <= 1.0, row
    assert 0.3 < results.grid.test_score <= 1.0
