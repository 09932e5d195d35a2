"""The streaming recipe of docs/user_guide/scaling.rst, run as printed.

On the embedded network and PNG files of the digits: the network runs once
per image (the epochs read the features from disk), a restart recomputes
only the missing parts, and the model learns.
"""

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import skfishing
from skfishing.datasets import load_digits_images
from skfishing.features import load_features

PAGE = Path(__file__).resolve().parents[1] / "docs" / "user_guide" / "scaling.rst"


def _recipe():
    text = PAGE.read_text()
    section = text[text.index("Streaming fit:") :]
    block = section[section.index(".. code-block:: python") :].split("\n\n", 1)[1]
    lines = []
    for line in block.splitlines():
        if line and not line.startswith("   "):
            break
        lines.append(line[3:])
    code = "\n".join(lines)
    assert "fish.fit_transform" in code and "for epoch in range" in code
    return code.replace('"alexnet"', '"tinyalexnet"')


@pytest.fixture
def chunks(tmp_path):
    digits = load_digits_images()
    rng = np.random.default_rng(0)
    rows = rng.choice(len(digits.images), size=90, replace=False)
    paths = []
    for row in rows:
        path = tmp_path / "photos" / f"digit{row:04d}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(digits.images[row]).save(path)
        paths.append(str(path))
    y = digits.target[rows]
    return [(paths[i : i + 30], y[i : i + 30]) for i in range(0, 90, 30)]


class _Counting(skfishing.DeepFisherTransformer):
    images = 0

    def fit_transform(self, X, y=None):
        type(self).images += len(X)
        return super().fit_transform(X, y)


def test_the_streaming_recipe_runs_the_network_once_and_restarts(chunks, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(skfishing, "DeepFisherTransformer", _Counting)
    code = _recipe()
    all_paths = [p for paths, _ in chunks for p in paths]
    namespace = {"chunks_of_paths_and_labels": lambda: iter(chunks), "n_classes": 10, "new_paths": all_paths}
    exec(code, namespace)
    assert _Counting.images == 90  # three epochs, one network pass
    # the model learned from the features on disk: three times chance (0.1) or more
    y = np.concatenate([y for _, y in chunks])
    F = namespace["sketch"].transform(namespace["fish"].transform(all_paths))
    assert namespace["clf"].score(F, y) >= 0.3
    parts = sorted((tmp_path / "features").glob("part*.npz"))
    assert [p.name for p in parts] == ["part00000.npz", "part00001.npz", "part00002.npz"]
    np.testing.assert_array_equal(load_features(parts[1]).paths, chunks[1][0])
    # a restart after losing one part computes that part only
    parts[1].unlink()
    _Counting.images = 0
    exec(code, {**namespace})
    assert _Counting.images == 30
    assert re.search(r"33 GB per million images", code)
