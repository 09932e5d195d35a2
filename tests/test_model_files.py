"""Model files: content identity (SHA-256 with external data) and loading.

The identity is checked against hashlib on the bytes written; loading
against the model saved.
"""

import hashlib

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnx_models import mlp_model
from skfishing import state
from skfishing._onnx import model_files


def _save_external(model, path, location="weights.bin"):
    onnx.save(
        model,
        path,
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=location,
        size_threshold=0,
    )


def test_sha256_of_a_plain_file_is_the_file_checksum(tmp_path):
    path = tmp_path / "mlp.onnx"
    onnx.save(mlp_model()[0], path)
    assert model_files.model_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_sha256_with_external_data_covers_the_weights(tmp_path):
    path = tmp_path / "mlp.onnx"
    _save_external(mlp_model(seed=1)[0], path)
    file_digest = hashlib.sha256(path.read_bytes()).hexdigest()
    data_digest = hashlib.sha256((tmp_path / "weights.bin").read_bytes()).hexdigest()
    expected = hashlib.sha256(file_digest.encode() + b"\0weights.bin\0" + data_digest.encode()).hexdigest()
    assert model_files.model_sha256(path) == expected

    # other weights, same graph file: another identity
    other = tmp_path / "other"
    other.mkdir()
    _save_external(mlp_model(seed=2)[0], other / "mlp.onnx")
    assert (other / "mlp.onnx").read_bytes() == path.read_bytes()
    (tmp_path / "weights.bin").write_bytes((other / "weights.bin").read_bytes())
    state.clear()  # a fresh process: the file identity memo forgets the old hash
    assert model_files.model_sha256(path) != expected


def test_load_onnx_brings_the_external_weights(tmp_path):
    path = tmp_path / "mlp.onnx"
    _save_external(mlp_model(seed=3)[0], path)  # saving moves the weights out of the proto
    model = mlp_model(seed=3)[0]
    loaded = model_files.load_onnx(path)
    assert len(loaded.graph.initializer) == len(model.graph.initializer) > 0
    for saved, read in zip(model.graph.initializer, loaded.graph.initializer):
        np.testing.assert_array_equal(numpy_helper.to_array(read), numpy_helper.to_array(saved))


def test_unreadable_model_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="'.*missing.onnx' does not exist"):
        model_files.load_onnx(tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match="is not a regular file"):
        model_files.model_sha256(tmp_path)
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.onnx' is empty"):
        model_files.load_onnx(tmp_path / "empty.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\xff" * 32)
    with pytest.raises(ValueError, match="junk.onnx' is not a readable ONNX model"):
        model_files.load_onnx(tmp_path / "junk.onnx")
    path = tmp_path / "mlp.onnx"
    _save_external(mlp_model()[0], path)
    (tmp_path / "weights.bin").unlink()
    with pytest.raises(FileNotFoundError, match="keeps weights in 'weights.bin', which is missing"):
        model_files.model_sha256(path)


@pytest.mark.parametrize("name", ["model_sha256", "load_onnx"])
def test_old_names_in_network_warn_and_are_the_same(name):
    from skfishing._onnx import network

    with pytest.warns(
        FutureWarning, match=f"{name} moved from the sessions module to skfishing._onnx.model_files"
    ):
        moved = getattr(network, name)
    assert moved is getattr(model_files, name)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        network.nothing  # noqa: B018
