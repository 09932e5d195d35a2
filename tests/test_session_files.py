"""Sessions on the CPU are read from a temporary file; without a writable temporary folder, from bytes."""

import tempfile

import numpy as np
import pytest
from numpy.testing import assert_allclose

from skfishing import DeepFisherTransformer, state

CPU = ["CPUExecutionProvider"]


@pytest.fixture
def fresh_networks():
    """Sessions built in the test, forgotten after it."""
    state.clear()
    yield
    state.clear()


def features(model, X, layer):
    params = {} if layer is None else {"layer": layer}  # None: the default, the last FC layer
    Z = DeepFisherTransformer(model, providers=CPU, batch_size=2, **params).fit_transform(X)
    if Z.dtype.names:  # a trunk layer's factors
        return [Z[name] for name in Z.dtype.names]
    return [Z]


@pytest.mark.parametrize("layer", [None, "conv2_w"])
def test_features_without_a_writable_temporary_folder(tiny_cnn_file, monkeypatch, fresh_networks, layer):
    X = np.random.default_rng(0).normal(size=(3, 3, 32, 32)).astype(np.float32)
    expected = features(tiny_cnn_file, X, layer)
    state.clear()
    monkeypatch.setattr(tempfile, "tempdir", str(tiny_cnn_file.parent / "missing" / "folder"))
    with pytest.raises(OSError):
        tempfile.mkdtemp()  # the setting this test means: no temporary folder can be made
    got = features(tiny_cnn_file, X, layer)
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert_allclose(a, b, rtol=1e-6, atol=1e-7)
