"""Rules between modules (docs/developers.rst) that a test can hold.

The kernel, sketch and SVM side never imports onnxruntime, nor does graph
surgery: each is checked in a fresh interpreter, by what ``sys.modules``
holds after importing the module and using it.
"""

import importlib.util
import json
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import importlib, json, sys

    def network_modules():
        return sorted(name for name in sys.modules if name.split(".")[0] == "onnxruntime")

    after = {}
    for name in sys.argv[1:]:  # in turn: the first module that brings onnxruntime is named
        importlib.import_module(name)
        after[name] = network_modules()
    if "skfishing.svm" in sys.argv[1:]:  # and use it: nothing is imported late either
        import numpy as np
        from skfishing import TraceKernelSVC, trace_kernel
        Z = np.zeros(6, dtype=[("forward", "f4", (3,)), ("backward", "f4", (2,))])
        Z["forward"], Z["backward"] = np.eye(6, 3) + 1, np.eye(6, 2) + 1
        y = np.arange(6) % 2
        TraceKernelSVC().fit(Z, y).predict(Z)
        trace_kernel(Z, chunk_size=2)
        after["using TraceKernelSVC and trace_kernel"] = network_modules()
    print(json.dumps(after))
    """
)

#: Modules that must load without onnxruntime (those that exist are checked).
NETWORK_FREE = [
    "skfishing",
    "skfishing.kernel",
    "skfishing.svm",
    "skfishing.sketch",
    "skfishing.metrics",
    "skfishing.datasets",
    "skfishing.head",
    "skfishing.graph",
    "skfishing.registry",
    "skfishing.state",
]


def _onnxruntime_after_importing(*names):
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, *names], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def test_kernel_svm_and_graph_side_never_import_onnxruntime():
    modules = [name for name in NETWORK_FREE if importlib.util.find_spec(name) is not None]
    assert {"skfishing.kernel", "skfishing.svm", "skfishing.graph"} <= set(modules)
    after = _onnxruntime_after_importing(*modules)
    assert list(after) == [*modules, "using TraceKernelSVC and trace_kernel"]
    assert {step: loaded for step, loaded in after.items() if loaded} == {}


def test_the_check_sees_onnxruntime():
    """The network side does import it: the test above can fail."""
    after = _onnxruntime_after_importing("skfishing.kernel", "skfishing.network")
    assert after["skfishing.kernel"] == [] and "onnxruntime" in after["skfishing.network"]


def test_transformer_is_importable_from_the_package():
    import skfishing
    from skfishing.transformer import DeepFisherTransformer

    assert skfishing.DeepFisherTransformer is DeepFisherTransformer
    assert "DeepFisherTransformer" in dir(skfishing)
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        skfishing.Nope  # noqa: B018
