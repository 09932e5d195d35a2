"""What a registered model is: :class:`ModelSpec` and :class:`ResolvedModel`.

A :class:`ModelSpec` says where an ONNX classifier lives (a URL or a local
file), its SHA-256 checksum and the image preprocessing it was trained with;
:class:`ResolvedModel` is what :func:`~skfishing.registry.resolve_model`
hands to the transformer. The registry itself is in
:mod:`skfishing.registry`, downloads in :mod:`skfishing._io.download`.

An ONNX file that is not registered finds its image preprocessing with
:func:`file_preprocessing`, for the Python API and the command line alike:
a JSON file beside it with the same stem (``net.onnx`` -> ``net.json``),
else the model's metadata (key :data:`METADATA_KEY` of ``metadata_props``,
holding the same JSON object), else none.
"""

from __future__ import annotations

import difflib
import json
import os
import pathlib
from dataclasses import dataclass
from numbers import Integral

import onnx
from sklearn.utils._param_validation import validate_params

from .. import state
from .._extraction.images import ImagePreprocessing

__all__ = [
    "METADATA_KEY",
    "PREPROCESSING_FIELDS",
    "ModelSpec",
    "ResolvedModel",
    "file_preprocessing",
    "preprocessing_fields",
]

#: Fields of :class:`~skfishing.ImagePreprocessing` read from a JSON object
#: (a sidecar file or the model's metadata).
PREPROCESSING_FIELDS = ("size", "resize", "channel_order", "scale", "mean", "std")

#: Key of an ONNX model's ``metadata_props`` whose value is the JSON object of
#: its image preprocessing, e.g. ``{"size": 224, "resize": 256}``.
METADATA_KEY = "skfishing.preprocessing"


@dataclass(frozen=True)
class ModelSpec:
    """Where a pretrained ONNX classifier lives and how to feed it images.

    Parameters
    ----------
    name : str
        Name under which the model is registered.
    filename : str
        File name of the model in the cache folder (a bare name: no folder,
        not ``.`` or ``..``, no control characters).
    sha256 : str or None
        SHA-256 checksum of the file (64 hexadecimal digits); required with
        ``url``, optional for local files (checked when given).
    url : str, default=None
        Where to download the file from; ``None`` for local files.
    size_bytes : int, default=None
        Size of the file, for information and a cheap first check.
    preprocessing : ImagePreprocessing, default=None
        Image preprocessing of the network; ``None`` for networks that only
        take preprocessed arrays.
    description : str, default=""
        One line for humans.
    path : str, default=None
        Absolute path of a local file (a user's file or package data);
        exactly one of ``url`` and ``path`` is given.
    """

    name: str
    filename: str
    sha256: str | None
    url: str | None = None
    size_bytes: int | None = None
    preprocessing: ImagePreprocessing | None = None
    description: str = ""
    path: str | None = None

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"A model name must be a non-empty string, got {self.name!r}.")
        if not self.name.isprintable():
            raise ValueError(
                f"A model name must not hold control characters (such as NUL), got {self.name!r}."
            )
        if (
            not isinstance(self.filename, str)
            or not self.filename
            or pathlib.PurePath(self.filename).name != self.filename
            or self.filename in (".", "..")
            or "\\" in self.filename
            or not self.filename.isprintable()
        ):
            raise ValueError(
                f"Model {self.name!r}: filename must be a bare file name, got {self.filename!r}."
            )
        if self.sha256 is not None:
            digest = str(self.sha256).lower()
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise ValueError(
                    f"Model {self.name!r}: sha256 must be 64 hexadecimal digits, got {self.sha256!r}."
                )
            object.__setattr__(self, "sha256", digest)
        if (self.url is None) == (self.path is None):
            raise ValueError(
                f"Model {self.name!r}: give exactly one of url (downloaded) and path (local file)."
            )
        if self.url is not None and self.sha256 is None:
            raise ValueError(
                f"Model {self.name!r}: a downloaded model needs its sha256 so that "
                "the download can be verified."
            )
        if self.size_bytes is not None and (not isinstance(self.size_bytes, Integral) or self.size_bytes < 1):
            raise ValueError(
                f"Model {self.name!r}: size_bytes must be a positive integer, got {self.size_bytes!r}."
            )
        if self.preprocessing is not None and not isinstance(self.preprocessing, ImagePreprocessing):
            raise TypeError(
                f"Model {self.name!r}: preprocessing must be an ImagePreprocessing "
                f"or None, got {type(self.preprocessing).__name__}."
            )


@dataclass(frozen=True)
class ResolvedModel:
    """A model ready to load: its ONNX source and image preprocessing.

    Attributes
    ----------
    source : pathlib.Path or onnx.ModelProto
        The ONNX file (verified against its checksum when known) or model.
    preprocessing : ImagePreprocessing or None
        Image preprocessing of the network, ``None`` when unknown.
    name : str or None
        Registry name, ``None`` for unregistered files and models.
    """

    source: pathlib.Path | onnx.ModelProto
    preprocessing: ImagePreprocessing | None
    name: str | None

    def __post_init__(self):
        if not isinstance(self.source, (pathlib.Path, onnx.ModelProto)):
            raise TypeError(
                f"ResolvedModel.source must be a pathlib.Path or an onnx.ModelProto, got {self.source!r}"
            )
        if not isinstance(self.preprocessing, (ImagePreprocessing, type(None))):
            raise TypeError(
                f"ResolvedModel.preprocessing must be an ImagePreprocessing or None, got {self.preprocessing!r}"
            )
        if not isinstance(self.name, (str, type(None))):
            raise TypeError(f"ResolvedModel.name must be a str or None, got {self.name!r}")


# -- image preprocessing of an unregistered model --------------------------------


def _shown(path):
    return "'" + os.fsencode(path).decode("utf-8", "backslashreplace") + "'"


def _fields(text, where):
    """The preprocessing fields of a JSON object, read from ``where`` (for messages)."""
    try:
        meta = json.loads(text)
    except ValueError as exc:  # JSONDecodeError
        raise ValueError(f"{where} is not valid JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{where} must hold a JSON object with keys {', '.join(PREPROCESSING_FIELDS)}")
    if "size" not in meta and "input_size" in meta:  # the layout of skfishing/data/*.json
        meta["size"] = meta["input_size"]
    for key in meta:
        close = difflib.get_close_matches(key, PREPROCESSING_FIELDS, n=1, cutoff=0.75)
        if key not in PREPROCESSING_FIELDS and close:
            raise ValueError(f"{where}: unknown key {key!r}; did you mean {close[0]!r}?")
    return {key: meta[key] for key in PREPROCESSING_FIELDS if key in meta}


def _metadata_text(model):
    """The value of :data:`METADATA_KEY` in a ModelProto, or None."""
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            return prop.value
    return None


def _file_metadata_text(path):
    """:func:`_metadata_text` of an ONNX file, read once per file version (None if unreadable)."""
    try:
        found = os.stat(path)
    except OSError:
        return None
    key = ("onnx-metadata", os.path.abspath(path), found.st_ino, found.st_size, found.st_mtime_ns)

    def read():
        try:
            return _metadata_text(onnx.load(os.fspath(path), load_external_data=False))
        except Exception:  # not an ONNX file: reported when the network is loaded
            return None

    return state.memo(key, read)


@validate_params(
    {"model": [str, os.PathLike, onnx.ModelProto], "sidecar": [str, os.PathLike, None]},
    prefer_skip_nested_validation=True,
)
def preprocessing_fields(model, sidecar=None):
    """The image preprocessing fields of an unregistered model, and their source.

    The first source found is used: the JSON file ``sidecar`` when given,
    else (for a file ``net.onnx``) the JSON file ``net.json`` beside it,
    else the model's metadata: the value of :data:`METADATA_KEY` in its
    ``metadata_props``, the same JSON object. The object's keys are the
    fields of :class:`~skfishing.ImagePreprocessing` (``size``, ``resize``,
    ``channel_order``, ``scale``, ``mean``, ``std``); other keys are
    ignored, unless they look like a misspelt field.

    Parameters
    ----------
    model : str, path-like or onnx.ModelProto
        The ONNX file, or an in-memory model (only its metadata is read).
    sidecar : str or path-like, default=None
        A JSON file to read instead of ``net.json`` and the metadata.

    Returns
    -------
    fields : dict
        The fields found, empty when there is no source.
    source : str or None
        Where they were read, for messages: a quoted file name or
        ``"the ONNX metadata of ..."``; None when there is no source.

    Raises
    ------
    ValueError
        If the source is not a JSON object or has a misspelt key (the message
        names the file).
    OSError
        If ``sidecar`` (or ``net.json``) cannot be read.
    """
    if sidecar is None and not isinstance(model, onnx.ModelProto):
        beside = pathlib.Path(model).with_suffix(".json")
        sidecar = beside if beside.is_file() else None
    if sidecar is not None:
        where = f"preprocessing file {_shown(sidecar)}"
        try:
            text = pathlib.Path(sidecar).read_text(encoding="utf-8")
        except OSError as exc:
            raise OSError(f"cannot read {where}: {exc.strerror or exc}") from None
        except ValueError as exc:  # UnicodeDecodeError
            raise ValueError(f"{where} is not valid JSON: {exc}") from None
        return _fields(text, where), _shown(sidecar)
    if isinstance(model, onnx.ModelProto):
        text, source = _metadata_text(model), f"the ONNX metadata ({METADATA_KEY}) of the model"
    else:
        text = _file_metadata_text(model)
        source = f"the ONNX metadata ({METADATA_KEY}) of {_shown(model)}"
    if text is None:
        return {}, None
    return _fields(text, source), source


def _preprocessing(fields, source):
    """The :class:`~skfishing.ImagePreprocessing` of fields read from ``source``.

    Parameters
    ----------
    fields : dict
        As returned by :func:`preprocessing_fields`.
    source : str or None
        Where they were read, named in errors.

    Returns
    -------
    preprocessing : ImagePreprocessing or None
        None when ``fields`` is empty.

    Raises
    ------
    ValueError
        If a field is missing (``size``) or invalid; the message names
        ``source``.
    """
    if not fields:
        return None
    if "size" not in fields:
        raise ValueError(f"image preprocessing read from {source} has no 'size' (the side of the input)")
    try:
        return ImagePreprocessing(**fields)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"image preprocessing read from {source}: {exc}") from None


@validate_params({"model": [str, os.PathLike, onnx.ModelProto]}, prefer_skip_nested_validation=True)
def file_preprocessing(model):
    """The image preprocessing of an unregistered ONNX file or model.

    The fields of :func:`preprocessing_fields` (``net.json`` beside the
    file, else the model's metadata), made into an
    :class:`~skfishing.ImagePreprocessing`.

    Parameters
    ----------
    model : str, path-like or onnx.ModelProto
        The ONNX file, or an in-memory model.

    Returns
    -------
    preprocessing : ImagePreprocessing or None
        None when neither source exists.

    Raises
    ------
    ValueError
        If a source is not a valid preprocessing (the message names it).
    """
    return _preprocessing(*preprocessing_fields(model))
