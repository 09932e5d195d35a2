"""Where an ONNX file's image preprocessing comes from, in Python and the CLI.

One function (:func:`skfishing._io.model_spec.preprocessing_fields`, through
:func:`skfishing.registry.resolve_model`) reads it for both, in this order:
the transformer's ``preprocessing`` parameter, the registered preprocessing,
``net.json`` beside ``net.onnx``, the model's ONNX metadata, none.
"""

import json

import numpy as np
import onnx
import pytest
from conftest import models_restored
from PIL import Image

from onnx_models import tiny_cnn_model
from skfishing import DeepFisherTransformer, ImagePreprocessing, cli
from skfishing._io.model_spec import METADATA_KEY, preprocessing_fields
from skfishing.features import load_features
from skfishing.registry import resolve_model

RGB = ImagePreprocessing(size=32)
# another preprocessing that changes the features of colour images
BGR = ImagePreprocessing(size=32, channel_order="BGR", resize=40)


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    result = []
    for i in range(4):
        path = folder / f"photo{i}.png"
        Image.fromarray(rng.integers(0, 256, size=(48, 40, 3), dtype=np.uint8)).save(path)
        result.append(str(path))
    return result


def _features(model, paths, preprocessing):
    """The reference: the model with ``preprocessing`` given explicitly."""
    return DeepFisherTransformer(model, preprocessing=preprocessing).fit_transform(paths)


def _with_metadata(preprocessing_json):
    model = tiny_cnn_model()
    onnx.helper.set_model_props(model, {METADATA_KEY: preprocessing_json})
    return model


def _assert_same(Z, reference):
    np.testing.assert_array_equal(Z["forward"], reference["forward"])
    np.testing.assert_array_equal(Z["backward"], reference["backward"])


def _assert_differ(Z, other):
    assert not np.allclose(Z["forward"], other["forward"])


@pytest.fixture
def net(tmp_path):
    path = tmp_path / "net.onnx"
    onnx.save(tiny_cnn_model(), path)
    return path


def test_the_two_references_differ(net, paths):
    """The precedence tests below can tell the two preprocessings apart."""
    _assert_differ(_features(net, paths, RGB), _features(net, paths, BGR))


def test_a_sidecar_json_beside_the_file_is_read(net, paths):
    net.with_suffix(".json").write_text(json.dumps({"size": 32, "channel_order": "BGR", "resize": 40}))
    _assert_same(DeepFisherTransformer(net).fit_transform(paths), _features(net, paths, BGR))
    assert resolve_model(net).preprocessing == BGR


def test_the_onnx_metadata_is_read_from_a_file_and_a_model_proto(tmp_path, paths):
    model = _with_metadata(json.dumps({"size": 32, "channel_order": "BGR", "resize": 40}))
    path = tmp_path / "meta.onnx"
    onnx.save(model, path)
    reference = _features(path, paths, BGR)
    _assert_same(DeepFisherTransformer(str(path)).fit_transform(paths), reference)
    _assert_same(DeepFisherTransformer(model).fit_transform(paths), reference)


def test_the_parameter_is_used_and_beats_every_other_source(net, paths, tiny_cnn):
    reference = _features(tiny_cnn_model(), paths, BGR)
    # no other source: the parameter makes a bare file take images
    _assert_same(DeepFisherTransformer(net, preprocessing=BGR).fit_transform(paths), reference)
    # a sidecar and metadata saying RGB lose against it
    model = _with_metadata(json.dumps({"size": 32}))
    onnx.save(model, net)
    net.with_suffix(".json").write_text(json.dumps({"size": 32}))
    _assert_same(DeepFisherTransformer(net, preprocessing=BGR).fit_transform(paths), reference)
    # and so does a registered model's preprocessing (tinycnn: RGB)
    _assert_same(DeepFisherTransformer(tiny_cnn, preprocessing=BGR).fit_transform(paths), reference)
    _assert_differ(DeepFisherTransformer(tiny_cnn).fit_transform(paths), reference)


def test_the_sidecar_beats_the_metadata(net, paths):
    onnx.save(_with_metadata(json.dumps({"size": 32})), net)
    net.with_suffix(".json").write_text(json.dumps({"size": 32, "channel_order": "BGR", "resize": 40}))
    assert resolve_model(net).preprocessing == BGR
    _assert_same(DeepFisherTransformer(net).fit_transform(paths), _features(net, paths, BGR))


def test_a_registered_file_keeps_its_preprocessing_over_a_sidecar(tiny_cnn, tiny_cnn_file):
    tiny_cnn_file.with_suffix(".json").write_text(json.dumps({"size": 32, "channel_order": "BGR"}))
    try:
        assert resolve_model(tiny_cnn_file).preprocessing == RGB
    finally:
        tiny_cnn_file.with_suffix(".json").unlink()


def test_without_any_source_a_file_takes_only_arrays(net, paths):
    assert preprocessing_fields(net) == ({}, None)
    with pytest.raises(TypeError, match="no image preprocessing"):
        DeepFisherTransformer(net).fit_transform(paths)
    X = np.zeros((2, 3, 32, 32), dtype=np.float32)
    assert DeepFisherTransformer(net).fit_transform(X).shape == (2,)


@pytest.mark.parametrize(
    "content, message",
    [
        ("size = 32", r"preprocessing file '[^']*net\.json' is not valid JSON"),
        ("[32]", r"preprocessing file '[^']*net\.json' must hold a JSON object"),
        ('{"szie": 32}', r"preprocessing file '[^']*net\.json': unknown key 'szie'; did you mean 'size'"),
        ('{"resize": 40}', r"read from '[^']*net\.json' has no 'size'"),
        ('{"size": 32, "channel_order": "BRG"}', r"read from '[^']*net\.json': .*channel_order"),
    ],
)
def test_a_bad_sidecar_is_an_error_naming_the_file(net, paths, content, message):
    net.with_suffix(".json").write_text(content)
    with pytest.raises(ValueError, match=message):
        DeepFisherTransformer(net).fit_transform(paths)


def test_bad_metadata_is_an_error_naming_the_model(tmp_path, paths):
    path = tmp_path / "meta.onnx"
    onnx.save(_with_metadata('{"size": 0}'), path)
    with pytest.raises(ValueError, match=rf"ONNX metadata \({METADATA_KEY}\) of '[^']*meta\.onnx': .*size"):
        DeepFisherTransformer(path).fit(paths)


def test_the_cli_reads_the_metadata_as_python_does(tmp_path, paths):
    """``skfishing extract --model net.onnx`` with the preprocessing only in
    the model's metadata gives the features of the Python API."""
    path = tmp_path / "meta.onnx"
    onnx.save(_with_metadata(json.dumps({"size": 32, "channel_order": "BGR", "resize": 40})), path)
    out = tmp_path / "feats.npz"
    with models_restored():
        assert cli.main(["extract", *paths, "--model", str(path), "-o", str(out), "--no-progress"]) == 0
    saved = load_features(out).features
    _assert_same(saved, _features(path, paths, BGR))


def test_a_pipeline_with_the_parameter_round_trips_through_skops(net, paths, tmp_path):
    """skops trusts ImagePreprocessing: the loaded pipeline computes the same features."""
    pytest.importorskip("skops")
    from skfishing import persistence

    fish = DeepFisherTransformer(net, preprocessing=BGR).fit(paths)
    persistence.dump(fish, tmp_path / "fish.skops")
    loaded = persistence.load(tmp_path / "fish.skops")
    assert loaded.preprocessing == BGR
    _assert_same(loaded.transform(paths), fish.transform(paths))
