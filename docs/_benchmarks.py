r"""Tables and chart of the benchmarks page, written at documentation build time.

The measured numbers live in ``docs/benchmarks/*.csv`` (one file per table,
edited by hand from the output of the ``benchmarks/`` scripts); the paper's
Table 1 is ``docs/benchmarks/table1_paper.csv``. :func:`write` puts the
paper's rows beside ours, gives the feature names their mathematical form
and draws the chart, and writes substitutions of our numbers for the prose
(``|ours-dEdW7|``, ``|gain-7|``), into ``docs/generated/benchmarks/``, which
``benchmarks.rst`` includes. Files are rewritten only when their content
changes.
"""

import csv
import io
from pathlib import Path

SOURCE = Path(__file__).parent / "benchmarks"
OUT = Path(__file__).parent / "generated" / "benchmarks"

#: Table 1 rows in the paper's order: id -> (reStructuredText, matplotlib mathtext).
FEATURES = {
    "x5": (r":math:`x_5` (pool5)", r"$x_5$ (pool5)"),
    "x6": (r":math:`x_6` (fc6)", r"$x_6$ (fc6)"),
    "x7": (r":math:`x_7` (fc7)", r"$x_7$ (fc7)"),
    "y8": (r":math:`y_8` (fc8)", r"$y_8$ (fc8)"),
    "x8": (r":math:`x_8` (prob)", r"$x_8$ (prob)"),
    "x5;x6": (r":math:`x_5; x_6`", r"$x_5; x_6$"),
    "dE/dW6": (r":math:`\partial E / \partial W_6`", r"$\partial E / \partial W_6$"),
    "x6;x7": (r":math:`x_6; x_7`", r"$x_6; x_7$"),
    "dE/dW7": (r":math:`\partial E / \partial W_7`", r"$\partial E / \partial W_7$"),
    "x7;y8": (r":math:`x_7; y_8`", r"$x_7; y_8$"),
    "dE/dW8": (r":math:`\partial E / \partial W_8`", r"$\partial E / \partial W_8$"),
}


def _read(name):
    with open(SOURCE / name, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def _csv_text(header, rows):
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows([header, *rows])
    return buffer.getvalue()


def _write_if_changed(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    data = data.encode("utf-8") if isinstance(data, str) else data
    if not path.is_file() or path.read_bytes() != data:
        path.write_bytes(data)


def _by_feature(rows, name):
    table = {row[0]: row[1:] for row in rows}
    unknown = set(table) - set(FEATURES)
    if unknown:
        raise ValueError(f"docs/benchmarks/{name}: unknown feature rows {sorted(unknown)}")
    return table


def _chart(ours, paper):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [key for key in FEATURES if key in ours]
    series = [
        ("tinyalexnet, VOC 2007 val (64x64), ours", [float(ours[k][0]) for k in names], "#1f77b4"),
        ("AlexNet, VOC 2007 test, paper", [float(paper[k][0]) for k in names], "#ff7f0e"),
        ("VGG16, VOC 2007 test, paper", [float(paper[k][1]) for k in names], "#2ca02c"),
    ]
    fig, ax = plt.subplots(figsize=(9, 5.8))
    height = 0.26
    for row, key in enumerate(names):
        if key.startswith("dE/"):
            ax.axhspan(row - 0.45, row + 0.45, color="0.92", zorder=0)
    for i, (label, values, color) in enumerate(series):
        positions = [row + (i - 1) * height for row in range(len(names))]
        ax.barh(positions, values, height, label=label, color=color, zorder=2)
    ax.set_yticks(range(len(names)), [FEATURES[k][1] for k in names])
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("mean average precision over the 20 VOC classes (%)")
    ax.set_title("Table 1: forward vs gradient features (gradient rows shaded)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.45, -0.12), ncol=3, fontsize=8.5, frameon=False)
    ax.grid(axis="x", alpha=0.3, zorder=1)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def write():
    """Write the merged Table 1, the per-class table and the chart."""
    _, paper_rows = _read("table1_paper.csv")
    ours_header, ours_rows = _read("table1_tinyalexnet_voc2007.csv")
    paper = _by_feature(paper_rows, "table1_paper.csv")
    ours = _by_feature(ours_rows, "table1_tinyalexnet_voc2007.csv")
    header = [
        "Features",
        "tinyalexnet VOC 2007 val: VOC07 11-point mAP",
        "scikit-learn mAP",
        "Paper AlexNet VOC 2007 test",
        "Paper VGG16 VOC 2007 test",
        "Paper AlexNet VOC 2012 val",
        "Paper VGG16 VOC 2012 val",
    ]
    rows = [[FEATURES[key][0], *ours.get(key, ["", ""])[:2], *paper[key]] for key in FEATURES if key in paper]
    _write_if_changed(OUT / "table1.csv", _csv_text(header, rows))

    header, rows = _read("table1_tinyalexnet_voc2007_per_class.csv")
    header = [header[0]] + [FEATURES[key][0] for key in header[1:]]
    _write_if_changed(OUT / "table1_per_class.csv", _csv_text(header, rows))

    _write_if_changed(OUT / "table1.png", _chart(ours, paper))
    _write_if_changed(OUT / "numbers.inc", _substitutions(ours))


def _substitutions(ours):
    """``|ours-dEdW6|``-style substitutions of our Table 1 numbers, for the prose."""
    lines = []
    for key, values in ours.items():
        name = key.replace("/", "").replace(";", "-")
        lines.append(f".. |ours-{name}| replace:: {float(values[0]):.1f}")
    for layer, forward in ((6, "x6"), (7, "x7"), (8, "y8")):
        if f"dE/dW{layer}" in ours and forward in ours:
            gain = float(ours[f"dE/dW{layer}"][0]) - float(ours[forward][0])
            lines.append(f".. |gain-{layer}| replace:: {gain:+.1f}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    write()
