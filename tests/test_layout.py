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
from pathlib import Path

import layout_rules as rules
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
    if "skfishing._kernels.svm" in sys.argv[1:]:  # and use it: nothing is imported late either
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
    "skfishing._kernels.kernel",
    "skfishing._kernels.svm",
    "skfishing._kernels.sketch",
    "skfishing.metrics",
    "skfishing.datasets",
    "skfishing._onnx.head",
    "skfishing._onnx.graph",
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
    assert {"skfishing._kernels.kernel", "skfishing._kernels.svm", "skfishing._onnx.graph"} <= set(modules)
    after = _onnxruntime_after_importing(*modules)
    assert list(after) == [*modules, "using TraceKernelSVC and trace_kernel"]
    assert {step: loaded for step, loaded in after.items() if loaded} == {}


def test_the_check_sees_onnxruntime():
    """The network side does import it: the test above can fail."""
    after = _onnxruntime_after_importing("skfishing._kernels.kernel", "skfishing._onnx.network")
    assert after["skfishing._kernels.kernel"] == [] and "onnxruntime" in after["skfishing._onnx.network"]


def test_transformer_is_importable_from_the_package():
    import skfishing
    from skfishing import DeepFisherTransformer

    assert skfishing.DeepFisherTransformer is DeepFisherTransformer
    assert "DeepFisherTransformer" in dir(skfishing)
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        skfishing.Nope  # noqa: B018


# -- rules read from the source (tests/layout_rules.py) ----------------------------
#
# Each rule is checked on skfishing/ and shown to fail on a small tree that
# breaks it, so that a check which finds nothing is known to be able to find.

PACKAGE = Path(__file__).resolve().parents[1] / "skfishing"
TESTS = Path(__file__).resolve().parent


def _tree(tmp_path, files):
    """A package ``pkg`` of ``{relative path: source}`` under ``tmp_path``."""
    root = tmp_path / "pkg"
    for name, source in {"__init__.py": "", **files}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(source), encoding="utf-8")
    return root


def test_no_import_cycle_between_modules():
    graph = rules.import_graph(PACKAGE)
    assert {"skfishing._extraction.transformer", "skfishing._kernels.kernel", "skfishing.state"} <= set(graph)
    assert (
        "skfishing._onnx.network" in graph["skfishing._extraction.transformer"]
    )  # imports inside functions count
    assert rules.cycles(graph) == []


def test_the_cycle_check_finds_top_level_and_function_level_cycles(tmp_path):
    root = _tree(
        tmp_path,
        {
            "a.py": "from .b import f\n",
            "b.py": "def f():\n    from . import a\n",
            "c.py": "import pkg.d\n",
            "d.py": "from pkg.sub.e import g\n",
            "sub/__init__.py": "",
            "sub/e.py": "def g():\n    from ..c import x\n",
        },
    )
    assert rules.cycles(rules.import_graph(root)) == [["pkg.a", "pkg.b"], ["pkg.c", "pkg.d", "pkg.sub.e"]]


def test_no_private_name_imported_across_modules():
    assert rules.private_imports(PACKAGE) == []


def test_the_private_import_check_finds_them(tmp_path):
    root = _tree(
        tmp_path,
        {
            "a.py": "_X = 1\n",
            "b.py": "from .a import _X\nimport pkg.a\ny = pkg.a._X\nfrom .a import __doc__\n",
            # private modules import each other's public names: fine
            "_p/__init__.py": "",
            "_p/c.py": "from .._q.d import public\nfrom .. import a\n",
            "_q/__init__.py": "",
            "_q/d.py": "from .._p.c import _hidden\npublic = 1\n",
        },
    )
    assert rules.private_imports(root) == ["pkg._q.d: pkg._p.c._hidden", "pkg.b: pkg.a._X", "pkg.b: pkg.a._X"]


def test_process_wide_state_lives_in_state_only():
    assert rules.module_state(PACKAGE) == []


def test_the_state_check_finds_caches_containers_and_globals(tmp_path):
    root = _tree(
        tmp_path,
        {
            "a.py": """
                import functools, threading
                from collections import OrderedDict
                TABLE = {"a": 1}  # a constant table: fine
                _seen = OrderedDict()
                _lock = threading.Lock()

                @functools.lru_cache(maxsize=8)
                def f(x):
                    global _seen
                    return x
                """,
            "state.py": "import threading\n_lock = threading.RLock()\n",
        },
    )
    found = rules.module_state(root)
    assert [v.split(": ", 1)[1] for v in found] == [
        "_seen = OrderedDict()",
        "_lock = threading.Lock()",
        "@functools.lru_cache(maxsize=8) f",
        "global _seen",
    ]


#: Parameters that share a name, not a meaning: dask_transform's chunk_size is
#: rows per Dask block, trace_kernel's rows of the Gram matrix per chunk.
DIFFERENT_MEANINGS = {"chunk_size": ["skfishing.distributed", "skfishing._kernels.kernel"]}


def test_each_parameter_constraint_is_declared_once():
    found = rules.repeated_constraints(PACKAGE)
    assert {param: sorted(names) for param, names in found.items()} == {
        param: sorted(names) for param, names in DIFFERENT_MEANINGS.items()
    }


def test_the_constraint_check_finds_copies(tmp_path):
    root = _tree(
        tmp_path,
        {
            "a.py": "TAU = [Interval(Real, 0, None, closed='neither')]\nC = {'temperature': TAU}\n",
            "b.py": "C = {'temperature': [Interval(Real, 0, None, closed='neither')], 'x': [int]}\n",
            "c.py": "from .a import TAU\nC = {'temperature': TAU}\n",  # imported: declared once
        },
    )
    assert rules.repeated_constraints(root) == {"temperature": ["pkg.a", "pkg.b"]}


def test_tests_touch_no_private_name():
    assert rules.private_names_in_tests(TESTS, package_modules=rules.modules(PACKAGE)) == []


def test_the_test_check_finds_private_names(tmp_path):
    (tmp_path / "helpers.py").write_text("class _Server:\n    pass\n", encoding="utf-8")
    (tmp_path / "test_x.py").write_text(
        textwrap.dedent(
            """
            from skfishing._extraction.images import _load, load_image
            from helpers import _Server
            from torch.nn.modules.batchnorm import _BatchNorm  # torch's business

            def test(monkeypatch, net):
                monkeypatch.setattr(net, "_sessions", {})
                net._session_for(1)
                self._fine = 1
                skfishing._onnx.network.get_network  # a private subpackage is a path: fine
                skfishing._onnx.network._CUDA
            """
        ),
        encoding="utf-8",
    )
    modules = {"skfishing._onnx", "skfishing._onnx.network"}
    found = [v.split(": ", 1)[1] for v in rules.private_names_in_tests(tmp_path, package_modules=modules)]
    assert found == [
        "skfishing._extraction.images._load",
        "helpers._Server",
        "setattr _sessions",
        "skfishing._onnx.network._CUDA",
        "net._session_for",
    ]


def _public_callables():
    import inspect
    import pkgutil

    import skfishing

    names = ["skfishing"] + [f"skfishing.{m.name}" for m in pkgutil.iter_modules(skfishing.__path__)]
    for module_name in names:
        module = importlib.import_module(module_name)
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name)
            if callable(obj) and not inspect.ismodule(obj) and obj.__module__.startswith("skfishing"):
                yield f"{module_name}.{name}", obj


def _declares_validation(obj):
    """Estimators: constraints for every parameter; else validate_params or __post_init__."""
    import dataclasses
    import inspect

    from sklearn.base import BaseEstimator

    if inspect.isclass(obj):
        if issubclass(obj, BaseException):
            return True
        if issubclass(obj, BaseEstimator):
            return set(inspect.signature(obj).parameters) <= set(obj._parameter_constraints)
        if dataclasses.is_dataclass(obj):
            return hasattr(obj, "__post_init__") or not dataclasses.fields(obj)
        obj = obj.__init__
        if obj is object.__init__:
            return True
    parameters = [p for p in inspect.signature(obj).parameters if p != "self"]
    return not parameters or hasattr(obj, "__wrapped__")  # functools.wraps of validate_params


#: Public callables whose parameters another library declares and checks.
DECLARED_ELSEWHERE = {
    # argparse declares and checks every argument (and validate_params would
    # load scikit-learn for --help, which must start at once)
    "skfishing.cli.main",
}


def test_every_public_callable_declares_its_validation():
    found = dict(_public_callables())
    assert "skfishing.trace_kernel" in found and len(found) > 40
    undeclared = [name for name, obj in found.items() if not _declares_validation(obj)]
    assert sorted(undeclared) == sorted(DECLARED_ELSEWHERE)


def test_the_validation_check_finds_an_unvalidated_function():
    from sklearn.utils._param_validation import validate_params

    def plain(x):
        return x

    checked = validate_params({"x": [int]}, prefer_skip_nested_validation=True)(plain)
    assert not _declares_validation(plain) and _declares_validation(checked)


# -- the public layout ----------------------------------------------------------
#
# Implementation modules are private (skfishing._onnx, _kernels, _extraction,
# _io, _demo); users import from the package and these public submodules,
# and docs/api.rst documents exactly them.

#: The public submodules of skfishing (docs/developers.rst says why each is).
PUBLIC_SUBMODULES = [
    "skfishing.cache",
    "skfishing.cli",
    "skfishing.datasets",
    "skfishing.distributed",
    "skfishing.features",
    "skfishing.metrics",
    "skfishing.persistence",
    "skfishing.registry",
    "skfishing.state",
]
API = PACKAGE.parent / "docs" / "api.rst"


def test_public_submodules_are_exactly_the_documented_ones():
    assert rules.public_modules(PACKAGE) == PUBLIC_SUBMODULES
    assert rules.documented_modules(API.read_text(encoding="utf-8"), "skfishing") == PUBLIC_SUBMODULES


def test_the_public_module_check_finds_undocumented_and_private_ones(tmp_path):
    root = _tree(
        tmp_path,
        {"a.py": "", "_b.py": "", "sub/__init__.py": "", "_p/__init__.py": "", "_p/c.py": ""},
    )
    assert rules.public_modules(root) == ["pkg.a", "pkg.sub"]
    api = ".. automodule:: pkg\n\n.. automodule:: pkg._b\n   :no-members:\n\n.. automodule:: pkg.a\n"
    assert rules.documented_modules(api, "pkg") == ["pkg._b", "pkg.a"]


def _public_home(module_name, name):
    """Where users import ``name`` of ``module_name`` from (same name, same object), or None."""
    import inspect

    obj = getattr(importlib.import_module(module_name), name, None)
    if obj is None or inspect.ismodule(obj):
        return None
    for public in ["skfishing", *PUBLIC_SUBMODULES]:
        module = importlib.import_module(public)
        if name in getattr(module, "__all__", ()) and getattr(module, name) is obj:
            return public
    return None


def _moved():
    from skfishing._moved import MOVED

    return {old: new for old, (new, _) in MOVED.items()}


def test_tests_import_public_names_from_public_paths():
    assert _public_home("skfishing._kernels.kernel", "trace_kernel") == "skfishing"
    assert _public_home("skfishing._kernels.kernel", "CHUNK_SIZE") is None
    assert rules.imports_in_tests(TESTS, "skfishing", _moved(), _public_home) == []


# move_modules: off (old module paths on purpose; the script that moved the modules leaves them)
def test_the_test_import_check_finds_old_paths_and_private_paths_of_public_names(tmp_path):
    (tmp_path / "test_x.py").write_text(
        textwrap.dedent(
            """
            import skfishing.network
            from skfishing import kernel, datasets
            from skfishing.svm import TraceKernelSVC
            from skfishing._kernels.kernel import CHUNK_SIZE, trace_kernel
            from skfishing._onnx.network import get_network
            from skfishing import trace_kernel as fine
            """
        ),
        encoding="utf-8",
    )
    homes = {("skfishing._kernels.kernel", "trace_kernel"): "skfishing"}
    moved = {
        "skfishing.network": "skfishing._onnx.network",
        "skfishing.kernel": "skfishing._kernels.kernel",
        "skfishing.svm": "skfishing._kernels.svm",
    }
    found = rules.imports_in_tests(tmp_path, "skfishing", moved, lambda m, n: homes.get((m, n)))
    assert [v.split(": ", 1)[1] for v in found] == [
        "skfishing.network is an old path (skfishing._onnx.network)",
        "skfishing.kernel is an old path (skfishing._kernels.kernel)",
        "skfishing.svm is an old path (skfishing._kernels.svm)",
        "skfishing._kernels.kernel.trace_kernel is public: import it from skfishing",
    ]


# move_modules: on
