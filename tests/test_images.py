"""Tests of the image pipeline (skfishing.images)."""

import contextlib
import pathlib
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps, UnidentifiedImageError

import skfishing.images as images_module
from skfishing.images import (
    ImagePreprocessing,
    iter_batches,
    load_image,
    preprocess_image,
)

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


# -- ImagePreprocessing -----------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"size": 0}, "size must be a positive integer"),
        ({"size": 2.5}, "size must be a positive integer"),
        ({"size": True}, "size must be a positive integer"),
        ({"size": 8, "resize": 7}, r"resize \(7\) must be at least size \(8\)"),
        ({"size": 8, "channel_order": "rgb"}, "channel_order must be 'RGB' or 'BGR'"),
        ({"size": 8, "scale": 0}, "scale must be a positive finite"),
        ({"size": 8, "scale": float("nan")}, "scale must be a positive finite"),
        ({"size": 8, "mean": (0, 0)}, "mean must be 3 finite numbers"),
        ({"size": 8, "mean": (0, 0, float("inf"))}, "mean must be 3 finite numbers"),
        ({"size": 8, "std": (1, 0, 1)}, "std must be 3 positive finite numbers"),
        ({"size": 8, "std": "abc"}, "std must be 3 positive finite numbers"),
    ],
)
def test_preprocessing_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ImagePreprocessing(**kwargs)


def test_preprocessing_normalises_fields():
    prep = ImagePreprocessing(np.int64(4), mean=[1, 2, 3], std=np.array([1, 2, 4]))
    assert prep == ImagePreprocessing(4, mean=(1.0, 2.0, 3.0), std=(1.0, 2.0, 4.0))
    assert type(prep.size) is int and prep.mean == (1.0, 2.0, 3.0)
    assert prep.input_shape == (3, 4, 4)
    hash(prep)  # frozen and hashable: usable as an estimator parameter


# -- numerics of one image ---------------------------------------------------


@pytest.mark.parametrize("channel_order", ["RGB", "BGR"])
def test_normalisation_and_channel_order(channel_order):
    pixels = _rgb(4, 4)
    mean, std = (10.0, 20.0, 30.0), (2.0, 4.0, 8.0)
    prep = ImagePreprocessing(
        4, channel_order=channel_order, scale=0.5, mean=mean, std=std
    )
    out = preprocess_image(pixels, prep)
    expected = (pixels * 0.5 - np.array(mean)) / np.array(std)  # RGB order
    if channel_order == "BGR":
        expected = expected[:, :, ::-1]
    assert out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_allclose(out, expected.transpose(2, 0, 1), rtol=1e-6)


def _resize_then_crop(img, size, resize):
    """The paper's recipe spelled out: resize the shorter side, crop the centre."""
    w, h = img.size
    if w <= h:
        new_w, new_h = resize, int(resize * h / w)
    else:
        new_w, new_h = int(resize * w / h), resize
    img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
    left, top = round((new_w - size) / 2), round((new_h - size) / 2)
    return np.asarray(img.crop((left, top, left + size, top + size)))


@settings(max_examples=60, deadline=None)
@given(
    width=st.integers(1, 70),
    height=st.integers(1, 70),
    size=st.integers(1, 24),
    extra=st.integers(0, 12),
    seed=st.integers(0, 2**16),
)
def test_crop_box_equals_resize_then_crop(width, height, size, extra, seed):
    # Resizing only the crop box is the paper's resize + central crop, up to
    # the rounding of Pillow's two 8-bit passes (a crop one pixel off would
    # differ by far more on random pixels).
    img = Image.fromarray(_rgb(height, width, seed))
    prep = ImagePreprocessing(size, resize=size + extra, scale=1.0)
    ours = preprocess_image(img, prep).transpose(1, 2, 0)
    reference = _resize_then_crop(img, size, size + extra).astype(np.float32)
    np.testing.assert_allclose(ours, reference, atol=2.0)


@pytest.mark.parametrize("landscape", [True, False])
def test_central_crop_keeps_aspect_ratio(landscape):
    # Three bands red | green | blue of 60 x 60 pixels each: the central
    # square of the image is the green band. Squashing the whole image, or
    # cropping off centre, would bring red or blue in.
    band = np.zeros((60, 60, 3), dtype=np.uint8)
    pixels = np.concatenate(
        [band + [255, 0, 0], band + [0, 255, 0], band + [0, 0, 255]], 1
    )
    pixels = pixels.astype(np.uint8)
    if not landscape:
        pixels = pixels.transpose(1, 0, 2).copy()
    out = preprocess_image(pixels, ImagePreprocessing(16, resize=20, scale=1.0))
    np.testing.assert_array_equal(
        out, np.array([0, 255, 0])[:, None, None] + np.zeros((16, 16))
    )


def test_one_pixel_image():
    out = preprocess_image(np.array([[[10, 20, 30]]], dtype=np.uint8), PREP)
    assert out.shape == SHAPE
    expected = np.broadcast_to(np.array([10, 20, 30])[:, None, None] / 255, SHAPE)
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_extreme_aspect_ratio_does_not_build_the_resized_image():
    # Resizing the shorter side of a 1 x 20000 strip to 256 would need a
    # 256 x 5,120,000 image; only the crop is computed.
    strip = np.full((1, 20000, 3), 7, dtype=np.uint8)
    out = preprocess_image(strip, ImagePreprocessing(224, resize=256, scale=1.0))
    assert out.shape == (3, 224, 224) and np.all(out == 7)


# -- modes, EXIF, animation --------------------------------------------------


def _mode_cases():
    rgba = np.array(
        [[[255, 0, 0, 0], [0, 0, 255, 255], [0, 0, 0, 128]]], dtype=np.uint8
    )
    palette = Image.new("P", (2, 1))
    palette.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    palette.putdata([0, 1])
    transparent = palette.copy()
    transparent.info["transparency"] = 0
    pa = Image.new("PA", (2, 1))
    pa.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    pa.putdata([(0, 255), (1, 0)])
    wide = np.array([[0, 1000, 32768, 65535]], dtype=np.uint16)
    return [
        ("1", Image.fromarray(np.array([[0, 1]], dtype=bool)), [[0] * 3, [255] * 3]),
        (
            "L",
            Image.fromarray(np.array([[0, 77]], dtype=np.uint8)),
            [[0] * 3, [77] * 3],
        ),
        (
            "LA",
            Image.fromarray(rgba[..., [0, 3]], "LA"),
            [[255] * 3, [0] * 3, [127] * 3],
        ),
        ("P", palette, [[255, 0, 0], [0, 255, 0]]),
        ("P+transparency", transparent, [[255, 255, 255], [0, 255, 0]]),
        ("PA", pa, [[255, 0, 0], [255, 255, 255]]),
        (
            "RGBA",
            Image.fromarray(rgba),
            [[255, 255, 255], [0, 0, 255], [127, 127, 127]],
        ),
        ("CMYK", Image.new("CMYK", (1, 1), (0, 255, 255, 0)), [[255, 0, 0]]),
        # 16-bit samples are scaled by 255/65535, not clipped at 255
        ("I;16", Image.fromarray(wide), [[0] * 3, [4] * 3, [128] * 3, [255] * 3]),
        (
            "I",
            Image.fromarray(wide.astype(np.int32)),
            [[0] * 3, [4] * 3, [128] * 3, [255] * 3],
        ),
        (
            "I;16B",
            Image.fromarray(wide).convert("I").convert("I;16B"),
            [[0] * 3, [4] * 3, [128] * 3, [255] * 3],
        ),
        (
            "F",
            Image.fromarray(np.array([[0.0, 0.25, 1.0, 2.0]], dtype=np.float32)),
            [[0] * 3, [64] * 3, [255] * 3, [255] * 3],
        ),
        ("YCbCr", Image.new("YCbCr", (1, 1), (255, 128, 128)), [[255, 255, 255]]),
    ]


@pytest.mark.parametrize(
    "name, img, expected", _mode_cases(), ids=lambda v: str(v)[:16]
)
def test_modes_convert_to_rgb(name, img, expected):
    rgb = load_image(img)
    assert rgb.mode == "RGB"
    got = np.asarray(rgb).reshape(-1, 3)
    np.testing.assert_allclose(got, np.array(expected), atol=1, err_msg=name)


@pytest.mark.parametrize(
    "mode, fmt",
    [
        ("I;16", "PNG"),
        ("LA", "PNG"),
        ("P", "PNG"),
        ("CMYK", "JPEG"),
        ("CMYK", "TIFF"),
        ("L", "JPEG"),
        ("1", "BMP"),
    ],
)
def test_modes_from_files(tmp_path, mode, fmt):
    if mode == "I;16":
        img = Image.fromarray(np.full((5, 6), 65535, dtype=np.uint16))
    else:
        img = Image.new("RGB", (6, 5), (255, 255, 255)).convert(mode)
    path = _save(img, tmp_path / f"x.{fmt.lower()}", format=fmt)
    with Image.open(path) as img:
        assert img.mode == mode
    out = preprocess_image(path, ImagePreprocessing(4, scale=1.0))
    np.testing.assert_allclose(out, 255, atol=2)


def test_exif_orientation_is_applied(tmp_path):
    pixels = _rgb(2, 4)
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was rotated: display rotated 90 degrees clockwise
    path = _save(Image.fromarray(pixels), tmp_path / "rotated.png", exif=exif.tobytes())
    np.testing.assert_array_equal(np.asarray(load_image(path)), np.rot90(pixels, -1))
    with Image.open(path) as img:
        np.testing.assert_array_equal(np.asarray(load_image(img)), np.rot90(pixels, -1))


def test_animated_gif_gives_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), colour) for colour in ("red", "blue", "lime")]
    path = _save(
        frames[0], tmp_path / "anim.gif", save_all=True, append_images=frames[1:]
    )
    with Image.open(path) as img:
        assert img.n_frames == 3
    assert np.all(np.asarray(load_image(path)) == [255, 0, 0])


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
    return [
        _save(Image.fromarray(_rgb(10, 10, i)), tmp_path / f"ok{i}.png")
        for i in range(n)
    ]


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
    with pytest.raises(
        ValueError, match=r"produces samples of shape \(3, 8, 8\).*\(3, 9, 9\)"
    ):
        iter_batches([_rgb(8, 8)], (3, 9, 9), PREP)
    n, _ = iter_batches([_rgb(8, 8)], (3, None, None), PREP)  # dynamic dims
    assert n == 1


@pytest.mark.parametrize("value", [0, 1.5, -2])
def test_invalid_batch_size_and_n_jobs(value):
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        iter_batches(np.zeros((2, 3)), (3,), batch_size=value)
    with pytest.raises(ValueError, match="n_jobs must be a positive integer"):
        iter_batches([_rgb(8, 8)], SHAPE, PREP, n_jobs=value)


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


@pytest.mark.parametrize(
    "value, what", [(np.nan, "NaN"), (np.inf, "infinity"), (1e300, "infinity")]
)
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


def test_order_preserved_with_parallel_decoding(monkeypatch):
    original = images_module.preprocess_image
    rng = np.random.default_rng(0)
    delays = rng.uniform(0, 0.01, 40)

    def slow(image, preprocessing):
        time.sleep(delays[int(image[0, 0, 0])])  # out-of-order completion
        return original(image, preprocessing)

    monkeypatch.setattr(images_module, "preprocess_image", slow)
    X = [np.full((8, 8, 3), i, dtype=np.uint8) for i in range(40)]
    prep = ImagePreprocessing(8, scale=1.0)
    n, batches = _collect(X, SHAPE, prep, batch_size=6, n_jobs=4)
    out = np.concatenate(batches)
    np.testing.assert_array_equal(out[:, 0, 0, 0], np.arange(40))


def test_decoding_runs_ahead_of_consumer_bounded(monkeypatch):
    original = images_module.preprocess_image
    started, threads = [], set()

    def record(image, preprocessing):
        started.append(1)
        threads.add(threading.current_thread().name)
        time.sleep(0.002)
        return original(image, preprocessing)

    monkeypatch.setattr(images_module, "preprocess_image", record)
    X = [_rgb(8, 8)] * 100
    n, batches = iter_batches(X, SHAPE, PREP, batch_size=5, n_jobs=3)
    assert started == []  # nothing decoded before iteration starts
    next(batches)
    # the consumer is busy: decoding continues meanwhile, up to two batches
    # ahead of the current one, and no further
    deadline = time.monotonic() + 10
    while len(started) < 15 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    assert len(started) == 15
    assert len(threads) > 1 and all(t.startswith("skfishing") for t in threads)
    batches.close()  # abandoning the iterator stops the decoding threads
    assert not [t for t in threading.enumerate() if t.name.startswith("skfishing")]


def test_progress_bar(capsys):
    _collect(np.zeros((5, 3)), (3,), None, batch_size=2, progress=True, desc="feats")
    err = capsys.readouterr().err
    assert "feats" in err and "5/5" in err
    _collect(np.zeros((5, 3)), (3,), None, batch_size=2)
    assert capsys.readouterr().err == ""


def test_skip_arrays():
    X = np.arange(14, dtype=np.float32).reshape(7, 2)
    skip = np.array([1, 0, 1, 1, 0, 0, 0], dtype=bool)
    n, batches = _collect(X, (2,), None, batch_size=2, skip=skip)
    assert n == 7 and [len(b) for b in batches] == [2, 2]
    np.testing.assert_array_equal(np.concatenate(batches), X[~skip])
    n, batches = _collect(X, (2,), None, batch_size=3, skip=np.zeros(7, bool))
    assert all(np.shares_memory(b, X) for b in batches)
    with pytest.raises(
        ValueError, match=r"skip must be a boolean array of shape \(7,\)"
    ):
        iter_batches(X, (2,), skip=[0, 1])


def test_skip_images_are_not_decoded(tmp_path, capsys):
    paths = _good_paths(tmp_path, 4)
    X = [paths[0], str(tmp_path / "missing.png"), paths[2], paths[3], str(tmp_path)]
    skip = np.array([False, True, False, False, True])
    n, batches = _collect(X, SHAPE, PREP, batch_size=2, skip=skip, progress=True)
    assert n == 5 and [len(b) for b in batches] == [2, 1]
    expected = np.stack([preprocess_image(paths[i], PREP) for i in (0, 2, 3)])
    np.testing.assert_array_equal(np.concatenate(batches), expected)
    assert "3/3" in capsys.readouterr().err
    # positions in errors are those of X, not of the remaining samples
    n, batches = iter_batches(X, SHAPE, PREP, skip=np.array([1, 0, 0, 0, 0], bool))
    with pytest.raises(FileNotFoundError, match="^image 1 "):
        list(batches)
