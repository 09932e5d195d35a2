"""The ``skfishing`` command line: extract, models, demo, errors."""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import skfishing
from skfishing import DeepFisherTransformer, registry
from skfishing.cli import collect_images, main
from skfishing.datasets import load_digits_images


@pytest.fixture
def pngs(tmp_path):
    """Five digit pictures as PNG files (RGB, grey and palette modes)."""
    digits = load_digits_images(size=40).images[:5]
    folder = tmp_path / "images"
    folder.mkdir()
    paths = []
    for i, (image, mode) in enumerate(zip(digits, ["RGB", "L", "P", "RGB", "L"])):
        path = folder / f"digit{i}.png"
        Image.fromarray(image).convert(mode).save(path)
        paths.append(str(path))
    return paths


def _error_lines(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()


def _leftovers(folder):
    return sorted(p.name for p in Path(folder).iterdir() if p.suffix != ".png")


def test_extract_gradient_matches_transformer(tiny_cnn, pngs, tmp_path, capsys):
    out = tmp_path / "feats.npz"
    argv = ["extract", *pngs, "--model", tiny_cnn, "--layer", "7", "--temperature", "4", "-o", str(out)]
    assert main(argv + ["--no-progress", "--batch-size", "2"]) == 0
    assert str(out) in capsys.readouterr().out
    fish = DeepFisherTransformer(tiny_cnn, layer=7, temperature=4.0)
    Z = fish.fit_transform(pngs)
    with np.load(out, allow_pickle=False) as saved:
        assert sorted(saved.files) == sorted(
            [
                "format",
                "forward",
                "backward",
                "paths",
                "model",
                "model_sha256",
                "layer",
                "temperature",
                "kind",
            ]
        )
        np.testing.assert_array_equal(saved["forward"], Z["forward"])
        np.testing.assert_array_equal(saved["backward"], Z["backward"])
        assert saved["paths"].tolist() == pngs
        assert saved["model"].item() == tiny_cnn
        assert saved["model_sha256"].item() == fish.model_sha256_
        assert saved["layer"].item() == 7 and saved["temperature"].item() == 4.0
        assert saved["kind"].item() == "gradient"
    assert _leftovers(tmp_path) == ["feats.npz", "images"]


def test_extract_folder_and_activation(tiny_cnn, pngs, tmp_path):
    folder = Path(pngs[0]).parent
    (folder / "notes.txt").write_text("not an image")
    (folder / "sub").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "sub" / "ignored.png")
    upper = folder / "ZZZ.PNG"
    shutil.copy(pngs[1], upper)
    out = tmp_path / "x5.npz"
    argv = [
        "extract",
        str(folder),
        pngs[0],
        "--model",
        tiny_cnn,
        "--features",
        "activation",
        "--layer",
        "5",
        "-o",
        str(out),
        "--no-progress",
    ]
    assert main(argv) == 0
    expected = sorted(pngs + [str(upper)]) + [pngs[0]]
    assert collect_images([str(folder), pngs[0]]) == expected
    with np.load(out) as saved:
        assert "forward" not in saved.files
        assert saved["paths"].tolist() == expected
        features = DeepFisherTransformer(tiny_cnn, layer=5, features="activation").fit_transform(expected)
        np.testing.assert_array_equal(saved["features"], features)
        assert saved["features"].shape == (7, 256)
        assert saved["layer"].item() == 5 and saved["kind"].item() == "activation"


def test_extract_refuses_to_overwrite(tiny_cnn, pngs, tmp_path, capsys):
    out = tmp_path / "feats.npz"
    out.write_bytes(b"precious")
    argv = ["extract", *pngs, "--model", tiny_cnn, "-o", str(out), "--no-progress"]
    assert main(argv) == 1
    (line,) = _error_lines(capsys)
    assert line.startswith("skfishing: error:") and "--overwrite" in line and str(out) in line
    assert out.read_bytes() == b"precious"
    assert main(argv + ["--overwrite"]) == 0
    with np.load(out) as saved:
        assert len(saved["forward"]) == len(pngs)
    assert _leftovers(tmp_path) == ["feats.npz", "images"]


def test_unknown_model_is_one_line_naming_the_registered_models(tiny_cnn, pngs, tmp_path, capsys):
    out = tmp_path / "feats.npz"
    assert main(["extract", *pngs, "--model", "nosuchnet", "-o", str(out)]) == 1
    (line,) = _error_lines(capsys)
    assert line.startswith("skfishing: error:") and "'nosuchnet'" in line
    for name in ("alexnet", "vgg16", tiny_cnn):
        assert name in line
    assert not out.exists()


def test_missing_image_names_the_file(tiny_cnn, pngs, tmp_path, capsys):
    missing = str(tmp_path / "images" / "nope.jpg")
    out = tmp_path / "feats.npz"
    assert main(["extract", pngs[0], missing, "--model", tiny_cnn, "-o", str(out)]) == 1
    (line,) = _error_lines(capsys)
    assert line.startswith("skfishing: error:") and missing in line
    assert not out.exists()


def test_unreadable_image_leaves_nothing(tiny_cnn, pngs, tmp_path, capsys):
    broken = Path(pngs[0]).parent / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "feats.npz"
    argv = ["extract", *pngs, str(broken), "--model", tiny_cnn, "-o", str(out), "--no-progress"]
    assert main(argv) == 1
    (line,) = _error_lines(capsys)
    assert "broken.png" in line and "image 5" in line
    assert _leftovers(tmp_path) == ["images"]


def test_failed_write_keeps_the_old_output(tiny_cnn, pngs, tmp_path, capsys, monkeypatch):
    def disk_full(file, **arrays):
        file.write(b"PK\x03\x04 half an archive")
        raise OSError(28, "No space left on device")

    out = tmp_path / "feats.npz"
    out.write_bytes(b"previous result")
    monkeypatch.setattr(np, "savez", disk_full)
    argv = ["extract", *pngs, "--model", tiny_cnn, "-o", str(out), "--overwrite", "--no-progress"]
    assert main(argv) == 1
    (line,) = _error_lines(capsys)
    assert line == "skfishing: error: [Errno 28] No space left on device"
    assert out.read_bytes() == b"previous result"
    assert _leftovers(tmp_path) == ["feats.npz", "images"]


def test_interrupt_exits_130_and_leaves_nothing(tiny_cnn, pngs, tmp_path, capsys, monkeypatch):
    def interrupted(self, X, y=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(DeepFisherTransformer, "transform", interrupted)
    out = tmp_path / "feats.npz"
    assert main(["extract", *pngs, "--model", tiny_cnn, "-o", str(out)]) == 130
    assert _error_lines(capsys) == ["skfishing: interrupted"]
    assert _leftovers(tmp_path) == ["images"]


def test_other_input_errors(tiny_cnn, pngs, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["extract", str(empty), "-o", str(tmp_path / "a.npz")]) == 1
    (line,) = _error_lines(capsys)
    assert "no image file" in line and str(empty) in line
    nowhere = tmp_path / "nowhere"
    assert main(["extract", *pngs, "--model", tiny_cnn, "-o", str(nowhere / "a.npz")]) == 1
    (line,) = _error_lines(capsys)
    assert line == f"skfishing: error: output folder {str(nowhere)!r} does not exist"
    assert main(["extract", *pngs, "--model", tiny_cnn, "--layer", "3", "-o", str(tmp_path / "a.npz")]) == 1
    lines = _error_lines(capsys)
    assert lines[0].startswith("skfishing: error: layer=3 does not exist")
    assert not (tmp_path / "a.npz").exists()


def test_models_lists_the_registry(tiny_cnn, tiny_cnn_file, tmp_path, capsys):
    cache = tmp_path / "cache"
    cache.mkdir()
    with open(cache / "bvlcalexnet-12.onnx", "wb") as f:  # sparse, of the right size
        f.truncate(243_863_787)
    (cache / "vgg16-12.onnx").write_bytes(b"partial")
    assert main(["models", "--cache-dir", str(cache)]) == 0
    out = capsys.readouterr().out
    assert f"cache folder: {cache}" in out
    rows = {line.split()[0]: line for line in out.splitlines()[2:] if not line.startswith(" ")}
    assert set(rows) == {spec.name for spec in registry.list_models()} >= {"alexnet", "vgg16", tiny_cnn}
    assert "243.9 MB" in rows["alexnet"] and "cached" in rows["alexnet"]
    assert "553.4 MB" in rows["vgg16"] and "wrong size" in rows["vgg16"]
    assert "local file" in rows[tiny_cnn]
    assert f"file: {cache / 'bvlcalexnet-12.onnx'}" in out and f"file: {tiny_cnn_file}" in out
    empty = tmp_path / "nothing"
    assert main(["models", "--cache-dir", str(empty)]) == 0
    assert "not downloaded" in capsys.readouterr().out


def test_demo_command(tiny_cnn, capsys):
    assert main(["demo", "--quick", "--model", tiny_cnn, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "dE/dW7" in out and "Grid search" in out and "accuracy" in out


def test_demo_bad_data(tiny_cnn, tmp_path, capsys):
    missing = tmp_path / "VOCdevkit"
    assert main(["demo", "--quick", "--model", tiny_cnn, "--data", str(missing)]) == 1
    lines = _error_lines(capsys)
    assert lines[0].startswith("skfishing: error:") and str(missing) in lines[0]


def test_usage_errors_and_version(capsys):
    assert main([]) == 2
    assert "usage: skfishing" in capsys.readouterr().err
    assert main(["extract", "a.png"]) == 2  # no -o
    assert "-o/--output" in capsys.readouterr().err
    assert main(["extract", "a.png", "-o", "x.npz", "--temperature", "hot"]) == 2
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"skfishing {skfishing.__version__}"


def test_console_script(tmp_path):
    script = shutil.which("skfishing", path=str(Path(sys.executable).parent))
    assert script is not None, "the skfishing console script is not installed"
    listed = subprocess.run([script, "models"], capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0 and "alexnet" in listed.stdout and "vgg16" in listed.stdout
    missing = tmp_path / "nope.png"
    failed = subprocess.run(
        [script, "extract", str(missing), "-o", str(tmp_path / "f.npz")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert failed.returncode == 1
    assert failed.stderr.strip().splitlines() == [
        f"skfishing: error: no such image file or folder: {str(missing)!r}"
    ]


def test_model_file_with_the_embedded_models_metadata_layout(pngs, tmp_path, restore_models):
    """A copy of the embedded network beside a copy of its metadata file
    (keys input_size, channel_order, scale, mean, std, and others) gives the
    features of the registered "tinyalexnet"."""
    data = Path(skfishing.__file__).parent / "data"
    shutil.copy(data / "tinyalexnet.onnx", tmp_path / "copy.onnx")
    shutil.copy(data / "tinyalexnet.json", tmp_path / "copy.json")
    out = tmp_path / "copy.npz"
    argv = ["extract", *pngs, "--model", str(tmp_path / "copy.onnx"), "-o", str(out), "--no-progress"]
    assert main(argv) == 0
    fish = DeepFisherTransformer("tinyalexnet")
    expected = fish.fit_transform(pngs)
    with np.load(out) as saved:
        np.testing.assert_array_equal(saved["forward"], expected["forward"])
        np.testing.assert_array_equal(saved["backward"], expected["backward"])
        assert saved["model_sha256"].item() == fish.model_sha256_  # same bytes, same hash
