"""benchmarks/table1.py reads VOC 2012 devkits (``--dataset voc2012``), no shared data needed."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skfishing.datasets import VOC2012_CLASSES, load_voc2012

ROOT = Path(__file__).resolve().parents[1]


def _table1():
    spec = importlib.util.spec_from_file_location("table1", ROOT / "benchmarks" / "table1.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def devkit(tmp_path):
    """VOCdevkit/VOC2012 with 10 train and 10 val images; every class has
    positives and negatives in both splits, some 'difficult' entries."""
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    main = voc / "ImageSets" / "Main"
    main.mkdir(parents=True)
    (voc / "JPEGImages").mkdir()
    rng = np.random.default_rng(0)
    splits = {"train": [f"2008_{k:06d}" for k in range(10)], "val": [f"2011_{k:06d}" for k in range(10)]}
    for split, ids in splits.items():
        (main / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
        for c, name in enumerate(VOC2012_CLASSES):
            values = [1 if (k + c) % 5 == 0 else (0 if (k + c) % 5 == 1 else -1) for k in range(len(ids))]
            (main / f"{name}_{split}.txt").write_text("".join(f"{i} {v:2d}\n" for i, v in zip(ids, values)))
        for i in ids:
            Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(
                voc / "JPEGImages" / f"{i}.jpg"
            )
    return tmp_path / "VOCdevkit"


def test_table1_accepts_voc2012(devkit, capsys):
    table1 = _table1()
    train, val = table1.load(devkit, dataset="voc2012")
    assert train.ids.tolist() == load_voc2012(devkit, "train").ids.tolist()
    assert val.ids.tolist()[0] == "2011_000000" and len(val.images) == 10
    table1.main(["--dataset", "voc2012", "--data", str(devkit), "--rows", "x7", "dE/dW7"])
    out = capsys.readouterr().out
    assert "voc2012 data" in out and "10 train, 10 val images" in out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[2:]}
    assert set(rows) == {"x7", "dE/dW7"}
    for values in rows.values():
        assert 0 < float(values[0]) <= 100  # VOC07 11-point mAP, in %


def test_table1_voc2012_needs_a_devkit_folder(tmp_path):
    table1 = _table1()
    with pytest.raises(SystemExit, match="reads a VOCdevkit folder"):
        table1.load(tmp_path / "voc.npz", dataset="voc2012")
    with pytest.raises(SystemExit):
        table1.main(["--dataset", "voc2010", "--data", str(tmp_path)])
