"""``skfishing extract`` in parts: a stopped run resumes, --skip-bad leaves out unreadable images."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skfishing import DeepFisherTransformer
from skfishing.cli import main
from skfishing.features import load_features

BROKEN = b"\x89PNG\r\n\x1a\n not really a PNG"


@pytest.fixture
def pngs(tmp_path):
    """Seven random RGB pictures as PNG files."""
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    paths = []
    for i in range(7):
        path = folder / f"im{i}.png"
        Image.fromarray(rng.integers(0, 256, (36, 40, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


@pytest.fixture
def counted(monkeypatch):
    """Number of images each call of DeepFisherTransformer.transform computes."""
    calls = []
    transform = DeepFisherTransformer.transform

    def counting(self, X):
        calls.append(len(X))
        return transform(self, X)

    monkeypatch.setattr(DeepFisherTransformer, "transform", counting)
    return calls


def _argv(model, paths, out, *extra):
    return ["extract", *paths, "--model", model, "-o", str(out), "--no-progress", "--part-size", "2", *extra]


def _reference(model, paths, **params):
    return DeepFisherTransformer(model, **params).fit_transform(paths)


def _err(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()


def test_stopped_run_resumes_without_recomputing_finished_parts(tiny_cnn, pngs, tmp_path, capsys, counted):
    good = Path(pngs[5]).read_bytes()
    Path(pngs[5]).write_bytes(BROKEN)  # late in the run: parts 0, 1 (images 0-3) finish first
    out = tmp_path / "feats.npz"
    parts = tmp_path / "feats.npz.parts"
    assert main(_argv(tiny_cnn, pngs, out)) == 1
    lines = _err(capsys)
    # the error names the image by its index in the whole run, not in its part
    assert lines[0].startswith("skfishing: error: image 5 (") and "im5.png" in lines[0]
    assert "finished parts are kept in" in lines[1] and str(parts) in lines[1]
    assert not out.exists()
    assert sorted(p.name for p in parts.iterdir()) == ["manifest.json", "part-000000.npz", "part-000001.npz"]
    mtimes = {p.name: p.stat().st_mtime_ns for p in parts.glob("part-*")}
    assert sum(counted) == 6  # parts 0, 1 and the failed part 2

    Path(pngs[5]).write_bytes(good)  # the user repairs the file and runs the same command
    counted.clear()
    seen = {}
    original = np.savez

    def watch(file, **arrays):  # the finished parts are still there, untouched, when the output is written
        if "paths" in arrays and "format" in arrays:
            seen.update({p.name: p.stat().st_mtime_ns for p in parts.glob("part-*")})
        return original(file, **arrays)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(np, "savez", watch)
        assert main(_argv(tiny_cnn, pngs, out)) == 0
    assert "resuming from" in capsys.readouterr().out
    assert counted == [2, 1]  # parts 2 and 3 only
    assert {name: seen[name] for name in mtimes} == mtimes
    assert not parts.exists()
    expected = _reference(tiny_cnn, pngs)
    data = load_features(out)
    np.testing.assert_array_equal(data.features["forward"], expected["forward"])
    np.testing.assert_array_equal(data.features["backward"], expected["backward"])
    assert data.features.dtype == expected.dtype and data.paths.tolist() == pngs


def test_interrupted_run_resumes(tiny_cnn, pngs, tmp_path, capsys, monkeypatch):
    """Ctrl-C during the third part keeps the first two; the rerun gives the uninterrupted result."""
    transform = DeepFisherTransformer.transform
    calls = []

    def interrupted(self, X):
        calls.append(len(X))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return transform(self, X)

    monkeypatch.setattr(DeepFisherTransformer, "transform", interrupted)
    out = tmp_path / "acts.npz"
    argv = _argv(tiny_cnn, pngs, out, "--features", "activation", "--layer", "6")
    assert main(argv) == 130
    lines = _err(capsys)
    assert lines[0] == "skfishing: interrupted" and "run the same command again" in lines[1]
    monkeypatch.setattr(DeepFisherTransformer, "transform", transform)
    assert main(argv) == 0
    expected = _reference(tiny_cnn, pngs, features="activation", layer=6)
    with np.load(out) as saved:
        np.testing.assert_array_equal(saved["features"], expected)
        assert saved["paths"].tolist() == pngs
    assert not (tmp_path / "acts.npz.parts").exists()


def test_changed_image_of_a_finished_part_is_computed_again(tiny_cnn, pngs, tmp_path, capsys, counted):
    Path(pngs[4]).write_bytes(BROKEN)
    out = tmp_path / "feats.npz"
    assert main(_argv(tiny_cnn, pngs, out)) == 1
    # image 0 changes (new content, so new size or time) after its part was written
    image = np.asarray(Image.open(pngs[0]))
    Image.fromarray(255 - image).save(pngs[0])
    os.utime(pngs[0], ns=(1, 1))
    shutil.copy(pngs[1], pngs[4])
    counted.clear()
    assert main(_argv(tiny_cnn, pngs, out)) == 0
    assert counted == [2, 2, 1]  # parts 0 (image 0 changed), 2 (failed) and 3
    expected = _reference(tiny_cnn, pngs)
    np.testing.assert_array_equal(load_features(out).features["backward"], expected["backward"])


def test_parts_of_other_settings_are_refused(tiny_cnn, pngs, tmp_path, capsys):
    Path(pngs[4]).write_bytes(BROKEN)
    out = tmp_path / "feats.npz"
    assert main(_argv(tiny_cnn, pngs, out)) == 1
    capsys.readouterr()
    parts = tmp_path / "feats.npz.parts"
    before = sorted(p.name for p in parts.iterdir())
    assert main(_argv(tiny_cnn, pngs, out, "--temperature", "4")) == 1
    (line,) = _err(capsys)
    assert "holds an unfinished extraction with other settings (temperature 2.0, here 4.0)" in line
    assert str(parts) in line and "remove the folder" in line
    assert sorted(p.name for p in parts.iterdir()) == before
    # a folder of that name that is not a parts folder is never used nor removed
    other = tmp_path / "mine.npz.parts"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert main(_argv(tiny_cnn, pngs, tmp_path / "mine.npz")) == 1
    (line,) = _err(capsys)
    assert "is not a parts folder of skfishing extract" in line
    assert (other / "notes.txt").read_text() == "mine"


def test_skip_bad_reports_and_lists_the_unreadable_images(tiny_cnn, pngs, tmp_path, capsys):
    Path(pngs[1]).write_bytes(BROKEN)
    Path(pngs[6]).write_bytes(b"")  # empty
    out = tmp_path / "feats.npz"
    argv = _argv(tiny_cnn, pngs, out, "--skip-bad")
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert "for 5 images" in captured.out and "2 unreadable images skipped" in captured.out
    lines = captured.err.strip().splitlines()
    assert len(lines) == 2
    for line, index in zip(lines, (1, 6)):
        assert line.startswith(f"skfishing: skipped image {index} (") and f"im{index}.png" in line
    assert "the file is empty" in lines[1]
    kept = [p for i, p in enumerate(pngs) if i not in (1, 6)]
    expected = _reference(tiny_cnn, kept)
    data = load_features(out)
    np.testing.assert_array_equal(data.features["forward"], expected["forward"])
    np.testing.assert_array_equal(data.features["backward"], expected["backward"])
    assert data.paths.tolist() == kept
    assert data.skipped.tolist() == [pngs[1], pngs[6]]
    # without --skip-bad, parts that left an image out are not reused: the error comes back
    os.remove(out)
    assert main(_argv(tiny_cnn, pngs, out)) == 1
    assert _err(capsys)[0].startswith("skfishing: error: image 1 (")


def test_skip_bad_with_every_image_unreadable(tiny_cnn, pngs, tmp_path, capsys):
    for path in pngs[:3]:
        Path(path).write_bytes(BROKEN)
    out = tmp_path / "feats.npz"
    assert main(_argv(tiny_cnn, pngs[:3], out, "--skip-bad")) == 1
    lines = _err(capsys)
    assert lines[-1].startswith("skfishing: error: no image could be read")
    assert not out.exists()


def test_manifest_records_what_the_features_depend_on(tiny_cnn, pngs, tmp_path, capsys):
    Path(pngs[3]).write_bytes(BROKEN)
    assert main(_argv(tiny_cnn, pngs, tmp_path / "f.npz", "--layer", "6")) == 1
    manifest = json.loads((tmp_path / "f.npz.parts" / "manifest.json").read_text())
    settings = manifest["settings"]
    fish = DeepFisherTransformer(tiny_cnn, layer=6).fit(pngs[:1])
    assert settings["model_sha256"] == fish.model_sha256_
    assert (settings["layer"], settings["temperature"], settings["features"]) == (6, 2.0, "gradient")
    assert "CPUExecutionProvider" in settings["providers"] and "size=32" in settings["preprocessing"]
    assert manifest["part_size"] == 2


KILLED_RUN = """
import os, signal, sys
from skfishing._io import parts
from skfishing.cli import main

save = parts.PartsFolder._save
written = []

def save_then_die(self, k, blocks, skipped):
    save(self, k, blocks, skipped)
    written.append(k)
    if len(written) == 2:  # the job is killed while the third part is computed
        os.kill(os.getpid(), signal.SIGKILL)

parts.PartsFolder._save = save_then_die
main(sys.argv[1:])
"""


def test_killed_process_resumes(tiny_cnn_file, pngs, tmp_path, capsys, counted, restore_models):
    """A real SIGKILL: no Python cleanup runs, the finished parts are what is left."""
    import signal
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "feats.npz"
    model = str(tmp_path / "net.onnx")
    (tmp_path / "net.json").write_text(json.dumps({"size": 32}))
    shutil.copy(tiny_cnn_file, tmp_path / "net.onnx")
    argv = ["extract", *pngs, "--model", model, "-o", str(out), "--part-size", "2"]
    env = dict(os.environ, PYTHONPATH=str(root))
    killed = subprocess.run([sys.executable, "-c", KILLED_RUN, *argv], env=env, capture_output=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    parts = tmp_path / "feats.npz.parts"
    assert sorted(p.name for p in parts.glob("part-*")) == ["part-000000.npz", "part-000001.npz"]
    assert not out.exists()
    assert main(argv + ["--no-progress"]) == 0
    assert counted == [2, 1]  # parts 2 and 3 only
    assert not parts.exists()
    expected = _reference(model, pngs)  # the command registered the file with net.json
    with np.load(out) as saved:
        np.testing.assert_array_equal(saved["forward"], expected["forward"])
        np.testing.assert_array_equal(saved["backward"], expected["backward"])
