"""Fixtures shared by several test modules.

Tests run on the CPU execution provider, whose results are exact and
reproducible to the last bit, unless marked ``cuda`` (tests/test_providers.py
compares the CUDA provider with the CPU one where CUDA is available). Tests
that start another Python process pass ``providers=CPU`` explicitly.
"""

import contextlib

import onnx
import pytest

import skfishing._onnx.network
from onnx_models import tiny_cnn_model
from skfishing import ImagePreprocessing, state
from skfishing._onnx.network import FisherNetwork
from skfishing.registry import list_models, register_model, unregister_model

TINY_CNN = "tinycnn"
CPU = ["CPUExecutionProvider"]


@pytest.fixture(autouse=True)
def cpu_by_default(request, monkeypatch):
    """``providers=None`` means the CPU provider, except in tests marked ``cuda``."""
    if request.node.get_closest_marker("cuda") is None:
        monkeypatch.setattr(skfishing._onnx.network, "default_providers", lambda: list(CPU))


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
def tiny_cnn(tiny_cnn_file):
    """Register the tiny CNN as "tinycnn" for one test."""
    register_model(TINY_CNN, tiny_cnn_file, preprocessing=ImagePreprocessing(size=32))
    yield TINY_CNN
    unregister_model(TINY_CNN)


@contextlib.contextmanager
def models_restored():
    """The registered models after the block are those before it.

    Models registered in the block are removed, built-in or earlier models
    replaced in it come back; model files are hashed again (no checksum
    carries over).
    """
    before = {spec.name: spec for spec in list_models()}
    state.clear()
    try:
        yield
    finally:
        for spec in list_models():
            if before.get(spec.name) is not spec:
                unregister_model(spec.name)  # a replaced built-in model comes back
        now = {spec.name: spec for spec in list_models()}
        for name, spec in before.items():
            if now.get(name) is not spec:
                register_model(spec, overwrite=True)
        state.clear()


@pytest.fixture
def restore_models():
    """Undo the test's model registrations (see :func:`models_restored`)."""
    with models_restored():
        yield
