r"""Factorized gradient features: their structured dtype, provenance and files.

:class:`~skfishing.DeepFisherTransformer` returns the gradient
:math:`\partial E / \partial W_k = x_{k-1} \delta_k^\top` of each image as
the two factors :math:`x_{k-1}` and :math:`\delta_k`, in a NumPy structured
array with fields ``"forward"`` and ``"backward"``. Where the features come
from (model, layer, temperature, labels) travels in the dtype's metadata.

:func:`save_features` writes features (gradients, activations or
probabilities) with their provenance and image paths to a ``.npz`` file, the
format of ``skfishing extract``; :func:`load_features` reads them back, ready
for :class:`~skfishing.TraceKernelSVC`.
"""

from __future__ import annotations

import os
import stat
import zipfile
from numbers import Integral
from pathlib import Path

import numpy as np
from sklearn.utils import Bunch, check_array
from sklearn.utils._param_validation import Interval, validate_params
from sklearn.utils.validation import assert_all_finite, check_is_fitted

from ._io.files import atomic_path, check_writable_folder

__all__ = ["gradient_dtype", "save_features", "load_features", "FORMAT", "SOURCE_KEYS"]

#: Value of the ``format`` array of a features file written by
#: :func:`save_features` (and ``skfishing extract``).
FORMAT = "skfishing-features-1"

#: Keys of the provenance that gradient features carry in their dtype's
#: metadata (``labels`` only when the transformer was given labels).
SOURCE_KEYS = ("model_sha256", "layer", "temperature", "labels")

#: The fields of gradient features: :math:`x` (the layer's input) and :math:`\delta`.
FIELDS = ("forward", "backward")


@validate_params(
    {
        "forward_dim": [Interval(Integral, 1, None, closed="left")],
        "backward_dim": [Interval(Integral, 1, None, closed="left")],
        "source": [dict, None],
        "positions": [Interval(Integral, 1, None, closed="left"), None],
    },
    prefer_skip_nested_validation=True,
)
def gradient_dtype(forward_dim, backward_dim, source=None, positions=None):
    r"""Structured dtype of factorized gradient features.

    Parameters
    ----------
    forward_dim, backward_dim : int
        Widths of the ``"forward"`` (:math:`x_{k-1}`) and ``"backward"``
        (:math:`\delta_k`) fields.
    source : dict, default=None
        Where the features come from (model sha256, layer, temperature),
        kept as the dtype's ``metadata``: it travels with the array through
        indexing, concatenation and pickling, so that
        :class:`~skfishing.TraceKernelSVC` can refuse features of another
        model or layer at predict time. None means no provenance.
    positions : int, default=None
        Number T of positions at which the layer is applied (a
        convolution's output pixels, a linear layer's tokens). If None or
        1, the fields are 1-D (an FC layer); else they have shapes
        ``(T, forward_dim)`` and ``(T, backward_dim)``, and a row stands for
        the weight gradient ``sum_t outer(backward[t], forward[t])``.

    Returns
    -------
    dtype : numpy.dtype
        Fields ``"forward"`` (float32, shape ``(forward_dim,)`` or
        ``(positions, forward_dim)``) and ``"backward"`` (float32, shape
        ``(backward_dim,)`` or ``(positions, backward_dim)``).

    Examples
    --------
    >>> from skfishing.features import gradient_dtype
    >>> gradient_dtype(3, 2)
    dtype([('forward', '<f4', (3,)), ('backward', '<f4', (2,))])
    >>> gradient_dtype(3, 2, positions=4)
    dtype([('forward', '<f4', (4, 3)), ('backward', '<f4', (4, 2))])
    """
    lead = () if positions is None or positions == 1 else (int(positions),)
    fields = [
        ("forward", np.float32, lead + (int(forward_dim),)),
        ("backward", np.float32, lead + (int(backward_dim),)),
    ]
    if source is None:
        return np.dtype(fields)
    return np.dtype(fields, metadata=dict(source))


def make_source(model_sha256, layer, temperature, labels=None):
    """The provenance of features: the one place it is built (see :data:`SOURCE_KEYS`).

    ``layer`` is the paper's number of an FC layer, or the name of another
    layer; ``labels`` (None for uniform) is kept as a tuple of floats.
    """
    source = {
        "model_sha256": str(model_sha256),
        "layer": layer if isinstance(layer, str) else int(layer),
        "temperature": float(temperature),
    }
    if labels is not None:
        source["labels"] = tuple(float(v) for v in np.ravel(labels))
    return source


def _source_of(features, transformer):
    """Provenance of ``features``: its dtype metadata, else the transformer's."""
    metadata = features.dtype.metadata
    recorded = None
    if metadata:
        recorded = {key: metadata[key] for key in SOURCE_KEYS if key in metadata}
    if transformer is None:
        return recorded
    source = transformer.feature_source_
    if recorded is not None and recorded != source:
        differ = ", ".join(
            f"{key} {recorded.get(key)!r} (transformer: {source.get(key)!r})"
            for key in SOURCE_KEYS
            if recorded.get(key) != source.get(key)
        )
        raise ValueError(f"features come from another model or setting than transformer: {differ}.")
    return source


def _arrays_to_write(features):
    """The arrays to write for ``features``, and their kind from the layout."""
    if not isinstance(features, np.ndarray):
        raise TypeError(
            "features must be the ndarray returned by DeepFisherTransformer.transform, "
            f"got {type(features).__name__}."
        )
    if features.dtype.names is not None:
        check_layout(features, "features")
        arrays = {name: features[name] for name in ("forward", "backward")}
        kind = "gradient"
    else:
        if features.ndim != 2 or not np.issubdtype(features.dtype, np.floating):
            raise ValueError(
                "features must be a structured array of gradient features or a 2-D float "
                f"array; got dtype {features.dtype} and shape {features.shape}."
            )
        arrays = {"features": features}
        kind = None
    for name, array in arrays.items():
        if array.ndim < 2 or array.size == 0:
            raise ValueError(
                f"features {name!r} must have at least one row and one column; got shape {array.shape}."
            )
        _check_finite(array, f"features {name!r}")
    return arrays, kind


def _check_finite(array, what):
    bad = ~np.isfinite(array.reshape(len(array), -1)).all(axis=1)
    if bad.any():
        raise ValueError(
            f"{what} contains NaN or infinity in row {int(np.flatnonzero(bad)[0])} "
            f"({int(bad.sum())} rows in all)."
        )


def check_output_file(file, overwrite=False, how_to_overwrite="pass overwrite=True"):
    """Check that ``file`` can be written, before any work is done.

    The file must not exist (unless ``overwrite``), must not be a folder or
    another non-regular file (a FIFO, a device), and its folder must exist
    and accept a new file (tried by creating and removing a temporary file).

    Parameters
    ----------
    file : str or path-like
        The output file.
    overwrite : bool, default=False
        Whether an existing regular file may be replaced.
    how_to_overwrite : str, default="pass overwrite=True"
        What the message tells the user to do to replace an existing file.

    Raises
    ------
    FileExistsError, IsADirectoryError, FileNotFoundError, PermissionError, OSError
        With a message that names the file or its folder.
    """
    path = Path(file)
    if path.is_dir():
        raise IsADirectoryError(
            f"output {str(path)!r} is a folder; give a file name, such as {str(path / 'features.npz')!r}"
        )
    if os.path.lexists(path):
        if not overwrite:
            raise FileExistsError(f"output file {str(path)!r} exists; {how_to_overwrite} to replace it")
        if path.exists() and not path.is_file():
            raise OSError(
                f"output {str(path)!r} exists and is not a regular file (a FIFO, "
                "device or socket); choose another file name"
            )
    folder = path.parent
    if not folder.is_dir():
        raise FileNotFoundError(f"output folder {str(folder)!r} does not exist")
    check_writable_folder(folder, "the output folder")


def write_npz(path, arrays, overwrite, how_to_overwrite="pass overwrite=True"):
    """Write ``arrays`` to ``path`` through a temporary file and a rename.

    A failure or an interruption leaves no partial file behind, and an
    existing file is replaced only once the new one is complete.
    """
    path = Path(path)
    # the file may have appeared meanwhile: checked again just before the rename, and
    # without overwrite the name is claimed atomically (a file created in between is kept)
    check = lambda: check_output_file(path, overwrite, how_to_overwrite)  # noqa: E731
    with atomic_path(path, check=check, overwrite=overwrite, hint=how_to_overwrite) as temporary:
        with open(temporary, "wb") as handle:
            np.savez(handle, **arrays)


def _check_widths(arrays, features, transformer):
    """Refuse features that ``transformer`` cannot have computed, or whose provenance is unknown."""
    for (name, array), width in zip(arrays.items(), transformer.feature_widths_):
        if array.shape[1] != width or array.dtype != np.float32:
            raise ValueError(
                f"features {name!r} are {array.dtype} of width {array.shape[1]}, but the transformer "
                f"computes float32 {transformer.features} features of width {width} (layer "
                f"{transformer.layer_}): these features come from elsewhere."
            )
    if transformer.features == "gradient" and not features.dtype.metadata:
        raise ValueError(
            "the gradient features carry no provenance in their dtype (NumPy drops it in some "
            "operations, such as np.save and np.load), so their temperature and labels cannot be "
            "checked against the transformer's. Save the array that transformer.transform "
            "returned, or pass transformer=None to save them without provenance."
        )


def feature_arrays(features, transformer=None, paths=None):
    """Every array of a features file (see :func:`save_features`)."""
    arrays, kind = _arrays_to_write(features)
    if transformer is not None:
        if not all(hasattr(transformer, name) for name in ("features", "fit", "transform")):
            raise TypeError(
                "transformer must be the fitted DeepFisherTransformer that computed the "
                f"features, got {type(transformer).__name__}."
            )
        check_is_fitted(transformer, ["feature_source_", "feature_widths_"])
        wanted = "gradient" if transformer.features == "gradient" else "2-D"
        if (kind == "gradient") != (wanted == "gradient"):
            raise ValueError(
                f"transformer computes {transformer.features!r} features but features "
                f"{'is' if kind == 'gradient' else 'is not'} a structured array of "
                "gradient features."
            )
        kind = transformer.features
    n_samples = len(features)
    source = _source_of(features, transformer)  # a recorded provenance is compared first
    if transformer is not None:
        _check_widths(arrays, features, transformer)
    arrays["format"] = np.array(FORMAT)
    if kind is not None:
        arrays["kind"] = np.array(kind)
    if paths is not None:
        paths = [os.fspath(path) for path in paths]
        if len(paths) != n_samples or not all(isinstance(path, str) for path in paths):
            raise ValueError(
                f"paths must hold one str path per row of features ({n_samples}); got {len(paths)} items."
            )
        arrays["paths"] = np.array(paths, dtype=str).reshape(n_samples)
    if transformer is not None and isinstance(transformer.model, (str, os.PathLike)):
        arrays["model"] = np.array(os.fspath(transformer.model))
    if source:
        arrays["model_sha256"] = np.array(str(source["model_sha256"]))
        arrays["layer"] = np.array(int(source["layer"]))
        if kind != "probabilities":  # the softmax output does not depend on it
            arrays["temperature"] = np.array(float(source["temperature"]))
        if "labels" in source:
            arrays["labels"] = np.array(source["labels"], dtype=np.float64)
    return arrays


@validate_params(
    {
        "file": [str, os.PathLike],
        "features": [np.ndarray],
        "transformer": "no_validation",
        "paths": ["array-like", None],
        "overwrite": ["boolean"],
    },
    prefer_skip_nested_validation=True,
)
def save_features(file, features, transformer=None, *, paths=None, overwrite=False):
    """Write features and their provenance to a ``.npz`` file.

    The file holds the arrays ``forward`` and ``backward`` (gradient
    features) or ``features`` (activations, probabilities), one row per
    image, and, when known, ``kind``, ``paths``, ``model``,
    ``model_sha256``, ``layer``, ``temperature`` and ``labels``; it is the
    format of ``skfishing extract``, read back by :func:`load_features`. The
    file is written under a temporary name and renamed when complete, so an
    error or an interruption never leaves a partial file, nor replaces an
    existing one.

    Parameters
    ----------
    file : str or path-like
        The file to write (written as named: no ``.npz`` is appended).
    features : ndarray
        The output of :meth:`DeepFisherTransformer.transform
        <skfishing.DeepFisherTransformer.transform>`: a structured array of
        gradient features (its provenance is read from its dtype) or a 2-D
        float array.
    transformer : DeepFisherTransformer, default=None
        The fitted transformer that computed ``features``. It gives the
        provenance of activations and probabilities (plain 2-D arrays carry
        none) and the model's name or path. What can be checked is: the
        features' widths and dtype must be those the transformer computes,
        and gradient features must carry provenance in their dtype, equal
        to the transformer's (without it, their temperature and labels
        could not be checked, so they are refused). Without a transformer,
        2-D features are written without provenance.
    paths : sequence of str or path-like, default=None
        The image file of each row.
    overwrite : bool, default=False
        Whether to replace an existing file.

    Raises
    ------
    FileExistsError
        If ``file`` exists and ``overwrite`` is False.
    ValueError
        If ``features`` is not a features array, holds NaN or infinity, or
        disagrees with ``transformer`` (widths, dtype, provenance, or none
        recorded), or ``paths`` has another length.

    See Also
    --------
    load_features : Read the file back.

    Examples
    --------
    >>> from skfishing import DeepFisherTransformer
    >>> from skfishing.datasets import load_digits_images
    >>> from skfishing.features import load_features, save_features
    >>> images = load_digits_images().images[:4]
    >>> fish = DeepFisherTransformer("tinyalexnet", layer=7).fit(images)
    >>> save_features("digits.npz", fish.transform(images), fish)  # doctest: +SKIP
    >>> load_features("digits.npz").features.dtype.names  # doctest: +SKIP
    ('forward', 'backward')
    """
    arrays = feature_arrays(features, transformer, paths)
    check_output_file(file, overwrite)
    write_npz(file, arrays, overwrite)


def _scalar(archive, key, kind, file):
    array = archive[key]
    if array.shape != () or array.dtype.kind not in kind:
        raise ValueError(f"{file}: {key!r} must be a single value; got {array.dtype} {array.shape}.")
    return array.item()


@validate_params({"file": [str, os.PathLike]}, prefer_skip_nested_validation=True)
def load_features(file):
    """Read features written by :func:`save_features` or ``skfishing extract``.

    Gradient features come back as the structured array
    :class:`~skfishing.DeepFisherTransformer` returns, with their provenance
    (model SHA-256, layer, temperature, labels) in the dtype's metadata, so
    that :class:`~skfishing.TraceKernelSVC` accepts them beside features
    computed in memory by the same transformer and refuses those of another
    model or setting. Activations and probabilities come back as 2-D float32
    arrays.

    Parameters
    ----------
    file : str or path-like
        A ``.npz`` file. It is read with ``allow_pickle=False``: loading it
        runs no code.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        With keys

        - ``features``: ndarray, the features, one row per image;
        - ``kind``: str or None, ``"gradient"``, ``"activation"`` or
          ``"probabilities"``;
        - ``paths``: ndarray of str or None, the image file of each row;
        - ``model``: str or None, the model's registered name or path;
        - ``model_sha256``, ``layer``, ``temperature``, ``labels``: the
          provenance (None where unknown; ``labels`` is a tuple of floats,
          None for the uniform default);
        - ``source``: dict or None, the provenance as gradient features
          carry it in their dtype's metadata;
        - ``skipped``: ndarray of str or None, the images left out because
          they could not be read (``skfishing extract --skip-bad``).

    Raises
    ------
    FileNotFoundError
        If ``file`` does not exist.
    IsADirectoryError
        If ``file`` is a folder.
    ValueError
        If ``file`` is not a features file (a FIFO or a device included),
        or its arrays are inconsistent, declare more data than the file
        holds, are not finite or exceed the float32 range (the message
        names the file and the array).
    MemoryError
        If the arrays do not fit in memory (the message names the file).

    See Also
    --------
    save_features : Write such a file.

    Examples
    --------
    >>> from skfishing import TraceKernelSVC
    >>> from skfishing.features import load_features
    >>> train = load_features("train.npz")  # doctest: +SKIP
    >>> svc = TraceKernelSVC(C=1.0).fit(train.features, y_train)  # doctest: +SKIP
    """
    path = Path(file).expanduser()
    _check_input_file(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ValueError(
            f"{str(path)!r} is not a features file written by skfishing extract or save_features: {exc}"
        ) from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{str(path)!r} is a .npy file, not a .npz features file.")
    with archive:
        try:
            _check_declared_sizes(archive)
            return _read_features(archive, path)
        except (ValueError, zipfile.BadZipFile, EOFError) as exc:
            raise ValueError(f"{str(path)!r}: {exc}") from None
        except MemoryError:
            raise MemoryError(f"{str(path)!r}: not enough memory to read its arrays") from None


def _check_input_file(path):
    """Refuse a missing file, a folder, a FIFO or a device, saying which."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"no such features file: {str(path)!r}") from None
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(f"{str(path)!r} is a folder, not a features file (a .npz file)")
    if not stat.S_ISREG(mode):
        what = "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
        raise ValueError(f"{str(path)!r} is {what}, not a features file (a .npz file); nothing was read")


def _check_declared_sizes(archive):
    """Refuse arrays whose header declares more data than the archive holds for them.

    A forged shape such as (10**6, 10**6) would otherwise ask for terabytes
    before anything could tell that the file is too short.
    """
    for info in archive.zip.infolist():
        if not info.filename.endswith(".npy"):
            continue
        with archive.zip.open(info) as member:
            version = np.lib.format.read_magic(member)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(member)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(member)
            declared = int(dtype.itemsize)
            for extent in shape:
                declared *= int(extent)
            available = info.file_size - member.tell()
        if declared > available:
            raise ValueError(
                f"array {info.filename[:-4]!r} declares shape {shape} of {dtype} ({declared:,} bytes) "
                f"but the file holds {max(available, 0):,} bytes for it: the file is damaged or forged."
            )


def _read_features(archive, path):
    files = set(archive.files)
    if "format" in files and _scalar(archive, "format", "U", path) != FORMAT:
        raise ValueError(f"unknown format {archive['format'].item()!r} (this version reads {FORMAT!r}).")
    if {"forward", "backward"} <= files:
        blocks = {name: archive[name] for name in ("forward", "backward")}
    elif "features" in files:
        blocks = {"features": archive["features"]}
    else:
        raise ValueError(
            "no features in the file: expected arrays 'forward' and 'backward', or "
            f"'features'; found {sorted(files)}."
        )
    n_samples = None
    for name, block in blocks.items():
        # Gradients of a layer applied at T positions: (n_samples, T, width).
        dims = (2, 3) if name != "features" else (2,)
        if block.ndim not in dims or block.dtype.kind != "f" or 0 in block.shape:
            raise ValueError(
                f"array {name!r} must be a non-empty 2-D float array{' (or 3-D)' if len(dims) > 1 else ''}; "
                f"got {block.dtype} {block.shape}."
            )
        if n_samples is not None and len(block) != n_samples:
            raise ValueError(f"'forward' has {n_samples} rows but 'backward' has {len(block)}.")
        n_samples = len(block)
        _check_finite(block, f"array {name!r}")
        largest = float(np.abs(block).max()) if block.dtype.itemsize > 4 else 0.0
        if largest > float(np.finfo(np.float32).max):
            raise ValueError(
                f"array {name!r} holds values up to {largest:.3g}, beyond the float32 range "
                f"({float(np.finfo(np.float32).max):.3g}) that features are computed and compared in."
            )
    data = Bunch(
        features=None,
        kind=None,
        paths=None,
        model=None,
        model_sha256=None,
        layer=None,
        temperature=None,
        labels=None,
        source=None,
        skipped=None,
    )
    for key, kind in (
        ("kind", "U"),
        ("model", "U"),
        ("model_sha256", "U"),
        ("layer", "iu"),
        ("temperature", "f"),
    ):
        if key in files:
            data[key] = _scalar(archive, key, kind, path)
    if "paths" in files:
        paths = archive["paths"]
        if paths.dtype.kind != "U" or paths.shape != (n_samples,):
            raise ValueError(
                f"'paths' must hold {n_samples} str paths, one per row; got {paths.dtype} {paths.shape}."
            )
        data.paths = paths
    if "skipped" in files:
        skipped = archive["skipped"]
        if skipped.dtype.kind != "U" or skipped.ndim != 1:
            raise ValueError(
                f"'skipped' must be a 1-D array of str paths; got {skipped.dtype} {skipped.shape}."
            )
        data.skipped = skipped
    if "labels" in files:
        labels = archive["labels"]
        if labels.ndim != 1 or labels.dtype.kind != "f":
            raise ValueError(f"'labels' must be a 1-D float array; got {labels.dtype} {labels.shape}.")
        data.labels = tuple(float(v) for v in labels)
    gradient = "forward" in blocks
    if data.kind is None:
        data.kind = "gradient" if gradient else None
    elif (data.kind == "gradient") != gradient:
        raise ValueError(f"kind {data.kind!r} does not match the arrays {sorted(blocks)}.")
    if data.model_sha256 is not None:
        probabilities = data.kind == "probabilities"  # no temperature: they do not depend on it
        if data.layer is None or (data.temperature is None and not probabilities):
            raise ValueError("'model_sha256' is given without 'layer' and 'temperature'.")
        data.layer = int(data.layer)
        data.temperature = None if data.temperature is None else float(data.temperature)
        data.source = {
            "model_sha256": data.model_sha256,
            "layer": data.layer,
            "temperature": data.temperature,
        }
        if data.temperature is None:
            del data.source["temperature"]
        if data.labels is not None:
            data.source["labels"] = data.labels
    if gradient:
        forward, backward = blocks["forward"], blocks["backward"]
        if forward.shape[1:-1] != backward.shape[1:-1]:
            raise ValueError(
                f"'forward' of shape {forward.shape} and 'backward' of shape {backward.shape} "
                "have different numbers of positions."
            )
        positions = forward.shape[1] if forward.ndim == 3 else None
        dtype = gradient_dtype(forward.shape[-1], backward.shape[-1], data.source, positions=positions)
        data.features = np.empty(n_samples, dtype=dtype)
        data.features["forward"] = forward.reshape(data.features["forward"].shape)
        data.features["backward"] = backward.reshape(data.features["backward"].shape)
    else:
        data.features = blocks["features"]
    return data


def feature_source(X):
    """Where structured features come from, from their dtype's metadata, or None.

    Lists (a file format's stand-in for tuples) compare equal to tuples.
    """
    return _normal_source(getattr(X.dtype, "metadata", None))


def _normal_source(source):
    if not source:
        return None
    return {key: tuple(value) if isinstance(value, list) else value for key, value in source.items()}


def check_same_source(X, expected, owner):
    """Refuse gradient features of another model, layer, temperature or labels.

    :class:`~skfishing.DeepFisherTransformer` records where gradient features
    come from in their dtype's metadata, which indexing, concatenation,
    pickling and :func:`load_features` keep; the ``fit`` of an estimator
    (``owner``, its class name in messages) records it as
    ``feature_source_``. When the training features had it, ``X`` must have
    the same; training features without it (built by hand) are not checked.
    """
    source, expected = feature_source(X), _normal_source(expected)
    if not expected or source == expected:
        return
    if not source:
        raise ValueError(
            f"X carries no record of where its features come from, but the training data of {owner} "
            f"does (model sha256 {str(expected.get('model_sha256'))[:12]}..., layer "
            f"{expected.get('layer')}, temperature {expected.get('temperature')}). Features lose it "
            "when rebuilt by hand or converted with astype to a new dtype: compute them with the same "
            "DeepFisherTransformer (keep both in one Pipeline), or build their dtype with "
            "skfishing.features.gradient_dtype(d, D, source=...)."
        )
    differ = ", ".join(
        f"{key} {source.get(key)!r} (fit: {expected.get(key)!r})"
        for key in sorted(set(source) | set(expected))
        if source.get(key) != expected.get(key)
    )
    raise ValueError(
        f"X comes from another model or setting than the training data of {owner}: "
        f"{differ}. Compute the features with the same DeepFisherTransformer (keep both in one "
        "Pipeline)."
    )


# -- the layout of gradient features: the one check, used by every module -------------


def positions(X):
    """Number T of positions of features ``X`` (1 for 1-D fields and plain 2-D features)."""
    if not is_structured(X):
        return 1
    shape = X.dtype[FIELDS[0]].shape
    return shape[0] if len(shape) == 2 else 1


def widths(X):
    """Widths ``(d_in, d_out)`` of the fields of structured features ``X``."""
    return tuple(X.dtype[field].shape[-1] for field in FIELDS)


def is_structured(X):
    """Whether ``X`` is a NumPy structured array."""
    return isinstance(X, np.ndarray) and X.dtype.names is not None


def check_features(X, name="X", *, reference=None, reference_name="X"):
    """Validate factorized or plain features.

    Parameters
    ----------
    X : structured ndarray or array-like
        Features to check.
    name : str, default="X"
        Name of ``X`` in error messages.
    reference : ndarray, default=None
        Already validated features that ``X`` must match in kind and widths.
    reference_name : str, default="X"
        Name of ``reference`` in error messages.

    Returns
    -------
    X : ndarray
        A structured array with native float32 or float64 fields, or a 2-D
        float32 or float64 array.
    """
    if isinstance(X, np.void) and X.dtype.names is not None:
        raise ValueError(f"{name} is one row of a structured array; pass Z[i:i + 1] for one sample.")
    if isinstance(X, (list, tuple)) and X and all(isinstance(x, np.void) for x in X):
        X = _stack_rows(X, name)
    if is_structured(X):
        X = _check_structured(X, name)
    else:
        X = check_array(X, dtype=(np.float64, np.float32), input_name=name)
    if reference is not None:
        _check_same_layout(X, name, reference, reference_name)
    return X


def _stack_rows(rows, name):
    """A structured array from a list of its rows, keeping their dtype and provenance."""
    dtypes = {row.dtype for row in rows}
    metadata = {repr(row.dtype.metadata) for row in rows}
    if len(dtypes) != 1 or len(metadata) != 1:
        raise ValueError(
            f"{name} is a list of rows of structured arrays of different kinds (dtypes or provenance); "
            "pass one structured array."
        )
    return np.array(rows, dtype=rows[0].dtype)


def _check_structured(X, name):
    check_layout(X, name)
    if X.shape[0] == 0:
        raise ValueError(f"{name} is empty: found 0 samples, at least 1 is required.")
    precision = np.result_type(*(X.dtype[f].base for f in FIELDS), np.float32)
    # Same field order: NumPy casts structured arrays field by position. Provenance is kept.
    fields = [(f, precision, X.dtype[f].shape) for f in X.dtype.names]
    metadata = X.dtype.metadata
    native = np.dtype(fields) if metadata is None else np.dtype(fields, metadata=dict(metadata))
    if X.dtype != native:
        X = X.astype(native)
    for field in FIELDS:
        assert_all_finite(X[field], input_name=f"{name}[{field!r}]")
    return X


def check_layout(X, name):
    """Check the shape and fields of structured features (an ndarray or a Dask array), not their values.

    Fields ``"forward"`` and ``"backward"`` must be non-empty float
    subarrays, both 1-D (one position) or both 2-D of shapes ``(T, d)`` and
    ``(T, D)``. The one check of gradient features' layout: the kernel, the
    estimators, :func:`~skfishing.features.save_features` and
    :func:`~skfishing.distributed.to_zarr` all call it.
    """
    if X.ndim != 1:
        raise ValueError(f"{name} must be a structured array of shape (n_samples,), got shape {X.shape}.")
    if sorted(X.dtype.names) != sorted(FIELDS):
        raise ValueError(
            f"{name} must have exactly the fields 'forward' and 'backward', got {X.dtype.names}."
        )
    for field in FIELDS:
        dtype = X.dtype[field]
        if dtype.base.kind != "f" or dtype.ndim not in (1, 2) or 0 in dtype.shape:
            raise ValueError(
                f"{name} field {field!r} must be a non-empty 1-D subarray of floats, or a 2-D one "
                f"of shape (positions, width), got dtype {dtype}."
            )
    forward, backward = (X.dtype[field].shape for field in FIELDS)
    if len(forward) != len(backward) or forward[:-1] != backward[:-1]:
        raise ValueError(
            f"{name} fields 'forward' and 'backward' must have the same number of positions "
            f"(both 1-D, or 2-D of shape (positions, width)); got shapes {forward} and {backward}."
        )


def _check_same_layout(X, name, reference, reference_name):
    if is_structured(X) != is_structured(reference):
        kinds = {True: "a structured array", False: "a 2-D array"}
        raise ValueError(
            f"{name} is {kinds[is_structured(X)]} but {reference_name} is "
            f"{kinds[is_structured(reference)]}; both must be structured arrays "
            "with fields 'forward' and 'backward' or both 2-D arrays."
        )
    if not is_structured(X):
        if X.shape[1] != reference.shape[1]:
            raise ValueError(
                f"{name} has {X.shape[1]} features but {reference_name} has {reference.shape[1]}."
            )
        return
    for field in FIELDS:
        width, expected = X.dtype[field].shape[-1], reference.dtype[field].shape[-1]
        if width != expected:
            raise ValueError(
                f"{name} has field {field!r} of width {width} but {reference_name} has {expected}."
            )
