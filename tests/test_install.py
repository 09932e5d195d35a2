"""The installation: one onnxruntime build, and a clear word when there are two."""

import warnings

import pytest

import skfishing.network as network
from skfishing import state


@pytest.mark.cuda  # the real default_providers, not the CPU one of conftest
@pytest.mark.parametrize(
    "installed, warns",
    [(["onnxruntime"], False), (["onnxruntime-gpu"], False), (["onnxruntime", "onnxruntime-gpu"], True)],
)
def test_both_onnxruntime_builds_installed_is_a_warning_that_says_what_to_do(monkeypatch, installed, warns):
    monkeypatch.setattr(network, "_installed_onnxruntimes", lambda: installed)
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


def test_the_installed_build_is_found():
    assert network._installed_onnxruntimes()  # the suite runs with one of them
