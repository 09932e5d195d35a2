"""Network input: validation and batches, decoded ahead of the network.

:func:`iter_batches` takes what a user passes to ``transform`` (a float
array of network inputs, or images: paths, PIL images, uint8 arrays), checks
it and yields batches of network input. Images are decoded and preprocessed
(:mod:`skfishing._extraction.images`) by a thread pool ahead of the consumer, so that the
network never waits on JPEG decoding.
"""

from __future__ import annotations

import itertools
import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from numbers import Integral

import numpy as np
from PIL import Image
from sklearn.utils._param_validation import Interval, validate_params
from tqdm.auto import tqdm

from .images import ImagePreprocessing, check_image_array, preprocess_into

__all__ = ["iter_batches"]

# What is taken as the path of an image file (bytes: any name POSIX allows).
_PATH_TYPES = (str, bytes, os.PathLike)
# Batches decoded ahead of the one the consumer is working on.
_PREFETCH_BATCHES = 2
# Images decoded by one task of the thread pool, at most: fewer, larger tasks
# keep the pool's cost per task from limiting the threads (two threads against
# one on uint8 256x320 arrays, batch 32: 1.56x with 1 per task, 1.67x with 8,
# 1.72x with 16).
_IMAGES_PER_TASK = 16

#: Constraint of ``batch_size`` (here and in the estimators that pass it on).
BATCH_SIZE = [Interval(Integral, 1, None, closed="left")]
#: Constraint of ``n_jobs``: joblib's convention (-1 all CPUs, -2 all but one, None the default).
N_JOBS = [Interval(Integral, None, -1, closed="right"), Interval(Integral, 1, None, closed="left"), None]


@validate_params(
    {
        "X": "no_validation",  # checked below, with messages that name the bad sample
        "input_shape": [tuple, list],
        "preprocessing": [ImagePreprocessing, None],
        "batch_size": BATCH_SIZE,
        "dtype": "no_validation",
        "n_jobs": N_JOBS,
        "progress": ["boolean"],
        "desc": [str, None],
        "skip": ["array-like", None],
        "check_finite": ["boolean"],
    },
    prefer_skip_nested_validation=True,
)
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
    check_finite=True,
):
    """Validate network input and iterate over it in batches.

    Parameters
    ----------
    X : ndarray or sequence of images
        Either a numeric array of shape ``(n_samples, *input_shape)``,
        taken as already preprocessed network input, or (only when
        ``preprocessing`` is given) images: a sequence whose elements are
        file paths (``str``, ``bytes`` or :class:`pathlib.Path`), PIL images or
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
        ``min(4, os.cpu_count())``, ``-1`` all CPUs, ``-2`` all but one, and
        so on, as in joblib. Unused for arrays.
    progress : bool, default=False
        Whether to show a tqdm progress bar counting samples, when standard
        error is a terminal (never in log files).
    desc : str, default=None
        Label of the progress bar.
    skip : array-like of bool of shape (n_samples,), default=None
        Samples not to yield (e.g. whose features are cached): their kind
        and shape are validated, but they are neither decoded nor checked
        for NaN (a cached sample was checked when it was first computed).
        Batches hold the other samples, in order.
    check_finite : bool, default=True
        Check that float array input holds no NaN or infinity (one pass over
        the samples on the host). Pass False when the consumer checks, as
        :class:`~skfishing.DeepFisherTransformer` does on the device.

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
    checked = check_input(X, input_shape, preprocessing)
    return len(checked), checked.batches(
        batch_size=batch_size,
        dtype=dtype,
        n_jobs=n_jobs,
        progress=progress,
        desc=desc,
        skip=skip,
        check_finite=check_finite,
    )


class CheckedInput:
    """Network input that :func:`check_input` validated: what batches are cut from.

    Attributes
    ----------
    samples : ndarray or list
        The samples: a numeric array of network inputs, a uint8 array of
        images, or a list of images (paths, PIL images, uint8 arrays).
    images : bool
        Whether the samples are images, to decode and preprocess.
    input_shape : tuple
        Shape of one sample as the network takes it.
    preprocessing : ImagePreprocessing or None
        The images' preprocessing.
    """

    def __init__(self, samples, images, input_shape, preprocessing):
        self.samples = samples
        self.images = images
        self.input_shape = input_shape
        self.preprocessing = preprocessing

    def __len__(self):
        return len(self.samples)

    @property
    def sample_shape(self):
        """The shape of one sample of network input."""
        return tuple(self.preprocessing.input_shape) if self.images else tuple(self.samples.shape[1:])

    def batches(
        self,
        *,
        batch_size=32,
        dtype=np.float32,
        n_jobs=None,
        progress=False,
        desc=None,
        skip=None,
        check_finite=True,
    ):
        """Batches of network input, as :func:`iter_batches` describes; nothing is checked again.

        Returns
        -------
        batches : iterator of ndarray
        """
        rows = range(len(self))
        if skip is not None:
            skip = np.asarray(skip)
            if skip.dtype != bool or skip.shape != (len(self),):
                raise ValueError(
                    f"skip must be a boolean array of shape ({len(self)},), got "
                    f"dtype {skip.dtype} and shape {skip.shape}."
                )
            if skip.any():
                rows = np.flatnonzero(~skip)
        if not self.images:
            if check_finite:
                _check_finite(self.samples, rows, dtype)
            batches = _array_batches(self.samples, rows, batch_size, dtype)
        else:
            batches = _image_batches(
                self.samples, rows, self.preprocessing, batch_size, dtype, _threads(n_jobs)
            )
        return _with_progress(batches, len(rows), progress, desc)


@validate_params(
    {
        "X": "no_validation",  # checked below, with messages that name the bad sample
        "input_shape": [tuple, list],
        "preprocessing": [ImagePreprocessing, None],
    },
    prefer_skip_nested_validation=True,
)
def check_input(X, input_shape, preprocessing=None):
    """Validate network input once, for batches to be cut from it later.

    Parameters
    ----------
    X, input_shape, preprocessing
        As in :func:`iter_batches`.

    Returns
    -------
    checked : CheckedInput
        The samples, as :meth:`CheckedInput.batches` takes them.

    Raises
    ------
    TypeError, ValueError
        As :func:`iter_batches`.
    """
    input_shape = tuple(input_shape)
    if isinstance(X, Iterator):  # a generator: read once
        X = list(X)
    images = _as_images(X, preprocessing)
    if images is None:
        samples = _check_tensor(X, input_shape, None, preprocessing)
    else:
        _check_shape_compatible(preprocessing.input_shape, input_shape)
        samples = images
    if len(samples) == 0:
        raise ValueError("Found 0 samples, while at least 1 is required.")
    return CheckedInput(samples, images is not None, input_shape, preprocessing)


def check_input_sums(input_sum, batch, rows):
    """Name the first sample whose network input is not finite.

    ``input_sum`` (one value per sample, summed on the device) is finite
    unless the sample holds NaN or infinity or its sum overflows; only
    those samples are checked on the host.

    Raises
    ------
    ValueError
        Naming the sample (its index in ``rows``).
    """
    if input_sum is None:
        return
    for i in np.flatnonzero(~np.isfinite(input_sum)):
        if not np.isfinite(batch[i]).all():
            what = "NaN" if np.isnan(batch[i]).any() else "infinity"
            raise ValueError(
                f"X contains {what} in sample {rows[i]} (after casting to {batch.dtype}); "
                "the network input must be finite."
            )


def _threads(n_jobs):
    """Number of threads for ``n_jobs``, with joblib's conventions (-1: all CPUs)."""
    cpus = os.cpu_count() or 1
    if n_jobs is None:
        return min(4, cpus)
    if n_jobs < 0:
        return max(1, cpus + 1 + int(n_jobs))
    return int(n_jobs)


def from_frame(X):
    """The images of a one-column pandas DataFrame, as a list; other input as it is."""
    if not (hasattr(X, "columns") and hasattr(X, "iloc")):
        return X
    if X.shape[1] != 1:
        raise ValueError(
            f"X is a DataFrame with {X.shape[1]} columns {list(X.columns)[:5]}; pass the one "
            "column that holds the images (file paths, PIL images or uint8 arrays), e.g. X['path']."
        )
    return list(X.iloc[:, 0])


def _as_images(X, preprocessing):
    """Return ``X`` as a sequence of images, or None if it is a tensor."""
    if preprocessing is not None:
        X = from_frame(X)
    if isinstance(X, np.ndarray) and X.dtype.kind in "US" and preprocessing is not None:
        X = X.tolist() if X.ndim == 1 else X  # an array of file paths is a list of them
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
    if isinstance(X, _PATH_TYPES + (Image.Image,)) or not hasattr(X, "__iter__"):
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
    if isinstance(image, _PATH_TYPES + (Image.Image,)):
        return
    if isinstance(image, np.ndarray):
        try:
            check_image_array(image)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"image {index}: {exc}") from None
        return
    raise TypeError(
        f"image {index} has type {type(image).__name__}; images must be file paths "
        "(str, bytes or pathlib.Path), PIL.Image.Image or uint8 arrays."
    )


def _check_tensor(X, input_shape, dtype, preprocessing):
    X = np.asarray(X)
    if X.dtype.kind not in "fiu":
        if X.dtype.kind in "US" and preprocessing is not None:
            hint = f" An array of file paths must be 1-D, one path per sample, got shape {X.shape}."
        elif X.dtype.kind in "USO" and preprocessing is None:
            hint = (
                " This model has no image preprocessing, so it does not take images: give it one "
                "(DeepFisherTransformer(model, preprocessing=ImagePreprocessing(...)), a JSON file "
                "net.json beside net.onnx, or skfishing.register_model(...))."
            )
        else:
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
            f"X has shape {X.shape} but the network expects ({', '.join(map(str, expected))}).{hint}"
        )
    return X


def _cast(array, dtype):
    """``array`` as a C-contiguous array of ``dtype`` (the same array when it is one)."""
    with np.errstate(over="ignore", invalid="ignore"):  # overflows are reported as infinity
        return np.ascontiguousarray(array, dtype=dtype)


def _check_finite(X, rows, dtype):
    """Check the samples ``rows`` of an array cast to ``dtype``, naming the first bad one."""
    if np.dtype(dtype).kind != "f":
        return
    for start in range(0, len(rows), 1024):
        chunk_rows = rows[start : start + 1024]
        chunk = X[chunk_rows] if not isinstance(rows, range) else X[chunk_rows.start : chunk_rows.stop]
        chunk = _cast(chunk, dtype)
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
                f"{chunk.dtype}); the network input must be finite."
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
    if isinstance(image, _PATH_TYPES):
        path = os.fsdecode(image)
        return repr(path if len(path) <= 120 else path[:80] + "…" + path[-20:])
    if isinstance(image, Image.Image):
        return f"PIL image, mode {image.mode}, size {image.size}"
    return f"array of shape {image.shape}"


def image_error(exc, image, index):
    message = f"image {index} ({_describe(image)}): {exc}"
    if isinstance(exc, Image.DecompressionBombError):
        return ValueError(f"{message}. If the file is trusted, raise PIL.Image.MAX_IMAGE_PIXELS.")
    if isinstance(image, _PATH_TYPES) and os.path.isfile(image):
        if os.path.getsize(image) == 0:
            message += " (the file is empty)"
    if isinstance(exc, (OSError, ValueError, TypeError)):
        try:
            return type(exc)(message)
        except Exception:  # exception types with another signature
            pass
    return OSError(message)


def _array_batches(X, rows, batch_size, dtype):
    for start in range(0, len(rows), batch_size):
        if isinstance(rows, range):
            yield _cast(X[start : start + batch_size], dtype)
        else:
            yield _cast(X[rows[start : start + batch_size]], dtype)


def _image_batches(images, rows, preprocessing, batch_size, dtype, n_jobs):
    """Batches of preprocessed images, decoded by ``n_jobs`` threads ahead of the consumer.

    Each batch is allocated when it is submitted and the threads write
    straight into its rows. A task decodes a few images in a row (at most
    :data:`_IMAGES_PER_TASK`), so that the pool's cost per task does not
    keep the threads from scaling.
    """
    n_rows = len(rows)
    starts = iter(range(0, n_rows, batch_size))
    pool = ThreadPoolExecutor(max_workers=n_jobs, thread_name_prefix="skfishing")
    pending = deque()

    def submit(start):
        indices = [int(i) for i in rows[start : start + batch_size]]
        batch = np.empty((len(indices),) + preprocessing.input_shape, dtype=dtype)
        step = max(1, min(_IMAGES_PER_TASK, -(-len(indices) // n_jobs)))
        tasks = [
            pool.submit(_load_into, images, indices[a : a + step], preprocessing, batch[a : a + step])
            for a in range(0, len(indices), step)
        ]
        pending.append((batch, tasks))

    try:
        for start in itertools.islice(starts, _PREFETCH_BATCHES + 1):
            submit(start)
        while pending:
            batch, tasks = pending.popleft()
            for task in tasks:  # in order: the first bad image of the batch is reported
                task.result()
            yield batch  # meanwhile, the next two batches decode
            start = next(starts, None)
            if start is not None:
                submit(start)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _load_into(images, indices, preprocessing, out):
    for index, row in zip(indices, out):
        try:
            preprocess_into(images[index], preprocessing, row)
        except Exception as exc:  # Pillow raises many kinds on corrupt files
            raise image_error(exc, images[index], index) from exc


def _with_progress(batches, n_samples, progress, desc):
    # disable=None: tqdm stays quiet when standard error is not a terminal
    with tqdm(total=n_samples, desc=desc, disable=None if progress else True, unit="sample") as bar:
        try:
            for batch in batches:
                yield batch
                bar.update(len(batch))
        finally:
            batches.close()
