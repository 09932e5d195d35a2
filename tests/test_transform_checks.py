"""DeepFisherTransformer validates its input once per call and passes the validated input on."""

import numpy as np
import pandas as pd
import pytest

import skfishing._extraction.batches
import skfishing._extraction.transformer
from onnx_models import mlp_model
from skfishing import DeepFisherTransformer


def _count(monkeypatch, module, name, counts):
    original = getattr(module, name)

    def counting(*args, **kwargs):
        counts[name] = counts.get(name, 0) + 1
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counting)


@pytest.mark.parametrize("call", ["fit", "transform", "fit_transform"])
def test_tabular_input_is_checked_once_per_call(monkeypatch, call):
    model, _, _ = mlp_model()
    X = pd.DataFrame(np.random.default_rng(0).normal(size=(7, 6)), columns=[f"f{i}" for i in range(6)])
    counts = {}
    _count(monkeypatch, skfishing._extraction.transformer, "validate_data", counts)
    transformer = DeepFisherTransformer(model, layer=7)
    if call == "transform":
        transformer.fit(X)
        counts.clear()
    result = getattr(transformer, call)(X)
    assert counts == {"validate_data": 1}
    if call != "fit":  # the same features as from the plain array
        expected = DeepFisherTransformer(model, layer=7).transform(X.to_numpy())
        np.testing.assert_array_equal(result["forward"], expected["forward"])
        np.testing.assert_array_equal(result["backward"], expected["backward"])


@pytest.mark.parametrize("call", ["fit", "transform", "fit_transform"])
def test_images_are_checked_once_per_call(tiny_cnn, monkeypatch, call):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {"image": [rng.integers(0, 256, size=(40, 36, 3), dtype=np.uint8) for _ in range(5)]}
    )
    counts = {}
    _count(monkeypatch, skfishing._extraction.batches, "check_image_array", counts)
    result = getattr(DeepFisherTransformer(tiny_cnn, layer=7), call)(frame)
    assert counts == {"check_image_array": len(frame)}
    if call != "fit":
        expected = DeepFisherTransformer(tiny_cnn, layer=7).transform(list(frame["image"]))
        np.testing.assert_array_equal(result["forward"], expected["forward"])


def test_a_generator_of_images_is_read_once(tiny_cnn):
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8) for _ in range(4)]
    Z = DeepFisherTransformer(tiny_cnn, layer="conv2_w").fit_transform(image for image in images)
    expected = DeepFisherTransformer(tiny_cnn, layer="conv2_w").transform(images)
    np.testing.assert_array_equal(Z["backward"], expected["backward"])
