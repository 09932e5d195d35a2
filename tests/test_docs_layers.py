"""The user guide's table of the embedded network's layers is what list_layers says."""

import re
from pathlib import Path

import pytest

from skfishing import list_layers
from skfishing.registry import list_models, resolve_model

PAGE = Path(__file__).resolve().parents[1] / "docs" / "user_guide" / "layers.rst"


def table_rows(text, name):
    """The body rows of the list-table with ``:name: name``, as lists of cell strings."""
    block = text[text.index(f":name: {name}") :].split("\n\n", 2)[1]
    rows, row = [], None
    for line in block.splitlines():
        cell = re.match(r"\s*(\*)?\s*- (.*)", line)
        if cell is None:
            continue
        if cell.group(1):
            row = []
            rows.append(row)
        row.append(cell.group(2).strip().strip("`").replace(",", ""))
    return rows[1:]  # the header row


@pytest.mark.skipif("tinyalexnet" not in [m.name for m in list_models()], reason="embedded model not built")
def test_the_layer_table_of_the_embedded_network_is_up_to_date():
    layers = list_layers(resolve_model("tinyalexnet").source)
    rows = table_rows(PAGE.read_text(encoding="utf-8"), "tinyalexnet-layers")
    assert len(rows) == len(layers)
    convs = [layer for layer in layers if layer["op_type"] == "Conv"]
    for row, layer in zip(rows, layers):
        T, d_in, d_out = layer["T"], layer["d_in"], layer["d_out"]
        if layer["op_type"] == "Conv":
            assert row[:2] == [f"conv{convs.index(layer) + 1}", layer["weight"]]
        else:
            assert row[0] == f"fc{row[1]}" and T == 1
        expected = [T, d_in, d_out, layer["factor_floats"], layer["gradient_floats"]]
        expected += [T * T * (d_in + d_out), d_in * d_out]
        assert [int(v) for v in row[2:]] == expected, row
