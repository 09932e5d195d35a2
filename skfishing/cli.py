"""The ``skfishing`` command line.

Commands:

``skfishing extract IMAGES... -o feats.npz``
    Features of image files (or of every image in a folder) written to a
    ``.npz`` file with their provenance, read back by
    :func:`skfishing.features.load_features`. ``--model FILE.onnx`` takes
    the image preprocessing of an unregistered network from options or from
    a JSON file beside it. The features are computed in parts, kept in a
    folder beside the output until the end, so that a run that stops
    continues where it stopped when run again (:mod:`skfishing._io.parts`);
    ``--skip-bad`` leaves out unreadable images instead of stopping.
``skfishing models``
    The registered networks, their size and whether they are on disk.
``skfishing demo``
    Forward vs gradient features through a grid search, offline (see
    :mod:`skfishing._demo`).

Errors are reported on stderr as one ``skfishing: error: ...`` line (followed
by the message's own detail lines, when it has some, such as how to install
a model file by hand) with exit status 1 (2 for command-line usage errors,
130 when interrupted), not as a traceback.
"""

from __future__ import annotations

import argparse
import functools
import os
import stat
import sys
from pathlib import Path

from . import __version__

# Each command imports what it uses, in its function: --help and --version
# load neither scikit-learn, SciPy, ONNX nor onnxruntime (tests/test_startup.py).

__all__ = ["main", "build_parser", "collect_images"]

_DEFAULT_MODEL = "tinyalexnet"

#: Fields of :class:`~skfishing.ImagePreprocessing` read from the options and
#: from a preprocessing JSON file.
_PREPROCESSING_FIELDS = ("size", "resize", "channel_order", "scale", "mean", "std")


def _shown(path):
    """A path as text that can always be printed (undecodable bytes as \\xNN)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _quoted(path):
    """A path in quotes, for messages."""
    return f"'{_shown(path)}'"


def _not_regular(mode):
    """What a file of ``mode`` is, when it is neither a regular file nor a folder."""
    for test, what in (
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return what
    return "not a regular file"


def _stat(path, what):
    """``os.stat`` of ``path`` (links followed), with errors that name it."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise FileNotFoundError(
                f"{what} {_quoted(path)} is a broken symbolic link (to {_quoted(os.readlink(path))})"
            ) from None
        raise FileNotFoundError(f"no such image file or folder: {_quoted(path)}") from None
    except OSError as exc:
        raise OSError(f"cannot read {what} {_quoted(path)}: {exc.strerror or exc}") from None


def _validated_on_first_call(constraints):
    """``validate_params`` of scikit-learn, imported when the function is first called.

    Declared here, checked like any public function's parameters, but
    scikit-learn is not loaded for ``--help`` or ``--version``.
    """

    def decorate(func):
        checked = []

        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            if not checked:
                from sklearn.utils._param_validation import validate_params

                checked.append(validate_params(constraints, prefer_skip_nested_validation=True)(func))
            return checked[0](*args, **kwargs)

        return wrapper

    return decorate


@_validated_on_first_call({"arguments": [list, tuple], "recursive": ["boolean"]})
def collect_images(arguments, recursive=False):
    """Expand the IMAGES arguments of ``skfishing extract`` into file paths.

    A file is taken as it is (its decoder decides whether it is an image). A
    folder stands for the files directly inside it (and, with
    ``recursive``, in its sub-folders, each sorted by name after the files)
    whose extension Pillow can open (``.jpg``, ``.png``, ...; case
    insensitive), sorted by name. The order of the arguments is kept. Only
    regular files (or links to them) are taken: a FIFO, a device or a
    socket, given or in a folder under an image extension, is an error, as
    is a broken link, so that no file is skipped silently and nothing waits
    forever on a pipe.

    Parameters
    ----------
    arguments : sequence of str
        Files and folders.
    recursive : bool, default=False
        Take the images of sub-folders too.

    Returns
    -------
    paths : list of str
        Image files, in output order.

    Raises
    ------
    FileNotFoundError
        If an argument does not exist, or is a broken symbolic link.
    ValueError
        If a folder has no image file, or an argument or an image-named
        entry of a folder is not a regular file (a FIFO, a device, a socket).
    """
    from PIL import Image

    extensions = {ext.lower() for ext in Image.registered_extensions()}
    paths = []
    for argument in arguments:
        mode = _stat(argument, "image file or folder").st_mode
        if stat.S_ISDIR(mode):
            found = _folder_images(argument, extensions, recursive)
            if not found:
                raise ValueError(
                    f"no image file in folder {_quoted(argument)}{'' if recursive else _subfolder_hint(argument)}"
                )
            paths += found
        elif stat.S_ISREG(mode):
            paths.append(argument)
        else:
            raise ValueError(f"{_quoted(argument)} is {_not_regular(mode)}, not an image file")
    return paths


def _folder_images(folder, extensions, recursive, seen=None):
    """The image files of ``folder`` (sorted), then those of its sub-folders with ``recursive``."""
    found, folders = [], []
    with os.scandir(folder) as entries:
        children = sorted(os.path.join(folder, entry.name) for entry in entries)
    for child in children:
        if recursive and os.path.isdir(child):
            folders.append(child)
            continue
        if os.path.splitext(child)[1].lower() not in extensions:
            continue
        child_mode = _stat(child, "file").st_mode
        if stat.S_ISDIR(child_mode):
            continue
        if not stat.S_ISREG(child_mode):
            raise ValueError(
                f"{_quoted(child)} in folder {_quoted(folder)} is "
                f"{_not_regular(child_mode)}, not an image file; move it out "
                "of the folder or list the image files explicitly"
            )
        found.append(child)
    if seen is None:
        seen = {(os.stat(folder).st_dev, os.stat(folder).st_ino)}
    for child in folders:
        identity = (os.stat(child).st_dev, os.stat(child).st_ino)
        if identity not in seen:  # a link back up would loop forever
            seen.add(identity)
            found += _folder_images(child, extensions, recursive, seen)
    return found


def _subfolder_hint(folder):
    """What to do with a folder of class sub-folders, for the "no image file" error."""
    try:
        with os.scandir(folder) as entries:
            subfolders = sorted(entry.name for entry in entries if entry.is_dir())
    except OSError:
        return ""
    if not subfolders:
        return ""
    shown = " ".join(_shown(os.path.join(folder, name)) for name in subfolders[:3])
    more = " ..." if len(subfolders) > 3 else ""
    return (
        f"; it has {len(subfolders)} sub-folder{'s' if len(subfolders) > 1 else ''}: give them as "
        f"arguments ({shown}{more}; one output file per class keeps the labels apart), or pass "
        "--recursive to take the images of every sub-folder"
    )


def _positive(text):
    """A positive integer option."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _layer(text):
    """``--layer``: a number in the paper's numbering, or an FC layer name."""
    try:
        return int(text)
    except ValueError:
        return text


def _check_not_an_input(output, images, others=()):
    """Refuse an output file that is one of the inputs (even with --overwrite).

    Inputs are the images and ``others``, ``(what, path)`` pairs (the model
    file, its preprocessing JSON file, its external data files). A file is
    recognised by its identity (device and inode), whatever its spelling:
    relative or absolute, through a symbolic link, or another hard link.
    """
    try:
        target = os.stat(output)
    except OSError:
        return  # no such file yet: it cannot be an input
    for what, path in others:
        try:
            found = os.stat(path)
        except OSError:
            continue
        if (found.st_dev, found.st_ino) == (target.st_dev, target.st_ino):
            raise ValueError(
                f"output file {_quoted(output)} is the {what} ({_quoted(path)}); choose another "
                "output file name"
            )
    for number, image in enumerate(images):
        try:
            found = os.stat(image)
        except OSError:
            continue  # reported when the image is read
        if (found.st_dev, found.st_ino) == (target.st_dev, target.st_ino):
            raise ValueError(
                f"output file {_quoted(output)} is input image {number} "
                f"({_quoted(image)}); choose another output file name"
            )


def _model(args):
    """The --model argument, with an ONNX file's preprocessing registered.

    An ONNX file that is not registered needs the image preprocessing of its
    network: it is read from ``--preprocessing FILE.json``, else from the
    sources the Python API reads (:func:`skfishing._io.model_spec.preprocessing_fields`:
    ``net.json`` beside ``net.onnx``, else the model's ONNX metadata), and
    the options ``--size`` ... ``--std`` override single fields. The file
    is then registered, for this process, under the name given to --model.
    """
    from ._extraction.images import ImagePreprocessing
    from ._io.model_spec import preprocessing_fields
    from .registry import list_models, register_model, resolve_model

    options = {
        field: getattr(args, field) for field in _PREPROCESSING_FIELDS if getattr(args, field) is not None
    }
    model = args.model
    given = options or args.preprocessing is not None
    path = Path(model).expanduser()
    registered = model in {spec.name for spec in list_models()}
    if not registered and path.is_file():
        registered = resolve_model(path).name is not None
    if registered or not path.is_file():
        if given:
            flags = [f"--{field.replace('_', '-')}" for field in options]
            if args.preprocessing is not None:
                flags.append("--preprocessing")
            reason = "is registered with its own preprocessing" if registered else "is not a file"
            raise ValueError(
                f"{', '.join(flags)} {'applies' if len(flags) == 1 else 'apply'} only to an "
                f"unregistered ONNX file given to --model; {_quoted(model)} {reason}"
            )
        return model  # a registered name, or a missing file the transformer reports
    sidecar = Path(args.preprocessing) if args.preprocessing is not None else path.with_suffix(".json")
    values, source = preprocessing_fields(path, args.preprocessing)
    values.update(options)
    if "size" not in values:
        raise ValueError(
            f"the model file {_quoted(model)} is not registered, so its image "
            "preprocessing is unknown: give --size (and --resize, --channel-order, "
            "--scale, --mean, --std as the network was trained), or write them to "
            f"{_quoted(sidecar)} (see 'skfishing extract --help')"
        )
    try:
        preprocessing = ImagePreprocessing(**values)
    except (TypeError, ValueError) as exc:
        from_file = values.keys() - options.keys()
        where = ""
        if from_file:
            where = f" (read from {source}{' and the options' if options else ''})"
        raise ValueError(f"preprocessing of {_quoted(model)}{where}: {exc}") from None
    register_model(
        model,
        path,
        preprocessing=preprocessing,
        description="given on the command line",
        overwrite=True,
    )
    return model


def _model_inputs(args):
    """The files that --model reads, as ``(what, path)``: the ONNX file, its
    preprocessing JSON file and its external data files."""
    from .registry import model_path

    path = Path(args.model).expanduser()
    if not path.is_file():
        try:
            path = model_path(args.model, cache_dir=args.cache_dir)  # a registered name
        except (ValueError, KeyError, TypeError, OSError):
            path = None
    files = []
    if path is not None and path.is_file():
        files += [("model file", path), ("preprocessing file of the model", path.with_suffix(".json"))]
        try:
            from . import state
            from ._onnx.model_files import external_locations, parse_model_file

            digest = state.file_sha256(path)
            locations = state.memo(
                ("onnx-external", digest), lambda: external_locations(parse_model_file(path))
            )
        except (ValueError, OSError, ImportError):
            locations = []  # an unreadable model is reported when it is loaded
        files += [("external data file of the model", path.parent / location) for location in locations]
    if args.preprocessing is not None:
        files.append(("preprocessing file", Path(args.preprocessing)))
    return files


#: Output formats of ``skfishing extract``, by extension.
_OUTPUT_FORMATS = {".npz": "NumPy archive, read by skfishing.features.load_features"}


def _check_output_format(output):
    """Refuse an output whose extension names a format that is not written."""
    suffix = Path(output).suffix.lower()
    if suffix in _OUTPUT_FORMATS:
        return
    written = ", ".join(f"{ext} ({what})" for ext, what in _OUTPUT_FORMATS.items())
    found = f"extension {suffix!r}" if suffix else "no extension"
    hint = f"; name it {_quoted(Path(output).with_suffix('.npz'))}"
    if suffix == ".zarr":
        hint += (
            ", or write a Zarr store in Python with skfishing.distributed.to_zarr "
            "(see the user guide's scaling page)"
        )
    raise ValueError(f"output {_quoted(output)} has {found}; skfishing extract writes {written}{hint}")


#: Short names of execution providers accepted by --providers.
_PROVIDER_NAMES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "dml": "DmlExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
}


def parse_providers(text):
    """``--providers``: comma-separated provider names, short (cpu, cuda) or onnxruntime's."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give at least one provider, e.g. cuda,cpu")
    return [_PROVIDER_NAMES.get(name.lower(), name) for name in names]


def describe_providers(network):
    """Which execution provider runs the network, and whether TF32 is on, as text."""
    used = network.used_providers()
    if not used:
        return "no session yet"
    name, options = used[0]
    text = name
    if name == "CUDAExecutionProvider":
        text += f" (TF32 {'on' if str(options.get('use_tf32', '1')) == '1' else 'off'})"
    return text


def _describe_model(args, fish, network, preprocessing):
    """A line saying which model runs, on which provider, for which features."""
    from .registry import list_models

    specs = {spec.name: spec for spec in list_models()}
    spec = specs.get(args.model)
    description = f" ({spec.description})" if spec is not None and spec.description else ""
    shape = "x".join(str(d) for d in network.input_shape)
    if args.features == "probabilities":
        what = "class probabilities"
    else:
        what = f"{args.features} features of layer {fish.layer_}"
        if args.features == "gradient":
            what += f", temperature {args.temperature:g}"
    return (
        f"model {_quoted(args.model)}{description}: input {shape}; {what}; on {describe_providers(network)}"
    )


def _size_note(args, images, preprocessing, n_looked=16):
    """A note when the images are much larger than a small network's input, else None."""
    from PIL import Image

    if preprocessing is None or preprocessing.size >= 224:
        return None
    sides = []
    for path in images[:n_looked]:
        try:
            with Image.open(path) as image:  # reads the header only
                sides.append((min(image.size), path, image.size))
        except Exception:  # noqa: BLE001 - unreadable images are reported when read
            continue
    if not sides:
        return None
    sides.sort(key=lambda row: row[0])
    shorter, path, (width, height) = sides[len(sides) // 2]
    if shorter < 4 * preprocessing.size:
        return None
    size = preprocessing.size
    return (
        f"skfishing: note: the images are much larger than the {size}x{size} input of "
        f"{_quoted(args.model)} (e.g. {_quoted(path)} is {width}x{height}) and are shrunk to it; "
        "for photos the benchmarks recommend --model alexnet (224x224, downloaded once) "
        "or your own network (--model net.onnx)"
    )


#: Progress bar label of each kind of features.
_DESC = {"gradient": "gradient features", "activation": "activations", "probabilities": "probabilities"}


def _extract(args):
    import numpy as np
    from tqdm.auto import tqdm

    from ._extraction.transformer import DeepFisherTransformer
    from ._io.parts import PartsFolder, parts_folder
    from .features import check_output_file, feature_arrays, write_npz

    images = collect_images(args.images, recursive=args.recursive)
    output = Path(args.output)
    _check_not_an_input(output, images, _model_inputs(args))
    if not output.is_dir():  # a folder is reported by check_output_file
        _check_output_format(output)
    check_output_file(output, args.overwrite, "pass --overwrite")
    fish = DeepFisherTransformer(
        _model(args),
        layer=args.layer,
        temperature=args.temperature,
        features=args.features,
        batch_size=args.batch_size,
        providers=args.providers,
        allow_tf32=args.allow_tf32,
        progress=False,
        cache_dir=args.cache_dir,
    )
    fish.fit(images)
    network, preprocessing = fish._network()
    network.prepare(fish._outputs(network))  # builds the session: says which provider runs
    print(_describe_model(args, fish, network, preprocessing), flush=True)
    requested = network.providers[0][0]
    if network.used_providers()[0][0] != requested:
        print(
            f"skfishing: warning: {requested} was asked for but onnxruntime runs on "
            f"{network.used_providers()[0][0]}: see the GPU section of the installation page",
            file=sys.stderr,
        )
    note = _size_note(args, images, preprocessing)
    if note is not None:
        print(note, file=sys.stderr)
    settings = {
        "model_sha256": fish.model_sha256_,
        "layer": int(fish.layer_),
        "temperature": None if args.features == "probabilities" else float(args.temperature),
        "features": args.features,
        "preprocessing": repr(preprocessing),
        "providers": repr(network.providers),
    }
    parts = PartsFolder(parts_folder(output), images, settings, args.part_size)
    n_written = parts.open()
    if n_written:
        print(f"resuming from {_shown(parts.folder)}: {n_written} of {parts.n_parts} parts written")
    single = parts.n_parts == 1  # then the transformer's own progress bar, per batch
    fish.set_params(progress=args.progress and single)
    bar = tqdm(
        total=len(images),
        desc=f"{_DESC[args.features]} in parts of {args.part_size}",
        unit="image",
        disable=None if args.progress and not single else True,
    )

    def skipped(index, path, message):
        print(f"skfishing: skipped {message}", file=sys.stderr)

    try:
        with bar:
            blocks, left_out = parts.compute(
                fish, preprocessing, skip_bad=args.skip_bad, on_part=bar.update, on_skip=skipped
            )
    except BaseException:
        if parts.has_parts():
            args.after_error = (
                f"skfishing: the finished parts are kept in {_quoted(parts.folder)}: run the same "
                "command again to continue from there"
                + ("" if args.skip_bad else " (--skip-bad leaves out unreadable images)")
            )
        else:
            parts.remove()
        raise
    left_out_set = set(left_out)
    kept = [path for i, path in enumerate(images) if i not in left_out_set]
    Z = _as_features(blocks, fish, network)
    arrays = feature_arrays(Z, fish, kept)
    if args.skip_bad:
        arrays["skipped"] = np.array([images[i] for i in left_out], dtype=str).reshape(len(left_out))
    write_npz(output, arrays, args.overwrite, "pass --overwrite")
    parts.remove()
    if args.features == "gradient":
        shape = f"forward {Z['forward'].shape[1]}, backward {Z['backward'].shape[1]}"
        what = f"gradient features of layer {fish.layer_}"
    else:
        shape = f"{Z.shape[1]} values"
        what = "probabilities" if args.features == "probabilities" else f"activations of layer {fish.layer_}"
    skipped_text = f"; {len(left_out)} unreadable images skipped" if left_out else ""
    print(f"wrote {_shown(output)}: {what} for {len(kept)} images ({shape} per image){skipped_text}")
    return 0


def _as_features(blocks, fish, network):
    """The transformer's output again, from the arrays of the parts."""
    import numpy as np

    if "features" in blocks:
        return blocks["features"]
    from .features import gradient_dtype

    forward, backward = blocks["forward"], blocks["backward"]
    positions = forward.shape[1] if forward.ndim == 3 else None  # a layer applied at several positions
    dtype = gradient_dtype(forward.shape[-1], backward.shape[-1], fish.feature_source_, positions=positions)
    Z = np.empty(len(forward), dtype=dtype)
    Z["forward"], Z["backward"] = blocks["forward"], blocks["backward"]
    return Z


def _size(n_bytes):
    return "?" if n_bytes is None else f"{n_bytes / 1e6:.1f} MB"


def _models(args):
    from .registry import get_cache_dir, list_models, model_path

    print(f"cache folder: {get_cache_dir(args.cache_dir)}")
    rows = []
    for spec in list_models():
        path = model_path(spec.name, cache_dir=args.cache_dir)
        size = spec.size_bytes
        if not path.is_file():
            status = "missing" if spec.url is None else "not downloaded"
        elif spec.url is None:
            status = "local file"
        elif size is not None and path.stat().st_size != size:
            status = "wrong size"
        else:
            status = "cached"
        if size is None and path.is_file():
            size = path.stat().st_size
        rows.append((spec.name, _size(size), status, spec.description, path))
    width = max(len("name"), *(len(row[0]) for row in rows))
    print(f"{'name':<{width}}  {'size':>9}  {'status':<14}  description")
    for name, size, status, description, path in rows:
        print(f"{name:<{width}}  {size:>9}  {status:<14}  {description}")
        print(f"{'':<{width}}  file: {path}")
    return 0


def _layers(args):
    from ._onnx.head import HeadStructureError
    from ._onnx.layers import list_layers
    from .registry import resolve_model

    resolved = resolve_model(args.model, cache_dir=args.cache_dir)
    try:
        rows = list_layers(resolved.source)
    except HeadStructureError as exc:
        print(
            f"skfishing: {exc}\n"
            "Gradient features need the classifier's logits: export the model with its last "
            "Gemm/MatMul (or its Softmax) as the graph output, and flatten with torch.flatten(x, 1) "
            "or x.view(x.size(0), -1) before it (see the user guide's page 'Graph surgery').",
            file=sys.stderr,
        )
        return 1
    print(
        f"{'op':<6}  {'T':>7}  {'d_in':>6}  {'d_out':>6}  {'factors':>10}  {'G':>10}  {'cache floats':>12}"
        "  name (weight)"
    )
    for row in rows:
        note = "" if row["supported"] is True else f"  [no rule for {', '.join(row['supported'])}]"
        T = "?" if row["T"] is None else row["T"]
        factors = "?" if row["factor_floats"] is None else row["factor_floats"]
        cached = "-" if row["cache_floats"] is None else row["cache_floats"]
        print(
            f"{row['op_type']:<6}  {T:>7}  {row['d_in']:>6}  {row['d_out']:>6}  {factors:>10}  "
            f"{row['gradient_floats']:>10}  {cached:>12}  {row['name']} ({row['weight']}){note}"
        )
    print("factors: T (d_in + d_out) floats per image; G: d_in d_out floats per image")
    print(
        "cache floats: what model selection keeps per image so that the layer costs no forward pass "
        "at any temperature (the cut of the graph at the layer; the head's state for FC layers)"
    )
    if resolved.preprocessing is None:
        print(
            "preprocessing: none found: the model takes preprocessed arrays only, until it is given "
            "(a JSON file beside the model, the model's metadata, or extract's --size options)"
        )
    else:
        print(f"preprocessing: {resolved.preprocessing!r}")
    return 0


def _demo(args):
    from ._demo import run_demo

    run_demo(
        args.data,
        model=_model(args),
        quick=args.quick,
        progress=args.progress,
        cache_dir=args.cache_dir,
    )
    return 0


def _add_common(parser, model_help):
    parser.add_argument(
        "--model",
        default=_DEFAULT_MODEL,
        metavar="NAME_OR_PATH",
        help=f"{model_help} (default: {_DEFAULT_MODEL}; see 'skfishing models')",
    )
    parser.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="folder of downloaded models (default: $SKFISHING_CACHE_DIR, else the user cache folder)",
    )
    parser.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="do not show progress bars",
    )
    group = parser.add_argument_group(
        "image preprocessing of an ONNX file given to --model",
        "A registered model knows how to turn images into its input; an ONNX file "
        "does not. Give its preprocessing as a JSON file with keys size, resize, "
        "channel_order, scale, mean and std (the fields of "
        "skfishing.ImagePreprocessing): --preprocessing FILE.json, or a file next to "
        "the model with the same stem (net.onnx -> net.json), which is read when "
        "present, else the JSON object under the key skfishing.preprocessing of the "
        "model's ONNX metadata_props. The options below override single fields. Images are resized so "
        "that their shorter side is RESIZE, the central SIZE x SIZE square is "
        "cropped, and each 0-255 pixel value p becomes (p * SCALE - MEAN) / STD.",
    )
    group.add_argument("--preprocessing", metavar="FILE.json", help="JSON file of the preprocessing")
    group.add_argument("--size", type=int, help="side of the square network input")
    group.add_argument("--resize", type=int, help="shorter side after resizing (default: SIZE)")
    group.add_argument("--channel-order", choices=("RGB", "BGR"), help="channel order (default: RGB)")
    group.add_argument("--scale", type=float, help="factor applied to 0-255 pixels first (default: 1/255)")
    group.add_argument(
        "--mean",
        type=float,
        nargs=3,
        metavar=("R", "G", "B"),
        help="subtracted after scaling, in RGB order (default: 0 0 0)",
    )
    group.add_argument(
        "--std",
        type=float,
        nargs=3,
        metavar=("R", "G", "B"),
        help="divides after the mean, in RGB order (default: 1 1 1)",
    )


def build_parser():
    """The argument parser of the ``skfishing`` command.

    Returns
    -------
    parser : argparse.ArgumentParser
    """
    parser = argparse.ArgumentParser(
        prog="skfishing",
        description="Deep Fishing gradient features of pretrained networks (Gordo et al., BMVC 2015).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    extract = commands.add_parser(
        "extract",
        help="write the features of images to a .npz file",
        description="Compute DeepFisherTransformer features of image files and "
        "write them to a .npz file: arrays 'forward' and 'backward' (gradient "
        "features) or 'features' (activations, probabilities), one row per "
        "image, plus 'paths', 'model', 'model_sha256', 'layer', 'temperature' "
        "and 'kind' (the --features value), and 'skipped' with --skip-bad. Read it "
        "back in Python with skfishing.features.load_features, ready for "
        "TraceKernelSVC. A folder argument stands for the image files directly "
        "inside it (with --recursive, in its sub-folders too), sorted by name. The output file is checked before any image is read: its folder "
        "must accept a new file and it must not be one of the inputs (images, "
        "model, preprocessing file). Features are computed in parts of "
        "--part-size images, each written to FILE.parts/ as it is done; if the run "
        "stops (an unreadable image, an error, Ctrl-C), the same command run "
        "again continues from the finished parts, then writes FILE and removes "
        "the parts.",
    )
    extract.add_argument("images", nargs="+", metavar="IMAGES", help="image files or folders")
    extract.add_argument(
        "-o", "--output", required=True, metavar="FILE", help="the .npz file to write (FILE.npz)"
    )
    _add_common(extract, "registered model name or ONNX file")
    extract.add_argument(
        "--layer",
        type=_layer,
        default=7,
        help="FC layer in the paper's numbering (classifier = 8), or an FC "
        "layer name of the graph (default: 7)",
    )
    extract.add_argument("--temperature", type=float, default=2.0, help="softmax temperature (default: 2)")
    extract.add_argument(
        "--features",
        choices=("gradient", "activation", "probabilities"),
        default="gradient",
        help="kind of features (default: gradient)",
    )
    extract.add_argument("--batch-size", type=int, default=32, help="images per network run (default: 32)")
    extract.add_argument("--overwrite", action="store_true", help="replace FILE if it exists")
    extract.add_argument(
        "--recursive", action="store_true", help="take the images of the sub-folders of a folder too"
    )
    extract.add_argument(
        "--skip-bad",
        action="store_true",
        help="leave out images that cannot be read (truncated, corrupt, not an image), "
        "reported on stderr and listed in FILE's 'skipped' array, instead of stopping",
    )
    extract.add_argument(
        "--part-size",
        type=_positive,
        default=1024,
        metavar="N",
        help="images per part written to FILE.parts/ as the run goes (default: 1024)",
    )
    extract.add_argument(
        "--providers",
        type=parse_providers,
        metavar="LIST",
        help="onnxruntime execution providers in order of preference, comma-separated: "
        "cpu, cuda, tensorrt or onnxruntime names such as CUDAExecutionProvider "
        "(default: cuda,cpu when onnxruntime-gpu is installed, else cpu)",
    )
    extract.add_argument(
        "--allow-tf32",
        action="store_true",
        help="on CUDA, let matrix products run in TF32: faster, less exact (default: off)",
    )
    extract.set_defaults(handler=_extract)

    models = commands.add_parser(
        "models",
        help="list the registered models",
        description="List the registered models: size, whether the file is on "
        "disk ('cached' means present with the expected size; the checksum is "
        "verified on use), description and file.",
    )
    models.add_argument("--cache-dir", metavar="DIR", help="folder of downloaded models")
    models.set_defaults(handler=_models)

    layers = commands.add_parser(
        "layers",
        help="list the layers whose gradient can be computed",
        description="List the Conv, Gemm and MatMul nodes with constant weights of a "
        "model, any of which --layer (DeepFisherTransformer(layer=...)) accepts by "
        "node or weight name: positions T (groups folded in), d_in, d_out, and the "
        "floats per image of the factors and of G.",
    )
    layers.add_argument("model", metavar="MODEL", help="registered model name or ONNX file")
    layers.add_argument("--cache-dir", metavar="DIR", help="folder of downloaded models")
    layers.set_defaults(handler=_layers)

    demo = commands.add_parser(
        "demo",
        help="forward vs gradient features with a grid search, offline",
        description="Compare forward features (x5, x6, x7) and gradient "
        "features (dE/dW6, dE/dW7, dE/dW8) through Pipeline + TraceKernelSVC, "
        "grid-search layer and temperature, and print a table. Default data: "
        "scikit-learn's bundled digits.",
    )
    demo.add_argument(
        "--data",
        metavar="PATH",
        help="PASCAL VOC2007: a VOCdevkit folder or a .npz archive (fit on "
        "'train', score VOC07 mAP on 'val')",
    )
    demo.add_argument("--quick", action="store_true", help="use a much smaller subset")
    _add_common(demo, "network with three FC layers numbered 6, 7, 8")
    demo.set_defaults(handler=_demo)
    return parser


def main(argv=None):
    """Run the ``skfishing`` command.

    Parameters
    ----------
    argv : list of str, default=None
        The arguments, without the program name; None means ``sys.argv[1:]``.

    Returns
    -------
    status : int
        0 on success, 1 on errors, 2 on usage errors, 130 when interrupted.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # usage errors (2), --help and --version (0)
        return exit_.code
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("skfishing: interrupted", file=sys.stderr)
        _after_error(args)
        return 130
    # OSError includes FileNotFoundError and ConnectionError; scikit-learn's
    # InvalidParameterError is a ValueError; ImportError: onnxruntime is missing.
    except (ValueError, TypeError, OSError, ImportError) as exc:
        print(f"skfishing: error: {exc}", file=sys.stderr)
        _after_error(args)
        return 1


def _after_error(args):
    """Lines a command leaves to print after its error (e.g. where its finished work is)."""
    if getattr(args, "after_error", None):
        print(args.after_error, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
