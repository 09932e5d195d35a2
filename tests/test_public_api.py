"""Every public callable refuses out-of-range numbers, naming the parameter.

The test walks ``skfishing.__all__`` and the ``__all__`` of every submodule,
reads the numeric parameters of each callable from its numpydoc
``Parameters`` section (``int`` or ``float``), and calls it with values
outside their range: each call must raise a ValueError or TypeError whose
message names the parameter, and return nothing. A public callable with a
numeric parameter that has no valid call below fails the test, so new ones
cannot be forgotten.
"""

import importlib
import inspect
import math
import pkgutil
import re

import numpy as np
import pytest

import skfishing
from onnx_models import mlp_model

docscrape = pytest.importorskip("numpydoc.docscrape")  # reads the Parameters sections

NAN, INF = math.nan, math.inf
X_IMAGES = np.zeros((2, 32, 32, 3), np.uint8)
Z = np.zeros(4, [("forward", "f4", (3,)), ("backward", "f4", (2,))])
Z["forward"], Z["backward"] = np.eye(4, 3) + 0.5, np.eye(4, 2) + 0.5
MODEL = mlp_model()[0]


def _head():
    from skfishing import find_fc_head

    return find_fc_head(MODEL)


def _estimator(cls, fit):
    def call(**params):
        return fit(cls(**params))

    return call


#: A valid call of each public callable with numeric parameters; keyword
#: arguments replace the valid ones.
def _calls():
    from skfishing import (
        DeepFisherTransformer,
        ImagePreprocessing,
        TensorSketch,
        TraceKernelSVC,
        add_backward,
        trace_kernel,
    )
    from skfishing._extraction.batches import iter_batches
    from skfishing._onnx.graph import build_backward_model, build_head_model, build_model
    from skfishing._onnx.head import Tensor
    from skfishing._onnx.vjp import build_layer_model, layer_candidates
    from skfishing.cache import ArrayStore, FeatureCache
    from skfishing.datasets import load_digits_images
    from skfishing.distributed import dask_transform
    from skfishing.features import gradient_dtype
    from skfishing.registry import ModelSpec, register_model
    from skfishing.state import FileHashes

    y = np.array([0, 1, 0, 1])

    def iterate(**params):
        n, batches = iter_batches(
            **{
                "X": [X_IMAGES[0]],
                "input_shape": (3, 32, 32),
                "preprocessing": ImagePreprocessing(32),
                **params,
            }
        )
        return list(batches)

    def dask(**params):
        from sklearn.preprocessing import StandardScaler

        return dask_transform(StandardScaler().fit(np.eye(3)), np.eye(3), **params)

    return {
        "skfishing._extraction.transformer.DeepFisherTransformer": [
            _estimator(DeepFisherTransformer, lambda e: e.fit(X_IMAGES)),
            _estimator(DeepFisherTransformer, lambda e: e.transform(X_IMAGES)),
        ],
        "skfishing._kernels.svm.TraceKernelSVC": [_estimator(TraceKernelSVC, lambda e: e.fit(Z, y))],
        "skfishing._kernels.sketch.TensorSketch": [_estimator(TensorSketch, lambda e: e.fit(Z))],
        "skfishing._kernels.kernel.trace_kernel": [lambda **p: trace_kernel(Z, **p)],
        "skfishing._onnx.graph.add_backward": [lambda **p: add_backward(MODEL, **p)],
        "skfishing._onnx.vjp.build_layer_model": [
            lambda **p: build_layer_model(MODEL, layer_candidates(MODEL)[0].name, **p)
        ],
        "skfishing._onnx.graph.build_model": [
            lambda **p: build_model(MODEL, _head(), [Tensor("delta", 7)], **p)
        ],
        "skfishing._onnx.graph.build_head_model": [lambda **p: build_head_model(_head(), **p)],
        "skfishing._onnx.graph.build_backward_model": [
            lambda **p: build_backward_model(**{"head": _head(), "layer": 7, **p})
        ],
        "skfishing._extraction.images.ImagePreprocessing": [
            lambda **p: ImagePreprocessing(**{"size": 8, **p})
        ],
        "skfishing.registry.register_model": [
            lambda **p: register_model("public-api", url="https://127.0.0.1/x.onnx", sha256="0" * 64, **p)
        ],
        "skfishing._io.model_spec.ModelSpec": [
            lambda **p: ModelSpec("x", "x.onnx", "0" * 64, url="https://127.0.0.1/x.onnx", **p)
        ],
        "skfishing._extraction.batches.iter_batches": [iterate],
        "skfishing.cache.ArrayStore": [lambda **p: ArrayStore(**p)],
        "skfishing.cache.FeatureCache": [lambda **p: FeatureCache(**p)],
        "skfishing.state.FileHashes": [lambda **p: FileHashes(**p)],
        "skfishing.datasets.load_digits_images": [lambda **p: load_digits_images(**p)],
        "skfishing.distributed.dask_transform": [dask],
        "skfishing.features.gradient_dtype": [
            lambda **p: gradient_dtype(**{"forward_dim": 3, "backward_dim": 2, **p})
        ],
    }


#: Values out of range, by parameter (floats: NaN, infinity, negative...).
BAD = {
    "temperature": [NAN, INF, -1.0, 0.0, 1e-40, 1e39],
    "C": [NAN, INF, -1.0, 0.0],
    "tol": [NAN, -1.0, 0.0],
    "cache_size": [NAN, -1.0, 0.0],
    "scale": [NAN, INF, -1.0, 0.0],
    "layer": [99, -99, 1.5, "no-such-layer"],
    "max_iter": [-2, 1.5],
    "n_jobs": [0, 1.5],
    "random_state": [-1, 1.5],
}
BAD_INTEGER = [0, -1, 1.5, NAN, "3"]  # every other int parameter counts from 1 (or 0, see below)
ZERO_ALLOWED = {"max_bytes"}


def _public_callables():
    names = ["skfishing"] + [f"skfishing.{m.name}" for m in pkgutil.iter_modules(skfishing.__path__)]
    found = {}
    for module_name in names:
        module = importlib.import_module(module_name)
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name)
            if (
                callable(obj)
                and not inspect.ismodule(obj)
                and getattr(obj, "__module__", "").startswith("skfishing")
            ):
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return found


def _numeric_parameters(obj):
    doc = docscrape.ClassDoc(obj) if inspect.isclass(obj) else docscrape.FunctionDoc(obj)
    names = []
    for parameter in doc["Parameters"]:
        if re.match(r"(int|float)\b", parameter.type):
            names += [name.strip() for name in parameter.name.split(",")]
    return names


CASES = [
    (qualname, name)
    for qualname, obj in sorted(_public_callables().items())
    for name in _numeric_parameters(obj)
]


def test_the_walk_finds_the_public_api():
    found = _public_callables()
    assert {
        "skfishing._extraction.transformer.DeepFisherTransformer",
        "skfishing._kernels.kernel.trace_kernel",
        "skfishing._kernels.sketch.TensorSketch",
        "skfishing.registry.register_model",
    } <= set(found)
    assert len(CASES) >= 25


@pytest.mark.parametrize("qualname, parameter", CASES, ids=[f"{q.split('.', 1)[1]}-{p}" for q, p in CASES])
def test_out_of_range_numbers_are_refused_naming_the_parameter(qualname, parameter, restore_models):
    if qualname.startswith("skfishing.distributed."):
        pytest.importorskip("dask")  # the dask extra
    calls = _calls()
    assert qualname in calls, f"add a valid call of {qualname} to _calls()"
    bad = BAD.get(parameter, [v for v in BAD_INTEGER if not (v == 0 and parameter in ZERO_ALLOWED)])
    for call in calls[qualname]:
        call()  # the valid call works
        for value in bad:
            with pytest.raises((ValueError, TypeError)) as info:
                result = call(**{parameter: value})
                pytest.fail(f"{qualname}({parameter}={value!r}) returned {type(result).__name__}")
            assert parameter in str(info.value), (value, str(info.value))
