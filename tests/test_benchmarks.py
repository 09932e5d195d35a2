"""Every script in ``benchmarks/`` runs, in a smoke mode (tiny sizes, seconds).

Nothing else runs the benchmarks, so an import or API change that breaks
one would go unnoticed until someone needs its numbers. Each script is run
here in a fresh interpreter with the arguments below; a new script fails
:func:`test_every_benchmark_has_a_smoke_command` until it gets a line.
The numbers printed are not checked (they mean nothing at these sizes),
only that the script finishes and prints its table.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
VOC = ROOT.parent / "shared" / "data" / "voc2007_trainval64.npz"

#: script -> (arguments of its smoke mode, a line its output must hold, needs torch (True, or the
#: modules it needs besides), needs ../shared); None where another test file runs it.
SMOKE = {
    "bad_inputs_table.py": None,  # test_bad_inputs_table_in_the_docs_is_up_to_date, below
    "conformance.py": None,  # tests/test_conformance.py runs its --smoke
    "kernel_gram.py": (["--n", "60", "--d", "16", "--labels", "3", "--repeat", "1"], "ratio", False, False),
    "kernel_positions.py": (["--n", "12"], "trace_kernel", False, False),
    "layer_speed.py": (
        ["--smoke"],
        "[check] skfishing exact against torch.func",
        ("opacus", "backpack"),
        False,
    ),
    "preprocessing.py": (
        ["--images", "2", "--large-images", "1", "--rounds", "1"],
        "skfishing",
        False,
        False,
    ),
    "scale.py": (
        ["--stream", "200", "--kernel", "200", "--n-components", "64", "--chunk-size", "100"],
        "sketch + SGD stream",
        False,
        False,
    ),
    "scale_real.py": (["--smoke"], "LinearSVC", False, False),
    "soak.py": (
        ["--images", "40", "--chunk", "20", "--batch-size", "10", "--workers", "2"],
        "bit-identical to the single-process run: True",
        False,
        False,
    ),
    "speed.py": (["--smoke", "--threads", "1"], "[grid search]", True, False),
    "table1.py": (
        # 300 images: conv3's factors exceed 150 MiB (sketched), conv5's do not (exact kernel)
        [
            "--data",
            str(VOC),
            "--max-per-split",
            "150",
            "--rows",
            "x5",
            "dE/dW7",
            "dE/dW:conv3",
            "x5+dE/dW:conv5",
            "--exact-memory",
            "150",
        ],
        "x5+dE/dW:conv5",
        False,
        True,
    ),
}


def test_every_benchmark_has_a_smoke_command():
    scripts = {path.name for path in BENCHMARKS.glob("*.py")}
    assert scripts == set(SMOKE), "give each script in benchmarks/ a smoke command in SMOKE"


def _run(script, tmp_path):
    args, expected, _, needs_shared = SMOKE[script]
    if needs_shared and not VOC.exists():
        pytest.skip("../shared/data is absent")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env["SKFISHING_CACHE_DIR"] = str(tmp_path / "models")
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, f"{script} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    assert expected in result.stdout, result.stdout[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(s for s, v in SMOKE.items() if v is not None and not v[2]))
def test_benchmark_runs_in_smoke_mode(script, tmp_path):
    _run(script, tmp_path)


@pytest.mark.slow
@pytest.mark.oracle
@pytest.mark.parametrize("script", sorted(s for s, v in SMOKE.items() if v is not None and v[2]))
def test_benchmark_with_torch_runs_in_smoke_mode(script, tmp_path):
    for module in ("torch",) + (SMOKE[script][2] if isinstance(SMOKE[script][2], tuple) else ()):
        pytest.importorskip(module)
    _run(script, tmp_path)


def test_bad_inputs_table_in_the_docs_is_up_to_date():
    """docs/bad_inputs.inc is what benchmarks/bad_inputs_table.py writes today."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bad_inputs_table.py"), "--stdout"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    written = (ROOT / "docs" / "bad_inputs.inc").read_text(encoding="utf-8")
    assert result.stdout.strip() == written.strip(), (
        "docs/bad_inputs.inc is stale: run python benchmarks/bad_inputs_table.py"
    )
