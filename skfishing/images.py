"""Image decoding and preprocessing for pretrained networks.

The pipeline follows section 5.2 of Gordo et al. (BMVC 2015): decode the
image, resize its shorter side, take the central square crop (the aspect
ratio is never distorted), then apply the normalisation and channel order the
network was trained with. :func:`iter_batches` runs it in a thread pool ahead
of the consumer, so that inference never waits on JPEG decoding.
"""

from __future__ import annotations

import math
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from numbers import Integral, Real

import numpy as np
from PIL import Image, ImageOps
from tqdm.auto import tqdm

__all__ = [
    "ImagePreprocessing",
    "iter_batches",
    "load_image",
    "preprocess_image",
]

# Batches decoded ahead of the one the consumer is working on.
_PREFETCH_BATCHES = 2

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


def iter_batches(
    X,
    input_shape,
    preprocessing=None,
    *,
    batch_size=32,
    dtype=np.float32,
    n_jobs=None,
    progress=False,
    desc=None,
    skip=None,
):
    """Validate network input and iterate over it in batches.

    Parameters
    ----------
    X : ndarray or sequence of images
        Either a numeric array of shape ``(n_samples, *input_shape)``,
        taken as already preprocessed network input, or (only when
        ``preprocessing`` is given) images: a sequence whose elements are
        file paths (``str`` or :class:`pathlib.Path`), PIL images or
        ``uint8`` arrays of shape ``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)``
        (kinds may be mixed), or a ``uint8`` array of shape
        ``(n_samples, H, W)``, ``(n_samples, H, W, 3)`` or
        ``(n_samples, H, W, 4)``.
    input_shape : tuple
        Shape of one sample as the network takes it, e.g. ``(3, 224, 224)``
        or ``(n_features,)``; ``None`` entries accept any length.
    preprocessing : ImagePreprocessing, default=None
        The network's image preprocessing; ``None`` for networks that do
        not take images, which then only accept arrays.
    batch_size : int, default=32
        Number of samples per batch (the last batch may be smaller).
    dtype : dtype, default=np.float32
        Dtype of the batches.
    n_jobs : int, default=None
        Number of threads decoding images; ``None`` means
        ``min(4, os.cpu_count())`` and ``-1`` all CPUs. Unused for arrays.
    progress : bool, default=False
        Whether to show a tqdm progress bar counting samples.
    desc : str, default=None
        Label of the progress bar.
    skip : array-like of bool of shape (n_samples,), default=None
        Samples not to yield (e.g. whose features are cached): their kind
        and shape are validated, but they are neither decoded nor checked
        for NaN (a cached sample was checked when it was first computed).
        Batches hold the other samples, in order.

    Returns
    -------
    n_samples : int
        Number of samples in ``X``.
    batches : iterator of ndarray
        Batches of shape ``(n, *sample_shape)`` in the order of ``X``; array
        input gives views of it unless cast or ``skip`` is used.
        Images are decoded by a thread pool up to two batches ahead of the
        consumer. An image that cannot be read raises, when its batch is
        reached, an error naming its position and file.

    Raises
    ------
    TypeError
        If ``X`` or one of its elements has an unsupported type.
    ValueError
        If ``X`` is empty, has the wrong shape, contains NaN or infinity
        (the message names the first bad sample), or the preprocessing does
        not produce ``input_shape``.
    """
    input_shape = tuple(input_shape)
    batch_size = _check_positive_int(batch_size, "batch_size")
    n_jobs = _check_n_jobs(n_jobs)
    images = _as_images(X, preprocessing)
    if images is None:
        X = _check_tensor(X, input_shape, dtype, preprocessing)
        n_samples = len(X)
    else:
        _check_shape_compatible(preprocessing.input_shape, input_shape)
        n_samples = len(images)
    if n_samples == 0:
        raise ValueError("Found 0 samples, while at least 1 is required.")
    rows = range(n_samples)
    if skip is not None:
        skip = np.asarray(skip)
        if skip.dtype != bool or skip.shape != (n_samples,):
            raise ValueError(
                f"skip must be a boolean array of shape ({n_samples},), got "
                f"dtype {skip.dtype} and shape {skip.shape}."
            )
        if skip.any():
            rows = np.flatnonzero(~skip)
    if images is None:
        _check_finite(X, rows)
        batches = _array_batches(X, rows, batch_size)
    else:
        batches = _image_batches(images, rows, preprocessing, batch_size, dtype, n_jobs)
    return n_samples, _with_progress(batches, len(rows), progress, desc)


def _check_positive_int(value, name):
    if not isinstance(value, Integral) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def _check_n_jobs(n_jobs):
    cpus = os.cpu_count() or 1
    if n_jobs is None:
        return min(4, cpus)
    if n_jobs == -1:
        return cpus
    return _check_positive_int(n_jobs, "n_jobs")


def _as_images(X, preprocessing):
    """Return ``X`` as a sequence of images, or None if it is a tensor."""
    if isinstance(X, np.ndarray) and X.dtype != object:
        if preprocessing is None or X.dtype != np.uint8:
            return None
        if X.ndim == 3 and X.shape[2] in (3, 4):
            raise ValueError(
                f"X is a uint8 array of shape {X.shape}, which looks like one image, not a stack "
                "of greyscale images; pass [image] or image[None] for one image."
            )
        if not (X.ndim == 3 or (X.ndim == 4 and X.shape[3] in (3, 4))):
            raise ValueError(
                "A uint8 array is taken as images and must have shape "
                "(n_samples, H, W), (n_samples, H, W, 3) or (n_samples, H, W, 4), "
                f"got {X.shape}. Preprocessed network input must be a float array."
            )
        return X
    if preprocessing is None:
        return None
    if isinstance(X, (str, os.PathLike, Image.Image)) or not hasattr(X, "__iter__"):
        raise TypeError(
            "X must be a sequence of images (file paths, PIL images or uint8 "
            f"arrays) or an array, got {type(X).__name__}; wrap a single image "
            "in a list."
        )
    images = list(X)
    for index, image in enumerate(images):
        _check_image_kind(image, index)
    return images


def _check_image_kind(image, index):
    if isinstance(image, (str, os.PathLike, Image.Image)):
        return
    if isinstance(image, np.ndarray):
        try:
            _check_image_array(image)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"image {index}: {exc}") from None
        return
    raise TypeError(
        f"image {index} has type {type(image).__name__}; images must be file paths "
        "(str or pathlib.Path), PIL.Image.Image or uint8 arrays."
    )


def _check_tensor(X, input_shape, dtype, preprocessing):
    X = np.asarray(X)
    if X.dtype.kind not in "fiu":
        hint = (
            " This model has no image preprocessing, so it does not take images."
            if preprocessing is None
            else ""
        )
        raise TypeError(f"X must be a numeric array, got dtype {X.dtype}.{hint}")
    expected = ("n_samples",) + tuple("any" if d is None else d for d in input_shape)
    if X.ndim != len(expected) or any(
        d is not None and d != actual for d, actual in zip(input_shape, X.shape[1:])
    ):
        hint = ""
        if preprocessing is not None:
            hint = (
                " Arrays of floats are taken as preprocessed network input; "
                "pass uint8 images or a list of images to apply the model's "
                "preprocessing."
            )
        raise ValueError(
            f"X has shape {X.shape} but the network expects "
            f"({', '.join(map(str, expected))}).{hint}"
        )
    with np.errstate(over="ignore"):  # reported below as infinity
        X = X.astype(dtype, copy=False)
    return X


def _check_finite(X, rows):
    """Check the samples ``rows`` of a float array, naming the first bad one."""
    if X.dtype.kind != "f":
        return
    for start in range(0, len(rows), 1024):
        chunk_rows = rows[start : start + 1024]
        chunk = X[chunk_rows] if not isinstance(rows, range) else X[chunk_rows.start : chunk_rows.stop]
        # A row sums to NaN or infinity iff it holds one, or its sum overflows:
        # only such rows get the exact (slower) check.
        finite = np.isfinite(np.einsum("ij->i", chunk.reshape(len(chunk), -1)))
        for i in np.flatnonzero(~finite):
            finite[i] = np.isfinite(chunk[i]).all()
        if not finite.all():
            bad = int(np.flatnonzero(~finite)[0])
            what = "NaN" if np.isnan(chunk[bad]).any() else "infinity"
            raise ValueError(
                f"X contains {what} in sample {chunk_rows[bad]} (after casting to "
                f"{X.dtype}); the network input must be finite."
            )


def _check_shape_compatible(produced, input_shape):
    if len(produced) != len(input_shape) or any(
        d is not None and d != p for d, p in zip(input_shape, produced)
    ):
        raise ValueError(
            f"The image preprocessing produces samples of shape {produced} but "
            f"the network expects {input_shape}."
        )


def _describe(image):
    if isinstance(image, (str, os.PathLike)):
        return repr(os.fspath(image))
    if isinstance(image, Image.Image):
        return f"PIL image, mode {image.mode}, size {image.size}"
    return f"array of shape {image.shape}"


def _load_one(image, index, preprocessing):
    try:
        return preprocess_image(image, preprocessing)
    except Exception as exc:  # Pillow raises many kinds on corrupt files
        raise _image_error(exc, image, index) from exc


def _image_error(exc, image, index):
    message = f"image {index} ({_describe(image)}): {exc}"
    if isinstance(exc, Image.DecompressionBombError):
        return ValueError(
            f"{message}. If the file is trusted, raise PIL.Image.MAX_IMAGE_PIXELS."
        )
    if isinstance(image, (str, os.PathLike)) and os.path.isfile(image):
        if os.path.getsize(image) == 0:
            message += " (the file is empty)"
    if isinstance(exc, (OSError, ValueError, TypeError)):
        try:
            return type(exc)(message)
        except Exception:  # exception types with another signature
            pass
    return OSError(message)


def _array_batches(X, rows, batch_size):
    for start in range(0, len(rows), batch_size):
        if isinstance(rows, range):
            yield X[start : start + batch_size]
        else:
            yield X[rows[start : start + batch_size]]


def _image_batches(images, rows, preprocessing, batch_size, dtype, n_jobs):
    n_rows = len(rows)
    in_flight = (_PREFETCH_BATCHES + 1) * batch_size
    pool = ThreadPoolExecutor(max_workers=n_jobs, thread_name_prefix="skfishing")
    pending = deque()
    submitted = 0
    try:
        for start in range(0, n_rows, batch_size):
            while submitted < min(n_rows, start + in_flight):
                index = int(rows[submitted])
                pending.append(
                    pool.submit(_load_one, images[index], index, preprocessing)
                )
                submitted += 1
            stop = min(start + batch_size, n_rows)
            batch = np.empty((stop - start,) + preprocessing.input_shape, dtype=dtype)
            for row in batch:
                row[...] = pending.popleft().result()
            yield batch
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _with_progress(batches, n_samples, progress, desc):
    with tqdm(total=n_samples, desc=desc, disable=not progress, unit="sample") as bar:
        try:
            for batch in batches:
                yield batch
                bar.update(len(batch))
        finally:
            batches.close()
