"""Model files on disk: the cache folder, checksums, locked atomic downloads.

Downloads go through :mod:`pooch` into a cache folder (argument, else the
``SKFISHING_CACHE_DIR`` environment variable, else the user cache folder):
the file is written to a temporary name, checked, then moved into place, so
an interrupted or corrupt download never ends up in the cache. A file lock
makes concurrent processes download a file once.

Nothing here is module-level state: the one memo of file checksums of the
process, a :class:`FileHashes`, lives in :mod:`skfishing.state`
(:func:`skfishing.state.file_hashes`).
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import urllib.parse

import pooch
from sklearn.utils._param_validation import validate_params

from .model_spec import ModelSpec
from .state import FileHashes

__all__ = ["CACHE_DIR_ENV", "FileHashes", "check_local_file", "get_cache_dir", "retrieve"]

#: Environment variable naming the model cache folder.
CACHE_DIR_ENV = "SKFISHING_CACHE_DIR"

_DOWNLOAD_CHUNK = 1 << 20


@validate_params(
    {"cache_dir": [str, os.PathLike, None]},
    prefer_skip_nested_validation=True,
)
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


@validate_params(
    {"spec": [ModelSpec], "path": [os.PathLike], "hashes": [FileHashes]},
    prefer_skip_nested_validation=True,
)
def check_local_file(spec, path, hashes):
    """Check that the local file of ``spec`` exists and matches its checksum.

    Parameters
    ----------
    spec : ModelSpec
        A model registered with a path.
    path : os.PathLike
        Its file.
    hashes : FileHashes
        The checksum memo.

    Returns
    -------
    path : pathlib.Path
        ``path``, verified.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Model {spec.name!r}: no such file {str(path)!r}.")
    if spec.sha256 is not None:
        digest = hashes.sha256(path)
        if digest != spec.sha256:
            raise ValueError(f"Model {spec.name!r}: {path} has sha256 {digest}, expected {spec.sha256}.")
    return path


@validate_params(
    {"spec": [ModelSpec], "target": [os.PathLike], "hashes": [FileHashes], "progress": ["boolean"]},
    prefer_skip_nested_validation=True,
)
def retrieve(spec, target, hashes, *, progress=False):
    """Return ``target``, downloading it from ``spec.url`` unless valid there.

    Parameters
    ----------
    spec : ModelSpec
        A model registered with a URL and a checksum.
    target : os.PathLike
        Where the file goes in the cache folder.
    hashes : FileHashes
        The checksum memo.
    progress : bool, default=False
        Whether to show a download progress bar.

    Returns
    -------
    target : pathlib.Path
        The verified file.
    """
    target = pathlib.Path(target)
    if spec.url is None or spec.sha256 is None:
        raise ValueError(f"Model {spec.name!r} has no URL and checksum to download it from.")
    if _is_valid(target, spec, hashes):
        return target
    with _file_lock(target.with_name(target.name + ".lock")):
        if not _is_valid(target, spec, hashes):  # else downloaded meanwhile by another process
            _download(spec, target, progress)
            hashes.remember(target, spec.sha256)
    return target


def _is_valid(path, spec, hashes):
    """Whether ``path`` exists with the size and checksum of ``spec``."""
    if not path.is_file():
        return False
    if spec.size_bytes is not None and path.stat().st_size != spec.size_bytes:
        return False
    return spec.sha256 is None or hashes.sha256(path) == spec.sha256


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


def _download(spec, target, progress):
    import requests  # pooch's dependency, imported lazily as pooch does

    if urllib.parse.urlsplit(spec.url).scheme in ("http", "https"):
        downloader = pooch.HTTPDownloader(progressbar=progress, chunk_size=_DOWNLOAD_CHUNK)
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
