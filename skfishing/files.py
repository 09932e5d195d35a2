"""Files written atomically: a temporary name in the same folder, then a rename.

A reader never sees a partly written file, and a failure or an interruption
(``KeyboardInterrupt`` included) leaves nothing behind: the temporary file is
removed and an existing file is replaced only once the new one is complete.
Features files (:func:`skfishing.features.save_features`), skops files
(:func:`skfishing.persistence.dump`) and cache entries
(:class:`skfishing.cache.DiskStore`) are all written this way.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["atomic_path", "check_writable_folder"]


@contextlib.contextmanager
def atomic_path(path, *, check=None, private=False):
    """A temporary file beside ``path``, renamed to ``path`` when the block succeeds.

    Parameters
    ----------
    path : str or path-like
        The file to write.
    check : callable, default=None
        Called just before the rename (for example to refuse a file that
        appeared meanwhile); an exception it raises aborts the write.
    private : bool, default=False
        Keep the temporary file's owner-only permissions; otherwise the file
        gets those of a newly created file (the umask).

    Yields
    ------
    temporary : str
        The path to write to.
    """
    path = Path(path)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(descriptor)
    try:
        yield temporary
        if not private:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(temporary, 0o666 & ~umask)  # mkstemp creates it private
        if check is not None:
            check()
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def check_writable_folder(folder, what):
    """Check that files can be created in ``folder`` (it must exist).

    Creates and removes an empty temporary file: permissions alone do not
    tell (read-only mounts, root, network file systems).

    Parameters
    ----------
    folder : str or path-like
        The folder.
    what : str
        How to name the folder in the error, e.g. ``"the output folder"``.

    Raises
    ------
    PermissionError
        If no file can be created there, naming the folder.
    """
    try:
        descriptor, probe = tempfile.mkstemp(prefix=".write-test.", suffix=".part", dir=folder)
    except OSError as exc:
        raise PermissionError(
            f"cannot write in {what} {os.fsdecode(folder)!r}: {exc.strerror or exc}"
        ) from None
    os.close(descriptor)
    os.unlink(probe)
