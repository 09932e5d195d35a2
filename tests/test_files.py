"""Atomic writes (skfishing/_io/files.py): racing writers, refusals, SIGTERM."""

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from skfishing._io.files import atomic_path
from skfishing.features import load_features, save_features

TRIALS = 100


def _race(tmp_path, write, n_writers=2, trials=TRIALS):
    """Release ``n_writers`` forked processes together on one new file, ``trials`` times.

    Returns, per trial, the list of (writer, outcome) where outcome is "ok" or the
    FileExistsError message, and the index of the writer whose content is in the file.
    """
    context = multiprocessing.get_context("fork")
    results = []
    for trial in range(trials):
        target = tmp_path / f"race{trial}.npz"
        barrier = context.Barrier(n_writers)
        queue = context.SimpleQueue()

        def run(writer, target=target, barrier=barrier, queue=queue):
            barrier.wait()
            try:
                write(target, writer)
            except FileExistsError as exc:
                queue.put((writer, str(exc)))
            except BaseException as exc:  # reported, so that the test shows it
                queue.put((writer, f"unexpected {type(exc).__name__}: {exc}"))
            else:
                queue.put((writer, "ok"))

        processes = [context.Process(target=run, args=(w,)) for w in range(n_writers)]
        for process in processes:
            process.start()
        for process in processes:
            process.join(60)
        outcomes = sorted(queue.get() for _ in range(n_writers))
        results.append((target, outcomes))
    return results


def _features(writer):
    return np.full((50, 40), writer + 1, dtype=np.float32)


@pytest.mark.skipif(sys.platform == "win32", reason="fork")
def test_exactly_one_of_racing_save_features_writers_wins(tmp_path):
    """Two forked writers of save_features(overwrite=False) on one name, released
    together: one writes, the other gets FileExistsError, every time, and the file
    holds the winner's features."""
    results = _race(tmp_path, lambda target, w: save_features(target, _features(w), overwrite=False))
    for target, outcomes in results:
        won = [w for w, outcome in outcomes if outcome == "ok"]
        lost = [outcome for _, outcome in outcomes if outcome != "ok"]
        assert len(won) == 1, outcomes
        assert len(lost) == 1 and "exists" in lost[0] and "overwrite=True" in lost[0], outcomes
        assert str(target) in lost[0]
        np.testing.assert_array_equal(load_features(target).features, _features(won[0]))
    assert sorted(os.listdir(tmp_path)) == sorted(target.name for target, _ in results)  # no .part left


@pytest.mark.skipif(sys.platform == "win32", reason="fork")
def test_exactly_one_of_racing_dump_writers_wins(tmp_path):
    """persistence.dump(overwrite=False) is checked when the file is moved into
    place, not only at its start."""
    pytest.importorskip("skops.io")
    from sklearn.preprocessing import StandardScaler

    from skfishing import persistence

    def write(target, writer):
        persistence.dump(StandardScaler().fit(_features(writer)), target, overwrite=False)

    for target, outcomes in _race(tmp_path, write, trials=TRIALS // 2):
        won = [w for w, outcome in outcomes if outcome == "ok"]
        assert len(won) == 1, outcomes
        assert any("exists" in outcome for _, outcome in outcomes), outcomes
        assert persistence.load(target).mean_[0] == won[0] + 1
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".part")]


def test_overwrite_false_never_replaces_a_file_that_appears_meanwhile(tmp_path):
    """The file appears after the last check (here: while the block writes); its
    content stays and the temporary file is removed."""
    target = tmp_path / "out.bin"
    with pytest.raises(FileExistsError, match=r"out\.bin' exists; pass --overwrite to replace it"):
        with atomic_path(target, overwrite=False, hint="pass --overwrite") as temporary:
            with open(temporary, "wb") as f:
                f.write(b"new")
            target.write_bytes(b"the user's")
    assert target.read_bytes() == b"the user's"
    assert os.listdir(tmp_path) == ["out.bin"]
    with atomic_path(target, overwrite=True) as temporary:
        with open(temporary, "wb") as f:
            f.write(b"new")
    assert target.read_bytes() == b"new"


def test_overwrite_false_without_hard_links(tmp_path, monkeypatch):
    """Where the file system has no hard links, the name is claimed with an
    exclusive creation instead."""

    def no_link(*args, **kwargs):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_link)
    target = tmp_path / "out.bin"
    with atomic_path(target, overwrite=False) as temporary:
        with open(temporary, "wb") as f:
            f.write(b"first")
    assert target.read_bytes() == b"first"
    with pytest.raises(FileExistsError, match="exists"):
        with atomic_path(target, overwrite=False) as temporary:
            with open(temporary, "wb") as f:
                f.write(b"second")
    assert target.read_bytes() == b"first"
    assert os.listdir(tmp_path) == ["out.bin"]


@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM")
@pytest.mark.parametrize("existing", [False, True])
def test_sigterm_during_save_features_leaves_no_temporary_file(tmp_path, existing):
    """A process ended by SIGTERM while writing removes its temporary file and
    still ends by SIGTERM; an existing file stays intact."""
    target = tmp_path / "features.npz"
    if existing:
        save_features(target, np.ones((3, 4), dtype=np.float32))
    before = target.read_bytes() if existing else None
    script = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        import skfishing.features as features

        real = np.savez

        def slow(handle, **arrays):
            real(handle, **arrays)
            print("writing", flush=True)
            import time
            time.sleep(60)

        features.np.savez = slow
        features.save_features({str(target)!r}, np.zeros((1000, 100), dtype=np.float32), overwrite=True)
        """
    )
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "writing\n"
    assert [name for name in os.listdir(tmp_path) if name.endswith(".part")]  # being written
    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == -signal.SIGTERM
    assert os.listdir(tmp_path) == (["features.npz"] if existing else [])
    if existing:
        assert target.read_bytes() == before


@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM")
def test_sigterm_handler_of_the_program_is_kept(tmp_path):
    """A SIGTERM handler set by the program runs as before (and its exception
    still removes the temporary file); the default one is restored after a write."""
    target = tmp_path / "features.npz"
    script = textwrap.dedent(
        f"""
        import signal, os
        import numpy as np
        import skfishing.features as features

        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        features.save_features({str(target)!r}, np.ones((2, 3), dtype=np.float32))
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL

        def mine(signum, frame):
            raise KeyboardInterrupt("mine")

        signal.signal(signal.SIGTERM, mine)
        real = np.savez

        def interrupted(handle, **arrays):
            real(handle, **arrays)
            os.kill(os.getpid(), signal.SIGTERM)

        features.np.savez = interrupted
        try:
            features.save_features({str(target)!r}, np.zeros((2, 3), dtype=np.float32), overwrite=True)
        except KeyboardInterrupt as exc:
            print("caught", exc)
        assert signal.getsignal(signal.SIGTERM) is mine
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "caught mine\n"
    assert os.listdir(tmp_path) == ["features.npz"]
    np.testing.assert_array_equal(load_features(target).features, np.ones((2, 3), dtype=np.float32))
