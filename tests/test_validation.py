"""Public functions of kernel, metrics, datasets, registry and download
validate their parameters (``validate_params``), and their docstring
examples run.

Each bad call must raise scikit-learn's ``InvalidParameterError`` (a
``ValueError`` and a ``TypeError``) naming the parameter and the function,
before doing anything.
"""

import doctest
import pathlib

import numpy as np
import pytest
from sklearn.utils._param_validation import InvalidParameterError

import skfishing._io.download
import skfishing._kernels.kernel
import skfishing.datasets
import skfishing.metrics
import skfishing.registry
from skfishing import trace_kernel
from skfishing._io.download import check_local_file, retrieve
from skfishing.datasets import load_digits_images, load_voc2007, load_voc2007_npz
from skfishing.metrics import average_precision_report, voc07_average_precision
from skfishing.registry import ModelRegistry, ModelSpec, get_cache_dir
from skfishing.state import FileHashes

Z = np.zeros(4, dtype=[("forward", "f4", (3,)), ("backward", "f4", (2,))])
Y_TRUE, Y_SCORE = [1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]
SPEC = ModelSpec("x", "x.onnx", "0" * 64, url="http://127.0.0.1:9/x.onnx")

CASES = [
    ("trace_kernel", "chunk_size", lambda: trace_kernel(Z, chunk_size=0)),
    ("trace_kernel", "chunk_size", lambda: trace_kernel(Z, Z, chunk_size=-1)),
    ("voc07_average_precision", "y_true", lambda: voc07_average_precision(3, Y_SCORE)),
    ("voc07_average_precision", "difficult", lambda: voc07_average_precision(Y_TRUE, Y_SCORE, difficult=1)),
    ("voc07_average_precision", "average", lambda: voc07_average_precision(Y_TRUE, Y_SCORE, average="micro")),
    ("average_precision_report", "y_score", lambda: average_precision_report(Y_TRUE, None)),
    ("average_precision_report", "classes", lambda: average_precision_report(Y_TRUE, Y_SCORE, classes=3)),
    ("load_voc2007", "root", lambda: load_voc2007(None)),
    ("load_voc2007", "split", lambda: load_voc2007(".", split=2007)),
    ("load_voc2007_npz", "split", lambda: load_voc2007_npz("voc.npz", split="test")),
    ("load_digits_images", "size", lambda: load_digits_images(size=7)),
    ("load_digits_images", "size", lambda: load_digits_images(size=-(2**40))),
    ("get_cache_dir", "cache_dir", lambda: get_cache_dir(1.5)),
    ("FileHashes.sha256", "path", lambda: FileHashes().sha256(None)),
    ("FileHashes.remember", "sha256", lambda: FileHashes().remember(__file__, 1)),
    ("check_local_file", "spec", lambda: check_local_file("x", pathlib.Path(__file__), FileHashes())),
    ("check_local_file", "hashes", lambda: check_local_file(SPEC, pathlib.Path(__file__), {})),
    ("retrieve", "target", lambda: retrieve(SPEC, "x.onnx", FileHashes())),
    ("retrieve", "progress", lambda: retrieve(SPEC, pathlib.Path("x.onnx"), FileHashes(), progress=2)),
    ("ModelRegistry.__init__", "data_dir", lambda: ModelRegistry(3)),
    ("ModelRegistry.get", "name", lambda: ModelRegistry().get(None)),
    ("ModelRegistry.fetch", "progress", lambda: ModelRegistry().fetch("alexnet", progress="yes")),
    ("ModelRegistry.resolve", "model", lambda: ModelRegistry().resolve(3)),
    ("ModelRegistry.register", "size_bytes", lambda: ModelRegistry().register("x", __file__, size_bytes=0)),
]


@pytest.mark.parametrize("function, parameter, call", CASES, ids=[f"{f}-{p}" for f, p, _ in CASES])
def test_invalid_parameter_is_named(function, parameter, call, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be written: the folder stays empty
    monkeypatch.setenv("SKFISHING_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(InvalidParameterError, match=rf"The '{parameter}' parameter of {function} must be"):
        call()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "module",
    [
        skfishing._kernels.kernel,
        skfishing.metrics,
        skfishing.datasets,
        skfishing.registry,
        skfishing._io.download,
    ],
    ids=lambda module: module.__name__,
)
def test_docstring_examples(module):
    failures, tried = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert tried > 0 or module is skfishing._io.download
    assert failures == 0
