"""Sphinx configuration of the skfishing documentation.

Build (warnings are errors; the gallery examples run, offline, on the
embedded model)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html

or ``sh docs/build.sh``. Set ``SKFISHING_DOCS_PLOT_GALLERY=0`` to skip
running the examples while editing prose.
"""

import importlib
import os
import sys
import warnings
from pathlib import Path

import skfishing

# -- Project information ------------------------------------------------------

project = "skfishing"
author = "the skfishing developers"
copyright = "2026, the skfishing developers"
version = skfishing.__version__
release = skfishing.__version__

# -- General configuration ----------------------------------------------------

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",  # MathJax files in the build: equations render offline
    "sphinx.ext.viewcode",
    "numpydoc",
    "sphinx_design",
    "sphinx_gallery.gen_gallery",
]

templates_path = ["_templates"]
exclude_patterns = [
    "_build",
    "Thumbs.db",
    ".DS_Store",
    "embedded_model.md",  # Markdown note of the embedded model; see embedded_model.rst
    "benchmarks/*.csv",  # tables included by benchmarks.rst
    "**/*.ipynb",
    "**/*.py.md5",
    "**/*.codeobj.json",
]
root_doc = "index"
default_role = "literal"  # `x` in docstrings renders as code, never as a broken link
pygments_style = "sphinx"
nitpicky = False

# autodoc / autosummary / numpydoc
autosummary_generate = True
autosummary_imported_members = False
autodoc_default_options = {"member-order": "bysource"}
autodoc_typehints = "none"  # types are in the numpydoc "Parameters" sections
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_attributes_as_param_list = True
numpydoc_xref_param_type = True  # "ndarray", "Pipeline"... in Parameters link to their docs
numpydoc_xref_ignore = "all"  # only the aliases below are linked
numpydoc_xref_aliases = {
    "ndarray": "numpy.ndarray",
    "dtype": "numpy.dtype",
    "numpy.dtype": "numpy.dtype",
    "Bunch": "sklearn.utils.Bunch",
    "Pipeline": "sklearn.pipeline.Pipeline",
    "onnx.ModelProto": "onnx.ModelProto",
    "ModelProto": "onnx.ModelProto",
    "InferenceSession": "onnxruntime.InferenceSession",
    "onnxruntime.InferenceSession": "onnxruntime.InferenceSession",
    "path-like": "pathlib.Path",
    "pathlib.Path": "pathlib.Path",
    "DeepFisherTransformer": "skfishing.DeepFisherTransformer",
    "TraceKernelSVC": "skfishing.TraceKernelSVC",
    "ImagePreprocessing": "skfishing.ImagePreprocessing",
}

# intersphinx: links to other projects' documentation. The build runs
# offline, so the inventories are small files in docs/_intersphinx, written
# by docs/_intersphinx/make_inventories.py with the targets we refer to.
_INVENTORIES = Path(__file__).parent / "_intersphinx"
intersphinx_mapping = {
    key: (url, str(_INVENTORIES / f"{key}.inv"))
    for key, url in {
        "python": "https://docs.python.org/3/",
        "numpy": "https://numpy.org/doc/stable/",
        "sklearn": "https://scikit-learn.org/stable/",
        "onnxruntime": "https://onnxruntime.ai/docs/api/python/",
        "onnx": "https://onnx.ai/onnx/",
        "skops": "https://skops.readthedocs.io/en/stable/",
        "joblib": "https://joblib.readthedocs.io/en/stable/",
        "pillow": "https://pillow.readthedocs.io/en/stable/",
    }.items()
}

# The package runs onnxruntime and joblib: keep their chatter out of the build.
os.environ.setdefault("ORT_LOGGING_LEVEL", "3")
warnings.filterwarnings("ignore", category=UserWarning, message="Matplotlib is currently using agg")

# -- Example gallery ----------------------------------------------------------

_plot_gallery = os.environ.get("SKFISHING_DOCS_PLOT_GALLERY", "1") not in ("0", "false", "False")

sphinx_gallery_conf = {
    "examples_dirs": ["../examples"],
    "gallery_dirs": ["auto_examples"],
    "filename_pattern": "/plot_",
    "ignore_pattern": r"__init__\.py",
    "plot_gallery": _plot_gallery,
    "abort_on_example_error": True,
    "backreferences_dir": "generated/backreferences",
    "doc_module": ("skfishing",),
    "within_subsection_order": "FileNameSortKey",
    "remove_config_comments": True,
    "show_memory": False,
    "min_reported_time": 1,
    "download_all_examples": True,
    "matplotlib_animations": False,
    "image_scrapers": ("matplotlib",),
}

# -- HTML output --------------------------------------------------------------

html_theme = "pydata_sphinx_theme"
html_title = f"skfishing {release}"
html_static_path = ["_static"]
html_css_files = ["skfishing.css"]
html_show_sourcelink = False
html_theme_options = {
    "navbar_align": "left",
    "show_toc_level": 2,
    "navigation_with_keys": False,
    "secondary_sidebar_items": ["page-toc"],
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
html_sidebars = {
    "index": [],
    "install": [],
    "changelog": [],
    "api": [],
    "benchmarks": [],
    "embedded_model": [],
    "bad_inputs": [],
}
html_context = {"default_mode": "light"}

# -- Facts of the embedded model ----------------------------------------------


def _write_embedded_model_facts():
    """Write ``generated/embedded_model_facts.inc`` from the model's metadata."""
    import json

    meta_path = Path(skfishing.__file__).parent / "data" / "tinyalexnet.json"
    out = Path(__file__).parent / "generated" / "embedded_model_facts.inc"
    out.parent.mkdir(exist_ok=True)
    if not meta_path.is_file():
        text = "*The metadata file is not installed in this build.*\n"
    else:
        meta = json.loads(meta_path.read_text())
        rows = [
            ("file", f"``skfishing/data/{meta.get('file', '?')}``"),
            ("size", f"{meta['size_bytes']:,} bytes" if "size_bytes" in meta else "?"),
            ("SHA-256", f"``{meta.get('sha256', '?')}``"),
            ("parameters", f"{meta['n_parameters']:,}" if "n_parameters" in meta else "?"),
            (
                "input",
                f"``{meta.get('input_name', '?')}``, {meta.get('input_size', '?')}x"
                f"{meta.get('input_size', '?')} {meta.get('channel_order', '?')}",
            ),
            (
                "mean / std (RGB, [0, 1] units)",
                ", ".join(f"{v:.4f}" for v in meta.get("mean", []))
                + " / "
                + ", ".join(f"{v:.4f}" for v in meta.get("std", [])),
            ),
            (
                "Tiny ImageNet val top-1 / top-5",
                f"{meta['val_top1']:.1%} / {meta['val_top5']:.1%}"
                if "val_top1" in meta and "val_top5" in meta
                else "?",
            ),
            ("epochs", str(meta.get("epochs", "?"))),
            ("architecture", meta.get("architecture", "?")),
        ]
        lines = [".. list-table::", "   :widths: 30 70", "   :class: skf-facts", ""]
        for key, value in rows:
            lines += [f"   * - {key}", f"     - {value}"]
        text = "\n".join(lines) + "\n"
    if not out.is_file() or out.read_text() != text:
        out.write_text(text)


_write_embedded_model_facts()

# -- Tables and chart of the benchmarks page -----------------------------------

sys.path.insert(0, str(Path(__file__).parent))
import _benchmarks  # noqa: E402

_benchmarks.write()

# -- Cross-references to re-exported names -------------------------------------


_SUBMODULES = (  # the public submodules (docs/api.rst)
    "cache",
    "cli",
    "datasets",
    "distributed",
    "features",
    "metrics",
    "persistence",
    "registry",
    "state",
)


def _resolve_reexport(app, env, node, contnode):
    """Resolve references to skfishing objects documented under another name.

    The public classes and functions are documented once, under the names
    users import (``skfishing.trace_kernel``, not
    ``skfishing.trace_kernel``). Docstrings refer to them by their
    defining module, or by a bare name inside that module's docstrings;
    such references are linked to the page of the same object instead of
    being left unresolved.
    """
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "")
    context = node.get("py:module") or ""
    if not (target.startswith("skfishing.") or context.startswith("skfishing")):
        return None
    name = target.rpartition(".")[2]
    if not name:
        return None
    wanted = None
    module_name = target.rpartition(".")[0] or context
    try:
        wanted = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError):
        pass
    domain = env.get_domain("py")
    for candidate in ["skfishing"] + [f"skfishing.{m}" for m in _SUBMODULES]:
        if f"{candidate}.{name}" == target:
            continue
        try:
            obj = getattr(importlib.import_module(candidate), name)
        except AttributeError:
            continue
        if wanted is not None and obj is not wanted:
            continue
        found = domain.resolve_xref(
            env,
            node["refdoc"],
            app.builder,
            node["reftype"],
            f"{candidate}.{name}",
            node,
            contnode,
        )
        if found is not None:
            return found
    return None


def setup(app):
    app.connect("missing-reference", _resolve_reexport)
