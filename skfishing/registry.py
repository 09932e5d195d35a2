"""Registry of pretrained networks: names, files and image preprocessing.

A :class:`ModelRegistry` holds the models one process knows about: the
built-in table (``models.json`` in the package data: the networks downloaded
from the ONNX Model Zoo mirror, and the metadata files of the networks shipped
with the package), read once when the registry is created, and the models the
user registers. Like pooch's ``Pooch``, it keeps everything on the object:
the process's registry is created on first use by
:func:`process_registry` (kept in :mod:`skfishing.state`), and the functions of this module
(:func:`register_model`, :func:`list_models`, :func:`fetch_model`,
:func:`resolve_model`, ...) act on it.

What a model is lives in :mod:`skfishing._io.model_spec`; how its file is
downloaded and checked, in :mod:`skfishing._io.download`.
"""

from __future__ import annotations

import json
import os
import pathlib
import threading
import urllib.parse
from numbers import Integral

import onnx
from sklearn.utils._param_validation import Interval, validate_params

from . import state
from ._extraction.images import ImagePreprocessing
from ._io.download import CACHE_DIR_ENV, check_local_file, get_cache_dir, retrieve
from ._io.model_spec import ModelSpec, ResolvedModel, file_preprocessing

__all__ = [
    "CACHE_DIR_ENV",
    "ModelRegistry",
    "ModelSpec",
    "ResolvedModel",
    "fetch_model",
    "get_cache_dir",
    "list_models",
    "model_path",
    "process_registry",
    "register_model",
    "resolve_model",
    "unregister_model",
]

_DATA_DIR = pathlib.Path(__file__).parent / "data"
_TABLE = "models.json"

# Parameter constraints, shared by the methods and the module's functions.
_PATH = [str, os.PathLike, None]
_NAME = {"name": [str]}
_CACHE = {"cache_dir": _PATH}
_REGISTER = {
    "spec_or_name": [ModelSpec, str],
    "path": _PATH,
    "url": [str, None],
    "sha256": [str, None],
    "size_bytes": [Interval(Integral, 1, None, closed="left"), None],
    "preprocessing": [ImagePreprocessing, None],
    "description": [str],
    "overwrite": ["boolean"],
}
_FETCH = {**_NAME, **_CACHE, "progress": ["boolean"]}
_RESOLVE = {
    "model": [str, os.PathLike, onnx.ModelProto],
    **_CACHE,
    "preprocessing": [ImagePreprocessing, None],
}


def _validated(constraints):
    return validate_params(constraints, prefer_skip_nested_validation=True)


class ModelRegistry:
    """The models known to a process: built-in, embedded and user-registered.

    The table of built-in models is read from ``models.json`` in
    ``data_dir`` when the registry is created, with the metadata files of
    the embedded models it lists (those missing from the folder are left
    out); nothing is read again afterwards. Models registered with
    :meth:`register` live on the object. Checksums of model files are
    remembered in :attr:`hashes`, the memo of the process.

    Most code uses the registry of the process, :func:`process_registry`,
    through the functions of :mod:`skfishing.registry`; a registry of its own
    is useful to test a data folder or to keep registrations apart.

    Parameters
    ----------
    data_dir : str or os.PathLike, default=None
        Folder holding ``models.json`` and the embedded models; default: the
        package data, ``skfishing/data``. A folder without ``models.json``
        gives a registry without built-in models.

    Attributes
    ----------
    data_dir : pathlib.Path
        The folder read.
    hashes : skfishing._io.download.FileHashes
        Checksums of the files checked so far: the one memo of the process,
        :func:`skfishing.state.file_hashes`.

    Examples
    --------
    >>> from skfishing.registry import ModelRegistry
    >>> registry = ModelRegistry()
    >>> [spec.name for spec in registry.list()]
    ['alexnet', 'vgg16', 'tinyalexnet']
    >>> registry.get("alexnet").preprocessing.channel_order
    'BGR'
    """

    @_validated({"data_dir": _PATH})
    def __init__(self, data_dir=None):
        self.data_dir = _DATA_DIR if data_dir is None else pathlib.Path(data_dir)
        self._builtin = {spec.name: spec for spec in _read_table(self.data_dir)}
        self._user = {}
        self._lock = threading.Lock()
        self.hashes = state.file_hashes()

    def __repr__(self):
        return f"ModelRegistry({str(self.data_dir)!r}, models={sorted(self._models())})"

    def _models(self):
        with self._lock:
            return {**self._builtin, **self._user}

    def __contains__(self, name):
        return name in self._models()

    def list(self):
        """List the registered models.

        Returns
        -------
        models : list of ModelSpec
            The built-in models, the embedded models and the user's models.
        """
        return list(self._models().values())

    @_validated(_NAME)
    def get(self, name):
        """The specification of a registered model.

        Parameters
        ----------
        name : str
            Registered name.

        Returns
        -------
        spec : ModelSpec
        """
        models = self._models()
        if name not in models:
            raise ValueError(f"Unknown model {name!r}. Registered models: {', '.join(sorted(models))}.")
        return models[name]

    @_validated(_REGISTER)
    def register(
        self,
        spec_or_name,
        path=None,
        *,
        url=None,
        sha256=None,
        size_bytes=None,
        preprocessing=None,
        description="",
        overwrite=False,
    ):
        """Register an ONNX classifier under a name; see :func:`register_model`."""
        spec = _make_spec(spec_or_name, path, url, sha256, size_bytes, preprocessing, description)
        if spec.path is not None and not os.path.isfile(spec.path):
            raise FileNotFoundError(f"Model {spec.name!r}: no such file {spec.path!r}.")
        with self._lock:
            if not overwrite and (spec.name in self._builtin or spec.name in self._user):
                raise ValueError(
                    f"A model named {spec.name!r} is already registered; pass overwrite=True to replace it."
                )
            self._user[spec.name] = spec
        return spec

    @_validated(_NAME)
    def unregister(self, name):
        """Remove a model registered by the user; see :func:`unregister_model`."""
        with self._lock:
            if name in self._user:
                return self._user.pop(name)
            if name in self._builtin:
                raise ValueError(
                    f"Model {name!r} is built in; only models registered by the user can be removed."
                )
        raise ValueError(f"No model named {name!r} was registered by the user.")

    @_validated({**_NAME, **_CACHE})
    def path(self, name, *, cache_dir=None):
        """Where the file of a model is; see :func:`model_path`."""
        spec = self.get(name)
        if spec.path is not None:
            return pathlib.Path(spec.path)
        return get_cache_dir(cache_dir) / spec.filename

    @_validated(_FETCH)
    def fetch(self, name, *, cache_dir=None, progress=False):
        """The verified local file of a model; see :func:`fetch_model`."""
        spec = self.get(name)
        target = self.path(name, cache_dir=cache_dir)
        if spec.path is not None:
            return check_local_file(spec, target, self.hashes)
        return retrieve(spec, target, self.hashes, progress=progress)

    @_validated(_RESOLVE)
    def resolve(self, model, *, cache_dir=None, preprocessing=None):
        """An ONNX source and its preprocessing; see :func:`resolve_model`."""
        resolved = self._resolve(model, cache_dir)
        if preprocessing is None:
            preprocessing = resolved.preprocessing
            if preprocessing is None and resolved.name is None:
                preprocessing = file_preprocessing(resolved.source)
        return ResolvedModel(resolved.source, preprocessing, resolved.name)

    def _resolve(self, model, cache_dir):
        """The source, registered preprocessing and name of ``model``."""
        if isinstance(model, onnx.ModelProto):
            return ResolvedModel(model, None, None)
        models = self._models()
        if isinstance(model, str) and model in models:
            spec = models[model]
            return ResolvedModel(self.fetch(model, cache_dir=cache_dir), spec.preprocessing, spec.name)
        path = pathlib.Path(model).expanduser()
        if not path.is_file():
            names = ", ".join(sorted(models))
            if isinstance(model, str) and not (os.sep in model or "/" in model or model.endswith(".onnx")):
                raise ValueError(f"Unknown model {model!r}: not a registered name ({names}) and not a file.")
            raise FileNotFoundError(f"No such model file {str(path)!r} (registered names: {names}).")
        for spec in models.values():
            if spec.path is not None and pathlib.Path(spec.path).resolve() == path.resolve():
                return ResolvedModel(self.fetch(spec.name), spec.preprocessing, spec.name)
        return ResolvedModel(path, None, None)


def _make_spec(spec_or_name, path, url, sha256, size_bytes, preprocessing, description):
    """The ModelSpec that the arguments of :func:`register_model` describe."""
    if isinstance(spec_or_name, ModelSpec):
        given = (path, url, sha256, size_bytes, preprocessing)
        if any(arg is not None for arg in given) or description:
            raise TypeError("Give either a ModelSpec or a name with its fields, not both.")
        return spec_or_name
    filename = None
    if path is not None:
        path = pathlib.Path(path).expanduser().resolve()
        filename, path = path.name, str(path)
    elif url is not None:
        filename = pathlib.PurePosixPath(urllib.parse.urlsplit(url).path).name
        if filename == "..":  # a URL ending in /..: no file name, as one of path /
            filename = None
    return ModelSpec(
        name=spec_or_name,
        filename=filename or spec_or_name + ".onnx",
        sha256=sha256,
        url=url,
        size_bytes=size_bytes,
        preprocessing=preprocessing,
        description=description,
        path=path,
    )


def _read_table(data_dir):
    """The built-in models described in ``data_dir``: downloads, then embedded."""
    table_path = data_dir / _TABLE
    if not table_path.is_file():
        return []
    try:
        table = json.loads(table_path.read_text())
        specs = [
            ModelSpec(**{**entry, "preprocessing": ImagePreprocessing(**entry["preprocessing"])})
            for entry in table["download"]
        ]
        embedded = [data_dir / name for name in table["embedded"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"Malformed model table {table_path}: {exc!r}") from exc
    return specs + [_read_embedded(path) for path in embedded if path.is_file()]


def _read_embedded(metadata_path):
    """The spec of a model shipped in the package data, from its metadata file."""
    try:
        meta = json.loads(metadata_path.read_text())
        preprocessing = ImagePreprocessing(
            size=meta["input_size"],
            channel_order=meta["channel_order"],
            scale=meta["scale"],
            mean=tuple(meta["mean"]),
            std=tuple(meta["std"]),
        )
        description = "small network embedded in skfishing"
        if "val_top1" in meta:
            description += f", Tiny ImageNet val top-1 {meta['val_top1']:.1%}"
        return ModelSpec(
            name=meta["name"],
            filename=meta["file"],
            sha256=meta["sha256"],
            size_bytes=meta.get("size_bytes"),
            preprocessing=preprocessing,
            description=description,
            path=str(metadata_path.parent / meta["file"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"Malformed model metadata {metadata_path}: {exc!r}") from exc


# -- the process's registry ------------------------------------------------------


def process_registry():
    """The model registry of this process (created on first use).

    Returns
    -------
    registry : ModelRegistry
        Built from the package data on the first call (the built-in table
        and the embedded model's metadata are read then, and only then);
        the same object afterwards. :func:`skfishing.state.clear` keeps it:
        registrations are settings, not caches.
    """
    return state.shared("models", ModelRegistry)


def list_models():
    """List the registered models.

    Returns
    -------
    models : list of ModelSpec
        The built-in models, the embedded model and the user's models.
    """
    return process_registry().list()


@_validated(_REGISTER)
def register_model(
    spec_or_name,
    path=None,
    *,
    url=None,
    sha256=None,
    size_bytes=None,
    preprocessing=None,
    description="",
    overwrite=False,
):
    """Register an ONNX classifier under a name.

    Parameters
    ----------
    spec_or_name : ModelSpec or str
        A complete specification, or the name of the model described by
        the other arguments.
    path : str or os.PathLike, default=None
        Local ONNX file; give either ``path`` or ``url``.
    url : str, default=None
        Where to download the file from into the cache folder, under the
        last part of the URL's path (``<name>.onnx`` where that is empty
        or ``..``).
    sha256 : str, default=None
        SHA-256 checksum of the file; required with ``url``, checked before
        use when given.
    size_bytes : int, default=None
        Size of the file; a download stops as soon as more bytes arrive.
    preprocessing : ImagePreprocessing, default=None
        Image preprocessing of the network; without it, the model only takes
        preprocessed arrays.
    description : str, default=""
        One line for humans.
    overwrite : bool, default=False
        Whether to replace a model registered under the same name.

    Returns
    -------
    spec : ModelSpec
        The registered specification.

    See Also
    --------
    unregister_model : Remove it again.

    Examples
    --------
    >>> from skfishing import ImagePreprocessing
    >>> from skfishing.registry import register_model
    >>> prep = ImagePreprocessing(224, resize=256)
    >>> register_model("mynet", "mynet.onnx", preprocessing=prep)  # doctest: +SKIP
    """
    return process_registry().register(
        spec_or_name,
        path,
        url=url,
        sha256=sha256,
        size_bytes=size_bytes,
        preprocessing=preprocessing,
        description=description,
        overwrite=overwrite,
    )


@_validated(_NAME)
def unregister_model(name):
    """Remove a model registered with :func:`register_model`.

    A built-in model replaced with ``overwrite=True`` comes back.

    Parameters
    ----------
    name : str
        Name given to :func:`register_model`.

    Returns
    -------
    spec : ModelSpec
        The specification removed.

    Raises
    ------
    ValueError
        If no model of that name was registered by the user (built-in
        models cannot be removed).
    """
    return process_registry().unregister(name)


@_validated({**_NAME, **_CACHE})
def model_path(name, *, cache_dir=None):
    """Where the file of a registered model is, or will be once downloaded.

    Parameters
    ----------
    name : str
        Registered name.
    cache_dir : str or os.PathLike, default=None
        Cache folder, see :func:`get_cache_dir`.

    Returns
    -------
    path : pathlib.Path
        The local file of the model (it may not exist yet).
    """
    return process_registry().path(name, cache_dir=cache_dir)


@_validated(_FETCH)
def fetch_model(name, *, cache_dir=None, progress=False):
    """Return the local file of a registered model, downloading it if needed.

    A cached file is used only if its checksum matches (files are hashed
    once per process while they stay the same file: same inode, size,
    modification and change times); otherwise it is downloaded again.
    Nothing is downloaded for a valid cached file, so this works offline
    once the file is there.

    Parameters
    ----------
    name : str
        Registered name, see :func:`list_models`.
    cache_dir : str or os.PathLike, default=None
        Cache folder, see :func:`get_cache_dir`.
    progress : bool, default=False
        Whether to show a download progress bar.

    Returns
    -------
    path : pathlib.Path
        The verified ONNX file.

    Raises
    ------
    ValueError
        If ``name`` is not registered, or a file does not match its checksum.
    FileNotFoundError
        If the local file of a model registered with a path is missing.
    ConnectionError
        If the download fails; the message says where to put the file by
        hand.
    """
    return process_registry().fetch(name, cache_dir=cache_dir, progress=progress)


@_validated(_RESOLVE)
def resolve_model(model, *, cache_dir=None, preprocessing=None):
    """Turn a model argument into an ONNX source and its preprocessing.

    The image preprocessing is the first of, in this order:

    1. ``preprocessing``, when given;
    2. the preprocessing registered with the model (a registered name, or
       the file of a registered model);
    3. for an unregistered file ``net.onnx``: the JSON file ``net.json``
       beside it;
    4. for an unregistered file or ModelProto: the model's metadata, the
       JSON object under the key ``"skfishing.preprocessing"`` of its
       ``metadata_props`` (see
       :func:`skfishing._io.model_spec.preprocessing_fields`);
    5. none: the model takes only preprocessed arrays.

    Parameters
    ----------
    model : str, os.PathLike or onnx.ModelProto
        A registered name (the file is fetched and verified), a path to an
        ONNX file, or an in-memory ONNX model.
    cache_dir : str or os.PathLike, default=None
        Cache folder, see :func:`get_cache_dir`.
    preprocessing : ImagePreprocessing, default=None
        Image preprocessing that takes precedence over all other sources.

    Returns
    -------
    resolved : ResolvedModel
        The source, preprocessing and registry name.

    Raises
    ------
    ValueError
        If ``model`` is a string that is neither a registered name nor a
        file (the message lists the registered names), or the JSON file
        beside it or its metadata is not a valid preprocessing (the message
        names the file).
    FileNotFoundError
        If ``model`` is a path, or looks like one, and the file is missing.
    TypeError
        If ``model`` has another type.
    """
    return process_registry().resolve(model, cache_dir=cache_dir, preprocessing=preprocessing)
