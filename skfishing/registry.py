"""Registry of pretrained networks, with checksummed downloads.

Each :class:`ModelSpec` says where an ONNX classifier lives (a URL or a local
file), its SHA-256 checksum and the image preprocessing it was trained with.
Downloads go through :mod:`pooch` into a cache folder (argument, else the
``SKFISHING_CACHE_DIR`` environment variable, else the user cache folder):
the file is written to a temporary name, checked, then moved into place, so
an interrupted or corrupt download never ends up in the cache.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import urllib.parse
from dataclasses import dataclass
from numbers import Integral

import onnx
import pooch

from .images import ImagePreprocessing

__all__ = [
    "ModelSpec",
    "ResolvedModel",
    "fetch_model",
    "get_cache_dir",
    "list_models",
    "model_path",
    "register_model",
    "resolve_model",
]

CACHE_DIR_ENV = "SKFISHING_CACHE_DIR"

_DATA_DIR = pathlib.Path(__file__).parent / "data"
_EMBEDDED_METADATA = "tinyalexnet.json"
_ZOO_URL = (
    "https://huggingface.co/onnxmodelzoo/legacy_models/resolve/main/"
    "validated/vision/classification/"
)
_DOWNLOAD_CHUNK = 1 << 20


@dataclass(frozen=True)
class ModelSpec:
    """Where a pretrained ONNX classifier lives and how to feed it images.

    Parameters
    ----------
    name : str
        Name under which the model is registered.
    filename : str
        File name of the model in the cache folder (a bare name, no folder).
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
            raise ValueError(
                f"A model name must be a non-empty string, got {self.name!r}."
            )
        if (
            not isinstance(self.filename, str)
            or not self.filename
            or pathlib.PurePath(self.filename).name != self.filename
            or "\\" in self.filename
        ):
            raise ValueError(
                f"Model {self.name!r}: filename must be a bare file name, "
                f"got {self.filename!r}."
            )
        if self.sha256 is not None:
            digest = str(self.sha256).lower()
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise ValueError(
                    f"Model {self.name!r}: sha256 must be 64 hexadecimal digits, "
                    f"got {self.sha256!r}."
                )
            object.__setattr__(self, "sha256", digest)
        if (self.url is None) == (self.path is None):
            raise ValueError(
                f"Model {self.name!r}: give exactly one of url (downloaded) and "
                "path (local file)."
            )
        if self.url is not None and self.sha256 is None:
            raise ValueError(
                f"Model {self.name!r}: a downloaded model needs its sha256 so that "
                "the download can be verified."
            )
        if self.size_bytes is not None and (
            not isinstance(self.size_bytes, Integral) or self.size_bytes < 1
        ):
            raise ValueError(
                f"Model {self.name!r}: size_bytes must be a positive integer, "
                f"got {self.size_bytes!r}."
            )
        if self.preprocessing is not None and not isinstance(
            self.preprocessing, ImagePreprocessing
        ):
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


_BUILTIN_MODELS = (
    ModelSpec(
        name="alexnet",
        filename="bvlcalexnet-12.onnx",
        sha256="6b0da9510f27f234ee96a85dc3809dd210150fdefad87f6850f9788513216945",
        url=_ZOO_URL + "alexnet/model/bvlcalexnet-12.onnx",
        size_bytes=243_863_787,
        preprocessing=ImagePreprocessing(
            size=224,
            resize=256,
            channel_order="BGR",
            scale=1.0,
            mean=(122.7717, 115.9465, 102.9801),
        ),
        description="BVLC AlexNet (Caffe), ONNX Model Zoo, the network of the paper",
    ),
    ModelSpec(
        name="vgg16",
        filename="vgg16-12.onnx",
        sha256="722c42f53ca03a5480296bf8f9c85a151de3eed9ec982d7d2302ff6e2900c67b",
        url=_ZOO_URL + "vgg/model/vgg16-12.onnx",
        size_bytes=553_437_752,
        preprocessing=ImagePreprocessing(
            size=224,
            resize=256,
            mean=(0.485, 0.456, 0.406),
            std=(0.229, 0.224, 0.225),
        ),
        description="VGG16 (MXNet Gluon), ONNX Model Zoo",
    ),
)

# Models registered by the user in this process, by name.
_USER_MODELS = {}
# SHA-256 of files already hashed, keyed by (path, size, mtime_ns).
_HASHES = {}


def _embedded_models():
    """The model shipped in the package data, if its metadata is there."""
    metadata_path = _DATA_DIR / _EMBEDDED_METADATA
    if not metadata_path.is_file():
        return ()
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
        return (
            ModelSpec(
                name=meta["name"],
                filename=meta["file"],
                sha256=meta["sha256"],
                size_bytes=meta.get("size_bytes"),
                preprocessing=preprocessing,
                description=description,
                path=str(_DATA_DIR / meta["file"]),
            ),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"Malformed model metadata {metadata_path}: {exc!r}") from exc


def _models():
    models = {spec.name: spec for spec in _BUILTIN_MODELS + _embedded_models()}
    models.update(_USER_MODELS)
    return models


def list_models():
    """List the registered models.

    Returns
    -------
    models : list of ModelSpec
        The built-in models, the embedded model and the user's models.
    """
    return list(_models().values())


def _get_spec(name):
    models = _models()
    if name not in models:
        raise ValueError(
            f"Unknown model {name!r}. Registered models: {', '.join(sorted(models))}."
        )
    return models[name]


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
        Where to download the file from into the cache folder.
    sha256 : str, default=None
        SHA-256 checksum of the file; required with ``url``, checked before
        use when given.
    size_bytes : int, default=None
        Size of the file.
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

    Examples
    --------
    >>> from skfishing.images import ImagePreprocessing
    >>> from skfishing.registry import register_model
    >>> prep = ImagePreprocessing(224, resize=256)
    >>> register_model("mynet", "mynet.onnx", preprocessing=prep)  # doctest: +SKIP
    """
    if isinstance(spec_or_name, ModelSpec):
        given = (path, url, sha256, size_bytes, preprocessing)
        if any(arg is not None for arg in given) or description:
            raise TypeError(
                "Give either a ModelSpec or a name with its fields, not both."
            )
        spec = spec_or_name
    elif isinstance(spec_or_name, str):
        filename = None
        if path is not None:
            path = pathlib.Path(path).expanduser().resolve()
            filename, path = path.name, str(path)
        elif url is not None:
            filename = pathlib.PurePosixPath(urllib.parse.urlsplit(url).path).name
        spec = ModelSpec(
            name=spec_or_name,
            filename=filename or spec_or_name + ".onnx",
            sha256=sha256,
            url=url,
            size_bytes=size_bytes,
            preprocessing=preprocessing,
            description=description,
            path=path,
        )
    else:
        raise TypeError(
            "spec_or_name must be a ModelSpec or a str, "
            f"got {type(spec_or_name).__name__}."
        )
    if spec.path is not None and not os.path.isfile(spec.path):
        raise FileNotFoundError(f"Model {spec.name!r}: no such file {spec.path!r}.")
    if spec.name in _models() and not overwrite:
        raise ValueError(
            f"A model named {spec.name!r} is already registered; pass "
            "overwrite=True to replace it."
        )
    _USER_MODELS[spec.name] = spec
    return spec


def get_cache_dir(cache_dir=None):
    """Folder where downloaded models are kept.

    Parameters
    ----------
    cache_dir : str or os.PathLike, default=None
        Folder to use. Default: the ``SKFISHING_CACHE_DIR`` environment
        variable if set, else the user cache folder of the platform
        (``pooch.os_cache("skfishing")``, e.g. ``~/.cache/skfishing``).

    Returns
    -------
    cache_dir : pathlib.Path
        The folder (not created).
    """
    if cache_dir is None:
        cache_dir = os.environ.get(CACHE_DIR_ENV) or pooch.os_cache("skfishing")
    return pathlib.Path(cache_dir).expanduser()


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
    spec = _get_spec(name)
    if spec.path is not None:
        return pathlib.Path(spec.path)
    return get_cache_dir(cache_dir) / spec.filename


def _sha256(path):
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = pooch.file_hash(str(path), alg="sha256")
    return _HASHES[key]


def _is_valid(path, spec):
    """Whether ``path`` exists with the size and checksum of ``spec``."""
    if not path.is_file():
        return False
    if spec.size_bytes is not None and path.stat().st_size != spec.size_bytes:
        return False
    return spec.sha256 is None or _sha256(path) == spec.sha256


def _make_cache_folder(folder):
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise type(exc)(
            f"Cannot create the model cache folder {folder}: {exc.strerror or exc}. Set the "
            "cache_dir argument or the SKFISHING_CACHE_DIR environment variable to a writable folder."
        ) from exc


@contextlib.contextmanager
def _file_lock(path):
    """Hold an exclusive lock on ``path``, to download a file only once.

    A no-op where ``fcntl`` is missing (Windows): concurrent downloads then
    both happen, and each still replaces the cached file atomically.
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    _make_cache_folder(path.parent)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def fetch_model(name, *, cache_dir=None, progress=False):
    """Return the local file of a registered model, downloading it if needed.

    A cached file is used only if its checksum matches (files are hashed
    once per process while their size and modification time are
    unchanged); otherwise it is downloaded again. Nothing is downloaded for
    a valid cached file, so this works offline once the file is there.

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
    spec = _get_spec(name)
    target = model_path(name, cache_dir=cache_dir)
    if spec.path is not None:
        if not target.is_file():
            raise FileNotFoundError(f"Model {name!r}: no such file {str(target)!r}.")
        if spec.sha256 is not None and _sha256(target) != spec.sha256:
            raise ValueError(
                f"Model {name!r}: {target} has sha256 {_sha256(target)}, "
                f"expected {spec.sha256}."
            )
        return target
    if _is_valid(target, spec):
        return target
    with _file_lock(target.with_name(target.name + ".lock")):
        if _is_valid(target, spec):  # downloaded meanwhile by another process
            return target
        _download(spec, target, progress)
    return target


def _download(spec, target, progress):
    import requests  # pooch's dependency, imported lazily as pooch does

    if urllib.parse.urlsplit(spec.url).scheme in ("http", "https"):
        downloader = pooch.HTTPDownloader(
            progressbar=progress, chunk_size=_DOWNLOAD_CHUNK
        )
    else:
        downloader = None
    try:
        pooch.retrieve(
            spec.url,
            known_hash=f"sha256:{spec.sha256}",
            fname=target.name,
            path=target.parent,
            downloader=downloader,
            progressbar=progress,
        )
    except (requests.exceptions.RequestException, ValueError) as exc:
        size = "" if spec.size_bytes is None else f", {spec.size_bytes:,} bytes"
        message = (
            f"Could not download model {spec.name!r} from {spec.url}: {exc}\n"
            f"To install it by hand, download that URL and save it as\n"
            f"  {target}\n"
            f"(expected sha256 {spec.sha256}{size}); or point the "
            f"{CACHE_DIR_ENV} environment variable or the cache_dir argument "
            f"to a folder that holds {spec.filename}."
        )
        error = ValueError if isinstance(exc, ValueError) else ConnectionError
        raise error(message) from exc
    stat = target.stat()
    _HASHES[(str(target.resolve()), stat.st_size, stat.st_mtime_ns)] = spec.sha256


def resolve_model(model, *, cache_dir=None):
    """Turn a model argument into an ONNX source and its preprocessing.

    Parameters
    ----------
    model : str, os.PathLike or onnx.ModelProto
        A registered name (the file is fetched and verified), a path to an
        ONNX file (its registered preprocessing is used if the file is
        registered, else none), or an in-memory ONNX model.
    cache_dir : str or os.PathLike, default=None
        Cache folder, see :func:`get_cache_dir`.

    Returns
    -------
    resolved : ResolvedModel
        The source, preprocessing and registry name.

    Raises
    ------
    ValueError
        If ``model`` is a string that is neither a registered name nor a
        file (the message lists the registered names).
    FileNotFoundError
        If ``model`` is a path, or looks like one, and the file is missing.
    TypeError
        If ``model`` has another type.
    """
    if isinstance(model, onnx.ModelProto):
        return ResolvedModel(model, None, None)
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(
            "model must be a registered name, a path to an ONNX file or an "
            f"onnx.ModelProto, got {type(model).__name__}."
        )
    models = _models()
    if isinstance(model, str) and model in models:
        spec = models[model]
        path = fetch_model(model, cache_dir=cache_dir)
        return ResolvedModel(path, spec.preprocessing, spec.name)
    path = pathlib.Path(model).expanduser()
    if not path.is_file():
        names = ", ".join(sorted(models))
        if isinstance(model, str) and not (
            os.sep in model or "/" in model or model.endswith(".onnx")
        ):
            raise ValueError(
                f"Unknown model {model!r}: not a registered name ({names}) "
                "and not a file."
            )
        raise FileNotFoundError(
            f"No such model file {str(path)!r} (registered names: {names})."
        )
    for spec in models.values():
        if (
            spec.path is not None
            and pathlib.Path(spec.path).resolve() == path.resolve()
        ):
            return ResolvedModel(fetch_model(spec.name), spec.preprocessing, spec.name)
    return ResolvedModel(path, None, None)
