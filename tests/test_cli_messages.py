"""What ``skfishing extract`` tells its user: the model, the provider, photo sizes, folders, probabilities."""

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from skfishing import DeepFisherTransformer
from skfishing._onnx.network import FisherNetwork, get_network
from skfishing.cli import collect_images, describe_providers, main, parse_providers
from skfishing.features import load_features


def _images(folder, n, shape, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = folder / f"im{i}.png"
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def test_model_and_provider_are_named_before_the_run(tiny_cnn, tmp_path, capsys):
    paths = _images(tmp_path / "small", 2, (40, 36, 3))
    out = tmp_path / "f.npz"
    argv = ["extract", *paths, "--model", tiny_cnn, "--providers", "cpu", "-o", str(out), "--no-progress"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    first = captured.out.splitlines()[0]
    assert first.startswith(f"model '{tiny_cnn}'") and "input 3x32x32" in first
    assert "gradient features of layer 7, temperature 2" in first
    assert first.endswith("on CPUExecutionProvider")
    assert captured.err == ""  # small images: no note


def test_photos_much_larger_than_a_small_network_get_a_note(tiny_cnn, tmp_path, capsys):
    paths = _images(tmp_path / "photos", 3, (200, 150, 3))
    assert main(["extract", *paths, "--model", tiny_cnn, "-o", str(tmp_path / "f.npz"), "--no-progress"]) == 0
    (note,) = capsys.readouterr().err.strip().splitlines()
    assert note.startswith("skfishing: note: the images are much larger than the 32x32 input of 'tinycnn'")
    assert "is 150x200" in note and "--model alexnet" in note and "your own network" in note


def test_providers_option():
    assert parse_providers("cuda, CPU") == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert parse_providers("CPUExecutionProvider") == ["CPUExecutionProvider"]


def test_unavailable_provider_is_an_error_listing_the_available_ones(tiny_cnn, tmp_path, capsys):
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA is available here")
    paths = _images(tmp_path / "small", 1, (32, 32, 3))
    out = tmp_path / "f.npz"
    assert main(["extract", *paths, "--model", tiny_cnn, "--providers", "cuda", "-o", str(out)]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "execution provider 'CUDAExecutionProvider' is not available" in line
    assert "CPUExecutionProvider" in line and "onnxruntime-gpu" in line
    assert not out.exists() and not (tmp_path / "f.npz.parts").exists()
    assert main(["extract", *paths, "--providers", ",", "-o", str(out)]) == 2  # usage error


def test_used_providers_are_what_the_session_reports(tiny_cnn_file):
    network = get_network(tiny_cnn_file, ["CPUExecutionProvider"])
    session = network.prepare(network.head.features("gradient", 7))
    assert [name for name, _ in network.used_providers()] == session.get_providers()
    assert describe_providers(network) == "CPUExecutionProvider"


class _Reported:
    """A network whose session reports the given providers."""

    def __init__(self, *providers):
        self.providers = providers

    def used_providers(self):
        return list(self.providers)


def test_cuda_is_described_with_its_tf32_setting():
    off = _Reported(("CUDAExecutionProvider", {"use_tf32": "0"}), ("CPUExecutionProvider", {}))
    on = _Reported(("CUDAExecutionProvider", {"use_tf32": "1"}))
    assert describe_providers(off) == "CUDAExecutionProvider (TF32 off)"
    assert describe_providers(on) == "CUDAExecutionProvider (TF32 on)"


def test_fall_back_to_another_provider_is_a_warning(tiny_cnn, tmp_path, capsys, monkeypatch):
    """onnxruntime drops CUDA when its libraries are missing: the user is told."""
    monkeypatch.setattr(FisherNetwork, "used_providers", lambda self: [("SomeOtherExecutionProvider", {})])
    paths = _images(tmp_path / "small", 1, (32, 32, 3))
    assert main(["extract", *paths, "--model", tiny_cnn, "-o", str(tmp_path / "f.npz"), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines()[0].endswith("on SomeOtherExecutionProvider")
    (warning,) = captured.err.strip().splitlines()
    assert warning.startswith(
        "skfishing: warning: CPUExecutionProvider was asked for but onnxruntime runs on "
    )
    assert "GPU section of the installation page" in warning


def test_probabilities_name_no_layer_and_store_no_temperature(tiny_cnn, tmp_path, capsys):
    paths = _images(tmp_path / "small", 3, (32, 32, 3))
    out = tmp_path / "p.npz"
    argv = ["extract", *paths, "--model", tiny_cnn, "--features", "probabilities", "-o", str(out)]
    assert main(argv + ["--no-progress"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "layer" not in lines[0] and "temperature" not in lines[0] and "class probabilities" in lines[0]
    assert lines[1].startswith(f"wrote {out}: probabilities for 3 images (10 values per image)")
    with np.load(out) as saved:
        assert "temperature" not in saved.files
    data = load_features(out)
    expected = DeepFisherTransformer(tiny_cnn, features="probabilities").fit_transform(paths)
    np.testing.assert_array_equal(data.features, expected)
    assert data.kind == "probabilities" and data.temperature is None and data.layer == 8
    assert data.source == {"model_sha256": data.model_sha256, "layer": 8}


def test_folder_of_class_folders_gets_a_hint_and_recursive_takes_them(tiny_cnn, tmp_path, capsys):
    root = tmp_path / "photos"
    cats = _images(root / "cat", 2, (32, 32, 3), seed=1)
    dogs = _images(root / "dog", 1, (32, 32, 3), seed=2)
    deeper = _images(root / "dog" / "puppies", 1, (32, 32, 3), seed=3)
    (root / "readme.txt").write_text("not an image")
    out = tmp_path / "f.npz"
    assert main(["extract", str(root), "--model", tiny_cnn, "-o", str(out)]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"skfishing: error: no image file in folder '{root}'; it has 2 sub-folders: ")
    assert f"{root / 'cat'} {root / 'dog'}" in line and "one output file per class" in line
    assert "--recursive" in line
    assert collect_images([str(root)], recursive=True) == cats + dogs + deeper
    argv = ["extract", str(root), "--recursive", "--model", tiny_cnn, "-o", str(out), "--no-progress"]
    assert main(argv) == 0
    expected = DeepFisherTransformer(tiny_cnn).fit_transform(cats + dogs + deeper)
    data = load_features(out)
    assert data.paths.tolist() == cats + dogs + deeper
    np.testing.assert_array_equal(data.features["forward"], expected["forward"])


def test_recursive_survives_a_link_loop(tmp_path):
    paths = _images(tmp_path / "a", 1, (8, 8, 3))
    (tmp_path / "a" / "loop").symlink_to(tmp_path / "a")
    assert collect_images([str(tmp_path / "a")], recursive=True) == paths
    assert Path(paths[0]).is_file()


def test_gpu_check_of_the_install_page_runs():
    """The snippet of docs/install.rst that says which provider runs (here asking for the CPU one)."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "install.rst").read_text(encoding="utf-8")
    start = text.index('   python -c "\n   from skfishing import fetch_model')
    block = text[start : text.index('"\n', start + 20)]
    code = "\n".join(line[3:] for line in block.splitlines()[1:])
    assert "print(net.used_providers()[0][0])" in code
    namespace = {}
    printed = []
    namespace["print"] = printed.append
    exec(code.replace("CUDAExecutionProvider", "CPUExecutionProvider"), namespace)
    assert printed == ["CPUExecutionProvider"]
