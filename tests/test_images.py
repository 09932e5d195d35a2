"""Tests of the image pipeline (skfishing.images)."""


import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from skfishing.images import (
    ImagePreprocessing,
    load_image,
    preprocess_image,
)

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


