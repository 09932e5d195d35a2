"""The rules between modules of docs/developers.rst, as functions of a source tree.

Each function reads Python files with :mod:`ast` (nothing is imported) and
returns the violations it finds, so that ``tests/test_layout.py`` can run it
on ``skfishing/`` and on small trees that break the rule on purpose.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

#: Calls that make an empty mutable object to be filled at run time.
MUTABLE_FACTORIES = {
    "dict",
    "list",
    "set",
    "OrderedDict",
    "defaultdict",
    "deque",
    "Counter",
    "WeakValueDictionary",
    "WeakKeyDictionary",
    "WeakSet",
    "Lock",
    "RLock",
    "bytearray",
}
#: Decorators that keep values for the life of the process.
MEMO_DECORATORS = {"lru_cache", "cache", "cached_property"}
#: Private names that are scikit-learn's protocol, not skfishing's internals.
SKLEARN_PROTOCOL = {"_parameter_constraints"}
#: Libraries whose private names a test may reach (their business, not ours).
THIRD_PARTY = {"torch", "nn", "np", "numpy", "onnx", "ort", "onnxruntime", "sklearn", "timm", "torchvision"}
#: Constraint objects of scikit-learn's parameter validation.
CONSTRAINT_CALLS = {"Interval", "StrOptions", "Options", "HasMethods", "Hidden"}


def modules(package_dir):
    """``{module name: path}`` of every Python file of a package folder."""
    package_dir = Path(package_dir)
    found = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imported(name, path, node):
    """Modules (and ``module.attribute`` names) an import node brings in."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        base = name.split(".")
        if path.name != "__init__.py":
            base = base[:-1]
        base = base[: len(base) - (node.level - 1)]
        module = ".".join(base + ([node.module] if node.module else []))
    else:
        module = node.module or ""
    return [module] + [f"{module}.{alias.name}" for alias in node.names]


def import_graph(package_dir):
    """``{module: set of package modules it imports}``, at any depth of the code.

    Imports inside functions count: they run too, and only defer the cycle.
    """
    found = modules(package_dir)
    graph = {}
    for name, path in found.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges |= {m for m in _imported(name, path, node) if m in found}
        top = name.split(".")[0]
        graph[name] = edges - {name, top}  # the package itself: its __init__ imports everything
    return graph


def cycles(graph):
    """Strongly connected groups of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                group.append(other)
                if other == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(groups)


def private_imports(package_dir):
    """``module: name`` for each private name one module imports from another."""
    found = modules(package_dir)
    top = Path(package_dir).name
    violations = []
    for name, path in found.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                source = _imported(name, path, node)[0]
                if source.split(".")[0] != top:
                    continue
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        violations.append(f"{name}: {source}.{alias.name}")
            elif isinstance(node, ast.Attribute) and _private(node.attr):
                base = ast.unparse(node.value)
                if base.split(".")[0] == top and base in found:  # skfishing.x._name
                    violations.append(f"{name}: {base}.{node.attr}")
    return sorted(violations)


def _private(name):
    return name.startswith("_") and not name.startswith("__")


def module_state(package_dir, allowed=("state.py",)):
    """Module-level mutable objects, memo decorators and ``global`` rebinding outside ``allowed``."""
    violations = []
    for name, path in modules(package_dir).items():
        if path.name in allowed:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            value = node.value if isinstance(node, (ast.Assign, ast.AnnAssign)) else None
            if isinstance(value, ast.Call) and _called(value.func) in MUTABLE_FACTORIES:
                violations.append(f"{name}:{node.lineno}: {ast.unparse(node).splitlines()[0]}")
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                for decorator in node.decorator_list:
                    target = decorator.func if isinstance(decorator, ast.Call) else decorator
                    if _called(target) in MEMO_DECORATORS and not isinstance(node, ast.ClassDef):
                        if _called(target) != "cached_property":  # per instance, not per process
                            violations.append(f"{name}:{node.lineno}: @{ast.unparse(decorator)} {node.name}")
            if isinstance(node, ast.Global):
                violations.append(f"{name}:{node.lineno}: global {', '.join(node.names)}")
    return violations


def _called(func):
    if isinstance(func, ast.Attribute):
        return func.attr
    return getattr(func, "id", None)


def repeated_constraints(package_dir):
    """Parameter constraints written out (Interval, StrOptions...) in more than one module.

    A constraint declared once is a name that other modules import; the same
    parameter given a literal constraint in two modules is the same rule
    written twice, and the two copies can drift apart.
    """
    where = {}
    for name, path in modules(package_dir).items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        # module-level names bound to written-out constraints count where they are written
        local = {
            target.id
            for node in tree.body
            if isinstance(node, ast.Assign) and _writes_constraint(node.value)
            for target in node.targets
            if isinstance(target, ast.Name)
        }
        for node in ast.walk(tree):
            if not isinstance(node, ast.Dict):
                continue
            for key, value in zip(node.keys, node.values):
                if not (isinstance(key, ast.Constant) and isinstance(key.value, str)):
                    continue
                names = {n.id for n in ast.walk(value) if isinstance(n, ast.Name)}
                if _writes_constraint(value) or names & local:
                    where.setdefault(key.value, set()).add(name)
    return {param: sorted(names) for param, names in sorted(where.items()) if len(names) > 1}


def _writes_constraint(node):
    return any(isinstance(n, ast.Call) and _called(n.func) in CONSTRAINT_CALLS for n in ast.walk(node))


def private_names_in_tests(tests_dir, package="skfishing", package_modules=()):
    """``file:line: name`` for each private name of the package a test touches.

    Counted: private names imported from the package, private attributes
    read on anything but ``self``/``cls``, and private names given to
    ``setattr`` (``monkeypatch.setattr(module, "_name", ...)``); and private
    names imported from other test modules (helpers are shared publicly).
    The private subpackages on the way to a module (``skfishing._onnx`` in
    ``skfishing._onnx.network.get_network``) are paths, not names: a module
    of ``package_modules`` is not counted.
    """
    package_modules = set(package_modules)
    violations = []
    for path in sorted(Path(tests_dir).glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            where = f"{path.name}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.ImportFrom):
                module = node.module or ""
                ours = module.split(".")[0] == package or (Path(tests_dir) / f"{module}.py").exists()
                names = [a.name for a in node.names if _private(a.name)] if ours else []
                violations += [f"{where}: {module}.{n}" for n in names]
            elif (
                isinstance(node, ast.Attribute) and _private(node.attr) and node.attr not in SKLEARN_PROTOCOL
            ):
                base = ast.unparse(node.value)
                if f"{base}.{node.attr}" in package_modules:
                    continue
                if base not in ("self", "cls", "super()") and base.split(".")[0] not in THIRD_PARTY:
                    violations.append(f"{where}: {base}.{node.attr}")
            elif isinstance(node, ast.Call) and _called(node.func) == "setattr":
                for arg in node.args[1:2]:
                    if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and _private(arg.value):
                        violations.append(f"{where}: setattr {arg.value}")
    return violations


def imports_in_tests(tests_dir, package, moved, public_home):
    """``file:line: message`` for each import of a test that bypasses the public path.

    A test imports no module by a path of ``moved`` (old paths, kept for
    users with a warning), and imports a public name from where users do:
    ``public_home(module, name)`` says where ``name`` of a private module is
    exported (None where it is not public).
    """
    violations = []
    for path in sorted(Path(tests_dir).glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            where = f"{path.name}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Import):
                found = [(alias.name, None) for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                found = [(node.module or "", alias.name) for alias in node.names]
            else:
                continue
            for module, name in found:
                if module.split(".")[0] != package:
                    continue
                for old in (module, f"{module}.{name}"):
                    if old in moved:
                        violations.append(f"{where}: {old} is an old path ({moved[old]})")
                private = any(_private(part) for part in module.split("."))
                home = public_home(module, name) if private and name else None
                if home is not None:
                    violations.append(f"{where}: {module}.{name} is public: import it from {home}")
    return violations


def public_modules(package_dir):
    """The public submodules of a package: its modules and subpackages without a leading underscore."""
    package_dir = Path(package_dir)
    names = {p.stem for p in package_dir.glob("*.py") if not p.name.startswith("_")}
    names |= {p.parent.name for p in package_dir.glob("*/__init__.py") if not p.parent.name.startswith("_")}
    return sorted(f"{package_dir.name}.{name}" for name in names)


def documented_modules(api_text, package):
    """The submodules of ``package`` that the API page documents (``automodule``)."""
    found = re.findall(r"^\.\. automodule:: (\S+)", api_text, flags=re.M)
    return sorted(name for name in found if name != package)
