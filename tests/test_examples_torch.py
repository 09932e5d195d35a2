"""The gallery example on an exported torchvision model, run as a script.

The documentation build does not run it (it needs torch; its name lacks
the ``plot_`` prefix of the examples the gallery executes), so it runs
here, where the oracle extra is installed. The example checks skfishing's
per-image convolution gradients against torch autograd and prints the
largest difference; it must be at float32 rounding.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "torchvision_layers.py"


def test_the_gallery_does_not_execute_it():
    conf = (ROOT / "docs" / "conf.py").read_text(encoding="utf-8")
    pattern = re.search(r'"filename_pattern":\s*"([^"]+)"', conf).group(1)
    assert not re.search(pattern, str(EXAMPLE))
    assert re.search(pattern, str(ROOT / "examples" / "plot_layers.py"))


@pytest.mark.oracle
@pytest.mark.slow
def test_torchvision_example_runs_and_matches_torch_autograd(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env["MPLBACKEND"] = "Agg"
    result = subprocess.run(
        [sys.executable, str(EXAMPLE)], cwd=tmp_path, env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    difference = float(re.search(r"largest difference from torch autograd: (\S+)", result.stdout).group(1))
    assert difference < 1e-5, result.stdout
    for row in ("pooled activations", "dE/dW8 (classifier)", "dE/dW layer4.1.conv2"):
        accuracy = float(re.search(re.escape(row) + r"\s+accuracy (\S+)", result.stdout).group(1))
        assert 0 <= accuracy <= 1
