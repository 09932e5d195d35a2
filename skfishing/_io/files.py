"""Files written atomically: a temporary name in the same folder, then a rename.

A reader never sees a partly written file, and a failure or an interruption
(``KeyboardInterrupt`` and, in the main thread, ``SIGTERM`` included)
leaves nothing behind: the temporary file is removed and an existing file is
replaced only once the new one is complete. A writer that must not replace
a file (``overwrite=False``) claims the name with a hard link, which fails
if the name exists: of two writers racing for one name, exactly one wins.
Features files (:func:`skfishing.features.save_features`), skops files
(:func:`skfishing.persistence.dump`) and cache entries
(:class:`skfishing.cache.DiskStore`) are all written this way.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import tempfile
import threading
from pathlib import Path

from sklearn.utils._param_validation import validate_params

__all__ = ["atomic_path", "check_writable_folder"]

# errors of os.link where the file system has no hard links (FAT, some network file systems)
_NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.ENOSYS, errno.EACCES}


class _Terminated(BaseException):
    """SIGTERM arrived while a temporary file existed."""


@contextlib.contextmanager
def atomic_path(path, *, check=None, private=False, overwrite=True, hint="pass overwrite=True"):
    """A temporary file beside ``path``, moved to ``path`` when the block succeeds.

    Parameters
    ----------
    path : str or path-like
        The file to write.
    check : callable, default=None
        Called just before the move (for example to refuse a file that
        appeared meanwhile); an exception it raises aborts the write.
    private : bool, default=False
        Keep the temporary file's owner-only permissions; otherwise the file
        gets those of a newly created file (the umask).
    overwrite : bool, default=True
        Whether an existing ``path`` is replaced. If False, the name is
        claimed atomically (a hard link, else an exclusive creation): a file
        that exists at that moment, even one created a moment before by
        another process, is never replaced.
    hint : str, default="pass overwrite=True"
        What the :class:`FileExistsError` tells the user to do to replace
        the file.

    Yields
    ------
    temporary : str
        The path to write to.

    Raises
    ------
    FileExistsError
        If ``overwrite`` is False and ``path`` exists when the file is moved
        there; the temporary file is removed and ``path`` left as it was.
    """
    path = Path(path)
    with _removed_on_sigterm():
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
            if overwrite:
                os.replace(temporary, path)
            else:
                _claim(temporary, path, hint)
        finally:
            Path(temporary).unlink(missing_ok=True)


def _claim(temporary, path, hint):
    """Give ``temporary``'s content the name ``path``, which must not exist."""
    try:
        os.link(temporary, path)  # atomic, and fails with EEXIST if path exists
        return
    except FileExistsError:
        raise FileExistsError(errno.EEXIST, f"{os.fsdecode(path)!r} exists; {hint} to replace it") from None
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
    # No hard links here: claim the name with an empty file, then move the content over it.
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise FileExistsError(errno.EEXIST, f"{os.fsdecode(path)!r} exists; {hint} to replace it") from None
    os.close(descriptor)
    try:
        os.replace(temporary, path)
    except BaseException:
        Path(path).unlink(missing_ok=True)  # our empty claim
        raise


@contextlib.contextmanager
def _removed_on_sigterm():
    """While the block runs, SIGTERM removes the temporary file, then ends the process.

    Only where the signal would end the process anyway (the default action)
    and in the main thread (the only one that can set a handler): the signal
    interrupts the block with an exception, the ``finally`` clauses remove
    the temporary file, and the process is then ended by the same signal.
    A handler set by the program, or an ignored signal, is left alone.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    try:
        previous = signal.getsignal(signal.SIGTERM)
    except (AttributeError, ValueError):
        previous = None
    if previous is not signal.SIG_DFL:
        yield
        return

    def terminate(signum, frame):
        raise _Terminated

    signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    except _Terminated:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)  # end as the signal would have
        raise  # not reached unless the signal is blocked
    finally:
        if signal.getsignal(signal.SIGTERM) is terminate:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


@validate_params({"folder": [str, os.PathLike], "what": [str]}, prefer_skip_nested_validation=True)
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
