"""Model files on disk: the cache folder, checksums, locked atomic downloads.

Downloads go through :mod:`pooch` into a cache folder (argument, else the
``SKFISHING_CACHE_DIR`` environment variable, else the user cache folder):
the file is written to a temporary name, checked, then moved into place, so
an interrupted or corrupt download never ends up in the cache; a transfer
stops as soon as more bytes than the model's declared ``size_bytes`` arrive.
A file lock, removed when done, makes concurrent processes download a file
once.

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

from ..state import FileHashes
from .model_spec import ModelSpec

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
    if target.is_dir():
        raise IsADirectoryError(
            f"Model {spec.name!r}: {target} is a folder, where the model file belongs; "
            "move it away, or pass another cache_dir."
        )
    if _is_valid(target, spec, hashes):
        return target
    with file_lock(target.with_name(target.name + ".lock")):
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
def file_lock(path):
    """Hold an exclusive lock on ``path``, to download a file only once.

    The lock file is removed by its holder, while it still holds the lock, so
    that lock files do not pile up in the cache folder. A process that was
    waiting on the removed file finds, once it gets the lock, that ``path``
    is no longer that file, and locks the current one instead: at any time
    at most one process holds the lock of the file at ``path``.

    A no-op where ``fcntl`` is missing (Windows): concurrent downloads then
    both happen, and each still replaces the cached file atomically.
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    _make_cache_folder(path.parent)
    while True:
        handle = open(path, "a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
            current = os.stat(path)
        except FileNotFoundError:  # removed by the previous holder: lock a new one
            handle.close()
            continue
        except BaseException:
            handle.close()
            raise
        if os.path.samestat(os.fstat(handle.fileno()), current):
            break
        handle.close()  # replaced by a new lock file meanwhile: lock that one
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)  # still locked: no one else holds the file at path
        handle.close()  # releases the lock


def _download(spec, target, progress):
    import requests  # pooch's dependency, imported lazily as pooch does

    if urllib.parse.urlsplit(spec.url).scheme in ("http", "https"):
        downloader = pooch.HTTPDownloader(progressbar=progress, chunk_size=_DOWNLOAD_CHUNK)
        if spec.size_bytes is not None:
            downloader = _SizeLimited(downloader, spec.size_bytes)
    else:
        downloader = None  # other protocols: the size is checked with the checksum, after the transfer
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


class _SizeLimited:
    """A pooch downloader that stops as soon as more than ``size_bytes`` arrive."""

    def __init__(self, downloader, size_bytes):
        self.downloader = downloader
        self.size_bytes = size_bytes

    def __call__(self, url, output_file, pooch_, check_only=False):
        if check_only:
            return self.downloader(url, output_file, pooch_, check_only=True)
        with open(output_file, "w+b") as handle:
            return self.downloader(url, _LimitedWriter(handle, self.size_bytes), pooch_)


class _LimitedWriter:
    """A file that refuses to hold more than ``limit`` bytes (a ValueError, as for a bad checksum)."""

    def __init__(self, handle, limit):
        self.handle, self.limit, self.written = handle, limit, 0

    def write(self, data):
        self.written += len(data)
        if self.written > self.limit:
            raise ValueError(
                f"the server sent more than the {self.limit:,} bytes declared (size_bytes); "
                "the transfer was stopped there"
            )
        return self.handle.write(data)

    def flush(self):
        self.handle.flush()
