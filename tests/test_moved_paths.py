"""The module paths of earlier versions still import, with a FutureWarning.

Each old path is imported in a fresh interpreter (so that the first import
is the one seen), and must give the module at its new place, its objects,
and one FutureWarning naming the old path. Files written by earlier
versions name classes by their old modules: joblib pickles and skops files
so written (the classes' ``__module__`` set to the old path while saving)
load in a fresh process and predict as the estimator saved.
"""

import contextlib
import json
import re
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.pipeline import make_pipeline

from skfishing import DeepFisherTransformer, ImagePreprocessing, TensorSketch, TraceKernelSVC
from skfishing._moved import MOVED, message
from skfishing.datasets import load_digits_images

PACKAGE = Path(__file__).resolve().parents[1] / "skfishing"

CHECK = textwrap.dedent(
    """
    import importlib, json, sys, warnings
    table = json.loads(sys.argv[1])
    import skfishing  # installs the finder
    problems = []
    for old, new in table.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                exec(f"import {old}")  # the warning must point at this line: "<string>"
            except ImportError as exc:
                problems.append(f"{old}: {exc}")
                continue
            module = sys.modules[old]
            again = importlib.import_module(old)
        moved = [w for w in caught if issubclass(w.category, FutureWarning) and old in str(w.message)]
        if len(moved) != 1:
            problems.append(f"{old}: {len(moved)} FutureWarnings")
        elif moved[0].filename != "<string>":
            problems.append(f"{old}: the warning points at {moved[0].filename}")
        target = importlib.import_module(new)
        if module is not target or again is not target:
            problems.append(f"{old}: gives {module.__name__}, not {new}")
        names = getattr(target, "__all__", [])
        if any(getattr(module, name) is not getattr(target, name) for name in names):
            problems.append(f"{old}: other objects than {new}")
        if getattr(skfishing, old.rpartition(".")[2], None) is not target:
            problems.append(f"{old}: not an attribute of the package")
    print(json.dumps(problems))
    """
)


def _problems(table):
    done = subprocess.run(
        [sys.executable, "-c", CHECK, json.dumps(table)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_every_old_path_imports_with_one_warning_and_the_same_objects():
    assert len(MOVED) >= 19
    assert _problems({old: new for old, (new, _) in MOVED.items()}) == []


def test_the_old_path_check_finds_broken_entries():
    table = {"skfishing.kernel": "skfishing._kernels.svm", "skfishing.nothing": "skfishing._kernels.kernel"}
    assert _problems(table) == [
        "skfishing.kernel: gives skfishing._kernels.kernel, not skfishing._kernels.svm",
        "skfishing.kernel: not an attribute of the package",
        "skfishing.nothing: No module named 'skfishing.nothing'",
    ]


def test_no_file_is_left_at_an_old_path_and_every_new_module_exists():
    for old, (new, public) in MOVED.items():
        assert not (PACKAGE / f"{old.split('.', 1)[1]}.py").exists(), old
        assert (PACKAGE.parent / (new.replace(".", "/") + ".py")).is_file(), new
        assert public in (None, "skfishing", "skfishing.registry")


def test_the_warning_says_where_to_import_from():
    assert message("skfishing.kernel") == (
        "the module skfishing.kernel is deprecated and will be removed in a future version: import its "
        "public names from skfishing (the module is private now: skfishing._kernels.kernel)."
    )
    assert "it is private now (skfishing._onnx.network), not user API" in message("skfishing.network")


# -- files written by earlier versions ---------------------------------------------

#: The classes a fitted pipeline pickles, and their modules in earlier versions.
OLD_MODULES = {
    DeepFisherTransformer: "skfishing.transformer",
    TraceKernelSVC: "skfishing.svm",
    TensorSketch: "skfishing.sketch",
    ImagePreprocessing: "skfishing.images",
}


@contextlib.contextmanager
def _old_module_names():
    """Classes named by their old modules while saving, as earlier versions did."""
    saved = {cls: cls.__module__ for cls in OLD_MODULES}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # pickle imports the old paths
            for cls, old in OLD_MODULES.items():
                cls.__module__ = old
            yield
    finally:
        for cls, module in saved.items():
            cls.__module__ = module


@pytest.fixture(scope="module")
def fitted():
    data = load_digits_images(size=32)
    X, y = data.images[:40], data.target[:40] % 3
    prep = ImagePreprocessing(32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), scale=1 / 255)
    fish = DeepFisherTransformer("tinyalexnet", layer=7, preprocessing=prep)
    pipe = make_pipeline(fish, TraceKernelSVC()).fit(X[:30], y[:30])
    sketch = make_pipeline(
        DeepFisherTransformer("tinyalexnet", layer=7, preprocessing=prep),
        TensorSketch(n_components=64, random_state=0),
    ).fit(X[:30])
    return pipe, sketch, X[30:]


LOAD = textwrap.dedent(
    """
    import json, sys, warnings
    import numpy as np
    warnings.simplefilter("always")
    with warnings.catch_warnings(record=True) as caught:
        if sys.argv[1] == "joblib":
            import joblib
            pipe, sketch = joblib.load(sys.argv[2])
        else:  # skops: the pipeline alone (TensorSketch is not a trusted type)
            from skfishing import persistence
            pipe, sketch = persistence.load(sys.argv[2]), None
    X = np.load(sys.argv[-1])
    moved = sorted({str(w.message).split()[2] for w in caught if w.category is FutureWarning})
    print(json.dumps({
        "predict": pipe.predict(X).tolist(),
        "sketch": None if sketch is None else sketch.transform(X).tolist(),
        "classes": sorted({type(step).__module__ for p in (pipe, sketch) if p for _, step in p.steps}),
        "moved": moved,
    }))
    """
)


def _load_fresh(kind, *files):
    done = subprocess.run(
        [sys.executable, "-c", LOAD, kind, *map(str, files)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


def _check_loaded(loaded, pipe, sketch, X):
    np.testing.assert_array_equal(loaded["predict"], pipe.predict(X))
    modules = ["skfishing._extraction.transformer", "skfishing._kernels.svm"]
    moved = ["skfishing.images", "skfishing.svm", "skfishing.transformer"]
    if sketch is not None:
        np.testing.assert_allclose(loaded["sketch"], sketch.transform(X), rtol=1e-6, atol=1e-7)
        modules, moved = sorted([*modules, "skfishing._kernels.sketch"]), sorted([*moved, "skfishing.sketch"])
    assert loaded["classes"] == modules
    assert loaded["moved"] == moved


def _module_names(data):
    """The skfishing module names a pickle holds (joblib's arrays follow its opcodes: read as bytes)."""
    return {name.decode() for name in re.findall(rb"skfishing[\w.]*", data)}


def test_joblib_files_naming_old_modules_load(fitted, tmp_path):
    pipe, sketch, X = fitted
    np.save(tmp_path / "X.npy", X)
    with _old_module_names():
        joblib.dump((pipe, sketch), tmp_path / "old.joblib")
    with open(tmp_path / "old.joblib", "rb") as f:
        names = _module_names(f.read())
    assert {"skfishing.transformer", "skfishing.svm", "skfishing.sketch", "skfishing.images"} <= names
    assert not any(name.startswith("skfishing._") for name in names)
    _check_loaded(_load_fresh("joblib", tmp_path / "old.joblib", tmp_path / "X.npy"), pipe, sketch, X)


def test_skops_files_naming_old_modules_load(fitted, tmp_path):
    sio = pytest.importorskip("skops.io")  # the optional extra skops
    from skfishing import persistence

    pipe, sketch, X = fitted
    np.save(tmp_path / "X.npy", X)
    with _old_module_names():
        persistence.dump(pipe, tmp_path / "old.skops")
    untrusted = set(sio.get_untrusted_types(file=tmp_path / "old.skops"))
    assert {"skfishing.transformer.DeepFisherTransformer", "skfishing.svm.TraceKernelSVC"} <= untrusted
    assert (
        "skfishing.transformer.DeepFisherTransformer" not in persistence.TRUSTED_TYPES
    )  # trusted all the same
    _check_loaded(_load_fresh("skops", tmp_path / "old.skops", tmp_path / "X.npy"), pipe, None, X)
