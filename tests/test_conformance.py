"""benchmarks/conformance.py --smoke: every tiny row accepted, gradients
within 1e-4 of torch autograd, int8 trace kernels close to float32."""

import importlib.util
import re
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime.quantization")

ROOT = Path(__file__).resolve().parents[1]


def load_conformance():
    spec = importlib.util.spec_from_file_location("conformance", ROOT / "benchmarks" / "conformance.py")
    conformance = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conformance)
    return conformance


@pytest.mark.oracle
def test_random_networks_get_the_batchnorm_statistics_of_the_images():
    """realistic(): running statistics = the cumulative average over the batches, then eval mode."""
    import numpy as np
    import torch
    from torch import nn

    conformance = load_conformance()
    images = conformance.photo_crops(8, size=16, seed=3)
    assert images.shape == (8, 3, 16, 16) and images.dtype == np.float32
    assert abs(images.mean()) < 2 and 0.2 < images.std() < 3  # ImageNet-normalised photographs
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )
    nn.init.zeros_(net[5].weight)
    spread, gain = conformance.realistic(net, images, batch_size=4)
    assert not net.training and not net[1].training
    with torch.no_grad():
        conv = net[0](torch.as_tensor(images)).double()
    halves = conv[:4], conv[4:]
    np.testing.assert_allclose(
        net[1].running_mean.numpy(), conv.mean((0, 2, 3)).numpy(), rtol=1e-5, atol=1e-6
    )
    expected_var = sum(h.var((0, 2, 3), unbiased=True) for h in halves) / 2
    np.testing.assert_allclose(net[1].running_var.numpy(), expected_var.numpy(), rtol=1e-5)
    assert net[5].weight.detach().abs().sum() > 0  # the zero classifier got random weights
    assert 0 < spread <= 1.5 and 0 < gain < 0.5


def test_smoke_table_accepts_every_row(capsys):
    conformance = load_conformance()
    rows = conformance.main(["--smoke"])
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].split() == ["architecture", "spelling", "format", "result"]
    assert len(printed.splitlines()) == len(rows) + 1
    formats = {fmt for _, _, fmt, _ in rows}
    assert formats == {"float32", "QDQ", "QOperator", "dynamic"}
    spellings = {spelling.split(" (")[0] for arch, spelling, _, _ in rows if arch == "tiny-cnn"}
    assert {"view", "reshape", "torch.flatten", "nn.Flatten", "mean-squeeze"} <= spellings
    for arch, spelling, fmt, result in rows:
        assert result.startswith("accepted"), (arch, spelling, fmt, result)
        error = re.search(r"max \|grad - torch\| = (\S+)", result)
        if error:
            assert float(error.group(1)) <= 1e-4, (arch, spelling, result)
        corr = re.search(r"correlation with float32 \(layer \d\) = (\S+)", result)
        if fmt != "float32":
            assert corr, (arch, spelling, fmt, result)
            # A random thirteen-conv VGG gives nearly the same logits for every
            # image, so its delta is mostly quantization noise: only its
            # acceptance is checked (tests/test_head_zoo.py checks its gradient).
            if "vgg16" not in arch:
                assert float(corr.group(1)) >= 0.95, (arch, spelling, fmt, result)
