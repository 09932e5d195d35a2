"""Bad inputs of ``skfishing extract``: model files, outputs, non-regular files.

Each :class:`CliCase` runs the command in-process and checks its exit status
and the ``skfishing: error: ...`` line a user sees (or, for accepted inputs,
the features written). Every case also checks that the input images are
unchanged and, when the command fails, that no output (and no partial
``.part`` file) was left behind; cases marked ``early`` must fail before the
network runs.

``benchmarks/bad_inputs_table.py`` runs the same cases for the command-line
table of ``docs/bad_inputs.rst``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import models_restored
from PIL import Image

from skfishing import DeepFisherTransformer, ImagePreprocessing, registry
from skfishing.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from test_bad_inputs import SIZE, tiny_cnn  # noqa: E402

REFERENCE = "cli-bad-inputs-reference"


class CliEnv:
    """Images, model files and odd files shared by the cases."""

    def __init__(self, root):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.images = self.root / "images"
        self.images.mkdir(exist_ok=True)
        rng = np.random.default_rng(0)
        self.pixels = rng.integers(0, 256, (3, 20, 24, 3), dtype=np.uint8)
        self.paths = []
        for i, image in enumerate(self.pixels):
            path = self.images / f"image{i}.png"
            Image.fromarray(image).save(path)
            self.paths.append(str(path))
        model = tiny_cnn()
        self.bare = self.root / "bare.onnx"  # no preprocessing anywhere
        onnx.save(model, self.bare)
        self.net = self.root / "net.onnx"  # with net.json beside it
        onnx.save(model, self.net)
        (self.root / "net.json").write_text(json.dumps({"size": SIZE, "channel_order": "RGB"}))
        # the same network registered with its preprocessing: the reference features
        self.reference = self.root / "reference.onnx"
        onnx.save(model, self.reference)

    def register_reference(self):
        registry.register_model(
            REFERENCE, self.reference, preprocessing=ImagePreprocessing(size=SIZE), overwrite=True
        )

    def folder(self, name, *extra):
        """A folder with one image and the ``extra(folder)`` files."""
        folder = self.root / name
        if not folder.exists():
            folder.mkdir()
            shutil.copy(self.paths[0], folder / "a.png")
            for make in extra:
                make(folder)
        return str(folder)

    def fifo(self, name="pipe.png", folder=None):
        path = Path(folder or self.root) / name
        if not os.path.lexists(path):
            os.mkfifo(path)
        return str(path)

    def out(self, name="feats.npz"):
        return str(self.root / name)

    def unwritable_folder(self):
        """A folder where no file can be created (even by root)."""
        if os.geteuid() == 0:
            return "/sys"  # sysfs: no new files, whatever the permissions
        folder = self.root / "read-only"
        folder.mkdir(exist_ok=True)
        folder.chmod(0o555)
        return str(folder)


@dataclass(frozen=True)
class CliCase:
    """One command line: ``argv(env)``; ``match`` (regular expression) must
    be found in the error line, or ``check(env, output)`` must pass when the
    command succeeds (``match=None``)."""

    id: str
    kind: str
    command: str  # for the docs
    argv: Callable
    match: str | None = None
    check: Callable | None = None
    early: bool = True  # the error comes before the network runs
    note: str = ""


def _reference_features(env, paths, kind="gradient"):
    env.register_reference()
    return DeepFisherTransformer(REFERENCE, features=kind).fit_transform(paths)


def _same_as_reference(env, output):
    with np.load(output) as saved:
        expected = _reference_features(env, env.paths)
        np.testing.assert_array_equal(saved["forward"], expected["forward"])
        np.testing.assert_array_equal(saved["backward"], expected["backward"])
        assert saved["paths"].tolist() == env.paths


def _non_utf8_folder(env):
    folder = env.root / "latin1"
    if not folder.exists():
        folder.mkdir()
        shutil.copy(env.paths[0], folder / "a.png")
        shutil.copy(env.paths[1], os.fsdecode(os.fsencode(folder) + b"/caf\xe9.png"))
    return str(folder)


def _non_utf8_result(env, output):
    """The features of both files, with their names kept byte for byte."""
    with np.load(output) as saved:
        names = [os.fsencode(path) for path in saved["paths"]]
        assert [Path(name.decode("latin-1")).name for name in names] == ["a.png", "café.png"]
        expected = _reference_features(env, [env.paths[0], env.paths[1]])
        np.testing.assert_array_equal(saved["forward"], expected["forward"])


def _sidecar(name, content):
    def write(env):
        model = env.root / f"{name}.onnx"
        if not model.exists():
            shutil.copy(env.bare, model)
            (env.root / f"{name}.json").write_text(content)
        return str(model)

    return write


def _extract(*argv):
    return lambda env: ["extract", *[a(env) if callable(a) else a for a in argv], "--no-progress"]


def _first_image(env):
    return env.paths[0]


def _images(env):
    return str(env.images)


E = "skfishing extract"

CLI_CASES = [
    # -- --model FILE.onnx and its preprocessing -------------------------------
    CliCase(
        "model-file-without-preprocessing",
        "CLI: model file",
        f"{E} IMAGES --model net.onnx  (no net.json)",
        _extract(_images, "--model", lambda e: str(e.bare), "-o", lambda e: e.out()),
        r"the model file '[^']*bare\.onnx' is not registered, so its image preprocessing is unknown: "
        r"give --size .* or write them to '[^']*bare\.json'",
    ),
    CliCase(
        "model-file-with-sidecar",
        "CLI: model file",
        f"{E} IMAGES --model net.onnx  (with net.json)",
        _extract(_images, "--model", lambda e: str(e.net), "-o", lambda e: e.out("sidecar.npz")),
        check=_same_as_reference,
        early=False,
        note="the preprocessing is read from net.json beside the model",
    ),
    CliCase(
        "model-file-with-options",
        "CLI: model file",
        f"{E} IMAGES --model net.onnx --size 16",
        _extract(
            _images,
            "--model",
            lambda e: str(e.bare),
            "--size",
            str(SIZE),
            "-o",
            lambda e: e.out("options.npz"),
        ),
        check=_same_as_reference,
        early=False,
        note="the preprocessing is given by options",
    ),
    CliCase(
        "model-file-json-typo",
        "CLI: model file",
        f'{E} IMAGES --model net.onnx  (net.json: {{"szie": 16}})',
        _extract(_images, "--model", _sidecar("typo", '{"szie": 16}'), "-o", lambda e: e.out()),
        r"preprocessing file '[^']*typo\.json': unknown key 'szie'; did you mean 'size'\?",
    ),
    CliCase(
        "model-file-json-invalid",
        "CLI: model file",
        f"{E} IMAGES --model net.onnx  (net.json is not JSON)",
        _extract(_images, "--model", _sidecar("broken", "size = 16"), "-o", lambda e: e.out()),
        r"preprocessing file '[^']*broken\.json' is not valid JSON",
    ),
    CliCase(
        "model-file-bad-std",
        "CLI: model file",
        f"{E} IMAGES --model net.onnx --std 0 1 1",
        _extract(_images, "--model", lambda e: str(e.net), "--std", "0", "1", "1", "-o", lambda e: e.out()),
        r"preprocessing of '[^']*net\.onnx' \(read from '[^']*net\.json' and the options\): "
        r"ImagePreprocessing\.std must be 3 positive finite numbers",
    ),
    CliCase(
        "registered-model-with-options",
        "CLI: model file",
        f"{E} IMAGES --model tinyalexnet --size 64",
        _extract(_images, "--model", "tinyalexnet", "--size", "64", "-o", lambda e: e.out()),
        r"--size applies only to an unregistered ONNX file given to --model; 'tinyalexnet' is "
        r"registered with its own preprocessing",
    ),
    # -- the output file ----------------------------------------------------------
    CliCase(
        "output-is-a-folder",
        "CLI: output",
        f"{E} IMAGES -o FOLDER",
        _extract(_images, "--model", lambda e: str(e.net), "-o", lambda e: str(e.root)),
        r"output '[^']*' is a folder; give a file name, such as '[^']*features\.npz'",
    ),
    CliCase(
        "output-folder-unwritable",
        "CLI: output",
        f"{E} IMAGES -o READ_ONLY_FOLDER/feats.npz",
        _extract(
            _images, "--model", lambda e: str(e.net), "-o", lambda e: e.unwritable_folder() + "/feats.npz"
        ),
        r"cannot write in the output folder '[^']*': Permission denied",
    ),
    CliCase(
        "output-is-an-input",
        "CLI: output",
        f"{E} IMAGES -o IMAGES/image0.png --overwrite",
        _extract(_images, "--model", lambda e: str(e.net), "-o", _first_image, "--overwrite"),
        r"output file '[^']*image0\.png' is input image 0 \('[^']*image0\.png'\); choose another output file name",
    ),
    CliCase(
        "output-is-a-fifo",
        "CLI: output",
        f"{E} IMAGES -o FIFO --overwrite",
        _extract(_images, "--model", lambda e: str(e.net), "-o", lambda e: e.fifo("out.npz"), "--overwrite"),
        r"output '[^']*out\.npz' exists and is not a regular file \(a FIFO, device or socket\)",
    ),
    CliCase(
        "output-is-the-model",
        "CLI: output",
        f"{E} IMAGES --model net.onnx -o net.onnx --overwrite",
        _extract(_images, "--model", lambda e: str(e.net), "-o", lambda e: str(e.net), "--overwrite"),
        r"output file '[^']*net\.onnx' is the model file \('[^']*net\.onnx'\); choose another output file name",
        note="also its net.json, a --preprocessing file and external weights, by any spelling or link",
    ),
    CliCase(
        "output-extension-not-written",
        "CLI: output",
        f"{E} IMAGES -o feats.csv",
        _extract(_images, "--model", lambda e: str(e.net), "-o", lambda e: e.out("feats.csv")),
        r"output '[^']*feats\.csv' has extension '\.csv'; skfishing extract writes \.npz \(",
    ),
    # -- non-regular files and file names -------------------------------------------
    CliCase(
        "fifo-argument",
        "CLI: non-regular file",
        f"{E} FIFO.png",
        _extract(_first_image, lambda e: e.fifo(), "--model", lambda e: str(e.net), "-o", lambda e: e.out()),
        r"'[^']*pipe\.png' is a FIFO \(named pipe\), not an image file",
    ),
    CliCase(
        "fifo-in-folder",
        "CLI: non-regular file",
        f"{E} FOLDER  (FOLDER holds a FIFO b.png)",
        _extract(
            lambda e: e.folder("with-fifo", lambda f: e.fifo("b.png", f)),
            "--model",
            lambda e: str(e.net),
            "-o",
            lambda e: e.out(),
        ),
        r"'[^']*with-fifo/b\.png' in folder '[^']*with-fifo' is a FIFO \(named pipe\), not an image file",
    ),
    CliCase(
        "device-argument",
        "CLI: non-regular file",
        f"{E} /dev/null",
        _extract("/dev/null", "--model", lambda e: str(e.net), "-o", lambda e: e.out()),
        r"'/dev/null' is a character device, not an image file",
    ),
    CliCase(
        "broken-link-in-folder",
        "CLI: non-regular file",
        f"{E} FOLDER  (FOLDER holds a broken link b.png)",
        _extract(
            lambda e: e.folder("with-link", lambda f: (f / "b.png").symlink_to(f / "gone.png")),
            "--model",
            lambda e: str(e.net),
            "-o",
            lambda e: e.out(),
        ),
        r"file '[^']*with-link/b\.png' is a broken symbolic link \(to '[^']*gone\.png'\)",
    ),
    CliCase(
        "non-utf8-name-in-folder",
        "CLI: file name",
        f"{E} FOLDER  (FOLDER holds caf\\xe9.png, Latin-1)",
        _extract(_non_utf8_folder, "--model", lambda e: str(e.net), "-o", lambda e: e.out("latin1.npz")),
        check=_non_utf8_result,
        early=False,
        note="accepted: any name the file system allows; features keyed by content",
    ),
]


# -- running a case ---------------------------------------------------------------------


def _snapshot(env):
    """The content of every regular file under the images folder."""
    return {
        str(path): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(env.images.rglob("*"))
        if path.is_file()
    }


def run_cli_case(case, env):
    """Run a case; return (status, error line or None, all lines, argv, output path).

    Models the command registers (``--model FILE.onnx``) are forgotten after it.
    """
    argv = case.argv(env)
    output = argv[argv.index("-o") + 1]
    err = io.StringIO()
    with models_restored(), contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        status = main(argv)
    lines = err.getvalue().strip().splitlines()
    return status, (lines[0] if lines else None), lines, argv, output


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    yield CliEnv(tmp_path_factory.mktemp("cli_bad_inputs"))


@pytest.fixture
def own_registry(restore_models):
    """Registrations made by the command stay in this test."""


def _partial_files(folder):
    return sorted(p.name for p in Path(folder).glob(".*.part"))


@pytest.mark.parametrize("case", CLI_CASES, ids=[case.id for case in CLI_CASES])
def test_cli_bad_input(case, env, own_registry, monkeypatch):
    if case.early:

        def compute(self, X, y=None):
            raise AssertionError("the network ran before the error")

        for method in ("fit", "transform", "fit_transform"):
            monkeypatch.setattr(DeepFisherTransformer, method, compute)
    before = _snapshot(env)
    output = case.argv(env)[case.argv(env).index("-o") + 1]
    existed = os.path.lexists(output)
    status, line, lines, argv, output = run_cli_case(case, env)
    assert _snapshot(env) == before, "an input image changed"
    assert not any("Traceback" in text for text in lines)
    if case.match is None or status == 0:
        assert case.check is not None, (status, lines)
        assert status == 0, lines
        case.check(env, output)
    else:
        assert status == 1, lines
        assert line.startswith("skfishing: error: "), line
        assert re.search(case.match, line), line
        assert os.path.lexists(output) == existed, "the output was created or removed"
        if os.path.isdir(os.path.dirname(output)):
            assert _partial_files(os.path.dirname(output)) == []


def test_cases_are_unique_and_cover_the_issue():
    assert len({case.id for case in CLI_CASES}) == len(CLI_CASES)
    kinds = {case.kind for case in CLI_CASES}
    assert kinds == {"CLI: model file", "CLI: output", "CLI: non-regular file", "CLI: file name"}


def test_fifo_never_blocks_collect_images(env):
    """collect_images only stats: a FIFO nobody writes to is reported, not opened."""
    from skfishing.cli import collect_images

    folder = env.folder("fifo-only", lambda f: env.fifo("x.jpg", f))
    with pytest.raises(ValueError, match="is a FIFO"):
        collect_images([folder])
    with pytest.raises(ValueError, match="is a FIFO"):
        collect_images([env.fifo("lonely.jpg")])


def test_output_that_is_a_hard_link_to_an_input(env, own_registry, monkeypatch):
    """Another name of an input image is still that image."""
    link = env.root / "alias.png"
    if not link.exists():
        os.link(env.paths[1], link)
    for method in ("fit", "transform", "fit_transform"):
        monkeypatch.setattr(DeepFisherTransformer, method, lambda *a: pytest.fail("ran"))
    before = hashlib.sha256(link.read_bytes()).hexdigest()
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        status = main(["extract", str(env.images), "-o", str(link), "--overwrite", "--model", str(env.net)])
    assert status == 1 and "is input image 1" in err.getvalue()
    assert hashlib.sha256(link.read_bytes()).hexdigest() == before


def test_docs_table_lists_every_case():
    """docs/bad_inputs.inc is regenerated when a case is added (benchmarks/bad_inputs_table.py)."""
    table = (Path(__file__).resolve().parents[1] / "docs" / "bad_inputs.inc").read_text(encoding="utf-8")
    for case in CLI_CASES:
        command = case.command.partition("  (")[0]
        assert f"``{command}``" in table, f"{case.id} is missing from docs/bad_inputs.inc"
