"""``skfishing extract -o``: never one of its inputs (images, model, preprocessing, weights), only .npz."""

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from onnx_models import tiny_cnn_model
from skfishing import DeepFisherTransformer
from skfishing.cli import main


@pytest.fixture
def files(tmp_path, monkeypatch, restore_models):
    """Two images, a model file with its net.json, one with external weights; the network never runs."""
    for method in ("fit", "transform", "fit_transform"):
        monkeypatch.setattr(DeepFisherTransformer, method, lambda *a, **k: pytest.fail("the network ran"))
    rng = np.random.default_rng(0)
    images = []
    for i in range(2):
        path = tmp_path / f"im{i}.png"
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
        images.append(str(path))
    model = tiny_cnn_model()
    onnx.save(model, tmp_path / "net.onnx")
    (tmp_path / "net.json").write_text(json.dumps({"size": 32}))
    (tmp_path / "prep.json").write_text(json.dumps({"size": 32}))
    sub = tmp_path / "external"
    sub.mkdir()
    onnx.save(model, sub / "big.onnx", save_as_external_data=True, location="big.weights", size_threshold=0)
    assert (sub / "big.weights").is_file()
    monkeypatch.chdir(tmp_path)
    return tmp_path, images


def _digests(folder):
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in Path(folder).rglob("*") if p.is_file()
    }


@pytest.mark.parametrize(
    "model, output, extra, what",
    [
        # the reproducer of the issue: the model file itself
        ("net.onnx", "net.onnx", ["--size", "32"], "the model file"),
        # its sidecar JSON, read because it sits beside the model
        ("net.onnx", "net.json", [], "the preprocessing file of the model"),
        # other spellings of the same files
        ("net.onnx", "./external/../net.onnx", [], "the model file"),
        ("{root}/net.onnx", "net.onnx", [], "the model file"),
        ("net.onnx", "{root}/net.json", [], "the preprocessing file of the model"),
        ("net.onnx", "model-link.npz", [], "the model file"),  # a symbolic link to it
        ("net.onnx", "model-alias.npz", [], "the model file"),  # a hard link to it
        # a --preprocessing file
        ("net.onnx", "prep.json", ["--preprocessing", "prep.json"], "the preprocessing file"),
        # the external weights of a model, and a hard link to them
        (
            "external/big.onnx",
            "external/big.weights",
            ["--size", "32"],
            "the external data file of the model",
        ),
        ("external/big.onnx", "weights-alias.npz", ["--size", "32"], "the external data file of the model"),
    ],
)
def test_output_is_never_an_input_of_the_model(files, capsys, model, output, extra, what):
    root, images = files
    os.symlink(root / "net.onnx", root / "model-link.npz")
    os.link(root / "net.onnx", root / "model-alias.npz")
    os.link(root / "external" / "big.weights", root / "weights-alias.npz")
    model, output = model.format(root=root), output.format(root=root)
    before = _digests(root)
    argv = ["extract", *images, "--model", model, *extra, "-o", output, "--overwrite", "--no-progress"]
    assert main(argv) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"skfishing: error: output file '{Path(output)}' is {what} (")
    assert line.endswith("); choose another output file name")
    assert _digests(root) == before
    assert sorted(p.name for p in root.glob(".*.part")) == []


def test_output_is_never_the_file_of_a_registered_model(files, capsys, tiny_cnn, tiny_cnn_file):
    _, images = files
    before = tiny_cnn_file.read_bytes()
    argv = ["extract", *images, "--model", tiny_cnn, "-o", str(tiny_cnn_file), "--overwrite"]
    assert main(argv) == 1
    assert "is the model file" in capsys.readouterr().err
    assert tiny_cnn_file.read_bytes() == before


@pytest.mark.parametrize(
    "name", ["feats.csv", "feats.npy", "feats.h5", "feats", "feats.zarr", "feats.npz.txt"]
)
def test_output_extension_that_is_not_written_is_refused(files, capsys, name):
    root, images = files
    assert main(["extract", *images, "--model", "net.onnx", "-o", name]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    suffix = Path(name).suffix
    found = f"extension {suffix!r}" if suffix else "no extension"
    assert line.startswith(f"skfishing: error: output '{name}' has {found}; skfishing extract writes .npz (")
    assert f"name it '{Path(name).with_suffix('.npz')}'" in line
    assert ("skfishing.distributed.to_zarr" in line) == (suffix == ".zarr")
    assert not os.path.lexists(root / name)


def test_upper_case_npz_is_written(tiny_cnn, tmp_path, capsys):
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    out = tmp_path / "FEATS.NPZ"
    assert main(["extract", str(image), "--model", tiny_cnn, "-o", str(out), "--no-progress"]) == 0
    with np.load(out) as saved:
        assert saved["forward"].shape[0] == 1
