"""Write the tables of bad inputs (docs/bad_inputs.inc) by running the cases.

The cases are those of ``tests/test_bad_inputs.py`` (Python API) and
``tests/test_cli_bad_inputs.py`` (command line); each is run here and what a
user sees (the exception type and exact message, or the error line of the
command; temporary paths shortened to ``<tmp>``) goes in the table, with the
bad inputs already tested in other files listed after them.
``docs/bad_inputs.rst`` includes the file.

Usage::

    python benchmarks/bad_inputs_table.py            # writes docs/bad_inputs.inc
    python benchmarks/bad_inputs_table.py --stdout   # prints it instead
"""

import sys
import tempfile
import textwrap
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from test_bad_inputs import CASES, COVERED_ELSEWHERE, Env, run_case  # noqa: E402
from test_cli_bad_inputs import CLI_CASES, CliEnv, run_cli_case  # noqa: E402

OUTPUT = Path(__file__).resolve().parent.parent / "docs" / "bad_inputs.inc"


def _cell(text, width=None):
    """RST list-table cell: one paragraph, literal text kept as it is."""
    text = " ".join(str(text).split())
    return text.replace("\\", "\\\\").replace("*", "\\*").replace("`", "\\`").replace("|", "\\|")


def _literal(text):
    text = " ".join(str(text).split())
    return f"``{text}``" if text else ""


def cli_rows(root):
    """(kind, command, what the user sees) of each command-line case."""
    env = CliEnv(root)
    rows = []
    for case in CLI_CASES:
        status, line, _, _, _ = run_cli_case(case, env)
        if status == 0:
            seen = "accepted (exit status 0)"
        else:
            seen = _literal(str(line).replace(str(env.root), "<tmp>"))
        if case.note:
            seen += f" — {case.note}"
        command, _, situation = case.command.partition("  (")
        shown = _literal(command) + (f" ({_cell(situation)}" if situation else "")
        rows.append((case.kind, shown, seen))
    return rows


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
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
        commands = cli_rows(Path(tmp) / "cli")

    out = [
        ".. Written by benchmarks/bad_inputs_table.py from the test cases: do not edit.",
        "",
        ".. list-table:: Bad inputs, tested in ``tests/test_bad_inputs.py``",
        "   :header-rows: 1",
        "   :widths: 10 16 30 44",
        "   :class: skf-bad-inputs",
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
        ".. list-table:: The command line, tested in ``tests/test_cli_bad_inputs.py``",
        "   :header-rows: 1",
        "   :widths: 14 36 50",
        "   :class: skf-bad-inputs",
        "",
        "   * - Kind",
        "     - Command",
        "     - What the user sees",
    ]
    for kind, command, seen in commands:
        out += [f"   * - {_cell(kind)}", f"     - {command}", f"     - {seen}"]
    out += [
        "",
        ".. list-table:: Bad inputs tested in other files",
        "   :header-rows: 1",
        "   :widths: 15 45 40",
        "   :class: skf-bad-inputs",
        "",
        "   * - Kind",
        "     - Input",
        "     - Test",
    ]
    for kind, what, test in COVERED_ELSEWHERE:
        out += [f"   * - {_cell(kind)}", f"     - {_cell(what)}", f"     - ``{test}``"]
    n_bugs = sum(case.bug is not None for case in CASES)
    out.append(
        textwrap.dedent(
            f"""
            .. {len(CASES)} cases here ({n_bugs} known bugs), {len(CLI_CASES)} command lines,
               {len(COVERED_ELSEWHERE)} rows tested elsewhere.
            """
        ).rstrip()
    )
    text = "\n".join(out) + "\n"
    if "--stdout" in argv:
        print(text, end="")
    else:
        OUTPUT.write_text(text, encoding="utf-8")
        print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main()
