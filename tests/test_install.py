"""The installation: one onnxruntime build, and a clear word when there are two."""

import warnings

import pytest

import skfishing._onnx.network as network
from skfishing import state


@pytest.mark.cuda  # the real default_providers, not the CPU one of conftest
@pytest.mark.parametrize(
    "installed, warns",
    [(["onnxruntime"], False), (["onnxruntime-gpu"], False), (["onnxruntime", "onnxruntime-gpu"], True)],
)
def test_both_onnxruntime_builds_installed_is_a_warning_that_says_what_to_do(monkeypatch, installed, warns):
    from importlib import metadata

    real, present = metadata.distribution, _installed()

    def distribution(name):  # the standard library's view of what is installed
        if name in ("onnxruntime", "onnxruntime-gpu"):
            if name not in installed:
                raise metadata.PackageNotFoundError(name)
            return real(next(iter(present)))
        return real(name)

    monkeypatch.setattr(metadata, "distribution", distribution)
    state.clear()  # the installation is checked once per process
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        network.session_providers(["CPUExecutionProvider"])  # explicit providers: no check needed
        network.default_providers()
        network.default_providers()
    messages = [str(w.message) for w in caught]
    if warns:
        assert len(messages) == 1
        assert "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu" in messages[0]
    else:
        assert messages == []
    state.clear()


def _installed():
    from importlib import metadata

    names = set()
    for name in ("onnxruntime", "onnxruntime-gpu"):
        try:
            metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        names.add(name)
    return names


def test_the_suite_runs_with_one_onnxruntime_build():
    assert len(_installed()) == 1  # else the warning above fires in every test


def test_without_onnxruntime_the_kernel_side_works_and_the_network_says_what_to_install(tmp_path):
    """A process where onnxruntime cannot be imported, as after pip install . without an extra."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        """
        import sys
        sys.modules["onnxruntime"] = None  # import onnxruntime now fails, as when it is not installed
        import numpy as np
        from skfishing import DeepFisherTransformer, TraceKernelSVC, trace_kernel
        from skfishing.cli import main
        Z = np.zeros(4, [("forward", "f4", (2,)), ("backward", "f4", (2,))])
        Z["forward"], Z["backward"] = np.eye(4, 2) + 1, np.eye(4, 2) + 1
        assert trace_kernel(Z).shape == (4, 4)
        TraceKernelSVC().fit(Z, [0, 1, 0, 1])
        try:
            DeepFisherTransformer().transform(np.zeros((1, 32, 32, 3), np.uint8))
        except ImportError as exc:
            print("transform:", exc)
        sys.exit(main(["demo", "--quick"]))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    assert "transform: skfishing runs networks on onnxruntime, which is not installed" in done.stdout
    assert done.stderr.strip().splitlines() == [
        "skfishing: error: skfishing runs networks on onnxruntime, which is not installed. Install it with "
        "pip install 'skfishing[cpu]' (CPU) or pip install 'skfishing[gpu]' (NVIDIA CUDA); see the "
        "installation page of the documentation."
    ]
