"""Tests of the image pipeline (skfishing._extraction.images)."""

import contextlib
import os
import pathlib
import socket

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps

from skfishing import ImagePreprocessing
from skfishing._extraction.images import load_image, preprocess_image

SHAPE = (3, 8, 8)
PREP = ImagePreprocessing(8, resize=10)


def _rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


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


@pytest.mark.parametrize(
    "kwargs, match",
    [
        # not representable in float32, the dtype pixels are normalised in
        ({"scale": 1e39}, r"scale \(1e\+39\) is not representable in float32.* inf"),
        ({"scale": 1e-46}, r"scale \(1e-46\) is not representable in float32.* 0\.0"),
        ({"mean": (1e39, 0, 0)}, r"mean \(\(1e\+39, 0\.0, 0\.0\)\) is not representable"),
        ({"std": (1, 1e-46, 1)}, r"std .* is not representable in float32.* 0\.0"),
        # representable, but (p * scale - mean) / std overflows float32
        ({"std": (1e-45, 1, 1)}, r"std\[0\] makes normalised pixel values overflow float32.* channel R"),
        ({"scale": 1.0, "std": (1, 1, 1e-37)}, r"std\[2\] makes .* channel B"),
        ({"scale": 2e36}, r"scale makes normalised pixel values overflow float32"),
        ({"scale": 1e36, "mean": (0, -3e38, 0)}, r"mean\[1\] makes .* channel G"),
    ],
)
def test_preprocessing_rejects_values_float32_cannot_hold(kwargs, match):
    # Valid in float64; in float32 these gave NaN, infinite or constant input.
    with pytest.raises(ValueError, match=match):
        ImagePreprocessing(8, **kwargs)


def test_preprocessing_accepts_extreme_values_float32_can_hold():
    prep = ImagePreprocessing(2, scale=1e-30, mean=(0, 1e30, 0), std=(1e-30, 1e30, 1))
    pixels = _rgb(2, 2)
    out = preprocess_image(pixels, prep)
    expected = (pixels * 1e-30 - np.array([0, 1e30, 0])) / np.array([1e-30, 1e30, 1])
    np.testing.assert_allclose(out, expected.transpose(2, 0, 1), rtol=1e-5, atol=1e-35)


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
    prep = ImagePreprocessing(4, channel_order=channel_order, scale=0.5, mean=mean, std=std)
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
    pixels = np.concatenate([band + [255, 0, 0], band + [0, 255, 0], band + [0, 0, 255]], 1)
    pixels = pixels.astype(np.uint8)
    if not landscape:
        pixels = pixels.transpose(1, 0, 2).copy()
    out = preprocess_image(pixels, ImagePreprocessing(16, resize=20, scale=1.0))
    np.testing.assert_array_equal(out, np.array([0, 255, 0])[:, None, None] + np.zeros((16, 16)))


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
    rgba = np.array([[[255, 0, 0, 0], [0, 0, 255, 255], [0, 0, 0, 128]]], dtype=np.uint8)
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


@pytest.mark.parametrize("name, img, expected", _mode_cases(), ids=lambda v: str(v)[:16])
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
    path = _save(frames[0], tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    with Image.open(path) as img:
        assert img.n_frames == 3
    assert np.all(np.asarray(load_image(path)) == [255, 0, 0])


# -- the fast paths are the reference pipeline ------------------------------------


def _reference_box(width, height, size, resize):
    # skfishing 0.1's crop box, spelled out (not imported from the module).
    if width <= height:
        new_w, new_h = resize, int(resize * height / width)
    else:
        new_w, new_h = int(resize * width / height), resize
    sx, sy = width / new_w, height / new_h
    left, top = round((new_w - size) / 2), round((new_h - size) / 2)
    return (left * sx, top * sy, (left + size) * sx, (top + size) * sy)


def _reference(image, prep):
    """skfishing 0.1's pipeline: Pillow RGB image, resize of the crop box,
    float32 arithmetic on the HWC array, channel flip, transpose."""
    if isinstance(image, (str, bytes, os.PathLike)):
        with Image.open(image) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
    elif isinstance(image, Image.Image):
        img = ImageOps.exif_transpose(image)
    else:
        img = Image.fromarray(np.ascontiguousarray(image))
    if img.mode == "RGBA":  # composited on white
        img = Image.alpha_composite(Image.new("RGBA", img.size, "white"), img)
    img = img.convert("RGB")
    box = _reference_box(img.width, img.height, prep.size, prep.resize or prep.size)
    img = img.resize((prep.size, prep.size), Image.Resampling.BILINEAR, box=box)
    pixels = np.asarray(img, dtype=np.float32)
    mean = np.asarray(prep.mean, dtype=np.float32)
    std = np.asarray(prep.std, dtype=np.float32)
    pixels = (pixels * np.float32(prep.scale) - mean) / std
    if prep.channel_order == "BGR":
        pixels = pixels[:, :, ::-1]
    return pixels.transpose(2, 0, 1)


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.mark.parametrize("channel_order", ["RGB", "BGR"])
@pytest.mark.parametrize(
    "shape, resize",
    [
        ((20, 27, 3), 20),  # shorter side == resize: the crop is a view of the array
        ((27, 20, 3), 20),
        ((20, 20, 3), 20),
        ((21, 26, 3), 21),  # odd margins: the centring rounds
        ((20, 31), 20),  # grey
        ((16, 23, 3), None),  # shorter side == size, no resize asked
        ((33, 47, 3), 20),  # a real resize
        ((33, 47, 4), 20),  # alpha
    ],
)
def test_arrays_match_reference_pipeline_bit_for_bit(shape, resize, channel_order):
    pixels = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    prep = ImagePreprocessing(
        16, resize=resize, channel_order=channel_order, mean=IMAGENET_MEAN, std=IMAGENET_STD
    )
    out = preprocess_image(pixels, prep)
    assert out.dtype == np.float32 and out.flags.c_contiguous and out.shape == (3, 16, 16)
    np.testing.assert_array_equal(out, _reference(pixels, prep))
    # strided and read-only views of an array take the same path
    view = np.zeros((shape[0], 2 * shape[1]) + shape[2:], dtype=np.uint8)[:, ::2]
    view[...] = pixels
    view.flags.writeable = False
    np.testing.assert_array_equal(preprocess_image(view, prep), out)


def test_files_and_pil_images_match_reference_pipeline_bit_for_bit(tmp_path):
    prep = ImagePreprocessing(24, resize=28, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    pixels = _rgb(50, 70)
    exif = Image.Exif()
    exif[0x0112] = 6
    paths = [
        _save(Image.fromarray(pixels), tmp_path / "a.png"),
        _save(Image.fromarray(pixels), tmp_path / "a.jpg", quality=90),
        _save(Image.fromarray(pixels), tmp_path / "r.jpg", quality=90, exif=exif.tobytes()),
        _save(Image.fromarray(pixels).convert("P"), tmp_path / "a.gif"),
    ]
    for path in paths:
        np.testing.assert_array_equal(preprocess_image(path, prep), _reference(path, prep), err_msg=path)
        with Image.open(path) as img:
            np.testing.assert_array_equal(preprocess_image(img, prep), _reference(path, prep), err_msg=path)


def test_load_image_returns_a_new_image_and_leaves_the_input_alone():
    img = Image.fromarray(_rgb(5, 6))
    before = img.tobytes()
    loaded = load_image(img)
    assert loaded is not img and loaded.tobytes() == before
    loaded.paste((0, 0, 0), (0, 0, 6, 5))
    assert img.tobytes() == before


# -- out= ------------------------------------------------------------------------------


def test_out_receives_the_result():
    prep = ImagePreprocessing(8, resize=10, mean=IMAGENET_MEAN, std=IMAGENET_STD, channel_order="BGR")
    images = [_rgb(10, 13, 1), _rgb(30, 17, 2)]
    batch = np.full((3,) + prep.input_shape, 7.0, dtype=np.float32)
    for row, image in zip(batch[1:], images):
        assert preprocess_image(image, prep, out=row) is row
    assert np.all(batch[0] == 7.0)
    np.testing.assert_array_equal(batch[1:], np.stack([preprocess_image(x, prep) for x in images]))
    # float64 rows hold the float32 values
    wide = np.empty(prep.input_shape, dtype=np.float64)
    preprocess_image(images[1], prep, out=wide)
    np.testing.assert_array_equal(wide, batch[2].astype(np.float64))


@pytest.mark.parametrize(
    "out, match",
    [
        (np.empty((3, 8, 9), np.float32), r"shape \(3, 8, 8\), got a float32 array of shape \(3, 8, 9\)"),
        (np.empty((8, 8, 3), np.float32), r"shape \(3, 8, 8\)"),
        (np.empty((3, 8, 8), np.float16), "float32 or float64 array.* got a float16"),
        (np.empty((3, 8, 8), np.uint8), "got a uint8"),
        (np.broadcast_to(np.float32(0), (3, 8, 8)), "got a read-only float32"),
        ([[0.0]], "'out' parameter of preprocess_image must be an instance of"),
    ],
)
def test_bad_out(out, match):
    with pytest.raises(ValueError, match=match):
        preprocess_image(_rgb(8, 8), PREP, out=out)


# -- JPEG files decoded at reduced scale --------------------------------------------


def _detailed(height, width, seed=0):
    """A photo-like image with fine detail: 1/f noise and hard-edged patches."""
    rng = np.random.default_rng(seed)
    fy, fx = np.fft.fftfreq(height)[:, None], np.fft.rfftfreq(width)[None, :]
    f = np.hypot(fx, fy)
    f[0, 0] = 1.0
    bands = []
    for _ in range(3):
        noise = np.fft.irfft2(np.fft.rfft2(rng.standard_normal((height, width))) / f, s=(height, width))
        bands.append(noise / noise.std() * 40)
    pixels = 128 + np.stack(bands, -1)
    for _ in range(20):
        y, x = rng.integers(0, height), rng.integers(0, width)
        h, w = rng.integers(5, height // 3), rng.integers(5, width // 3)
        pixels[y : y + h, x : x + w] = 0.3 * pixels[y : y + h, x : x + w] + 0.7 * rng.integers(0, 256, 3)
    return np.clip(pixels, 0, 255).astype(np.uint8)


@pytest.mark.parametrize(
    "height, width, orientation, reduction",
    [
        (159, 230, 1, 1),  # shorter side < 4 x resize: decoded at full scale
        (160, 230, 1, 2),
        (330, 401, 1, 4),
        (701, 1500, 1, 8),
        (1500, 701, 1, 8),
        # EXIF orientations: the reduced image's partial blocks (sizes not
        # multiples of the reduction) move with the transposition
        (331, 701, 2, 4),
        (331, 701, 3, 4),
        (331, 701, 4, 4),
        (331, 701, 5, 4),
        (331, 701, 6, 4),
        (701, 331, 7, 4),
        (701, 331, 8, 4),
    ],
)
def test_large_jpeg_decoded_at_reduced_scale(tmp_path, height, width, orientation, reduction):
    # A JPEG whose shorter side is at least 4 x resize is decoded at 1/2, 1/4
    # or 1/8 scale, keeping at least 2 x resize. The network input differs
    # from the full-scale decode (the reference) by less than JPEG
    # compression does; a crop box off by a factor or a rotation would
    # differ by far more on this detailed image.
    prep = ImagePreprocessing(32, resize=40, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = _save(
        Image.fromarray(_detailed(height, width)), tmp_path / "big.jpg", quality=90, exif=exif.tobytes()
    )
    with _decoded_sizes() as sizes:
        ours = preprocess_image(path, prep)
    stored = (width, height)  # the JPEG's own axes; EXIF rotates after decoding
    assert sizes == ([tuple(-(-side // reduction) for side in stored)] if reduction > 1 else [])
    assert reduction == 1 or min(sizes[0]) >= 2 * 40
    reference = _reference(path, prep)
    difference = np.abs(ours - reference)  # network-input units: 1/255 level = 0.017
    if reduction == 1:
        assert difference.max() == 0
    else:
        # measured: max 0.07 to 0.12, mean 0.009 to 0.018; crops off by 3 pixels: mean > 0.03
        assert difference.max() < 0.2 and difference.mean() < 0.024, (difference.max(), difference.mean())
    # the same file opened by the user is not changed: decoded at full scale
    with Image.open(path) as opened:
        np.testing.assert_array_equal(preprocess_image(opened, prep), reference)
    # a shifted crop (e.g. a box not scaled back) is far off: the bound means something
    shifted = _reference(path, ImagePreprocessing(32, resize=44, mean=IMAGENET_MEAN, std=IMAGENET_STD))
    assert np.abs(shifted - reference).mean() > 0.1


@contextlib.contextmanager
def _decoded_sizes():
    """Sizes at which JPEG files are decoded, seen through Pillow's public ``draft`` method."""
    from PIL.JpegImagePlugin import JpegImageFile

    sizes, draft = [], JpegImageFile.draft

    def spy(self, mode, size):
        result = draft(self, mode, size)
        sizes.append(self.size)
        return result

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(JpegImageFile, "draft", spy)
        yield sizes


@pytest.mark.parametrize(
    "mode, options",
    [("L", {}), ("CMYK", {}), ("RGB", {"progressive": True}), ("RGB", {"subsampling": 0})],
    ids=["grey", "CMYK", "progressive", "4:4:4"],
)
def test_other_jpeg_kinds_decoded_at_reduced_scale(tmp_path, mode, options):
    prep = ImagePreprocessing(32, resize=40, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    path = _save(
        Image.fromarray(_detailed(331, 420)).convert(mode), tmp_path / "x.jpg", quality=90, **options
    )
    with _decoded_sizes() as sizes:
        preprocess_image(path, prep)
    assert sizes == [(105, 83)]  # 1/4 scale
    difference = np.abs(preprocess_image(path, prep) - _reference(path, prep))
    # measured: max 0.05 to 0.09, mean 0.008 to 0.013
    assert difference.max() < 0.2 and difference.mean() < 0.024, (difference.max(), difference.mean())


# -- special files and file names -------------------------------------------------


def _forbid_opening(monkeypatch, path):
    original = Image.open

    def guarded(fp, *args, **kwargs):
        if os.fspath(fp) == os.fspath(path):
            raise AssertionError(f"{path!r} was opened: reading it would block or have side effects")
        return original(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", guarded)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes on this OS")
@pytest.mark.parametrize("function", [load_image, lambda p: preprocess_image(p, PREP)])
def test_named_pipe_is_refused_without_opening_it(tmp_path, monkeypatch, function):
    # Opening a FIFO for reading blocks until a writer comes: it used to hang.
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    _forbid_opening(monkeypatch, fifo)
    for path in (str(fifo), fifo, os.fsencode(fifo)):
        with pytest.raises(OSError, match=r"pipe\.jpg'? is a named pipe \(FIFO\), not a regular file"):
            function(path)


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="no Unix sockets on this OS")
def test_socket_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "s.png"
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(str(path))
    except OSError as exc:  # e.g. a path too long for sun_path
        pytest.skip(f"cannot bind a Unix socket here: {exc}")
    _forbid_opening(monkeypatch, path)
    with server, pytest.raises(OSError, match=r"s\.png' is a socket, not a regular file"):
        preprocess_image(path, PREP)


@pytest.mark.skipif(not os.path.exists("/dev/null"), reason="no /dev/null")
def test_device_is_refused(monkeypatch):
    _forbid_opening(monkeypatch, "/dev/null")
    with pytest.raises(OSError, match="'/dev/null' is a character device, not a regular file"):
        preprocess_image("/dev/null", PREP)


def _non_utf8_name(folder, name):
    """``folder/name`` as bytes; skip where the file system refuses the name."""
    path = os.path.join(os.fsencode(folder), name)
    try:
        pathlib.Path(os.fsdecode(path)).write_bytes(b"")
    except (OSError, UnicodeError) as exc:
        pytest.skip(f"the file system refuses non-UTF-8 names: {exc}")
    os.remove(path)
    return path


def test_any_file_name_the_os_allows(tmp_path):
    # Latin-1 bytes and a lone continuation byte: not UTF-8, fine on Linux.
    path = _non_utf8_name(tmp_path, b"caf\xe9 \xff.png")
    pixels = _rgb(10, 12)
    Image.fromarray(pixels).save(os.fsdecode(path), format="PNG")
    expected = preprocess_image(pixels, PREP)
    for name in (path, os.fsdecode(path), pathlib.Path(os.fsdecode(path))):
        np.testing.assert_array_equal(preprocess_image(name, PREP), expected)
        np.testing.assert_array_equal(np.asarray(load_image(name)), pixels)


def test_missing_or_invalid_non_utf8_name_is_named(tmp_path):
    missing = os.path.join(os.fsencode(tmp_path), b"gone\xff.jpg")
    for name in (missing, os.fsdecode(missing)):
        with pytest.raises(FileNotFoundError, match=r"gone\\(xff|udcff)\.jpg"):
            preprocess_image(name, PREP)
    with pytest.raises(ValueError, match="is not a valid file path .*null.*not as encoded image data"):
        preprocess_image(b"\xff\xd8\xff\xe0\x00\x10JFIF" + bytes(200), PREP)
