"""The install commands the pages print work with the extras of setup.cfg.

Every ``pip install`` of the checkout in the README, CONTRIBUTING, the docs,
the examples and CI names extras that exist; one that brings the examples
or tests (``docs``, ``test``, ``oracle``) also names an onnxruntime build;
CI runs the commands the README and the install page print; and every test
that needs PyTorch is marked ``oracle``, so that the README's test command
installs no PyTorch and skips only those.
"""

import ast
import configparser
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [
    ROOT / "README.md",
    ROOT / "CONTRIBUTING.md",
    ROOT / ".ci" / "run",
    ROOT / "docs" / "build.sh",
    *sorted((ROOT / "docs").glob("**/*.rst")),
    *sorted((ROOT / "examples").glob("*.py")),
    *sorted((ROOT / "benchmarks").glob("*.*")),
]
INSTALL = re.compile(r"""pip install (?:-e |--quiet )*["']?(?:\.|skfishing)\[([a-z0-9,]+)\]""")


def _extras():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    return {name: value.split() for name, value in config["options.extras_require"].items()}


def _commands():
    found = []
    for page in PAGES:
        if "_build" in page.parts or "generated" in page.parts or "auto_examples" in page.parts:
            continue
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            for match in INSTALL.finditer(line):
                found.append((f"{page.relative_to(ROOT)}:{number}", match.group(1).split(",")))
    return found


def test_the_pages_have_install_commands():
    where = {place.split(":")[0] for place, _ in _commands()}
    assert {"README.md", "CONTRIBUTING.md", ".ci/run", "docs/install.rst", "docs/build.sh"} <= where


@pytest.mark.parametrize("place, extras", _commands(), ids=lambda v: v if isinstance(v, str) else None)
def test_every_install_command_names_existing_extras(place, extras):
    assert set(extras) <= set(_extras()), f"{place}: unknown extra in {extras}"
    if {"docs", "test", "oracle"} & set(extras):
        assert {"cpu", "gpu"} & set(extras), f"{place}: {extras} installs no onnxruntime"


def _ci_lines():
    return [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]


def _first_code_line(text, start):
    return next(line.strip() for line in text.splitlines() if line.strip().startswith(start))


def test_ci_runs_the_commands_the_pages_print():
    readme = (ROOT / "README.md").read_text()
    test_command = _first_code_line(readme, 'pip install ".[cpu,test]"')
    assert test_command == 'pip install ".[cpu,test]" && python -m pytest'
    assert any(line.startswith(test_command + " ") or line == test_command for line in _ci_lines())
    install = (ROOT / "docs" / "install.rst").read_text()
    docs_command = _first_code_line(install, 'pip install ".[cpu,docs]"').split("#")[0].strip()
    assert docs_command == 'pip install ".[cpu,docs]" && sh docs/build.sh'
    assert docs_command in _ci_lines()
    assert f"Build it with `{docs_command}`" in readme


def test_the_test_extra_has_no_torch_nor_dask_and_the_oracle_extra_has_torch():
    extras = _extras()
    names = {re.split(r"[<>=!;\[ ]", requirement)[0] for requirement in extras["test"]}
    assert not names & {"torch", "torchvision", "timm", "dask", "dask-ml", "zarr"}
    assert {re.split(r"[<>=]", r)[0] for r in extras["oracle"]} == {
        "torch",
        "torchvision",
        "timm",
        "onnxscript",
        "opacus",
        "backpack-for-pytorch",
    }
    assert not any("onnxruntime" in requirement for requirement in extras["docs"] + extras["test"])


def _needs_torch(node):
    for child in ast.walk(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            names = [alias.name for alias in child.names] + [getattr(child, "module", None) or ""]
            if any(name.split(".")[0] in ("torch", "torchvision", "timm") for name in names):
                return True
        if (
            isinstance(child, ast.Call)
            and getattr(child.func, "attr", "") == "importorskip"
            and child.args
            and isinstance(child.args[0], ast.Constant)
            and str(child.args[0].value).split(".")[0] in ("torch", "torchvision", "timm")
        ):
            return True
        if isinstance(child, ast.Name) and child.id in ("torch_model", "torch_gradients"):
            return True
    return False


def _marked_oracle(decorators):
    return any("mark.oracle" in ast.unparse(decorator) for decorator in decorators)


def _unmarked_torch_tests(source):
    tree = ast.parse(source)
    module_marked = any(
        isinstance(node, ast.Assign)
        and any(getattr(target, "id", "") == "pytestmark" for target in node.targets)
        and "mark.oracle" in ast.unparse(node.value)
        for node in tree.body
    )
    unmarked = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.ClassDef) and node.name.startswith(("test", "Test")):
            if _needs_torch(node) and not (module_marked or _marked_oracle(node.decorator_list)):
                unmarked.append(node.name)
    return unmarked


def test_every_test_that_needs_torch_is_marked_oracle():
    unmarked = {
        path.name: names
        for path in sorted((ROOT / "tests").glob("test_*.py"))
        if (names := _unmarked_torch_tests(path.read_text(encoding="utf-8")))
    }
    assert unmarked == {}


def test_the_marker_check_can_fail():
    source = (
        "import pytest\n"
        "def test_a():\n    torch = pytest.importorskip('torch')\n"
        "@pytest.mark.oracle\ndef test_b():\n    import torch\n"
        "def test_c():\n    import numpy\n"
    )
    assert _unmarked_torch_tests(source) == ["test_a"]
    assert _unmarked_torch_tests("import pytest\npytestmark = pytest.mark.oracle\n" + source) == []
