"""The ``skfishing`` command line.

Commands:

``skfishing extract IMAGES... -o feats.npz``
    Features of image files (or of every image in a folder) written to a
    ``.npz`` file.
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
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from . import __version__
from .demo import run_demo
from .registry import get_cache_dir, list_models, model_path
from .transformer import DeepFisherTransformer

__all__ = ["main", "build_parser", "collect_images"]

_DEFAULT_MODEL = "tinyalexnet"


def collect_images(arguments):
    """Expand the IMAGES arguments of ``skfishing extract`` into file paths.

    A file is taken as it is (its decoder decides whether it is an image). A
    folder stands for the files directly inside it (not in sub-folders)
    whose extension Pillow can open (``.jpg``, ``.png``, ...; case
    insensitive), sorted by name. The order of the arguments is kept.

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
        If an argument does not exist.
    ValueError
        If a folder has no image file.
    """
    extensions = {ext.lower() for ext in Image.registered_extensions()}
    paths = []
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            found = sorted(
                str(child)
                for child in path.iterdir()
                if child.is_file() and child.suffix.lower() in extensions
            )
            if not found:
                raise ValueError(f"no image file in folder {argument!r}")
            paths += found
        elif path.exists():
            paths.append(argument)
        else:
            raise FileNotFoundError(f"no such image file or folder: {argument!r}")
    return paths


def _layer(text):
    """``--layer``: a number in the paper's numbering, or an FC layer name."""
    try:
        return int(text)
    except ValueError:
        return text


def _check_output(path, overwrite):
    if path.exists() and not overwrite:
        raise FileExistsError(
            f"output file {str(path)!r} exists; pass --overwrite to replace it"
        )
    if not path.parent.is_dir():
        raise FileNotFoundError(f"output folder {str(path.parent)!r} does not exist")


def _save_npz(path, arrays, overwrite):
    """Write ``arrays`` to ``path`` through a temporary file and a rename.

    A failure or an interruption leaves no partial output behind.
    """
    descriptor, temporary = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=".part", dir=path.parent
    )
    try:
        with os.fdopen(descriptor, "wb") as handle:
            np.savez(handle, **arrays)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp creates it private
        _check_output(path, overwrite)  # the file may have appeared meanwhile
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def _extract(args):
    images = collect_images(args.images)
    output = Path(args.output)
    _check_output(output, args.overwrite)
    fish = DeepFisherTransformer(
        args.model,
        layer=args.layer,
        temperature=args.temperature,
        features=args.features,
        batch_size=args.batch_size,
        progress=args.progress,
        cache_dir=args.cache_dir,
    )
    Z = fish.fit_transform(images)
    if args.features == "gradient":
        arrays = {"forward": Z["forward"], "backward": Z["backward"]}
        shape = f"forward {Z['forward'].shape[1]}, backward {Z['backward'].shape[1]}"
    else:
        arrays = {"features": Z}
        shape = f"{Z.shape[1]} values"
    arrays.update(
        paths=np.array(images, dtype=str),
        model=np.array(str(args.model)),
        model_sha256=np.array(fish.model_sha256_),
        layer=np.array(fish.layer_),
        temperature=np.array(args.temperature),
        kind=np.array(args.features),
    )
    _save_npz(output, arrays, args.overwrite)
    print(
        f"wrote {output}: {args.features} features of layer {fish.layer_} for "
        f"{len(images)} images ({shape} per image)"
    )
    return 0


def _size(n_bytes):
    return "?" if n_bytes is None else f"{n_bytes / 1e6:.1f} MB"


def _models(args):
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
    run_demo(
        args.data,
        model=args.model,
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
        help="folder of downloaded models (default: $SKFISHING_CACHE_DIR, "
        "else the user cache folder)",
    )
    parser.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="do not show progress bars",
    )


def build_parser():
    """The argument parser of the ``skfishing`` command.

    Returns
    -------
    parser : argparse.ArgumentParser
    """
    parser = argparse.ArgumentParser(
        prog="skfishing",
        description="Deep Fishing gradient features of pretrained networks "
        "(Gordo et al., BMVC 2015).",
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
        "and 'kind' (the --features value). A folder argument stands for the image files directly "
        "inside it, sorted by name.",
    )
    extract.add_argument("images", nargs="+", metavar="IMAGES", help="image files or folders")
    extract.add_argument(
        "-o", "--output", required=True, metavar="FILE", help="the .npz file to write"
    )
    _add_common(extract, "registered model name or ONNX file")
    extract.add_argument(
        "--layer",
        type=_layer,
        default=7,
        help="FC layer in the paper's numbering (classifier = 8), or an FC "
        "layer name of the graph (default: 7)",
    )
    extract.add_argument(
        "--temperature", type=float, default=2.0, help="softmax temperature (default: 2)"
    )
    extract.add_argument(
        "--features",
        choices=("gradient", "activation", "probabilities"),
        default="gradient",
        help="kind of features (default: gradient)",
    )
    extract.add_argument(
        "--batch-size", type=int, default=32, help="images per network run (default: 32)"
    )
    extract.add_argument(
        "--overwrite", action="store_true", help="replace FILE if it exists"
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
    # InvalidParameterError is a ValueError.
    except (ValueError, TypeError, OSError) as exc:
        print(f"skfishing: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
