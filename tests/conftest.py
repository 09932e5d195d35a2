"""Fixtures shared by several test modules.

Tests run on the CPU execution provider, whose results are exact and
reproducible to the last bit, unless marked ``cuda`` (tests/test_cuda.py
compares the CUDA provider with the CPU one where CUDA is available). Tests
that start another Python process pass ``providers=CPU`` explicitly.
"""

import onnx
import pytest

import skfishing.network

from onnx_models import tiny_cnn_model
from skfishing import registry
from skfishing.images import ImagePreprocessing
from skfishing.network import FisherNetwork

TINY_CNN = "tinycnn"
CPU = ["CPUExecutionProvider"]


@pytest.fixture(autouse=True)
def cpu_by_default(request, monkeypatch):
    """``providers=None`` means the CPU provider, except in tests marked ``cuda``."""
    if request.node.get_closest_marker("cuda") is None:
        monkeypatch.setattr(skfishing.network, "default_providers", lambda: list(CPU))


@pytest.fixture
def trunk_runs(monkeypatch):
    """Count the samples that go through the network (trunk and FC head).

    Both ways count: straight to the features (:meth:`FisherNetwork.run`) and
    to the cached state (:meth:`FisherNetwork.run_state`).
    """
    runs = []
    run, run_state = FisherNetwork.run, FisherNetwork.run_state

    def counting_run(self, batch, *args, **kwargs):
        runs.append(len(batch))
        return run(self, batch, *args, **kwargs)

    def counting_run_state(self, batch):
        runs.append(len(batch))
        return run_state(self, batch)

    monkeypatch.setattr(FisherNetwork, "run", counting_run)
    monkeypatch.setattr(FisherNetwork, "run_state", counting_run_state)
    return runs


@pytest.fixture(scope="session")
def tiny_cnn_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "tinycnn.onnx"
    onnx.save(tiny_cnn_model(), str(path))
    return path


@pytest.fixture
def tiny_cnn(tiny_cnn_file, monkeypatch):
    """Register the tiny CNN as "tinycnn" for one test."""
    monkeypatch.setattr(registry, "_USER_MODELS", {})
    registry.register_model(TINY_CNN, tiny_cnn_file, preprocessing=ImagePreprocessing(size=32))
    return TINY_CNN
