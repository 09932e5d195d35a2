"""docs/api.rst lists exactly what the package and its public modules export.

Every name in the ``__all__`` of ``skfishing`` and of each public module is
on the page (as an autosummary entry of the module that defines or
re-exports it), and every entry on the page is in the ``__all__`` of its
module: nothing public is undocumented, nothing documented is gone.
"""

import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import skfishing

API = Path(__file__).resolve().parents[1] / "docs" / "api.rst"


def _entries(text):
    """``{module: [names]}`` of the autosummary entries, by current module."""
    entries, module, in_summary = {}, None, False
    for line in text.splitlines():
        match = re.match(r"\.\. currentmodule:: (\S+)", line)
        if match:
            module, in_summary = match.group(1), False
            continue
        if line.startswith(".. autosummary::"):
            in_summary = True
            continue
        if in_summary:
            if line.startswith("   :") or not line.strip():
                continue
            if line.startswith("   "):
                entries.setdefault(module, []).append(line.strip())
            else:
                in_summary = False
    return entries


def _public_modules():
    names = ["skfishing"]
    for info in pkgutil.iter_modules(skfishing.__path__):
        if not info.name.startswith("_"):
            names.append(f"skfishing.{info.name}")
    return names


def _exports(module_name):
    module = importlib.import_module(module_name)
    return {
        name: getattr(module, name)
        for name in getattr(module, "__all__", [])
        if not inspect.ismodule(getattr(module, name)) and name != "__version__"
    }


def test_every_entry_of_the_page_is_exported_by_its_module():
    entries = _entries(API.read_text(encoding="utf-8"))
    assert "skfishing" in entries and "DeepFisherTransformer" in entries["skfishing"]
    stale = [
        f"{module}.{name}"
        for module, names in entries.items()
        for name in names
        if name not in _exports(module)
    ]
    assert stale == []


def test_every_export_is_on_the_page():
    entries = _entries(API.read_text(encoding="utf-8"))
    documented = {
        (name, id(getattr(importlib.import_module(module), name)))
        for module, names in entries.items()
        for name in names
        if name in _exports(module)
    }
    missing = [
        f"{module}.{name}"
        for module in _public_modules()
        for name, obj in _exports(module).items()
        if (name, id(obj)) not in documented  # re-exports count where they are documented
    ]
    assert missing == []


def test_the_page_parser_reads_entries_by_module():
    text = """
.. currentmodule:: skfishing._kernels.kernel

.. autosummary::
   :toctree: generated/

   trace_kernel
   gone_away

Text that follows.
"""
    assert _entries(text) == {"skfishing._kernels.kernel": ["trace_kernel", "gone_away"]}
