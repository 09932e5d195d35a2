"""Features on disk: save_features / load_features and the CLI round trip.

The end-to-end test runs ``skfishing extract`` in a fresh process on image
files, reads the files with :func:`load_features`, fits
:class:`TraceKernelSVC` on them and compares its predictions with those of
the same pipeline run in memory on the same files.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.pipeline import Pipeline

from skfishing import DeepFisherTransformer, TraceKernelSVC
from skfishing.datasets import load_digits_images
from skfishing.features import FORMAT, load_features, save_features


@pytest.fixture(scope="module")
def digits():
    data = load_digits_images(size=32)
    keep = np.flatnonzero(data.target < 3)[:60]
    return data.images[keep], data.target[keep]


@pytest.fixture
def fitted(tiny_cnn, digits):
    images, _ = digits
    return DeepFisherTransformer(tiny_cnn, layer=7, temperature=3.0).fit(images)


def _assert_same(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    if a.dtype.names:
        assert dict(a.dtype.metadata) == dict(b.dtype.metadata)
        for name in a.dtype.names:
            np.testing.assert_array_equal(a[name], b[name])
    else:
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("labels", [None, "skewed"])
def test_gradient_round_trip_keeps_values_and_provenance(tiny_cnn, digits, tmp_path, labels):
    images, _ = digits
    if labels == "skewed":
        labels = np.linspace(1, 2, 10) / np.linspace(1, 2, 10).sum()
    fish = DeepFisherTransformer(tiny_cnn, layer=6, temperature=0.5, labels=labels).fit(images)
    Z = fish.transform(images)
    paths = [f"img/{i}.png" for i in range(len(Z))]
    save_features(tmp_path / "z.npz", Z, fish, paths=paths)
    data = load_features(tmp_path / "z.npz")
    _assert_same(data.features, Z)  # the provenance in the dtype included
    assert data.kind == "gradient" and data.paths.tolist() == paths and data.model == tiny_cnn
    assert (data.model_sha256, data.layer, data.temperature) == (fish.model_sha256_, 6, 0.5)
    expected_labels = None if labels is None else tuple(float(v) for v in labels)
    assert data.labels == expected_labels
    assert data.source == dict(Z.dtype.metadata)
    with np.load(tmp_path / "z.npz") as raw:
        assert raw["format"].item() == FORMAT


@pytest.mark.parametrize("kind, layer", [("activation", 5), ("activation", 8), ("probabilities", 8)])
def test_plain_features_round_trip(tiny_cnn, digits, tmp_path, kind, layer):
    images, _ = digits
    fish = DeepFisherTransformer(tiny_cnn, layer=layer, features=kind).fit(images)
    A = fish.transform(images)
    save_features(tmp_path / "a.npz", A, fish)
    data = load_features(tmp_path / "a.npz")
    _assert_same(data.features, A)
    assert data.kind == kind and data.layer == fish.layer_ and data.paths is None
    assert data.model_sha256 == fish.model_sha256_


def test_loaded_features_meet_in_memory_ones_in_the_classifier(fitted, digits, tmp_path, tiny_cnn):
    images, y = digits
    Z = fitted.transform(images)
    save_features(tmp_path / "z.npz", Z[:40], fitted)
    loaded = load_features(tmp_path / "z.npz").features
    svc = TraceKernelSVC().fit(loaded, y[:40])
    reference = TraceKernelSVC().fit(Z[:40], y[:40])
    np.testing.assert_array_equal(svc.decision_function(Z[40:]), reference.decision_function(Z[40:]))
    other = DeepFisherTransformer(tiny_cnn, layer=7, temperature=1.0).fit_transform(images[40:])
    with pytest.raises(ValueError, match=r"another model or setting.*temperature 1\.0 \(fit: 3\.0\)"):
        svc.predict(other)


def test_save_refuses_bad_features_and_keeps_the_old_file(fitted, digits, tmp_path, tiny_cnn):
    images, _ = digits
    Z = fitted.transform(images[:5])
    out = tmp_path / "z.npz"
    out.write_bytes(b"previous")
    with pytest.raises(FileExistsError, match=r"exists; pass overwrite=True to replace it"):
        save_features(out, Z, fitted)
    bad = Z.copy()
    bad["backward"][3, 1] = np.nan
    with pytest.raises(ValueError, match=r"'backward' contains NaN or infinity in row 3"):
        save_features(out, bad, fitted, overwrite=True)
    with pytest.raises(ValueError, match=r"paths must hold one str path per row of features \(5\); got 4"):
        save_features(out, Z, fitted, paths=["a"] * 4, overwrite=True)
    other = DeepFisherTransformer(tiny_cnn, layer=6).fit(images[:5])
    with pytest.raises(
        ValueError, match=r"another model or setting than transformer: layer 7 \(transformer: 6\)"
    ):
        save_features(out, Z, other, overwrite=True)
    activation = DeepFisherTransformer(tiny_cnn, features="activation").fit(images[:5])
    with pytest.raises(ValueError, match="computes 'activation' features but features is a structured array"):
        save_features(out, Z, activation, overwrite=True)
    with pytest.raises(ValueError, match=r"at least one row"):
        save_features(out, Z[:0], fitted, overwrite=True)
    with pytest.raises(ValueError, match="2-D float array"):
        save_features(out, np.zeros((3, 2), int), overwrite=True)
    assert out.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["z.npz"]
    save_features(out, Z, fitted, overwrite=True)
    _assert_same(load_features(out).features, Z)


def test_load_errors_name_the_file(tmp_path):
    missing = tmp_path / "missing.npz"
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_features(missing)
    text = tmp_path / "notes.npz"
    text.write_text("not an archive")
    with pytest.raises(ValueError, match=r"notes\.npz' is not a features file"):
        load_features(text)
    np.savez(tmp_path / "other.npz", weights=np.ones(3))
    with pytest.raises(ValueError, match=r"other\.npz': no features in the file.*found \['weights'\]"):
        load_features(tmp_path / "other.npz")
    np.savez(tmp_path / "rows.npz", forward=np.ones((3, 2), np.float32), backward=np.ones((4, 2), np.float32))
    with pytest.raises(ValueError, match=r"rows\.npz': 'forward' has 3 rows but 'backward' has 4"):
        load_features(tmp_path / "rows.npz")
    nan = np.ones((3, 2), np.float32)
    nan[2, 0] = np.inf
    np.savez(tmp_path / "nan.npz", features=nan)
    with pytest.raises(ValueError, match=r"nan\.npz': array 'features' contains NaN or infinity in row 2"):
        load_features(tmp_path / "nan.npz")
    np.savez(tmp_path / "paths.npz", features=np.ones((3, 2), np.float32), paths=np.array(["a", "b"]))
    with pytest.raises(ValueError, match=r"'paths' must hold 3 str paths"):
        load_features(tmp_path / "paths.npz")
    np.savez(
        tmp_path / "future.npz", features=np.ones((3, 2), np.float32), format=np.array("skfishing-features-9")
    )
    with pytest.raises(ValueError, match="unknown format 'skfishing-features-9'"):
        load_features(tmp_path / "future.npz")
    np.save(tmp_path / "plain.npy", np.ones((3, 2)))
    with pytest.raises(ValueError, match=r"plain\.npy' is a \.npy file"):
        load_features(tmp_path / "plain.npy")


def test_files_without_provenance_load_as_plain_features(tmp_path):
    """A file written by hand (or by an older version) loads; no provenance is invented."""
    forward = np.eye(3, 4, dtype=np.float32)
    np.savez(tmp_path / "z.npz", forward=forward, backward=np.ones((3, 2), np.float32))
    data = load_features(tmp_path / "z.npz")
    assert data.kind == "gradient" and data.source is None and data.features.dtype.metadata is None
    np.testing.assert_array_equal(data.features["forward"], forward)


def _write_pngs(folder, images, names):
    folder.mkdir()
    paths = []
    for image, name in zip(images, names):
        Image.fromarray(image).save(folder / name)
        paths.append(str(folder / name))
    return paths


def test_cli_file_loader_classifier_equals_the_in_memory_pipeline(tiny_cnn, tiny_cnn_file, digits, tmp_path):
    """skfishing extract (a fresh process) -> .npz -> load_features ->
    TraceKernelSVC gives the predictions of the in-memory pipeline."""
    images, y = digits
    names = [f"{label}_{i:03d}.png" for i, label in enumerate(y)]
    train = _write_pngs(tmp_path / "train", images[:45], names[:45])
    test = _write_pngs(tmp_path / "test", images[45:], names[45:])
    # an unregistered copy of the network, its preprocessing in a JSON file beside it
    model = tmp_path / "net.onnx"
    shutil.copy(tiny_cnn_file, model)
    (tmp_path / "net.json").write_text(json.dumps({"size": 32}))
    script = shutil.which("skfishing", path=str(Path(sys.executable).parent))
    assert script is not None, "the skfishing console script is not installed"
    for split in ("train", "test"):
        done = subprocess.run(
            [
                script,
                "extract",
                str(tmp_path / split),
                "--model",
                str(model),
                "--temperature",
                "3",
                "-o",
                str(tmp_path / f"{split}.npz"),
                "--no-progress",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
    train_data, test_data = load_features(tmp_path / "train.npz"), load_features(tmp_path / "test.npz")
    # a folder's images come sorted by name; the class is the name's prefix
    train, test = sorted(train), sorted(test)
    assert train_data.paths.tolist() == train and test_data.paths.tolist() == test
    y_train = np.array([int(Path(p).name.split("_")[0]) for p in train_data.paths])
    y_test = np.array([int(Path(p).name.split("_")[0]) for p in test_data.paths])

    svc = TraceKernelSVC(C=1.0).fit(train_data.features, y_train)
    pipe = Pipeline(
        [("fish", DeepFisherTransformer(tiny_cnn, temperature=3.0)), ("svc", TraceKernelSVC(C=1.0))]
    ).fit(train, y_train)
    np.testing.assert_array_equal(svc.predict(test_data.features), pipe.predict(test))
    np.testing.assert_allclose(
        svc.decision_function(test_data.features), pipe.decision_function(test), rtol=1e-6, atol=1e-9
    )
    # the in-memory classifier accepts the loaded features: same provenance
    np.testing.assert_array_equal(pipe[-1].predict(test_data.features), pipe.predict(test))
    assert svc.score(test_data.features, y_test) > 0.6
