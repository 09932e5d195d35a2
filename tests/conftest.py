"""Fixtures shared by several test modules."""

import contextlib

import onnx
import pytest

from onnx_models import tiny_cnn_model
from skfishing import state
from skfishing.cache import clear_caches
from skfishing.images import ImagePreprocessing
from skfishing.network import FisherNetwork
from skfishing.registry import list_models, register_model, unregister_model

TINY_CNN = "tinycnn"


@pytest.fixture(autouse=True)
def empty_caches():
    """Each test starts with empty in-memory caches (states, backward rows, Gram matrices)."""
    clear_caches()


@pytest.fixture
def trunk_runs(monkeypatch):
    """Count the samples that go through the network (trunk and forward head)."""
    clear_caches()
    runs = []
    original = FisherNetwork.run_forward

    def counting(self, batch):
        runs.append(len(batch))
        return original(self, batch)

    monkeypatch.setattr(FisherNetwork, "run_forward", counting)
    yield runs
    clear_caches()


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
