"""The table of bad inputs (issue 8): every case, the error a user sees.

Each :class:`Case` feeds one bad (or unusual but valid) input to
:class:`~skfishing.DeepFisherTransformer` (with a small CNN registered as an
image model) or :class:`~skfishing.TraceKernelSVC`, and asserts the exception
type and a message that says what was wrong and where (which image and file,
which array and field, which label column); accepted inputs are checked
against the same images given in a plain form. Every call, failing or not,
must leave the user's arrays, lists, images and files as they were.

``benchmarks/bad_inputs_table.py`` runs the same cases to print the table of
``docs/bad_inputs.rst``. Bad inputs already tested elsewhere are listed in
:data:`COVERED_ELSEWHERE` (and in that table) rather than repeated here.

Cases marked ``bug`` are defects found while writing this table; they are
strict ``xfail``: the test states the behaviour wanted and turns red once the
code is fixed, so that the mark gets removed.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import re
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image, UnidentifiedImageError  # noqa: F401  (used in the table)

from skfishing import DeepFisherTransformer, ImagePreprocessing, TraceKernelSVC
from skfishing.registry import register_model

MODEL_NAME = "bad-inputs-cnn"
SIZE = 16


# -- the network and the data ----------------------------------------------------


def tiny_cnn(size=SIZE, widths=(20, 12, 5), *, seed=0, channels=4):
    """A small image classifier: input (N, 3, size, size), Conv 3x3, Relu,
    MaxPool 2x2, Flatten, then Gemm layers of ``widths`` with Relu between.

    The FC layers are named fc6, fc7, fc8 (for three widths) so the paper's
    numbering applies: layer 7 gives forward width ``widths[0]`` and backward
    width ``widths[1]``; layer 6 forward width ``channels * (size // 2) ** 2``.
    """
    rng = np.random.default_rng(seed)

    def init(name, array):
        return numpy_helper.from_array(np.asarray(array, np.float32), name)

    flat = channels * (size // 2) ** 2
    inits = [
        init("conv_w", rng.normal(size=(channels, 3, 3, 3)) / 3),
        init("conv_b", rng.normal(scale=0.1, size=channels)),
    ]
    nodes = [
        helper.make_node(
            "Conv", ["image", "conv_w", "conv_b"], ["conv"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]
        ),
        helper.make_node("Relu", ["conv"], ["conv_relu"]),
        helper.make_node("MaxPool", ["conv_relu"], ["pool"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["pool"], ["flat"], axis=1),
    ]
    x = "flat"
    dims = (flat,) + tuple(widths)
    first = 9 - len(widths)
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        inits += [
            init(f"W{i}", rng.normal(size=(a, b)) / np.sqrt(a)),
            init(f"b{i}", rng.normal(scale=0.3, size=b)),
        ]
        nodes.append(helper.make_node("Gemm", [x, f"W{i}", f"b{i}"], [f"y{i}"], name=f"fc{first + i}"))
        x = f"y{i}"
        if i < len(widths) - 1:
            nodes.append(helper.make_node("Relu", [x], [f"x{i}"]))
            x = f"x{i}"
    graph = helper.make_graph(
        nodes,
        "tiny-cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", widths[-1]])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _png(width, height, bit_depth, colour_type, rows=None):
    """PNG bytes written by hand: any header (even a huge one) and raw rows."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    body = b"" if rows is None else chunk(b"IDAT", zlib.compress(b"".join(b"\x00" + r for r in rows)))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + body + chunk(b"IEND", b"")


class Env:
    """Models, fitted estimators, images and files shared by the cases."""

    def __init__(self, root):
        self.root = pathlib.Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        model_path = self.root / "cnn.onnx"
        onnx.save(tiny_cnn(), model_path)
        register_model(MODEL_NAME, model_path, preprocessing=ImagePreprocessing(size=SIZE), overwrite=True)
        # same architecture, other weights; and other widths
        self.twin = self.root / "twin.onnx"
        onnx.save(tiny_cnn(seed=1), self.twin)
        self.wider = self.root / "wider.onnx"
        onnx.save(tiny_cnn(widths=(24, 10, 5), seed=2), self.wider)
        for name, path in (("bad-inputs-twin", self.twin), ("bad-inputs-wider", self.wider)):
            register_model(name, path, preprocessing=ImagePreprocessing(size=SIZE), overwrite=True)

        rng = np.random.default_rng(0)
        self.images = rng.integers(0, 256, (4, 20, 24, 3), dtype=np.uint8)
        self.paths = []
        for i, image in enumerate(self.images):
            path = self.root / f"image{i}.png"
            Image.fromarray(image).save(path)
            self.paths.append(str(path))

        # 30 training images of two classes (class 1 is redder)
        self.y = np.repeat([0, 1], 15)
        train = rng.integers(0, 200, (30, 20, 20, 3), dtype=np.uint8)
        train[self.y == 1, :, :, 0] += 55
        self.train = train
        self.fish = self.transformer().fit(train[:2])
        self.Z = self.fish.transform(train)
        self.svc = TraceKernelSVC().fit(self.Z, self.y)
        self.A7 = self.transformer(features="activation").fit_transform(train)
        self.svc_2d = TraceKernelSVC().fit(self.A7, self.y)

    def transformer(self, model=MODEL_NAME, **params):
        return DeepFisherTransformer(model, n_jobs=2, batch_size=3, **params)

    def file(self, name, data):
        path = self.root / name
        path.write_bytes(data)
        return str(path)

    def features(self, X, model=MODEL_NAME, **params):
        return self.transformer(model, **params).fit(X).transform(X)


# -- the cases -----------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One bad input.

    ``build(env)`` returns the function to call and its arguments (the
    arguments are checked to be unchanged afterwards). ``error`` and
    ``match`` give the expected exception and a regular expression its
    message must match (``re.search``); ``error=None`` means the input is
    accepted and ``check(env, result)`` verifies the result.
    """

    id: str
    kind: str  # the bad-input kind of issue 8
    estimator: str
    call: str  # how the user calls it, for the docs
    build: Callable
    error: type | None = None
    match: str | None = None
    check: Callable | None = None
    bug: str | None = None  # a known defect: strict xfail, and reported in the docs
    note: str = ""


def _frame(columns):
    import pandas

    return pandas.DataFrame(columns)


def _same_features(reference):
    """A check that the result equals the features of ``reference(env)``."""

    def check(env, Z):
        expected = reference(env)
        assert Z.dtype == expected.dtype and Z.shape == expected.shape
        for name in Z.dtype.names or ():
            np.testing.assert_array_equal(Z[name], expected[name], err_msg=name)
        if Z.dtype.names is None:
            np.testing.assert_array_equal(Z, expected)

    return check


def _grey16_png(env):
    values = np.array([[0, 257 * 10, 257 * 128, 65535]] * 4, dtype=">u2").repeat(4, axis=1)
    return env.file("grey16.png", _png(16, 4, 16, 0, [row.tobytes() for row in values]))


def _rgb48_png(env):
    pixels = env.images[0].astype(">u2") * 257  # 8-bit values scaled to 16 bits
    return env.file("rgb48.png", _png(24, 20, 16, 2, [row.tobytes() for row in pixels]))


def _animated_gif(env):
    frames = [Image.new("RGB", (12, 10), colour) for colour in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    path = env.root / "animated.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    return str(path)


def _broken_symlink(env):
    link = env.root / "broken.png"
    if not os.path.lexists(link):
        link.symlink_to(env.root / "deleted-target.png")
    return str(link)


def _closed_image(env):
    image = Image.open(env.paths[1])
    image.load()
    image.close()
    return image


def _truncated_png(env):
    data = pathlib.Path(env.paths[2]).read_bytes()
    return env.file("truncated.png", data[: len(data) // 2])


T, S = "DeepFisherTransformer", "TraceKernelSVC"

CASES = [
    # -- empty input and one sample ------------------------------------------------
    Case(
        "empty-list",
        "empty input",
        T,
        "fit([])",
        lambda e: (e.transformer().fit, ([],)),
        ValueError,
        r"Found 0 samples, while at least 1 is required",
    ),
    Case(
        "empty-uint8-stack",
        "empty input",
        T,
        "transform(np.zeros((0, 20, 20, 3), np.uint8))",
        lambda e: (e.fish.transform, (np.zeros((0, 20, 20, 3), np.uint8),)),
        ValueError,
        r"Found 0 samples",
    ),
    Case(
        "empty-structured-fit",
        "empty input",
        S,
        "fit(Z[:0], [])",
        lambda e: (TraceKernelSVC().fit, (e.Z[:0], np.array([], int))),
        ValueError,
        r"X is empty: found 0 samples",
    ),
    Case(
        "empty-structured-predict",
        "empty input",
        S,
        "predict(Z[:0])",
        lambda e: (e.svc.predict, (e.Z[:0],)),
        ValueError,
        r"X is empty: found 0 samples",
    ),
    Case(
        "one-image",
        "one sample",
        T,
        "transform([path])",
        lambda e: (e.fish.transform, ([e.paths[3]],)),
        check=_same_features(lambda e: e.features(list(e.images))[3:]),
    ),
    Case(
        "one-row-predict",
        "one sample",
        S,
        "decision_function(Z[5:6])",
        lambda e: (e.svc.decision_function, (e.Z[5:6],)),
        # float32 kernel values: about 30 support-vector terms of magnitude <= 1, 30 * eps32 = 4e-6
        check=lambda e, d: np.testing.assert_allclose(
            d, e.svc.decision_function(e.Z)[5:6], rtol=1e-5, atol=4e-6
        ),
    ),
    Case(
        "one-sample-fit",
        "one sample",
        S,
        "fit(Z[:1], y[:1])",
        lambda e: (TraceKernelSVC().fit, (e.Z[:1], e.y[:1])),
        ValueError,
        r"y has 1 class \(0\); the number of classes has to be greater than one",
    ),
    Case(
        "single-structured-row",
        "one sample",
        S,
        "predict(Z[0])  (a numpy.void row)",
        lambda e: (e.svc.predict, (e.Z[0],)),
        ValueError,
        r"X is one row of a structured array.*Z\[i:i \+ 1\]",
    ),
    Case(
        "list-of-structured-rows",
        "wrong dtype",
        S,
        "predict(list(Z))",
        lambda e: (e.svc.predict, (list(e.Z[:3]),)),
        check=lambda e, p: np.testing.assert_array_equal(p, e.svc.predict(e.Z[:3])),
    ),
    Case(
        "single-rgb-array",
        "wrong ndim",
        T,
        "transform(image)  (one (H, W, 3) uint8 array)",
        lambda e: (e.fish.transform, (e.images[0],)),
        ValueError,
        r"\(20, 24, 3\).*one image",
    ),
    Case(
        "single-path-string",
        "wrong ndim",
        T,
        "transform(path)  (a str, not a list)",
        lambda e: (e.fish.transform, (e.paths[0],)),
        TypeError,
        r"got str; wrap a single image in a list",
    ),
    Case(
        "single-pathlib-path",
        "wrong ndim",
        T,
        "transform(pathlib.Path(path))",
        lambda e: (e.fish.transform, (pathlib.Path(e.paths[0]),)),
        TypeError,
        r"got PosixPath; wrap a single image in a list",
    ),
    Case(
        "single-pil-image",
        "wrong ndim",
        T,
        "transform(PIL.Image.open(path))",
        lambda e: (e.fish.transform, (Image.fromarray(e.images[0]),)),
        TypeError,
        r"got Image; wrap a single image in a list",
    ),
    Case(
        "none",
        "wrong dtype",
        T,
        "transform(None)",
        lambda e: (e.fish.transform, (None,)),
        TypeError,
        r"X must be a sequence of images .* got NoneType",
    ),
    # -- wrong dtype, shape, ndim --------------------------------------------------
    Case(
        "float-image-stack",
        "wrong dtype",
        T,
        "transform(images.astype(float))  (N, H, W, 3)",
        lambda e: (e.fish.transform, (e.images.astype(float),)),
        ValueError,
        r"X has shape \(4, 20, 24, 3\) but the network expects \(n_samples, 3, 16, 16\)\. "
        r"Arrays of floats are taken as preprocessed network input; pass uint8 images",
    ),
    Case(
        "uint16-image-stack",
        "wrong dtype",
        T,
        "transform(images.astype(np.uint16))",
        lambda e: (e.fish.transform, (e.images.astype(np.uint16) * 257,)),
        ValueError,
        r"X has shape \(4, 20, 24, 3\) but the network expects .*pass uint8 images",
    ),
    Case(
        "bool-array",
        "wrong dtype",
        T,
        "transform(np.zeros((2, 3, 16, 16), bool))",
        lambda e: (e.fish.transform, (np.zeros((2, 3, SIZE, SIZE), bool),)),
        TypeError,
        r"X must be a numeric array, got dtype bool",
    ),
    Case(
        "int-tensor",
        "wrong dtype",
        T,
        "transform(np.ones((2, 3, 16, 16), np.int16))",
        lambda e: (
            e.fish.transform,
            (np.arange(2 * 3 * SIZE * SIZE, dtype=np.int16).reshape(2, 3, SIZE, SIZE) % 7,),
        ),
        check=_same_features(
            lambda e: e.features(
                (np.arange(2 * 3 * SIZE * SIZE).reshape(2, 3, SIZE, SIZE) % 7).astype(np.float32)
            )
        ),
        note="accepted: a numeric (not uint8) array of the network's input shape is "
        "preprocessed input, cast to float32",
    ),
    Case(
        "structured-into-transformer",
        "wrong dtype",
        T,
        "transform(Z)  (features instead of images)",
        lambda e: (e.fish.transform, (e.Z,)),
        TypeError,
        r"X must be a numeric array, got dtype \[\('forward'",
    ),
    Case(
        "grey-2d-uint8",
        "wrong ndim",
        T,
        "transform(np.zeros((16, 16), np.uint8))",
        lambda e: (e.fish.transform, (np.zeros((SIZE, SIZE), np.uint8),)),
        ValueError,
        r"A uint8 array is taken as images and must have shape \(n_samples, H, W\).* got \(16, 16\)",
    ),
    Case(
        "array-of-paths",
        "wrong dtype",
        T,
        "transform(np.array(paths))  (dtype <U..)",
        lambda e: (e.fish.transform, (np.array(e.paths[:3]),)),
        check=_same_features(lambda e: e.features(e.paths[:3])),
        note="accepted: a 1-D array of file paths is a list of them",
    ),
    Case(
        "2d-array-of-paths",
        "wrong shape",
        T,
        "transform(np.array(paths).reshape(-1, 1))",
        lambda e: (e.fish.transform, (np.array(e.paths[:4]).reshape(-1, 1),)),
        TypeError,
        r"An array of file paths must be 1-D, one path per sample, got shape \(4, 1\)",
    ),
    Case(
        "dataframe-of-paths",
        "wrong dtype",
        T,
        "transform(pd.DataFrame({'path': paths}))",
        lambda e: (e.fish.transform, (_frame({"path": e.paths[:3]}),)),
        check=_same_features(lambda e: e.features(e.paths[:3])),
        note="accepted: the column's values, not its name",
    ),
    Case(
        "dataframe-two-columns",
        "wrong shape",
        T,
        "transform(pd.DataFrame({'path': ..., 'label': ...}))",
        lambda e: (e.fish.transform, (_frame({"path": e.paths[:3], "label": [0, 1, 0]}),)),
        ValueError,
        r"X is a DataFrame with 2 columns \['path', 'label'\]; pass the one column",
    ),
    Case(
        "nested-lists",
        "wrong dtype",
        T,
        "transform([[1, 2], [3, 4]])",
        lambda e: (e.fish.transform, ([[1, 2], [3, 4]],)),
        TypeError,
        r"image 0 has type list; images must be file paths",
    ),
    Case(
        "bytes-element",
        "wrong dtype",
        T,
        "transform([open(path, 'rb').read()])",
        lambda e: (e.fish.transform, ([pathlib.Path(e.paths[0]).read_bytes()],)),
        ValueError,
        r"image 0 \('\\udc89PNG.*….*'\): .*bytes are taken as a file name, not as encoded image data",
    ),
    Case(
        "2d-into-structured-svc",
        "wrong ndim",
        S,
        "predict(Z.reshape(-1, 1))",
        lambda e: (e.svc.predict, (e.Z.reshape(-1, 1),)),
        ValueError,
        r"X must be a structured array of shape \(n_samples,\), got shape \(30, 1\)",
    ),
    Case(
        "3d-features",
        "wrong ndim",
        S,
        "fit(np.zeros((30, 2, 2)), y)",
        lambda e: (TraceKernelSVC().fit, (np.zeros((30, 2, 2)), e.y)),
        ValueError,
        r"Found array with dim 3, while dim <= 2 is required by TraceKernelSVC",
    ),
    # -- NaN and infinity -------------------------------------------------------------
    Case(
        "overflow-to-inf",
        "NaN/inf",
        T,
        "transform(X)  (float64 1e39 in sample 1)",
        lambda e: (
            e.fish.transform,
            (np.where(np.arange(2)[:, None, None, None] == 1, 1e39, 0.0) * np.ones((2, 3, SIZE, SIZE)),),
        ),
        ValueError,
        r"X contains infinity in sample 1 \(after casting to float32\)",
    ),
    Case(
        "nan-labels",
        "NaN/inf",
        T,
        "DeepFisherTransformer(labels=[nan, ...]).fit(X)",
        lambda e: (e.transformer(labels=[np.nan, 0.5, 0.5, 0, 0]).fit, (e.images,)),
        ValueError,
        r"labels must be finite and non-negative \(a probability vector\), got nan for class 0",
    ),
    Case(
        "huge-labels",
        "NaN/inf",
        T,
        "DeepFisherTransformer(labels=[1e39, ...]).fit(X)",
        lambda e: (e.transformer(labels=[1e39, 0.5, 0.5, 0, 0]).fit, (e.images,)),
        ValueError,
        r"labels must sum to one \(a probability vector, within 1e-05\), got a sum of 1e\+39",
    ),
    Case(
        "tiny-temperature",
        "NaN/inf",
        T,
        "DeepFisherTransformer(temperature=1e-40).fit(X)",
        lambda e: (e.transformer(temperature=1e-40).fit, (e.images,)),
        ValueError,
        r"'temperature' parameter of DeepFisherTransformer must be a float in the range \[1.17",
    ),
    Case(
        "input-overflows-network",
        "NaN/inf",
        T,
        "transform(X)  (float32 3e38 in sample 1)",
        lambda e: (
            e.fish.transform,
            (
                np.where(np.arange(2)[:, None, None, None] == 1, 3e38, 0.0).astype(np.float32)
                * np.ones((2, 3, SIZE, SIZE), np.float32),
            ),
        ),
        ValueError,
        r"sample 1 gives non-finite features .*network overflowed.*largest magnitude in this sample: 3e\+38",
    ),
    Case(
        "nan-structured-fit",
        "NaN/inf",
        S,
        "fit(Z, y)  (NaN in Z['backward'][4])",
        lambda e: (TraceKernelSVC().fit, (_with(e.Z, "backward", 4, np.nan), e.y)),
        ValueError,
        r"Input X\['backward'\] contains NaN",
    ),
    Case(
        "inf-structured-predict",
        "NaN/inf",
        S,
        "predict(Z)  (inf in Z['forward'][7])",
        lambda e: (e.svc.predict, (_with(e.Z, "forward", 7, np.inf),)),
        ValueError,
        r"Input X\['forward'\] contains infinity",
    ),
    # -- structured arrays with the wrong fields or widths ----------------------------
    Case(
        "extra-field",
        "structured: fields",
        S,
        "fit(Z with an extra 'id' field, y)",
        lambda e: (
            TraceKernelSVC().fit,
            (np.zeros(30, [("forward", "f4", (20,)), ("backward", "f4", (12,)), ("id", "i4")]), e.y),
        ),
        ValueError,
        r"X must have exactly the fields 'forward' and 'backward', got \('forward', 'backward', 'id'\)",
    ),
    Case(
        "2d-field",
        "structured: widths",
        S,
        "fit(Z with forward of shape (4, 5) at 4 positions, backward of shape (12,) at one, y)",
        lambda e: (
            TraceKernelSVC().fit,
            (np.zeros(30, [("forward", "f4", (4, 5)), ("backward", "f4", (12,))]), e.y),
        ),
        ValueError,
        r"X fields 'forward' and 'backward' must have the same number of positions .*got shapes \(4, 5\) and \(12,\)",
    ),
    Case(
        "zero-width-field",
        "structured: widths",
        S,
        "fit(Z with forward of width 0, y)",
        lambda e: (
            TraceKernelSVC().fit,
            (np.zeros(30, [("forward", "f4", (0,)), ("backward", "f4", (12,))]), e.y),
        ),
        ValueError,
        r"X field 'forward' must be a non-empty 1-D subarray",
    ),
    Case(
        "swapped-widths",
        "structured: widths",
        S,
        "predict(Z with widths 12 and 20 for 20 and 12)",
        lambda e: (e.svc.predict, (np.zeros(3, [("forward", "f4", (12,)), ("backward", "f4", (20,))]),)),
        ValueError,
        r"X has field 'forward' of width 12 but the training data of TraceKernelSVC has 20",
    ),
    Case(
        "float64-fields",
        "structured: widths",
        S,
        "decision_function(Z cast to float64 fields, provenance kept)",
        lambda e: (
            e.svc.decision_function,
            (
                e.Z.astype(
                    np.dtype(
                        [("forward", "f8", (20,)), ("backward", "f8", (12,))],
                        metadata=dict(e.Z.dtype.metadata),
                    )
                ),
            ),
        ),
        check=lambda e, d: np.testing.assert_allclose(d, e.svc.decision_function(e.Z), rtol=1e-5, atol=1e-6),
        note="accepted: float64 fields are computed in float64",
    ),
    Case(
        "astype-drops-provenance",
        "mismatched features",
        S,
        "predict(Z.astype(float64 fields))  (provenance lost)",
        lambda e: (e.svc.predict, (e.Z.astype([("forward", "f8", (20,)), ("backward", "f8", (12,))]),)),
        ValueError,
        r"X carries no record of where its features come from.*gradient_dtype",
    ),
    Case(
        "list-of-other-temperature-rows",
        "mismatched features",
        S,
        "predict(list(Z of temperature 4))",
        lambda e: (e.svc.predict, (list(e.transformer(temperature=4.0).fit_transform(e.images[:3])),)),
        ValueError,
        r"X comes from another model or setting .*temperature 4.0 \(fit: 2.0\)",
    ),
    # -- mixed lists --------------------------------------------------------------------
    Case(
        "mixed-paths-pil-arrays",
        "mixed list",
        T,
        "transform([path, PIL image, uint8 array, Path])",
        lambda e: (
            e.fish.transform,
            ([e.paths[0], Image.fromarray(e.images[1]), e.images[2], pathlib.Path(e.paths[3])],),
        ),
        check=_same_features(lambda e: e.features(e.images)),
        note="accepted: same features as the uint8 stack of the same pixels",
    ),
    Case(
        "mixed-with-float-tensor",
        "mixed list",
        T,
        "transform([path, float (3, 16, 16) array])",
        lambda e: (e.fish.transform, ([e.paths[0], np.zeros((3, SIZE, SIZE), np.float32)],)),
        TypeError,
        r"image 1: Image arrays must have dtype uint8 \(0-255 pixels\), got float32",
    ),
    # -- unreadable files, non-images, huge and tiny images -----------------------------
    Case(
        "broken-symlink",
        "unreadable file",
        T,
        "transform([ok, broken symlink])",
        lambda e: (e.fish.transform, ([e.paths[0], _broken_symlink(e)],)),
        FileNotFoundError,
        r"image 1 \('[^']*broken\.png'\): \[Errno 2\] No such file or directory",
    ),
    Case(
        "closed-pil-image",
        "unreadable file",
        T,
        "transform([ok, closed PIL image])",
        lambda e: (e.fish.transform, ([e.paths[0], _closed_image(e)],)),
        ValueError,
        r"image 1 \(PIL image, mode RGB, size \(24, 20\)\): Operation on closed image",
    ),
    Case(
        "truncated-png",
        "non-image",
        T,
        "transform([ok, ok, truncated .png])",
        lambda e: (e.fish.transform, ([e.paths[0], e.paths[1], _truncated_png(e)],)),
        OSError,
        r"image 2 \('[^']*truncated\.png'\): image file is truncated",
    ),
    Case(
        "onnx-file-as-image",
        "non-image",
        T,
        "transform([model.onnx])",
        lambda e: (e.fish.transform, ([str(e.twin)],)),
        UnidentifiedImageError,
        r"image 0 \('[^']*twin\.onnx'\): cannot identify image file",
    ),
    Case(
        "decompression-bomb",
        "huge image",
        T,
        "transform([ok, PNG of 30000 x 30000 pixels])",
        lambda e: (e.fish.transform, ([e.paths[0], e.file("bomb.png", _png(30000, 30000, 8, 2))],)),
        ValueError,
        r"image 1 \('[^']*bomb\.png'\): Image size \(900000000 pixels\) exceeds limit.*"
        r"decompression bomb.*If the file is trusted, raise PIL\.Image\.MAX_IMAGE_PIXELS",
    ),
    Case(
        "one-pixel-png",
        "1x1 image",
        T,
        "transform([1 x 1 .png])",
        lambda e: (e.fish.transform, ([e.file("pixel.png", _png(1, 1, 8, 2, [bytes([200, 10, 60])]))],)),
        check=_same_features(lambda e: e.features(np.full((1, SIZE, SIZE, 3), [200, 10, 60], np.uint8))),
        note="accepted: the pixel fills the crop",
    ),
    Case(
        "animated-gif",
        "animated GIF",
        T,
        "transform([3-frame .gif])",
        lambda e: (e.fish.transform, ([_animated_gif(e)],)),
        check=_same_features(lambda e: e.features(np.full((1, 10, 12, 3), [255, 0, 0], np.uint8))),
        note="accepted: the first frame is used",
    ),
    Case(
        "grey-16-bit-png",
        "16-bit PNG",
        T,
        "transform([16-bit grey .png])",
        lambda e: (e.fish.transform, ([_grey16_png(e)],)),
        check=_same_features(
            lambda e: e.features(
                np.repeat(
                    np.array([[0, 10, 128, 255]] * 4, np.uint8).repeat(4, axis=1)[None, :, :, None], 3, axis=3
                )
            )
        ),
        note="accepted: 0-65535 scaled to 0-255",
    ),
    Case(
        "rgb-48-bit-png",
        "16-bit PNG",
        T,
        "transform([16-bit RGB .png])",
        lambda e: (e.fish.transform, ([_rgb48_png(e)],)),
        check=_same_features(lambda e: e.features(e.images[:1])),
        note="accepted: same features as the 8-bit image",
    ),
    # -- features of another layer or model ---------------------------------------------
    Case(
        "layer-6-into-layer-7-svc",
        "mismatched features",
        S,
        "predict(features of layer 6)",
        lambda e: (e.svc.predict, (e.transformer(layer=6).fit_transform(e.images),)),
        ValueError,
        r"X has field 'forward' of width 256 but the training data of TraceKernelSVC has 20",
    ),
    Case(
        "layer-8-into-layer-7-svc",
        "mismatched features",
        S,
        "predict(features of layer 8)",
        lambda e: (e.svc.predict, (e.transformer(layer=8).fit_transform(e.images),)),
        ValueError,
        r"X has field 'forward' of width 12 but the training data of TraceKernelSVC has 20",
    ),
    Case(
        "other-model-widths",
        "mismatched features",
        S,
        "predict(layer 7 of a wider model)",
        lambda e: (e.svc.predict, (e.transformer("bad-inputs-wider").fit_transform(e.images),)),
        ValueError,
        r"X has field 'forward' of width 24 but the training data of TraceKernelSVC has 20",
    ),
    Case(
        "activation-into-gradient-svc",
        "mismatched features",
        S,
        "predict(activation features)",
        lambda e: (e.svc.predict, (e.transformer(features="activation").fit_transform(e.images),)),
        ValueError,
        r"X is a 2-D array but the training data of TraceKernelSVC is a structured array",
    ),
    Case(
        "activation-other-layer",
        "mismatched features",
        S,
        "predict(activations of layer 6) on layer 7",
        lambda e: (
            e.svc_2d.predict,
            (e.transformer(features="activation", layer=6).fit_transform(e.images),),
        ),
        ValueError,
        r"X has 20 features, but TraceKernelSVC is expecting 12 features as input",
    ),
    Case(
        "other-model-same-widths",
        "mismatched features",
        S,
        "predict(layer 7 of another model, same widths)",
        lambda e: (e.svc.predict, (e.transformer("bad-inputs-twin").fit_transform(e.images),)),
        ValueError,
        r"X comes from another model or setting .*model_sha256",
    ),
    # -- labels -------------------------------------------------------------------------------
    Case(
        "multilabel-no-negative",
        "multilabel column",
        S,
        "fit(Z, Y)  (column 2 all ones)",
        lambda e: (TraceKernelSVC().fit, (e.Z, np.column_stack([e.y, 1 - e.y, np.ones(30, int)]))),
        ValueError,
        r"Label column 2 of y has 1 class \(1\); every label needs positive and negative samples",
    ),
    Case(
        "nan-label",
        "labels",
        S,
        "fit(Z, y)  (NaN labels)",
        lambda e: (TraceKernelSVC().fit, (e.Z, np.where(e.y == 1, np.nan, 0.0))),
        ValueError,
        r"Input y contains NaN",
    ),
    Case(
        "continuous-labels",
        "labels",
        S,
        "fit(Z, y)  (continuous y)",
        lambda e: (TraceKernelSVC().fit, (e.Z, np.linspace(0, 1, 30))),
        ValueError,
        r"Unknown label type: continuous",
    ),
    Case(
        "labels-length",
        "labels",
        S,
        "fit(Z, y[:-1])",
        lambda e: (TraceKernelSVC().fit, (e.Z, e.y[:-1])),
        ValueError,
        r"Found input variables with inconsistent numbers of samples: \[30, 29\]",
    ),
]


def _with(Z, field_name, row, value):
    Z = Z.copy()
    Z[field_name][row, 0] = value
    return Z


#: Bad inputs of issue 8 tested in other files (kind, what, test).
COVERED_ELSEWHERE = [
    (
        "cache",
        "memory= entry overwritten with zeros, bit-flipped, truncated, given another entry's bytes, "
        "another dtype or shape: recomputed, with a warning that names the file",
        "tests/test_cache.py::test_corrupt_disk_entries_are_recomputed_with_a_warning_naming_the_file",
    ),
    (
        "cache",
        "image or model file replaced by another of the same size and modification time (cp -p, rsync -a): "
        "fresh features, and a fitted pipeline refuses the new model, also in another process",
        "tests/test_cache.py::test_replaced_image_file_of_same_size_and_mtime_gives_fresh_features, "
        "tests/test_faults.py::test_same_size_same_mtime_swaps_give_fresh_features_or_a_refusal",
    ),
    (
        "cache",
        "PIL images that differ only in palette, transparency or EXIF orientation",
        "tests/test_cache.py::test_pil_images_that_differ_in_palette_transparency_or_orientation_get_their_own_features",
    ),
    (
        "cache",
        "an ONNX model's external weights file changed after fit: a pickled pipeline refuses it",
        "tests/test_pipeline.py::test_changed_external_weights_are_refused_in_a_fresh_process",
    ),
    (
        "cache",
        "memory= folder that cannot be written: an error naming it, before the network runs",
        "tests/test_faults.py::test_unusable_forward_cache_folder_fails_early_and_says_memory",
    ),
    (
        "file name",
        "non-UTF-8 file name with memory=: keyed by content",
        "tests/test_cache.py::test_non_utf8_file_names_are_keyed_by_content",
    ),
    (
        "wrong shape",
        "images of another size for a model whose height and width are free in the graph",
        "tests/test_transformer.py::test_wrong_size_for_a_model_with_free_height_and_width_says_which_size",
    ),
    (
        "wrong shape",
        "a trunk that runs one sample at a time (batch fixed to 1 inside the graph)",
        "tests/test_transformer.py::test_trunk_with_batch_fixed_to_one_suggests_batch_size_1",
    ),
    (
        "non-image",
        "an empty (0-byte) ONNX file, named",
        "tests/test_transformer.py::test_empty_onnx_file_is_named",
    ),
    ("empty input", "empty list or (0, ...) array to iter_batches", "tests/test_batches.py::test_invalid_X"),
    (
        "empty input",
        "structured or 2-D features with 0 rows",
        "tests/test_kernel.py::test_bad_input_raises_clear_error",
    ),
    (
        "wrong dtype",
        "float, 2-channel or empty array in a list of images",
        "tests/test_batches.py::test_bad_element_errors_before_iterating",
    ),
    (
        "wrong dtype",
        "int or None in a list of images",
        "tests/test_batches.py::test_bad_element_errors_before_iterating",
    ),
    (
        "wrong dtype",
        "complex array; images for a model without preprocessing",
        "tests/test_batches.py::test_invalid_X",
    ),
    ("wrong dtype", "str fields, str features", "tests/test_kernel.py::test_bad_input_raises_clear_error"),
    (
        "wrong shape",
        "float input of the wrong (N, C, H, W)",
        "tests/test_transformer.py::test_bad_network_input_is_rejected",
    ),
    (
        "wrong shape",
        "uint8 stack with 2 channels; single str or PIL image to iter_batches",
        "tests/test_batches.py::test_invalid_X",
    ),
    (
        "wrong shape",
        "preprocessing size differs from the network input",
        "tests/test_batches.py::test_preprocessing_must_match_network_input",
    ),
    (
        "wrong ndim",
        "structured array of shape (n, 1); 1-D plain features",
        "tests/test_kernel.py::test_bad_input_raises_clear_error",
    ),
    (
        "NaN/inf",
        "NaN, inf, 1e300 in float network input, sample named",
        "tests/test_batches.py::test_non_finite_sample_is_named",
    ),
    (
        "NaN/inf",
        "NaN or inf in float network input of the transformer",
        "tests/test_transformer.py::test_bad_network_input_is_rejected",
    ),
    (
        "NaN/inf",
        "NaN or inf in a field of structured features",
        "tests/test_kernel.py::test_bad_input_raises_clear_error",
    ),
    (
        "NaN/inf",
        "NaN in 2-D features (sklearn estimator checks)",
        "tests/test_svm.py::test_sklearn_compatible_on_2d_input",
    ),
    (
        "structured: fields",
        "fields other than forward/backward; scalar field",
        "tests/test_kernel.py::test_bad_input_raises_clear_error",
    ),
    (
        "structured: widths",
        "forward/backward widths differ between X and Y",
        "tests/test_kernel.py::test_bad_input_raises_clear_error",
    ),
    (
        "structured: widths",
        "field order and byte order",
        "tests/test_kernel.py::test_field_order_and_byte_order_do_not_matter",
    ),
    (
        "mixed list",
        "path, PIL image and array give identical batches",
        "tests/test_batches.py::test_path_pil_and_array_give_identical_batches",
    ),
    (
        "unreadable file",
        "missing file, folder",
        "tests/test_batches.py::test_bad_file_error_names_file_and_position",
    ),
    (
        "non-image",
        "empty file, text file, truncated JPEG",
        "tests/test_batches.py::test_bad_file_error_names_file_and_position",
    ),
    (
        "huge image",
        "decompression bomb (lowered MAX_IMAGE_PIXELS)",
        "tests/test_batches.py::test_decompression_bomb",
    ),
    (
        "huge image",
        "1 x 20000 strip is never resized in full",
        "tests/test_images.py::test_extreme_aspect_ratio_does_not_build_the_resized_image",
    ),
    ("1x1 image", "1 x 1 array", "tests/test_images.py::test_one_pixel_image"),
    ("animated GIF", "first frame of a GIF", "tests/test_images.py::test_animated_gif_gives_first_frame"),
    (
        "special file",
        "named pipe (FIFO), socket, device given as an image: refused by name, never opened",
        "tests/test_images.py::test_named_pipe_is_refused_without_opening_it, test_socket_is_refused, test_device_is_refused",
    ),
    (
        "file name",
        "non-UTF-8 names as bytes, str and Path; a missing one is named",
        "tests/test_images.py::test_any_file_name_the_os_allows, test_missing_or_invalid_non_utf8_name_is_named",
    ),
    (
        "NaN/inf",
        "ImagePreprocessing values float32 cannot hold (std=(1e-45, 1, 1), mean=(1e39, 0, 0), ...)",
        "tests/test_images.py::test_preprocessing_rejects_values_float32_cannot_hold",
    ),
    (
        "16-bit PNG",
        "I;16, I, I;16B modes; 16-bit grey PNG file",
        "tests/test_images.py::test_modes_convert_to_rgb, test_modes_from_files",
    ),
    (
        "mismatched features",
        "other widths; 2-D vs structured",
        "tests/test_svm.py::test_predict_on_other_layout_raises, test_structured_input_after_2d_fit_raises",
    ),
    (
        "mismatched features",
        "model file changed or missing after fit",
        "tests/test_pipeline.py::test_fitted_pipeline_refuses_a_changed_or_missing_model",
    ),
    ("labels", "one class", "tests/test_svm.py::test_single_class_is_rejected_before_computing_the_gram"),
    (
        "multilabel column",
        "column with no positive",
        "tests/test_svm.py::test_multilabel_column_with_one_class_is_rejected",
    ),
    (
        "labels",
        "labels vector of the wrong shape",
        "tests/test_transformer.py::test_labels_parameter_is_used",
    ),
    (
        "CLI: output",
        "skfishing extract IMAGES --model net.onnx --size 32 -o net.onnx --overwrite, or -o its net.json, "
        "a --preprocessing file, its external weights or a registered model's file, by any spelling or "
        "link: refused before the network runs, the file untouched (it became a zip)",
        "tests/test_cli_outputs.py::test_output_is_never_an_input_of_the_model, "
        "tests/test_cli_outputs.py::test_output_is_never_the_file_of_a_registered_model",
    ),
    (
        "NaN/inf",
        "temperature 1e7 to 3.4e38 (accepted): delta = g - softmax cancelled in float32, zero or wrong "
        "backward factors (|cos| 0.48 at 1e7, all zero from 1e8); now right at every accepted temperature",
        "tests/test_numerics.py::test_backward_factors_are_right_at_every_temperature, "
        "test_transform_is_right_at_high_temperatures",
    ),
    (
        "labels",
        "labels=[50, 30, 20], [0, 0, 0], negative: accepted, not the documented gradient; now refused "
        "unless non-negative and summing to one within 1e-5",
        "tests/test_numerics.py::test_labels_that_are_not_a_probability_vector_are_refused, "
        "test_probability_vectors_give_the_gradient_of_the_loss",
    ),
    (
        "NaN/inf",
        "a zero factor (dead ReLU layer, equal logits): zero row returned silently; now a zero row "
        "(never NaN) and a RuntimeWarning naming the samples and the layer",
        "tests/test_numerics.py::test_zero_factor_is_a_zero_row_with_a_warning, "
        "test_equal_logits_give_a_zero_backward_factor_with_a_warning",
    ),
    (
        "16-bit PNG",
        "16-bit samples to 8 bits: every one of the 65,536 values rounds (not truncates)",
        "tests/test_numerics.py::test_16_bit_samples_round_to_8_bits_exactly",
    ),
    (
        "model",
        "Gemm with alpha, beta other than 1 (transB 0 and 1, row bias): logits as onnxruntime's, "
        "gradients as the float64 reference",
        "tests/test_numerics.py::test_gemm_alpha_and_beta_are_read",
    ),
    (
        "existing output",
        "two processes save_features or persistence.dump(overwrite=False) to one new file at once: "
        "both succeeded, one file silently replaced the other",
        "tests/test_files.py::test_exactly_one_of_racing_save_features_writers_wins, "
        "test_exactly_one_of_racing_dump_writers_wins",
    ),
    (
        "interrupted write",
        "SIGTERM while save_features writes: a hidden .part file stayed behind",
        "tests/test_files.py::test_sigterm_during_save_features_leaves_no_temporary_file",
    ),
    (
        "persistence",
        "persistence.dump of a pipeline with memory=FeatureCache(...): skops saved the cache's entries "
        "and locks, and the file could never be loaded",
        "tests/test_cache_persistence.py::test_pipeline_with_a_cache_saves_as_settings_and_loads_empty",
    ),
    (
        "mismatched features",
        "save_features stamped a transformer's provenance on any array: temperature-4 features whose "
        "dtype metadata was dropped saved as temperature 2, a random (10, 3) array as layer-7 activations",
        "tests/test_features_files.py::test_features_without_provenance_are_not_stamped_with_another_temperature, "
        "test_an_array_of_other_width_or_dtype_is_not_stamped, test_gradient_features_of_other_widths_are_refused",
    ),
    (
        "unreadable file",
        "load_features of float64 values beyond float32 (loaded as inf with a warning), of a header "
        "declaring shape (1e6, 1e6) (raw MemoryError), of a folder or FIFO ('no such features file')",
        "tests/test_features_files.py::test_values_beyond_float32_are_refused_not_turned_into_inf, "
        "test_a_forged_huge_shape_is_refused_before_allocating, test_a_folder_or_fifo_is_named_for_what_it_is",
    ),
    (
        "model name",
        "a model URL ending in /.. gave the file name '..' (raw IsADirectoryError on fetch); a name "
        "or file name holding NUL was accepted",
        "tests/test_downloads.py::test_url_without_a_file_name_gives_the_model_name, "
        "test_names_with_nul_or_dots_are_refused, test_a_folder_where_the_model_belongs_is_named",
    ),
    (
        "download",
        "a server sends far more than size_bytes (64 MB for an 82 KB model were fetched before the "
        "checksum failed); .lock files piled up in the cache folder",
        "tests/test_downloads.py::test_download_stops_once_more_than_the_declared_size_arrived, "
        "test_lock_files_do_not_pile_up, test_removed_lock_file_is_never_held_twice",
    ),
    (
        "zarr store",
        "to_zarr(f(from_zarr(S)), S, overwrite=True), S spelled as a symlink, relative path or with a "
        "trailing slash: the new values are written (the old store is read whole), not zeros",
        "tests/test_distributed.py::test_overwriting_the_store_that_z_reads_writes_the_new_values, "
        "test_sketch_of_a_store_overwrites_it_on_the_cluster, "
        "test_overwriting_a_store_object_that_z_reads_is_refused",
    ),
    (
        "zarr store",
        "to_zarr(overwrite=True) onto a folder with other files (a Zarr group of the user's, a store with "
        "one file more, a foreign store, a file): refused, naming what was found; nothing deleted",
        "tests/test_distributed.py::test_overwrite_replaces_only_a_store_that_to_zarr_wrote_holding_nothing_else",
    ),
    (
        "zarr store",
        "to_zarr(overwrite=True) whose job fails (a task raises, a corrupt image): the old store is intact; "
        "two writers without overwrite: one wins, the other gets FileExistsError",
        "tests/test_distributed.py::test_a_failed_overwrite_leaves_the_old_store_intact, "
        "test_a_corrupt_image_leaves_the_old_store_intact_and_is_named_by_its_index_in_x, "
        "test_two_writers_without_overwrite_never_both_succeed",
    ),
    (
        "unreadable file",
        "a corrupt image at index 9 of dask_transform(..., chunk_size=4): the error names image 9 and the "
        "file (not image 1 of its block)",
        "tests/test_distributed.py::test_a_corrupt_image_leaves_the_old_store_intact_and_is_named_by_its_index_in_x",
    ),
    (
        "cache",
        'memory="~/fish_cache": the home folder, not a "./~" folder',
        "tests/test_cache_versions.py::test_memory_folder_under_home_is_expanded",
    ),
    (
        "cache",
        "memory= folder filled by another version of skfishing (or of its preprocessing, graph or entry "
        "format): its entries are never read, they are recomputed",
        "tests/test_cache_versions.py::test_entries_written_by_another_version_are_never_read",
    ),
    (
        "persistence",
        "a skops file that sets memory= or cache_dir= (absolute, relative, ~): load resets them to None "
        "with a warning naming each folder; nothing is written there",
        "tests/test_persistence_paths.py::test_loaded_cache_folders_are_reset_with_a_warning",
    ),
    (
        "mismatched features",
        "TensorSketch (alone or in a pipeline, also after joblib) given features of another model, layer, "
        "temperature or labels than at fit, or without the record fit had: refused, naming what differs "
        "(issue 20, item 9)",
        "tests/test_sketch_positions.py::test_features_of_another_source_are_refused, "
        "test_features_of_another_temperature_from_the_transformer_are_refused",
    ),
    (
        "NaN/inf",
        "TensorSketch on float64 (or float32) features whose sketch exceeds the float32 output: refused, "
        "naming the row (issue 20, item 19)",
        "tests/test_sketch_positions.py::test_sketch_beyond_the_float32_range_is_refused",
    ),
    (
        "sketch",
        "TensorSketch(n_components=2**40), or above 2**20: refused by fit, before any memory is asked for "
        "(issue 20, item 19)",
        "tests/test_sketch_positions.py::test_n_components_beyond_the_maximum_is_refused_at_fit",
    ),
    (
        "sketch",
        "TensorSketch with an odd n_components (1, 15, 63): the explicit CountSketch of G, and unbiased "
        "(issue 20, item 21)",
        "tests/test_sketch_positions.py::test_equals_count_sketch_of_the_explicit_gradients, "
        "test_unbiased_over_seeds_with_several_positions_and_odd_n_components",
    ),
    (
        "model",
        "a flatten below the FC head that cannot be proven to keep one row per sample (a Reshape whose "
        "first dimension is not the batch, a Squeeze of the batch axis): HeadStructureError naming the node",
        "tests/test_head_flatten.py::test_what_cannot_be_proven_is_refused",
    ),
    (
        "model",
        "BatchNormalization in the FC head that cannot be folded (computed statistics): the layer list of "
        "the error for a missing layer names the node where reading the head stopped",
        "tests/test_head_batchnorm.py::test_batchnorm_that_cannot_be_folded_is_named_in_the_layer_list",
    ),
    (
        "layer",
        "layer= names no Conv, Gemm or MatMul node or weight: ValueError listing the model's layers",
        "tests/test_layers.py::test_unknown_layer_names_the_layers",
    ),
    (
        "layer",
        "an op between the layer and the logits has no reverse-pass rule: NoRuleError naming the node and op type",
        "tests/test_vjp.py::test_op_without_rule_is_named",
    ),
    (
        "model",
        "the last MatMul acts on each token of a (N, T, D) tensor (a per-position Linear): "
        "HeadStructureError naming its input and its rank, instead of features of the wrong shape",
        "tests/test_flatten_shape_graphs.py::test_a_matmul_on_each_token_is_refused",
    ),
    (
        "model",
        "an export shares identical biases through Identity nodes (torchvision VGG, legacy exporter): "
        "read as constants, where it was refused as 'a computed bias'",
        "tests/test_head_shared_weights.py::test_biases_shared_through_identity_give_torch_gradients",
    ),
]


# -- unchanged input ---------------------------------------------------------------


def snapshot(obj):
    """A comparable picture of an argument: array bytes, list items, image
    pixels, and the content of the files that paths point to."""
    if isinstance(obj, np.ndarray):
        return ("ndarray", obj.dtype.descr, obj.shape, obj.strides, obj.flags.writeable, obj.tobytes())
    if isinstance(obj, np.void):
        return ("void", obj.dtype.descr, obj.tobytes())
    if isinstance(obj, (list, tuple)):
        return (type(obj).__name__, len(obj), [snapshot(item) for item in obj])
    if isinstance(obj, Image.Image):
        try:
            return ("pil", obj.mode, obj.size, obj.tobytes())
        except ValueError:  # a closed image stays closed
            return ("pil-closed", obj.mode, obj.size)
    if isinstance(obj, (str, os.PathLike)):
        path = pathlib.Path(obj)
        content = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
        return ("path", type(obj).__name__, os.fspath(obj), content)
    return ("other", repr(obj))


def run_case(case, env):
    """Run a case; return (result, exception) and the snapshots before/after."""
    func, args = case.build(env)
    before = snapshot(list(args))
    result = error = None
    try:
        result = func(*args)
    except Exception as exc:  # the caller checks the type
        error = exc
    return result, error, before, snapshot(list(args))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return Env(tmp_path_factory.mktemp("bad_inputs"))


def _params():
    for case in CASES:
        marks = [pytest.mark.xfail(strict=True, reason=case.bug)] if case.bug else []
        yield pytest.param(case, id=case.id, marks=marks)


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning")
@pytest.mark.parametrize("case", list(_params()))
def test_bad_input(case, env):
    result, error, before, after = run_case(case, env)
    assert after == before, "the call modified its input"
    if case.error is None:
        if error is not None:
            raise error
        case.check(env, result)
    else:
        assert isinstance(error, case.error), f"expected {case.error.__name__}, got {error!r}"
        assert re.search(case.match, str(error)), str(error)


def test_every_issue_kind_is_in_the_table():
    kinds = {case.kind for case in CASES} | {kind for kind, _, _ in COVERED_ELSEWHERE}
    wanted = {
        "empty input",
        "one sample",
        "wrong dtype",
        "wrong shape",
        "wrong ndim",
        "NaN/inf",
        "structured: fields",
        "structured: widths",
        "mixed list",
        "unreadable file",
        "non-image",
        "huge image",
        "1x1 image",
        "animated GIF",
        "16-bit PNG",
        "mismatched features",
        "labels",
        "multilabel column",
    }
    assert wanted <= kinds, wanted - kinds
    assert len({case.id for case in CASES}) == len(CASES)


def test_snapshot_sees_in_place_changes(env):
    """The unchanged-input check itself can fail."""
    X = [env.images[0].copy(), env.paths[0]]
    before = snapshot(X)
    X[0][0, 0, 0] ^= 1
    assert snapshot(X) != before
    Z = env.Z.copy()
    before = snapshot(Z)
    Z["backward"][0, 0] += 1
    assert snapshot(Z) != before
