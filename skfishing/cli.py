"""The ``skfishing`` command line.

Commands:

``skfishing extract IMAGES... -o feats.npz``
    Features of image files (or of every image in a folder) written to a
    ``.npz`` file with their provenance, read back by
    :func:`skfishing.features.load_features`. ``--model FILE.onnx`` takes
    the image preprocessing of an unregistered network from options or from
    a JSON file beside it.
``skfishing models``
    The registered networks, their size and whether they are on disk.
``skfishing demo``
    Forward vs gradient features through a grid search, offline (see
    :mod:`skfishing.demo`).

Errors are reported on stderr as one ``skfishing: error: ...`` line (followed
by the message's own detail lines, when it has some, such as how to install
a model file by hand) with exit status 1 (2 for command-line usage errors,
130 when interrupted), not as a traceback.
"""

from __future__ import annotations

import argparse
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


def collect_images(arguments):
    """Expand the IMAGES arguments of ``skfishing extract`` into file paths.

    A file is taken as it is (its decoder decides whether it is an image). A
    folder stands for the files directly inside it (not in sub-folders)
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
            found = []
            with os.scandir(argument) as entries:
                children = sorted(os.path.join(argument, entry.name) for entry in entries)
            for child in children:
                if os.path.splitext(child)[1].lower() not in extensions:
                    continue
                child_mode = _stat(child, "file").st_mode
                if stat.S_ISDIR(child_mode):
                    continue
                if not stat.S_ISREG(child_mode):
                    raise ValueError(
                        f"{_quoted(child)} in folder {_quoted(argument)} is "
                        f"{_not_regular(child_mode)}, not an image file; move it out "
                        "of the folder or list the image files explicitly"
                    )
                found.append(child)
            if not found:
                raise ValueError(f"no image file in folder {_quoted(argument)}")
            paths += found
        elif stat.S_ISREG(mode):
            paths.append(argument)
        else:
            raise ValueError(f"{_quoted(argument)} is {_not_regular(mode)}, not an image file")
    return paths


def _layer(text):
    """``--layer``: a number in the paper's numbering, or an FC layer name."""
    try:
        return int(text)
    except ValueError:
        return text


def _check_not_an_input(output, images):
    """Refuse an output file that is one of the input images (even with --overwrite)."""
    try:
        target = os.stat(output)
    except OSError:
        return  # no such file yet: it cannot be an input
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
    sources the Python API reads (:func:`skfishing.model_spec.preprocessing_fields`:
    ``net.json`` beside ``net.onnx``, else the model's ONNX metadata), and
    the options ``--size`` ... ``--std`` override single fields. The file
    is then registered, for this process, under the name given to --model.
    """
    from .images import ImagePreprocessing
    from .model_spec import preprocessing_fields
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


def _extract(args):
    from .features import _check_output_file, _feature_arrays, _write_npz
    from .transformer import DeepFisherTransformer

    images = collect_images(args.images)
    output = Path(args.output)
    _check_not_an_input(output, images)
    _check_output_file(output, args.overwrite, "pass --overwrite")
    fish = DeepFisherTransformer(
        _model(args),
        layer=args.layer,
        temperature=args.temperature,
        features=args.features,
        batch_size=args.batch_size,
        progress=args.progress,
        cache_dir=args.cache_dir,
    )
    Z = fish.fit_transform(images)
    if args.features == "gradient":
        shape = f"forward {Z['forward'].shape[1]}, backward {Z['backward'].shape[1]}"
    else:
        shape = f"{Z.shape[1]} values"
    _write_npz(output, _feature_arrays(Z, fish, images), args.overwrite, "pass --overwrite")
    print(
        f"wrote {_shown(output)}: {args.features} features of layer {fish.layer_} for "
        f"{len(images)} images ({shape} per image)"
    )
    return 0


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


def _demo(args):
    from .demo import run_demo

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
        "and 'kind' (the --features value). Read it back in Python with "
        "skfishing.features.load_features, ready for TraceKernelSVC. A folder "
        "argument stands for the image files directly inside it, sorted by "
        "name. The output file is checked before any image is read: its folder "
        "must accept a new file and it must not be one of the images.",
    )
    extract.add_argument("images", nargs="+", metavar="IMAGES", help="image files or folders")
    extract.add_argument("-o", "--output", required=True, metavar="FILE", help="the .npz file to write")
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
        return 130
    # OSError includes FileNotFoundError and ConnectionError; scikit-learn's
    # InvalidParameterError is a ValueError; ImportError: onnxruntime is missing.
    except (ValueError, TypeError, OSError, ImportError) as exc:
        print(f"skfishing: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
