"""benchmarks/conformance.py --smoke: every tiny row accepted, gradients
within 1e-4 of torch autograd, int8 trace kernels close to float32."""

import importlib.util
import re
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime.quantization")

ROOT = Path(__file__).resolve().parents[1]


def test_smoke_table_accepts_every_row(capsys):
    spec = importlib.util.spec_from_file_location("conformance", ROOT / "benchmarks" / "conformance.py")
    conformance = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conformance)
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
