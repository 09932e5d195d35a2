"""Starting up costs little: ``import skfishing`` and ``skfishing --help`` load
no heavy library.

Each check runs in a fresh interpreter and reads ``sys.modules`` afterwards
(a set of modules, not a timing): scikit-learn, SciPy, ONNX and onnxruntime
load only when a name or a command that needs them is used.
"""

import json
import subprocess
import sys
import textwrap

import pytest

HEAVY = ("sklearn", "scipy", "onnx", "onnxruntime")

SCRIPT = textwrap.dedent(
    """
    import contextlib, io, json, sys
    exec(sys.argv[1])
    heavy = sorted({name.split(".")[0] for name in sys.modules} & set(sys.argv[2:]))
    print(json.dumps(heavy))
    """
)


def _heavy_after(code):
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, code, *HEAVY], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])


def _cli(*argv):
    return (
        "from skfishing.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        f"    status = main({list(argv)!r})\n"
        "assert status == 0 and 'skfishing' in out.getvalue(), (status, out.getvalue())"
    )


@pytest.mark.parametrize(
    "code",
    [
        "import skfishing",
        "import skfishing; skfishing.__version__",
        "from skfishing import __version__",
        "import skfishing.cli",
        _cli("--help"),
        _cli("--version"),
        _cli("extract", "--help"),
        _cli("models", "--help"),
        _cli("demo", "--help"),
    ],
)
def test_startup_loads_no_heavy_library(code):
    assert _heavy_after(code) == []


@pytest.mark.parametrize(
    "code, expected",
    [
        ("import skfishing; skfishing.TraceKernelSVC", {"sklearn", "scipy"}),
        ("import skfishing; skfishing.datasets", {"sklearn"}),
        ("from skfishing import add_backward", {"onnx"}),
        ("import skfishing; skfishing.DeepFisherTransformer", {"sklearn", "onnx"}),
    ],
)
def test_the_check_sees_the_libraries_a_name_needs(code, expected):
    """The names load on use, so the test above can fail."""
    assert expected <= set(_heavy_after(code))


def test_every_public_name_loads_and_is_the_object_of_its_module():
    import skfishing
    from skfishing import datasets, registry
    from skfishing._kernels import svm
    from skfishing._onnx import graph

    assert skfishing.TraceKernelSVC is svm.TraceKernelSVC
    assert skfishing.add_backward is graph.add_backward
    assert skfishing.fetch_model is registry.fetch_model
    assert skfishing.datasets is datasets
    for name in skfishing.__all__:
        assert getattr(skfishing, name) is not None
    assert set(skfishing.__all__) <= set(dir(skfishing))
