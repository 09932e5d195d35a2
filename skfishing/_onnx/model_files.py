"""ONNX model files: their content identity (SHA-256 with external data) and loading.

A model is identified by its content, not its name: :func:`model_sha256` is
the SHA-256 of the file, extended with each external data file when the
weights are kept outside it. :func:`load_onnx` reads a file with its
external data and says clearly what is wrong with one that cannot be read.
Hashes are computed once per process for each file identity, in
:mod:`skfishing.state`.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import onnx
from sklearn.utils._param_validation import validate_params

from .. import state

__all__ = ["load_onnx", "model_sha256"]


def _check_regular_file(path):
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"ONNX model file '{os.fsdecode(path)}' does not exist") from None
    if not stat.S_ISREG(mode):
        raise ValueError(f"'{os.fsdecode(path)}' is not a regular file, so not an ONNX model file")


def external_locations(model):
    """Locations (relative file names) of a model's external data, sorted."""
    locations = set()
    for tensor in onnx.external_data_helper._get_all_tensors(model):
        if onnx.external_data_helper.uses_external_data(tensor):
            info = onnx.external_data_helper.ExternalDataInfo(tensor)
            locations.add(info.location)
    return sorted(locations)


@validate_params({"path": [str, bytes, os.PathLike]}, prefer_skip_nested_validation=True)
def model_sha256(path):
    """Content identity of an ONNX file: SHA-256 of the file and of its external data.

    For a model without external data it is the SHA-256 of the file, the
    checksum the registry verifies; for one with external data, the SHA-256
    of the file's SHA-256 followed by each data file's location and SHA-256,
    so that a changed weights file changes it too. Hashes are computed once
    per process for each file identity (see :func:`skfishing.state.file_sha256`).

    Parameters
    ----------
    path : str or path-like
        The ONNX file.

    Returns
    -------
    sha256 : str
        64 hexadecimal digits.
    """
    _check_regular_file(path)
    digest = state.file_sha256(path)
    locations = state.memo(("onnx-external", digest), lambda: external_locations(parse_model_file(path)))
    if not locations:
        return digest
    combined = hashlib.sha256(digest.encode())
    folder = Path(path).parent
    for location in locations:
        data = folder / location
        if not data.is_file():
            raise FileNotFoundError(
                f"ONNX model '{os.fsdecode(path)}' keeps weights in '{location}', which is missing "
                f"(expected {os.fsdecode(data)})"
            )
        combined.update(b"\0" + os.fsencode(location) + b"\0" + state.file_sha256(data).encode())
    return combined.hexdigest()


def parse_model_file(path, load_external_data=False):
    if os.path.getsize(path) == 0:
        raise ValueError(f"'{os.fsdecode(path)}' is empty (0 bytes), not an ONNX model")
    try:
        return onnx.load(os.fspath(path), load_external_data=load_external_data)
    except Exception as exc:  # protobuf raises DecodeError and others
        raise ValueError(f"'{os.fsdecode(path)}' is not a readable ONNX model: {exc}") from exc


@validate_params({"path": [str, bytes, os.PathLike]}, prefer_skip_nested_validation=True)
def load_onnx(path):
    """Load an ONNX model file, with its external data, and clear errors.

    Parameters
    ----------
    path : str or path-like
        The ONNX file.

    Returns
    -------
    model : onnx.ModelProto
    """
    _check_regular_file(path)
    return parse_model_file(path, load_external_data=True)
