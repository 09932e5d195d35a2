"""Tests of input validation and batching (skfishing._extraction.batches)."""

import contextlib
import io
import os
import pathlib
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image, ImageOps, UnidentifiedImageError

from skfishing import ImagePreprocessing
from skfishing._extraction.batches import iter_batches
from skfishing._extraction.images import load_image, preprocess_image

SHAPE = (3, 8, 8)
PREP = ImagePreprocessing(8, resize=10)


def _rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _collect(*args, **kwargs):
    n_samples, batches = iter_batches(*args, **kwargs)
    return n_samples, list(batches)


def _save(img, path, **kwargs):
    img.save(path, **kwargs)
    return str(path)


# -- same picture, any input kind ----------------------------------------------


def test_path_pil_and_array_give_identical_batches(tmp_path):
    with contextlib.ExitStack() as stack:
        _check_identical_batches(tmp_path, stack)


def _check_identical_batches(tmp_path, stack):
    exif = Image.Exif()
    exif[0x0112] = 8
    paths = []
    for i, (h, w) in enumerate([(30, 41), (50, 20), (9, 9)]):
        paths.append(
            _save(
                Image.fromarray(_rgb(h, w, i)),
                tmp_path / f"{i}.jpg",
                exif=exif.tobytes(),
                quality=90,
            )
        )
    opened = [stack.enter_context(Image.open(p)) for p in paths]
    # the reference arrays are decoded without skfishing
    arrays = [np.asarray(ImageOps.exif_transpose(img).convert("RGB")) for img in opened]
    pil = [stack.enter_context(Image.open(p)) for p in paths]  # not loaded yet
    prep = ImagePreprocessing(8, resize=12, mean=(0.5, 0.4, 0.3), channel_order="BGR")
    kinds = {
        "str": paths,
        "Path": [pathlib.Path(p) for p in paths],
        "PIL": pil,
        "array": arrays,
        "mixed": [paths[0], opened[1], arrays[2]],
        "object ndarray": np.array(paths, dtype=object),
    }
    results = {}
    for kind, X in kinds.items():
        n, batches = _collect(X, SHAPE, prep, batch_size=2)
        assert n == 3 and [len(b) for b in batches] == [2, 1]
        results[kind] = np.concatenate(batches)
    for kind, result in results.items():
        np.testing.assert_array_equal(result, results["str"], err_msg=kind)
    single = np.stack([preprocess_image(p, prep) for p in paths])
    np.testing.assert_array_equal(results["str"], single)


def test_uint8_stack_of_images():
    stack = np.stack([_rgb(12, 10, seed) for seed in range(5)])
    n, batches = _collect(stack, SHAPE, PREP, batch_size=2)
    expected = np.stack([preprocess_image(image, PREP) for image in stack])
    assert n == 5 and batches[0].dtype == np.float32
    np.testing.assert_array_equal(np.concatenate(batches), expected)
    grey = stack[..., 0]
    out = np.concatenate(_collect(grey, SHAPE, PREP)[1])
    np.testing.assert_allclose(out[:, 0], out[:, 2])


def test_dtype_of_image_batches():
    n, batches = _collect([_rgb(8, 8)], SHAPE, PREP, dtype=np.float64)
    assert batches[0].dtype == np.float64


# -- errors naming the input and its position -------------------------------


def _good_paths(tmp_path, n):
    return [_save(Image.fromarray(_rgb(10, 10, i)), tmp_path / f"ok{i}.png") for i in range(n)]


def _truncated_jpeg(tmp_path):
    path = _save(Image.fromarray(_rgb(64, 64)), tmp_path / "cut.jpg", quality=95)
    data = pathlib.Path(path).read_bytes()
    pathlib.Path(path).write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize(
    "make_bad, error, match",
    [
        (lambda d: str(d / "missing.jpg"), FileNotFoundError, "No such file"),
        (
            lambda d: _save_bytes(d / "empty.jpg", b""),
            UnidentifiedImageError,
            "the file is empty",
        ),
        (
            lambda d: _save_bytes(d / "notes.jpg", b"not an image at all\n" * 10),
            UnidentifiedImageError,
            "cannot identify image file",
        ),
        (_truncated_jpeg, OSError, "truncated"),
        (lambda d: str(d), IsADirectoryError, "Is a directory"),
    ],
    ids=["missing", "empty", "not-an-image", "truncated", "folder"],
)
def test_bad_file_error_names_file_and_position(tmp_path, make_bad, error, match):
    bad = make_bad(tmp_path)
    X = _good_paths(tmp_path, 3) + [bad] + _good_paths(tmp_path, 1)
    n, batches = iter_batches(X, SHAPE, PREP, batch_size=2)
    first = next(batches)  # images before the bad one are fine
    assert first.shape == (2,) + SHAPE
    with pytest.raises(error, match=match) as info:
        list(batches)
    assert str(info.value).startswith(f"image 3 ({bad!r}): ")


def _save_bytes(path, data):
    path.write_bytes(data)
    return str(path)


def test_decompression_bomb(tmp_path, monkeypatch):
    path = _save(Image.new("RGB", (100, 100)), tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # error above twice that
    n, batches = iter_batches([path], SHAPE, PREP)
    with pytest.raises(ValueError, match="decompression bomb") as info:
        list(batches)
    assert f"image 0 ({path!r})" in str(info.value)
    assert "MAX_IMAGE_PIXELS" in str(info.value)


@pytest.mark.parametrize(
    "element, error, match",
    [
        (3, TypeError, "image 1 has type int"),
        (None, TypeError, "image 1 has type NoneType"),
        (np.zeros((8, 8, 3), np.float32), TypeError, "image 1: .*dtype uint8"),
        (np.zeros((8, 8, 2), np.uint8), ValueError, r"image 1: .*\(H, W, 3\)"),
        (np.zeros((0, 8, 3), np.uint8), ValueError, "image 1: Image array is empty"),
    ],
)
def test_bad_element_errors_before_iterating(element, error, match):
    with pytest.raises(error, match=match):
        iter_batches([_rgb(8, 8), element], SHAPE, PREP)


def test_load_image_rejects_other_types():
    with pytest.raises(TypeError, match="got list"):
        load_image([1, 2])


@pytest.mark.parametrize(
    "X, preprocessing, error, match",
    [
        ("a.jpg", PREP, TypeError, "wrap a single image in a list"),
        (Image.new("RGB", (2, 2)), PREP, TypeError, "wrap a single image"),
        (["a.jpg"], None, TypeError, "no image preprocessing"),
        ([], PREP, ValueError, "Found 0 samples"),
        (np.zeros((0, 3, 8, 8)), PREP, ValueError, "Found 0 samples"),
        (np.zeros((2, 8, 8, 2), np.uint8), PREP, ValueError, "taken as images"),
        (
            np.zeros((2, 8, 8, 3)),
            PREP,
            ValueError,
            r"network expects \(n_samples, 3, 8, 8\)",
        ),
        (np.zeros((2, 3, 8)), None, ValueError, "has shape"),
        (np.zeros((2, 3, 8, 8), dtype=complex), None, TypeError, "numeric array"),
    ],
)
def test_invalid_X(X, preprocessing, error, match):
    with pytest.raises(error, match=match):
        iter_batches(X, SHAPE, preprocessing)


def test_preprocessing_must_match_network_input():
    with pytest.raises(ValueError, match=r"produces samples of shape \(3, 8, 8\).*\(3, 9, 9\)"):
        iter_batches([_rgb(8, 8)], (3, 9, 9), PREP)
    n, _ = iter_batches([_rgb(8, 8)], (3, None, None), PREP)  # dynamic dims
    assert n == 1


@pytest.mark.parametrize("value", [0, 1.5, -2])
def test_invalid_batch_size(value):
    with pytest.raises(
        ValueError, match="'batch_size' parameter of iter_batches must be an int in the range"
    ):
        iter_batches(np.zeros((2, 3)), (3,), batch_size=value)


@pytest.mark.parametrize("value", [0, 1.5, "2"])
def test_invalid_n_jobs(value):
    with pytest.raises(ValueError, match="'n_jobs' parameter of iter_batches must be"):
        iter_batches([_rgb(8, 8)], SHAPE, PREP, n_jobs=value)


@pytest.mark.parametrize("value, threads", [(-1, 2), (-2, 1), (-5, 1), (1, 1), (3, 3)])
def test_negative_n_jobs_count_from_all_cpus_as_in_joblib(value, threads, monkeypatch, tmp_path):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    opened = []
    X = [_Slow(path, 0.01, opened) for path in _numbered_pngs(tmp_path, 12)]
    _collect(X, SHAPE, PREP, batch_size=12, n_jobs=value)
    assert len({thread for _, thread in opened}) == threads


# -- preprocessed arrays ------------------------------------------------------


def test_float_array_batches_are_views():
    X = np.random.default_rng(0).normal(size=(7, 3, 8, 8)).astype(np.float32)
    n, batches = _collect(X, SHAPE, PREP, batch_size=3)
    assert n == 7 and [len(b) for b in batches] == [3, 3, 1]
    assert all(np.shares_memory(b, X) for b in batches)
    np.testing.assert_array_equal(np.concatenate(batches), X)


def test_array_cast_to_dtype():
    X = np.arange(12, dtype=np.float64).reshape(4, 3)
    n, batches = _collect(X, (3,), None, batch_size=10)
    assert batches[0].dtype == np.float32
    np.testing.assert_array_equal(batches[0], X)
    # a plain nested list is fine for networks that do not take images, and
    # uint8 arrays are numbers, not images, for them
    assert _collect([[1, 2, 3]], (3,), None)[1][0].dtype == np.float32
    assert _collect(np.ones((2, 4, 4, 3), np.uint8), (4, 4, 3), None)[0] == 2


@pytest.mark.parametrize("value, what", [(np.nan, "NaN"), (np.inf, "infinity"), (1e300, "infinity")])
def test_non_finite_sample_is_named(value, what):
    X = np.zeros((2000, 3))
    X[1500, 1] = value  # in the second chunk of the check
    with pytest.raises(ValueError, match=f"X contains {what} in sample 1500"):
        iter_batches(X, (3,))


def test_finite_samples_whose_sum_overflows_are_accepted():
    X = np.full((3, 4), 3e38, np.float32)  # each row sums past float32's range
    X[1] = -3e38
    n, batches = _collect(X, (4,), None)
    np.testing.assert_array_equal(np.concatenate(batches), X)
    X[2, 3] = np.nan
    with pytest.raises(ValueError, match="X contains NaN in sample 2"):
        iter_batches(X, (4,))


# -- parallel decoding -----------------------------------------------------------


class _Slow(os.PathLike):
    """An image path that takes its time and records when the file is opened."""

    def __init__(self, path, delay=0.0, log=None):
        self.path, self.delay, self.log = path, delay, log

    def __fspath__(self):
        if self.log is not None:
            self.log.append((id(self), threading.current_thread().name))
        time.sleep(self.delay)
        return self.path


def _numbered_pngs(tmp_path, n):
    paths = []
    for i in range(n):
        path = tmp_path / f"{i}.png"
        Image.fromarray(np.full((8, 8, 3), i, dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def test_order_preserved_with_parallel_decoding(tmp_path):
    delays = np.random.default_rng(0).uniform(0, 0.005, 40)
    X = [
        _Slow(path, delay) for path, delay in zip(_numbered_pngs(tmp_path, 40), delays)
    ]  # out-of-order completion
    n, batches = _collect(X, SHAPE, ImagePreprocessing(8, scale=1.0), batch_size=6, n_jobs=4)
    out = np.concatenate(batches)
    np.testing.assert_array_equal(out[:, 0, 0, 0], np.arange(40))
    assert [len(batch) for batch in batches] == [6] * 6 + [4]


def test_decoding_runs_ahead_of_consumer_bounded(tmp_path):
    opened = []
    X = [_Slow(path, 0.001, opened) for path in _numbered_pngs(tmp_path, 5) * 20]

    def images_opened():
        return len({image for image, _ in opened})

    n, batches = iter_batches(X, SHAPE, PREP, batch_size=5, n_jobs=3)
    assert opened == []  # nothing decoded before iteration starts
    next(batches)
    # the consumer is busy: decoding continues meanwhile, up to two batches
    # ahead of the current one, and no further
    deadline = time.monotonic() + 10
    while images_opened() < 15 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    assert images_opened() == 15
    threads = {thread for _, thread in opened}
    assert len(threads) > 1 and all(t.startswith("skfishing") for t in threads)
    batches.close()  # abandoning the iterator stops the decoding threads
    assert not [t for t in threading.enumerate() if t.name.startswith("skfishing")]


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def _terminal(monkeypatch):
    """Make standard error say it is a terminal (in the test body: pytest's capture
    sets sys.stderr again after fixtures run)."""
    stream = _Terminal()
    monkeypatch.setattr(sys, "stderr", stream)
    return stream


def test_progress_bar_on_a_terminal(monkeypatch):
    terminal = _terminal(monkeypatch)
    _collect(np.zeros((5, 3)), (3,), None, batch_size=2, progress=True, desc="feats")
    assert "feats" in terminal.getvalue() and "5/5" in terminal.getvalue()
    terminal.truncate(0)
    _collect(np.zeros((5, 3)), (3,), None, batch_size=2)
    assert terminal.getvalue() == ""


def test_progress_bar_is_quiet_in_log_files(capsys):
    """No carriage-return noise when standard error is a file or a pipe."""
    _collect(np.zeros((5, 3)), (3,), None, batch_size=2, progress=True, desc="feats")
    assert capsys.readouterr().err == ""


def test_skip_arrays():
    X = np.arange(14, dtype=np.float32).reshape(7, 2)
    skip = np.array([1, 0, 1, 1, 0, 0, 0], dtype=bool)
    n, batches = _collect(X, (2,), None, batch_size=2, skip=skip)
    assert n == 7 and [len(b) for b in batches] == [2, 2]
    np.testing.assert_array_equal(np.concatenate(batches), X[~skip])
    n, batches = _collect(X, (2,), None, batch_size=3, skip=np.zeros(7, bool))
    assert all(np.shares_memory(b, X) for b in batches)
    with pytest.raises(ValueError, match=r"skip must be a boolean array of shape \(7,\)"):
        iter_batches(X, (2,), skip=[0, 1])


def test_skip_images_are_not_decoded(tmp_path, monkeypatch):
    terminal = _terminal(monkeypatch)
    paths = _good_paths(tmp_path, 4)
    X = [paths[0], str(tmp_path / "missing.png"), paths[2], paths[3], str(tmp_path)]
    skip = np.array([False, True, False, False, True])
    n, batches = _collect(X, SHAPE, PREP, batch_size=2, skip=skip, progress=True)
    assert n == 5 and [len(b) for b in batches] == [2, 1]
    expected = np.stack([preprocess_image(paths[i], PREP) for i in (0, 2, 3)])
    np.testing.assert_array_equal(np.concatenate(batches), expected)
    assert "3/3" in terminal.getvalue()
    # positions in errors are those of X, not of the remaining samples
    n, batches = iter_batches(X, SHAPE, PREP, skip=np.array([1, 0, 0, 0, 0], bool))
    with pytest.raises(FileNotFoundError, match="^image 1 "):
        list(batches)
