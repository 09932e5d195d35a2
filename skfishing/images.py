"""Image decoding and preprocessing for pretrained networks.

The pipeline follows section 5.2 of Gordo et al. (BMVC 2015): decode the
image, resize its shorter side, take the central square crop (the aspect
ratio is never distorted), then apply the normalisation and channel order the
network was trained with. :func:`skfishing.batches.iter_batches` runs it in a
thread pool ahead of the network.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from numbers import Integral, Real

import numpy as np
from PIL import Image, ImageOps

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


@dataclass(frozen=True)
class ImagePreprocessing:
    """How to turn an image into the input tensor of a network.

    The image is resized so that its shorter side is ``resize`` pixels
    (bilinear interpolation with Pillow's antialiasing, as in torchvision),
    the central ``size`` x ``size`` square is cropped, then every pixel
    ``p`` (8-bit RGB values) becomes ``(p * scale - mean) / std`` and the
    channels are put in ``channel_order``, channels first.

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

    Examples
    --------
    >>> from skfishing.images import ImagePreprocessing
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

    def __post_init__(self):
        for field in ("size", "resize"):
            value = getattr(self, field)
            if field == "resize" and value is None:
                continue
            if not isinstance(value, Integral) or isinstance(value, bool) or value < 1:
                raise ValueError(
                    f"ImagePreprocessing.{field} must be a positive integer, "
                    f"got {value!r}."
                )
            object.__setattr__(self, field, int(value))
        if self.resize is not None and self.resize < self.size:
            raise ValueError(
                f"ImagePreprocessing.resize ({self.resize}) must be at least "
                f"size ({self.size}): the crop is taken inside the resized image."
            )
        if self.channel_order not in ("RGB", "BGR"):
            raise ValueError(
                "ImagePreprocessing.channel_order must be 'RGB' or 'BGR', "
                f"got {self.channel_order!r}."
            )
        if not _is_positive_real(self.scale):
            raise ValueError(
                "ImagePreprocessing.scale must be a positive finite number, "
                f"got {self.scale!r}."
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
                    f"ImagePreprocessing.{field} must be 3 {kind} numbers "
                    f"(RGB order), got {value!r}."
                )
            object.__setattr__(self, field, values)

    @property
    def input_shape(self):
        """Shape ``(3, size, size)`` of one preprocessed image."""
        return (3, self.size, self.size)


def _is_positive_real(value):
    return (
        isinstance(value, Real)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def load_image(image):
    """Load an image as an 8-bit RGB :class:`PIL.Image.Image`.

    Parameters
    ----------
    image : str, os.PathLike, PIL.Image.Image or ndarray
        A file path, a Pillow image, or a ``uint8`` array of shape
        ``(H, W)`` (grey), ``(H, W, 3)`` (RGB) or ``(H, W, 4)`` (RGBA).

    Returns
    -------
    image : PIL.Image.Image
        The image in mode ``"RGB"``, upright according to its EXIF
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
    PIL.UnidentifiedImageError
        If a file is not an image Pillow can read (including empty files).
    OSError
        If a file is truncated or corrupt.
    PIL.Image.DecompressionBombError
        If an image has more than twice ``PIL.Image.MAX_IMAGE_PIXELS`` pixels.
    TypeError, ValueError
        If ``image`` is of another type, or an array of the wrong dtype or
        shape.
    """
    if isinstance(image, (str, os.PathLike)):
        with Image.open(image) as img:
            img.load()
            return _to_rgb(ImageOps.exif_transpose(img))
    if isinstance(image, Image.Image):
        return _to_rgb(ImageOps.exif_transpose(image))
    if isinstance(image, np.ndarray):
        _check_image_array(image)
        return _to_rgb(Image.fromarray(np.ascontiguousarray(image)))
    raise TypeError(
        "An image must be a file path, a PIL.Image.Image or a uint8 array, "
        f"got {type(image).__name__}."
    )


def _check_image_array(array):
    if array.dtype != np.uint8:
        raise TypeError(
            f"Image arrays must have dtype uint8 (0-255 pixels), got {array.dtype}. "
            "Preprocessed float input must be one array of shape "
            "(n_samples, *input_shape)."
        )
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ValueError(
            "Image arrays must have shape (H, W), (H, W, 3) or (H, W, 4), "
            f"got {array.shape}."
        )
    if 0 in array.shape:
        raise ValueError(f"Image array is empty, shape {array.shape}.")


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


def preprocess_image(image, preprocessing):
    """Turn one image into the network input.

    Parameters
    ----------
    image : str, os.PathLike, PIL.Image.Image or ndarray
        Anything :func:`load_image` accepts.
    preprocessing : ImagePreprocessing
        Resizing, cropping and normalisation of the network.

    Returns
    -------
    array : ndarray of shape (3, size, size), dtype float32
        The preprocessed image, channels first in
        ``preprocessing.channel_order``.
    """
    img = load_image(image)
    size = preprocessing.size
    box = _crop_box(img.width, img.height, preprocessing)
    img = img.resize((size, size), Image.Resampling.BILINEAR, box=box)
    pixels = np.asarray(img, dtype=np.float32)
    mean = np.asarray(preprocessing.mean, dtype=np.float32)
    std = np.asarray(preprocessing.std, dtype=np.float32)
    pixels = (pixels * np.float32(preprocessing.scale) - mean) / std
    if preprocessing.channel_order == "BGR":
        pixels = pixels[:, :, ::-1]
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))
