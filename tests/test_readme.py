"""The quick start of README.md and docs/index.rst runs as pasted.

Every Python code block of README.md is executed, in order, in a fresh
interpreter (offline: the embedded network and bundled digits), and what it
prints is compared with the ``text`` block that follows it: the same words,
and numbers within 0.01 (other hardware may round the last digit
differently). docs/index.rst must show the same code and output.
"""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def markdown_blocks(text):
    """(language, code) of the fenced blocks of a Markdown file."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M)]


def rst_blocks(text):
    """(language, code) of the ``.. code-block::`` directives of an RST file."""
    blocks = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        match = re.match(r"^(\s*)\.\. code-block:: (\w+)\s*$", line)
        if not match:
            continue
        indent = len(match.group(1))
        body = []
        for following in lines[i + 1 :]:
            if following.strip() and len(following) - len(following.lstrip()) <= indent:
                break
            body.append(following)
        code = "\n".join(body)
        options = re.match(r"(\s*:[\w-]+:.*\n)*", code + "\n").group(0)  # directive options
        blocks.append((match.group(2), _dedent(code[len(options) :])))
    return blocks


def _dedent(code):
    import textwrap

    return textwrap.dedent(code).strip("\n") + "\n"


def examples(blocks):
    """(code, expected output or None) for each Python block."""
    pairs = []
    for k, (language, code) in enumerate(blocks):
        if language != "python":
            continue
        following = blocks[k + 1] if k + 1 < len(blocks) else None
        expected = following[1] if following and following[0] == "text" else None
        pairs.append((code, expected))
    return pairs


def same_output(got, expected, tolerance=0.01):
    number = r"-?\d+(?:\.\d+)?"
    words_got, words_expected = re.split(number, got.strip()), re.split(number, expected.strip())
    numbers_got = [float(v) for v in re.findall(number, got)]
    numbers_expected = [float(v) for v in re.findall(number, expected)]
    return (
        words_got == words_expected
        and len(numbers_got) == len(numbers_expected)
        and all(abs(a - b) <= tolerance for a, b in zip(numbers_got, numbers_expected))
    )


FILES = {
    "README.md": lambda text: examples(markdown_blocks(text)),
    "docs/index.rst": lambda text: examples(rst_blocks(text)),
}


def test_quick_start_runs_and_prints_what_the_page_shows(tmp_path):
    """README.md's blocks run; docs/index.rst holds the same blocks (tested below)."""
    name = "README.md"
    pairs = FILES[name]((ROOT / name).read_text(encoding="utf-8"))
    assert pairs, f"no Python code block in {name}"
    marker = "\n# --- skfishing-readme-block-end ---\n"
    program = "".join(code + f"print({marker.strip()[2:]!r})\n" for code, _ in pairs)
    done = subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    assert done.returncode == 0, f"{name}: the code blocks fail:\n{done.stderr[-3000:]}"
    outputs = done.stdout.split(marker.strip()[2:] + "\n")
    for (_code, expected), got in zip(pairs, outputs):
        if expected is not None:
            assert same_output(got, expected), f"{name} shows\n{expected}\nbut the code prints\n{got}"


def test_both_pages_show_the_same_quick_start():
    readme, index = (FILES[name]((ROOT / name).read_text(encoding="utf-8")) for name in FILES)
    assert readme and readme == index


def test_output_comparison_can_fail():
    assert same_output("test accuracy: 0.872\n", "test accuracy: 0.870")
    assert not same_output("test accuracy: 0.872\n", "test accuracy: 0.850")
    assert not same_output("train accuracy: 0.872\n", "test accuracy: 0.872")
    assert not same_output("best: {'layer': 6}", "best: {'layer': 7}")
    assert not same_output("a 1 2", "a 1")
