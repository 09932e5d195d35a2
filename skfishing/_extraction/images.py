"""Image decoding and preprocessing for pretrained networks.

The pipeline follows section 5.2 of Gordo et al. (BMVC 2015): decode the
image, resize its shorter side, take the central square crop (the aspect
ratio is never distorted), then apply the normalisation and channel order the
network was trained with. :func:`skfishing._extraction.batches.iter_batches` runs it in a
thread pool ahead of the network: the work is done by Pillow and NumPy calls
that release the GIL, so threads scale with the cores, and the result can be
written straight into a row of the batch (``out=``).
"""

from __future__ import annotations

import errno
import functools
import math
import os
import stat
from dataclasses import dataclass
from numbers import Integral, Real

import numpy as np
from PIL import ExifTags, Image, ImageOps
from sklearn.utils._param_validation import validate_params

__all__ = [
    "ImagePreprocessing",
    "load_image",
    "preprocess_image",
]

# Modes holding 16-bit (or wider) integer samples, mapped from [0, 65535].
_WIDE_INT_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")
# Modes with an alpha band, composited on white.
_ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")
_WHITE = (255, 255, 255, 255)
# EXIF orientations that swap width and height.
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)
# For each EXIF orientation, which side of the stored image (0: right,
# 1: bottom) ends up on the left and on the top of the upright image.
_PADDING_SOURCES = {2: (0, None), 3: (0, 1), 4: (None, 1), 6: (1, None), 7: (1, 0), 8: (None, 0)}
# A JPEG file is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling)
# when its shorter side stays at least this many times ``resize``, so that
# the antialiased resize still reduces it by this factor or more (the gap
# Pillow's ``Image.thumbnail`` uses).
_REDUCING_GAP = 2
# File paths: str, bytes (any name the OS allows) or path-like objects.
_PATH_TYPES = (str, bytes, os.PathLike)


@dataclass(frozen=True)
class ImagePreprocessing:
    """How to turn an image into the input tensor of a network.

    The image is resized so that its shorter side is ``resize`` pixels
    (bilinear interpolation with Pillow's antialiasing, as in torchvision),
    the central ``size`` x ``size`` square is cropped, then every pixel
    ``p`` (8-bit RGB values) becomes ``(p * scale - mean) / std``, computed
    in float32, and the channels are put in ``channel_order``, channels
    first. Large JPEG files are decoded at reduced scale first (see
    :func:`preprocess_image`).

    Parameters
    ----------
    size : int
        Side of the square crop fed to the network.
    resize : int, default=None
        Length of the shorter side after resizing; ``None`` means ``size``
        (the whole shorter side is kept). Must be at least ``size``.
    channel_order : {"RGB", "BGR"}, default="RGB"
        Channel order expected by the network ("BGR" for Caffe models).
    scale : float, default=1/255
        Factor applied to the 0-255 pixel values first (1.0 for Caffe
        models, which take 0-255 input).
    mean : tuple of 3 floats, default=(0.0, 0.0, 0.0)
        Subtracted after scaling, in RGB order whatever ``channel_order``.
    std : tuple of 3 floats, default=(1.0, 1.0, 1.0)
        Divides the result after mean subtraction, in RGB order.

    Raises
    ------
    ValueError
        If a parameter is out of range, or if ``scale``, ``mean`` or ``std``
        is not representable in float32 (the dtype pixels are normalised
        in) or makes a normalised pixel value overflow float32; the message
        names the field.

    Examples
    --------
    >>> from skfishing import ImagePreprocessing
    >>> ImagePreprocessing(224, resize=256, mean=(0.485, 0.456, 0.406),
    ...                    std=(0.229, 0.224, 0.225)).input_shape
    (3, 224, 224)
    """

    size: int
    resize: int | None = None
    channel_order: str = "RGB"
    scale: float = 1 / 255
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    @functools.cached_property
    def _constants(self):
        # kept on the (frozen) object itself: derived from its fields only
        return _make_normalisation(self)

    def __getstate__(self):  # the fields only: what is derived is made again
        return {k: v for k, v in self.__dict__.items() if k != "_constants"}

    def __post_init__(self):
        for field in ("size", "resize"):
            value = getattr(self, field)
            if field == "resize" and value is None:
                continue
            if not isinstance(value, Integral) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ImagePreprocessing.{field} must be a positive integer, got {value!r}.")
            object.__setattr__(self, field, int(value))
        if self.resize is not None and self.resize < self.size:
            raise ValueError(
                f"ImagePreprocessing.resize ({self.resize}) must be at least "
                f"size ({self.size}): the crop is taken inside the resized image."
            )
        if self.channel_order not in ("RGB", "BGR"):
            raise ValueError(
                f"ImagePreprocessing.channel_order must be 'RGB' or 'BGR', got {self.channel_order!r}."
            )
        if not _is_positive_real(self.scale):
            raise ValueError(
                f"ImagePreprocessing.scale must be a positive finite number, got {self.scale!r}."
            )
        object.__setattr__(self, "scale", float(self.scale))
        for field in ("mean", "std"):
            value = getattr(self, field)
            try:
                values = tuple(float(v) for v in value)
            except (TypeError, ValueError):
                values = ()
            positive = field == "std"
            if len(values) != 3 or not all(
                _is_positive_real(v) if positive else math.isfinite(v) for v in values
            ):
                kind = "positive finite" if positive else "finite"
                raise ValueError(
                    f"ImagePreprocessing.{field} must be 3 {kind} numbers (RGB order), got {value!r}."
                )
            object.__setattr__(self, field, values)
        _check_float32(self)

    @property
    def input_shape(self):
        """Shape ``(3, size, size)`` of one preprocessed image."""
        return (3, self.size, self.size)


def _is_positive_real(value):
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _check_float32(preprocessing):
    """Reject parameters that float32 normalisation would turn into inf or 0.

    Pixels are normalised in float32: ``scale``, ``mean`` and ``std`` must
    keep their value class there (finite, and non-zero where they must be
    positive), and ``(p * scale - mean) / std`` must be finite for every
    8-bit ``p``.
    """
    with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
        scale = np.float32(preprocessing.scale)
        mean = np.array(preprocessing.mean, dtype=np.float32)
        std = np.array(preprocessing.std, dtype=np.float32)
        for field, values, positive in (
            ("scale", np.atleast_1d(scale), True),
            ("mean", mean, False),
            ("std", std, True),
        ):
            bad = ~np.isfinite(values) | ((values <= 0) if positive else False)
            if bad.any():
                value = getattr(preprocessing, field)
                raise ValueError(
                    f"ImagePreprocessing.{field} ({value!r}) is not representable "
                    "in float32, the dtype pixels are normalised in: it becomes "
                    f"{values[np.flatnonzero(bad)[0]]}."
                )
        pixels = np.arange(256, dtype=np.float32)[:, None]
        scaled = pixels * scale
        centred = scaled - mean
        normalised = centred / std
    for field, values in (("scale", scaled), ("mean", centred), ("std", normalised)):
        bad = ~np.isfinite(values).all(axis=0)
        if bad.any():
            channel = int(np.flatnonzero(bad)[0])
            which = "" if field == "scale" else f"[{channel}]"
            raise ValueError(
                f"ImagePreprocessing.{field}{which} makes normalised pixel values "
                "overflow float32: (p * scale - mean) / std is not finite for "
                f"channel {'RGB'[channel]} with scale={preprocessing.scale!r}, "
                f"mean={preprocessing.mean!r}, std={preprocessing.std!r}."
            )


def _normalisation(preprocessing):
    """float32 ``scale``, ``mean`` and ``std`` (``(3, 1, 1)``, channel order), made once per object."""
    return preprocessing._constants


def _make_normalisation(preprocessing):
    order = slice(None, None, -1 if preprocessing.channel_order == "BGR" else 1)
    constants = []
    for values in (preprocessing.mean, preprocessing.std):
        array = np.array(values, dtype=np.float32)[order].reshape(3, 1, 1)
        array.flags.writeable = False
        constants.append(array)
    return (np.float32(preprocessing.scale), *constants)


@validate_params(
    {"image": "no_validation"}, prefer_skip_nested_validation=True
)  # checked below, naming what it is
def load_image(image):
    """Load an image as an 8-bit RGB :class:`PIL.Image.Image`.

    Parameters
    ----------
    image : str, bytes, os.PathLike, PIL.Image.Image or ndarray
        A file path (any name the operating system allows, as ``str``,
        ``bytes`` or a path object), a Pillow image, or a ``uint8`` array
        of shape ``(H, W)`` (grey), ``(H, W, 3)`` (RGB) or ``(H, W, 4)``
        (RGBA).

    Returns
    -------
    image : PIL.Image.Image
        A new image in mode ``"RGB"``, upright according to its EXIF
        orientation tag. Animated files give their first frame. Alpha is
        composited on a white background (transparent pixels become white).
        16-bit and 32-bit integer modes (``"I;16"``, ``"I"``) are taken as
        0-65535 and scaled to 0-255 with rounding (values outside are
        clipped); floating point mode ``"F"`` is taken as 0-1. Every other
        mode (``"1"``, ``"L"``, ``"P"``, ``"CMYK"``, ``"YCbCr"``, ...) is
        converted by Pillow.

    Raises
    ------
    FileNotFoundError
        If a path does not exist.
    IsADirectoryError
        If a path is a directory.
    OSError
        If a path is not a regular file (a named pipe, socket or device:
        such files are never opened), or a file is truncated or corrupt.
    PIL.UnidentifiedImageError
        If a file is not an image Pillow can read (including empty files).
    PIL.Image.DecompressionBombError
        If an image has more than twice ``PIL.Image.MAX_IMAGE_PIXELS`` pixels.
    TypeError, ValueError
        If ``image`` is of another type, an array of the wrong dtype or
        shape, or a path containing a null character.
    """
    _check_image_kind(image)
    img, _ = _load(image)
    return img.copy() if img is image else img


def _check_image_kind(image):
    if isinstance(image, np.ndarray):
        check_image_array(image)
    elif not isinstance(image, (*_PATH_TYPES, Image.Image)):
        raise TypeError(
            f"An image must be a file path, a PIL.Image.Image or a uint8 array, got {type(image).__name__}."
        )


def check_image_array(array):
    if array.dtype != np.uint8:
        raise TypeError(
            f"Image arrays must have dtype uint8 (0-255 pixels), got {array.dtype}. "
            "Preprocessed float input must be one array of shape "
            "(n_samples, *input_shape)."
        )
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ValueError(f"Image arrays must have shape (H, W), (H, W, 3) or (H, W, 4), got {array.shape}.")
    if 0 in array.shape:
        raise ValueError(f"Image array is empty, shape {array.shape}.")


def _check_regular_file(path):
    """Raise unless ``path`` is a regular file (checked before opening it).

    Opening a named pipe blocks until a writer comes, and opening a device
    can have side effects: only regular files are opened.
    """
    try:
        mode = os.stat(path).st_mode
    except ValueError as exc:  # a null character in the path
        name = repr(path) if len(repr(path)) <= 80 else repr(path)[:77] + "..."
        raise ValueError(
            f"{name} is not a valid file path ({exc}); bytes are taken as a "
            "file name, not as encoded image data."
        ) from None
    if stat.S_ISREG(mode):
        return
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
    kind = (
        "a named pipe (FIFO)"
        if stat.S_ISFIFO(mode)
        else "a socket"
        if stat.S_ISSOCK(mode)
        else "a character device"
        if stat.S_ISCHR(mode)
        else "a block device"
        if stat.S_ISBLK(mode)
        else "a special file"
    )
    raise OSError(
        f"{os.fspath(path)!r} is {kind}, not a regular file; only regular files are read as images."
    )


def _load(image, preprocessing=None):
    """Load ``image`` as RGB, upright; large JPEG files at reduced scale.

    Returns the RGB image (``image`` itself when it is an upright RGB Pillow
    image: do not modify it) and, with ``preprocessing``, the box of it that
    becomes the network input (else ``None``). Only with ``preprocessing``
    may a JPEG file be decoded at reduced scale.
    """
    if not isinstance(image, _PATH_TYPES):
        if isinstance(image, Image.Image):
            orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
            if orientation != 1:
                image = ImageOps.exif_transpose(image)
        else:
            image = Image.fromarray(np.ascontiguousarray(image))
        image = _to_rgb(image)
        box = None if preprocessing is None else _crop_box(*image.size, preprocessing)
        return image, box
    _check_regular_file(image)
    with Image.open(image) as img:
        stored_size = img.size
        reduction = _draft(img, preprocessing)
        img.load()
        orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
        ImageOps.exif_transpose(img, in_place=True)
        img = _to_rgb(img)
    if preprocessing is None:
        return img, None
    if reduction == 1:
        return img, _crop_box(*img.size, preprocessing)
    # The reduced image covers the stored one padded to a multiple of the
    # reduction on its right and bottom; the transposition may move that
    # padding to the left or top of the upright image.
    padding = [-side % reduction for side in stored_size]
    left_from, top_from = _PADDING_SOURCES.get(orientation, (None, None))
    dx = 0 if left_from is None else padding[left_from]
    dy = 0 if top_from is None else padding[top_from]
    if orientation in _TRANSPOSING_ORIENTATIONS:
        stored_size = stored_size[::-1]
    box = _crop_box(*stored_size, preprocessing)
    box = (
        (box[0] + dx) / reduction,
        (box[1] + dy) / reduction,
        (box[2] + dx) / reduction,
        (box[3] + dy) / reduction,
    )
    return img, box


def _draft(img, preprocessing):
    """Ask the decoder for a reduced image if it is much larger than needed.

    Returns the reduction factor (1 where the format has no reduced-scale
    decoding, i.e. everything but JPEG).
    """
    if preprocessing is None:
        return 1
    resize = preprocessing.resize or preprocessing.size
    width, height = img.size
    reduction = 8
    while reduction > 1 and min(width, height) < reduction * _REDUCING_GAP * resize:
        reduction //= 2
    if reduction == 1:
        return 1
    # Pillow picks the largest of 8, 4, 2, 1 that divides the size down to
    # no less than the size asked for: exactly ``reduction`` here.
    result = img.draft(None, (width // reduction, height // reduction))
    if result is None:
        return 1
    return round(width / result[1][2])


def _to_rgb(img):
    """Convert a Pillow image of any mode to 8-bit RGB (see `load_image`)."""
    if img.mode == "RGB":
        return img
    if img.mode in _WIDE_INT_MODES:
        pixels = np.clip(np.asarray(img, dtype=np.int64), 0, 65535)
        img = Image.fromarray(((pixels + 128) // 257).astype(np.uint8))
    elif img.mode == "F":
        pixels = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0)
        img = Image.fromarray(np.clip(np.rint(pixels * 255), 0, 255).astype(np.uint8))
    elif img.mode in _ALPHA_MODES or "transparency" in img.info:
        background = Image.new("RGBA", img.size, _WHITE)
        img = Image.alpha_composite(background, img.convert("RGBA"))
    return img.convert("RGB")


def _crop_box(width, height, preprocessing):
    """Box of the source image that becomes the network input.

    Resizing the shorter side to ``resize`` then cropping the central square
    of ``size`` equals resizing this box straight to ``size`` x ``size`` (the
    same filter positions and weights; Pillow's 8-bit rounding may differ by
    1 or 2 levels), without materialising the resized image, which matters
    for very elongated images.
    """
    resize = preprocessing.resize or preprocessing.size
    size = preprocessing.size
    if width <= height:
        new_w, new_h = resize, int(resize * height / width)
    else:
        new_w, new_h = int(resize * width / height), resize
    sx, sy = width / new_w, height / new_h
    left = round((new_w - size) / 2)
    top = round((new_h - size) / 2)
    return (left * sx, top * sy, (left + size) * sx, (top + size) * sy)


@validate_params(
    {
        "image": "no_validation",  # checked with a message naming the kinds
        "preprocessing": [ImagePreprocessing],
        "out": [np.ndarray, None],
    },
    prefer_skip_nested_validation=True,
)
def preprocess_image(image, preprocessing, *, out=None):
    """Turn one image into the network input.

    Parameters
    ----------
    image : str, bytes, os.PathLike, PIL.Image.Image or ndarray
        Anything :func:`load_image` accepts.
    preprocessing : ImagePreprocessing
        Resizing, cropping and normalisation of the network.
    out : ndarray of shape (3, size, size), default=None
        A writeable float32 (or float64) array to write the result into,
        e.g. a row of a batch; a new float32 array if ``None``.

    Returns
    -------
    array : ndarray of shape (3, size, size)
        The preprocessed image (``out`` if given), channels first in
        ``preprocessing.channel_order``. Values are computed in float32.

    Raises
    ------
    ValueError
        If ``out`` has the wrong shape or dtype, or is read-only. Otherwise
        the errors of :func:`load_image`.

    Notes
    -----
    The values are those of the direct pipeline (Pillow's antialiased
    bilinear resize of the crop box to ``size`` x ``size``, then
    ``(p * scale - mean) / std`` in float32), bit for bit, for arrays, Pillow
    images and files of every format, with one exception: a JPEG file whose
    shorter side is at least four times ``resize`` is decoded at 1/2, 1/4 or
    1/8 scale by libjpeg's DCT scaling (Pillow's :meth:`PIL.Image.Image.draft`),
    keeping at least twice ``resize``, and the antialiased resize starts
    from there: a 12-megapixel photo is preprocessed several times faster
    for a 224 x 224 network, and the result differs from the full-scale
    decode by less than JPEG compression at quality 90 changes the pixels
    (``benchmarks/preprocessing.py`` measures both; the numbers are on the
    benchmarks page).

    An RGB or grey array whose shorter side is already ``resize`` pixels is
    cropped without a copy; everything else is converted once by Pillow.
    Every step but a little bookkeeping runs in Pillow or NumPy calls that
    release the GIL, so that images can be preprocessed by threads.

    Examples
    --------
    >>> import numpy as np
    >>> from skfishing import ImagePreprocessing
    >>> from skfishing._extraction.images import preprocess_image
    >>> prep = ImagePreprocessing(4, scale=1.0, mean=(100, 100, 100))
    >>> image = np.full((6, 4, 3), 120, dtype=np.uint8)
    >>> preprocess_image(image, prep)[:, 0, 0]
    array([20., 20., 20.], dtype=float32)
    """
    _check_image_kind(image)
    if out is not None:
        shape = preprocessing.input_shape
        if out.shape != shape or out.dtype not in (np.float32, np.float64) or not out.flags.writeable:
            raise ValueError(
                f"out must be a writeable float32 or float64 array of shape {shape}, "
                f"got a{'' if out.flags.writeable else ' read-only'} {out.dtype} "
                f"array of shape {out.shape}."
            )
    return preprocess_into(image, preprocessing, out)


def preprocess_into(image, preprocessing, out=None):
    """:func:`preprocess_image` without checking its parameters.

    For callers that checked them already (``image`` of a supported kind,
    ``out`` None or as :func:`preprocess_image` requires).
    """
    if out is None:
        out = np.empty(preprocessing.input_shape, dtype=np.float32)
    pixels = _array_crop(image, preprocessing) if isinstance(image, np.ndarray) else None
    if pixels is None:
        img, box = _load(image, preprocessing)
        size = preprocessing.size
        img = img.resize((size, size), Image.Resampling.BILINEAR, box=box)
        pixels = np.asarray(img)
    return _normalise(pixels, preprocessing, out)


def _array_crop(array, preprocessing):
    """The crop of an RGB or grey array whose shorter side is ``resize``.

    Then the resize is the identity and the crop box has integer
    coordinates: the network input is a view of the array. ``None`` for
    other arrays.
    """
    if array.ndim == 3 and array.shape[2] != 3:
        return None
    height, width = array.shape[:2]
    if min(width, height) != (preprocessing.resize or preprocessing.size):
        return None
    left, top, _, _ = _crop_box(width, height, preprocessing)
    left, top, size = int(left), int(top), preprocessing.size
    return array[top : top + size, left : left + size]


def _normalise(pixels, preprocessing, out):
    """Write ``(p * scale - mean) / std`` of uint8 HWC (or HW) into CHW ``out``."""
    scale, mean, std = _normalisation(preprocessing)
    if pixels.ndim == 2:  # grey: the same values in every channel
        channels = pixels[None]
    elif preprocessing.channel_order == "BGR":
        channels = pixels[:, :, ::-1].transpose(2, 0, 1)
    else:
        channels = pixels.transpose(2, 0, 1)
    # De-interleaving the bytes first makes the float32 passes contiguous
    # (faster than casting from the strided view).
    channels = np.ascontiguousarray(channels)
    np.multiply(channels, scale, out=out, dtype=np.float32)
    np.subtract(out, mean, out=out, dtype=np.float32)
    np.divide(out, std, out=out, dtype=np.float32)
    return out
