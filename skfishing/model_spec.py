"""What a registered model is: :class:`ModelSpec` and :class:`ResolvedModel`.

A :class:`ModelSpec` says where an ONNX classifier lives (a URL or a local
file), its SHA-256 checksum and the image preprocessing it was trained with;
:class:`ResolvedModel` is what :func:`~skfishing.registry.resolve_model`
hands to the transformer. The registry itself is in
:mod:`skfishing.registry`, downloads in :mod:`skfishing.download`.
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass
from numbers import Integral

import onnx

from .images import ImagePreprocessing

__all__ = ["ModelSpec", "ResolvedModel"]


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
