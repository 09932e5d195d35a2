"""Data set loaders: PASCAL VOC 2007 and 2012 (devkit folders), a 64x64 VOC 2007
archive, digits.

- :func:`load_voc2007` and :func:`load_voc2012` read a standard ``VOCdevkit``
  folder into image paths, a ``(n, 20)`` label matrix and a ``difficult``
  mask (the two releases share the layout and the 20 classes);
- :func:`load_voc2007_npz` reads the same information, with the images
  already decoded, from a ``.npz`` archive;
- :func:`load_digits_images` turns scikit-learn's bundled digits into small
  RGB images, an offline data set for examples and smoke tests.
"""

import os
from numbers import Integral
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.utils import Bunch
from sklearn.utils._param_validation import Interval, StrOptions, validate_params

__all__ = [
    "VOC2007_CLASSES",
    "VOC2012_CLASSES",
    "load_digits_images",
    "load_voc2007",
    "load_voc2007_npz",
    "load_voc2012",
]

#: The 20 PASCAL VOC2007 classes, in the devkit's order (the column order of
#: the label matrices returned by the loaders).
VOC2007_CLASSES = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)

#: The 20 PASCAL VOC2012 classes: the same as VOC2007's, in the same order.
VOC2012_CLASSES = VOC2007_CLASSES

_MAX_LISTED = 5


def _voc_folder(root, year):
    """Return the ``VOC<year>`` folder given it or the ``VOCdevkit`` above it."""
    root = Path(root)
    name = f"VOC{year}"
    if not root.is_dir():
        raise FileNotFoundError(f"VOC root folder {str(root)!r} does not exist.")
    for candidate in (root / name, root):
        if (candidate / "ImageSets" / "Main").is_dir():
            if candidate == root and root.name.startswith("VOC") and root.name != name:
                raise FileNotFoundError(
                    f"{str(root)!r} looks like another release than {name}; give the "
                    f"VOCdevkit folder or the {name} folder."
                )
            return candidate
    raise FileNotFoundError(
        f"{str(root)!r} is not a PASCAL {name} folder: expected either a "
        f"VOCdevkit folder containing {name}/ImageSets/Main and "
        f"{name}/JPEGImages, or the {name} folder itself containing "
        "ImageSets/Main and JPEGImages."
    )


def _read_lines(path):
    """Non-blank lines of a text file with their 1-based line numbers."""
    if not path.is_file():
        raise FileNotFoundError(f"VOC file {str(path)!r} does not exist.")
    with open(path, encoding="ascii") as f:
        lines = [(number, line.strip()) for number, line in enumerate(f, 1)]
    return [(number, line) for number, line in lines if line]


def _read_split(path):
    """Image ids of ``ImageSets/Main/<split>.txt``, in file order."""
    ids = []
    seen = set()
    for number, line in _read_lines(path):
        fields = line.split()
        if len(fields) != 1:
            raise ValueError(f"{path}, line {number}: expected one image id, got {line!r}.")
        if fields[0] in seen:
            raise ValueError(f"{path}, line {number}: duplicate id {fields[0]!r}.")
        seen.add(fields[0])
        ids.append(fields[0])
    if not ids:
        raise ValueError(f"{path} lists no image id.")
    return ids


def _read_class_labels(path, index):
    """Labels (1, -1 or 0) of ``<class>_<split>.txt`` in the order of ``index``."""
    labels = np.full(len(index), 2, dtype=np.int8)  # 2 = not listed (yet)
    for number, line in _read_lines(path):
        fields = line.split()
        if len(fields) != 2 or fields[1] not in ("1", "-1", "0"):
            raise ValueError(
                f"{path}, line {number}: expected '<image id> <label>' with label 1, -1 or 0; got {line!r}."
            )
        image_id, label = fields
        if image_id not in index:
            raise ValueError(
                f"{path}, line {number}: image id {image_id!r} is not in the split's image list."
            )
        row = index[image_id]
        if labels[row] != 2:
            raise ValueError(f"{path}, line {number}: duplicate id {image_id!r}.")
        labels[row] = int(label)
    missing = [image_id for image_id, row in index.items() if labels[row] == 2]
    if missing:
        raise ValueError(
            f"{path} has no label for {len(missing)} image(s) of the split, e.g. {missing[:_MAX_LISTED]}."
        )
    return labels


@validate_params(
    {"root": [str, os.PathLike], "split": [str]},
    prefer_skip_nested_validation=True,
)
def load_voc2007(root, split="trainval"):
    """Load the image list and labels of a PASCAL VOC2007 devkit folder.

    Reads ``ImageSets/Main/<split>.txt`` (the image ids, whose order the
    result keeps) and the 20 files ``ImageSets/Main/<class>_<split>.txt``
    (lines ``<image id> <label>`` with label ``1`` = present, ``-1`` =
    absent, ``0`` = present only as "difficult" objects). The images are not
    decoded; their paths ``JPEGImages/<id>.jpg`` are checked to exist.

    Parameters
    ----------
    root : str or path-like
        Either the ``VOCdevkit`` folder (containing ``VOC2007/``) or the
        ``VOC2007`` folder itself (containing ``ImageSets/`` and
        ``JPEGImages/``).

    split : str, default="trainval"
        Name of the image set: ``"train"``, ``"val"``, ``"trainval"`` or
        ``"test"`` (the latter in the VOC2007 test release), or any other
        set that has its files in ``ImageSets/Main``.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        With keys

        - ``images``: list of str, the paths of the n JPEG files;
        - ``labels``: ndarray of uint8, shape (n, 20), 1 where the devkit
          label is 1, else 0 (difficult entries are 0);
        - ``difficult``: ndarray of bool, shape (n, 20), True where the
          devkit label is 0; the VOC evaluation ignores these entries (pass
          it to :func:`skfishing.metrics.voc07_average_precision`);
        - ``ids``: ndarray of str, shape (n,), the image ids;
        - ``classes``: ndarray of str, shape (20,), :data:`VOC2007_CLASSES`;
        - ``split``: ndarray of str, shape (n,), `split` for every row (the
          same layout as :func:`load_voc2007_npz`).

    Raises
    ------
    FileNotFoundError
        If `root` is not a devkit folder, if a file of the split is missing
        (the message names it) or if JPEG files are missing (the message
        lists the first few).
    ValueError
        If a line is malformed (the message gives file and line number), or
        if a class file lists an id that is not in the split's list, lists an
        id twice or lacks one.

    See Also
    --------
    load_voc2007_npz : The same labels with decoded 64x64 images.
    skfishing.metrics.voc07_average_precision : The VOC2007 metric.

    Examples
    --------
    >>> from skfishing.datasets import load_voc2007
    >>> voc = load_voc2007("~/data/VOCdevkit", split="val")  # doctest: +SKIP
    >>> voc.labels.shape  # doctest: +SKIP
    (2510, 20)
    """
    return _load_voc(root, split, "2007")


@validate_params(
    {"root": [str, os.PathLike], "split": [str]},
    prefer_skip_nested_validation=True,
)
def load_voc2012(root, split="trainval"):
    """Load the image list and labels of a PASCAL VOC2012 devkit folder.

    VOC2012 has the layout, the file formats and the 20 classes of VOC2007
    (see :func:`load_voc2007`): ``ImageSets/Main/<split>.txt`` lists the
    image ids (such as ``2008_000002``), ``ImageSets/Main/<class>_<split>.txt``
    their labels (``1`` present, ``-1`` absent, ``0`` difficult only) and
    ``JPEGImages/<id>.jpg`` are the images. The public release labels the
    ``train`` (5,717 images), ``val`` (5,823) and ``trainval`` sets; the test
    labels are kept by the evaluation server, which is why the paper's
    Table 1 reports VOC2012 on ``val`` (fit on ``train``).

    Parameters
    ----------
    root : str or path-like
        Either the ``VOCdevkit`` folder (containing ``VOC2012/``) or the
        ``VOC2012`` folder itself (containing ``ImageSets/`` and
        ``JPEGImages/``).

    split : str, default="trainval"
        Name of the image set: ``"train"``, ``"val"`` or ``"trainval"``, or
        any other set that has its files in ``ImageSets/Main``.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        The layout of :func:`load_voc2007`: ``images`` (paths), ``labels``
        (uint8, shape (n, 20)), ``difficult`` (bool, shape (n, 20)),
        ``ids``, ``classes`` (:data:`VOC2012_CLASSES`) and ``split``.

    Raises
    ------
    FileNotFoundError
        If `root` is not a devkit folder, or a file of the split or a JPEG
        file is missing (the message names it).
    ValueError
        If a line is malformed (the message gives file and line number), or
        a class file disagrees with the split's list.

    See Also
    --------
    load_voc2007 : The same for VOC2007.
    skfishing.metrics.voc07_average_precision : The 11-point AP of the
        VOC2007 devkit (VOC2012's devkit uses the area under the
        interpolated curve; :func:`sklearn.metrics.average_precision_score`
        is close to it).

    Examples
    --------
    >>> from skfishing.datasets import load_voc2012
    >>> voc = load_voc2012("~/data/VOCdevkit", split="val")  # doctest: +SKIP
    >>> voc.labels.shape  # doctest: +SKIP
    (5823, 20)
    """
    return _load_voc(root, split, "2012")


def _load_voc(root, split, year):
    """Image paths and labels of split ``split`` of the VOC release ``year``."""
    if not isinstance(split, str) or not split or any(c in split for c in "/\\"):
        raise ValueError(f"split must be the name of an image set such as 'trainval'; got {split!r}.")
    folder = _voc_folder(Path(root).expanduser(), year)
    main = folder / "ImageSets" / "Main"
    ids = _read_split(main / f"{split}.txt")
    index = {image_id: row for row, image_id in enumerate(ids)}
    raw = np.column_stack(
        [_read_class_labels(main / f"{name}_{split}.txt", index) for name in VOC2007_CLASSES]
    )
    images = [folder / "JPEGImages" / f"{image_id}.jpg" for image_id in ids]
    missing = [str(path) for path in images if not path.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of the {len(images)} JPEG files of split {split!r} "
            f"are missing, e.g. {missing[:_MAX_LISTED]}."
        )
    return Bunch(
        images=[str(path) for path in images],
        labels=(raw == 1).astype(np.uint8),
        difficult=raw == 0,
        ids=np.array(ids, dtype=str),
        classes=np.array(VOC2007_CLASSES),
        split=np.full(len(ids), split),
    )


_NPZ_KEYS = ("images", "labels", "difficult", "classes", "split", "ids")


@validate_params(
    {"path": [str, os.PathLike], "split": [StrOptions({"train", "val", "trainval"}), None]},
    prefer_skip_nested_validation=True,
)
def load_voc2007_npz(path, split=None):
    """Load PASCAL VOC2007 images and labels from a ``.npz`` archive.

    The archive holds the arrays ``images`` (N, H, W, 3) uint8, ``labels``
    (N, 20) 0/1, ``difficult`` (N, 20) 0/1, ``classes`` (20,) str,
    ``split`` (N,) str (``"train"`` or ``"val"`` per row) and ``ids`` (N,)
    str, and optionally ``orig_hw`` (N, 2), the original image sizes; this is
    the format of ``voc2007_trainval64.npz``, the VOC2007 trainval images
    warped to 64x64.

    Parameters
    ----------
    path : str or path-like
        The ``.npz`` file.

    split : {"train", "val", "trainval"} or None, default=None
        Rows to return: those of the official ``train`` or ``val`` list, or
        all of them (None or ``"trainval"``), in the archive's order.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        The layout of :func:`load_voc2007`, except that ``images`` is an
        ndarray of uint8 of shape (n, H, W, 3); ``split`` gives each row's
        own split (``"train"`` or ``"val"``); ``orig_hw`` is there when the
        archive has it.

    Raises
    ------
    FileNotFoundError
        If `path` does not exist.
    ValueError
        If `split` is not one of the values above or the archive lacks an
        array or has inconsistent ones.

    See Also
    --------
    load_voc2007 : Read a VOCdevkit folder instead.

    Examples
    --------
    >>> from skfishing.datasets import load_voc2007_npz
    >>> voc = load_voc2007_npz("voc2007_trainval64.npz", "train")  # doctest: +SKIP
    >>> voc.images.shape  # doctest: +SKIP
    (2500, 64, 64, 3)
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"VOC2007 archive {str(path)!r} does not exist.")
    with np.load(path, allow_pickle=False) as archive:
        missing = [key for key in _NPZ_KEYS if key not in archive.files]
        if missing:
            raise ValueError(f"{path} lacks the array(s) {missing}.")
        arrays = {key: archive[key] for key in archive.files}
    images = arrays["images"]
    n = len(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(
            f"{path}: images must be uint8 of shape (N, H, W, 3); got {images.dtype} {images.shape}."
        )
    n_classes = len(arrays["classes"])
    for key, shape in [
        ("labels", (n, n_classes)),
        ("difficult", (n, n_classes)),
        ("split", (n,)),
        ("ids", (n,)),
    ]:
        if arrays[key].shape != shape:
            raise ValueError(f"{path}: {key} must have shape {shape}; got {arrays[key].shape}.")
    if split in (None, "trainval"):
        rows = np.arange(n)
    else:
        rows = np.flatnonzero(arrays["split"] == split)
    data = Bunch(
        images=images[rows],
        labels=(arrays["labels"][rows] == 1).astype(np.uint8),
        difficult=arrays["difficult"][rows].astype(bool),
        ids=arrays["ids"][rows].astype(str),
        classes=arrays["classes"].astype(str),
        split=arrays["split"][rows].astype(str),
    )
    if "orig_hw" in arrays:
        data.orig_hw = arrays["orig_hw"][rows]
    return data


@validate_params(
    {"size": [Interval(Integral, 8, None, closed="left")]},
    prefer_skip_nested_validation=True,
)
def load_digits_images(size=32):
    """Load scikit-learn's handwritten digits as small RGB images.

    The 1797 scanned digits of :func:`sklearn.datasets.load_digits` (8x8,
    grey levels 0..16, bundled with scikit-learn, no download) scaled to
    0..255 (a white digit on black, as in the data), enlarged with Pillow's
    bilinear filter to ``size x size`` and repeated over three channels. An
    offline data set for examples and quick tests of the image pipeline.

    Parameters
    ----------
    size : int, default=32
        Height and width of the returned images, at least 8 (8 returns the
        original pixels, rescaled).

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        With keys ``images`` (ndarray of uint8, shape (1797, size, size, 3),
        the three channels equal), ``target`` (ndarray of int, shape
        (1797,), the digit) and ``target_names`` (ndarray, ``0..9``).

    Examples
    --------
    >>> from skfishing.datasets import load_digits_images
    >>> digits = load_digits_images(size=16)
    >>> digits.images.shape, digits.images.dtype
    ((1797, 16, 16, 3), dtype('uint8'))
    >>> digits.target[:5]
    array([0, 1, 2, 3, 4])
    """
    from PIL import Image

    digits = load_digits()
    grey = np.rint(digits.images * (255 / 16)).astype(np.uint8)
    if size != 8:
        grey = np.stack(
            [
                np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))
                for image in grey
            ]
        )
    return Bunch(
        images=np.repeat(grey[..., None], 3, axis=-1),
        target=digits.target,
        target_names=digits.target_names,
    )
