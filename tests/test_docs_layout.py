"""The docs read in a browser: code fits the column, prev/next make sense.

The pydata theme's content column is 622 px wide in a 1280-px window, about
68 characters of code; longer lines wrap (docs/_static/skfishing.css), so
the pages a user copies from keep their code lines within that. Sphinx's
Previous/Next links follow the toctree, so the API reference, whose
generated pages would sit between two guide pages, comes last.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
WIDTH = 68
PAGES = [DOCS / "index.rst", DOCS / "install.rst", *sorted((DOCS / "user_guide").glob("*.rst"))]


def long_code_lines(text, limit=WIDTH):
    """(line number, length) of the lines of code blocks longer than ``limit``."""
    found = []
    block, indent, base = False, None, 0
    for number, line in enumerate(text.split("\n"), 1):
        starts = re.match(r"\s*\.\. (code-block|code|sourcecode)::", line) or (
            line.rstrip().endswith("::") and not line.strip().startswith("..")
        )
        if starts:
            block, indent, base = True, None, len(line) - len(line.lstrip())
            continue
        if not block or not line.strip():
            continue
        current = len(line) - len(line.lstrip())
        if indent is None:
            if current <= base:
                block = False
                continue
            if line.strip().startswith(":"):
                continue  # an option of the directive
            indent = current
        if current < indent:
            block = False
            continue
        if len(line) - indent > limit:
            found.append((number, len(line) - indent))
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_code_lines_fit_the_column(page):
    assert long_code_lines(page.read_text(encoding="utf-8")) == []


def test_the_check_sees_a_long_line():
    text = ".. code-block:: python\n\n   x = 1\n   " + "y" * 69 + "\n\nprose " + "z" * 80 + "\n"
    assert long_code_lines(text) == [(4, 69)]


def test_the_docstring_example_of_the_transformer_fits():
    from skfishing import DeepFisherTransformer

    lines = [line.strip() for line in DeepFisherTransformer.__doc__.splitlines() if ">>>" in line]
    assert lines and max(map(len, lines)) <= WIDTH


def test_the_api_reference_comes_last_in_the_toctree():
    index = (DOCS / "index.rst").read_text()
    toctree = index[index.index(".. toctree::") :].split("\n\n")[1].split()
    assert toctree[-1] == "api" and "benchmarks" in toctree


def test_no_deprecated_sphinx_gallery_option():
    assert "reference_url" not in (DOCS / "conf.py").read_text()


def test_code_blocks_wrap_rather_than_scroll():
    css = (DOCS / "_static" / "skfishing.css").read_text()
    assert re.search(r"div\.highlight pre[^{]*\{[^}]*white-space:\s*pre-wrap", css)
