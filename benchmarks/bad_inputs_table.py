"""Print the table of bad inputs (docs/bad_inputs.rst) by running the cases.

The cases are those of ``tests/test_bad_inputs.py``; each is run here and the
exception a user sees (type and exact message, temporary paths shortened to
``<tmp>``) goes in the table, with the bad inputs already tested in other
files listed after it.

Usage::

    python benchmarks/bad_inputs_table.py > docs/_bad_inputs_table.rst
"""

import sys
import tempfile
import textwrap
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from test_bad_inputs import CASES, COVERED_ELSEWHERE, Env, run_case  # noqa: E402


def _cell(text, width=None):
    """RST list-table cell: one paragraph, literal text kept as it is."""
    text = " ".join(str(text).split())
    return text.replace("\\", "\\\\").replace("*", "\\*").replace("`", "\\`").replace("|", "\\|")


def _literal(text):
    text = " ".join(str(text).split())
    return f"``{text}``" if text else ""


def main():
    rows = []
    with tempfile.TemporaryDirectory(prefix="skfishing-bad-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        env = Env(Path(tmp) / "env")
        for case in CASES:
            result, error, before, after = run_case(case, env)
            if error is not None:
                message = str(error).replace(str(env.root), "<tmp>")
                seen = f"``{type(error).__name__}``: {_literal(message)}"
            else:
                shape = getattr(result, "shape", None)
                seen = f"accepted (result shape ``{shape}``)"
            if case.note:
                seen += f" — {case.note}"
            if case.bug:
                seen += f" **Bug:** {case.bug}."
            if after != before:
                seen += " **The input was modified.**"
            rows.append((case.kind, case.estimator, _literal(case.call), seen))

    out = [
        ".. list-table:: Bad inputs, tested in ``tests/test_bad_inputs.py``",
        "   :header-rows: 1",
        "   :widths: 12 14 30 44",
        "",
        "   * - Kind",
        "     - Estimator",
        "     - Call",
        "     - What the user sees",
    ]
    for kind, estimator, call, seen in rows:
        out += [f"   * - {_cell(kind)}", f"     - {estimator}", f"     - {call}", f"     - {seen}"]
    out += [
        "",
        ".. list-table:: Bad inputs tested in other files",
        "   :header-rows: 1",
        "   :widths: 15 45 40",
        "",
        "   * - Kind",
        "     - Input",
        "     - Test",
    ]
    for kind, what, test in COVERED_ELSEWHERE:
        out += [f"   * - {_cell(kind)}", f"     - {_cell(what)}", f"     - ``{test}``"]
    print("\n".join(out))
    n_bugs = sum(case.bug is not None for case in CASES)
    print(
        textwrap.dedent(
            f"""
            .. {len(CASES)} cases here ({n_bugs} known bugs), {len(COVERED_ELSEWHERE)} rows tested elsewhere.
            """
        ).rstrip()
    )


if __name__ == "__main__":
    main()
