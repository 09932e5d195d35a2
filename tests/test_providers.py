"""Execution providers: exact by default on CUDA, and CUDA features equal CPU ones.

The tests marked ``cuda`` run where onnxruntime has the CUDA execution
provider (onnxruntime-gpu and an NVIDIA GPU) and are skipped elsewhere.
"""

import numpy as np
import onnxruntime as ort
import pytest
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline

from onnx_models import caffe_alexnet_model
from skfishing import DeepFisherTransformer, TraceKernelSVC
from skfishing._onnx.network import get_network, session_providers
from skfishing.datasets import load_digits_images

CUDA = "CUDAExecutionProvider"
CPU = ["CPUExecutionProvider"]
HAS_CUDA = CUDA in ort.get_available_providers()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="onnxruntime has no CUDA execution provider")


# -- provider options, checked on any machine ------------------------------------------


@pytest.fixture
def fake_cuda(monkeypatch):
    """onnxruntime that says it has CUDA (only the option handling is tested: no session is made)."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, "CPUExecutionProvider"])


def test_tf32_is_off_on_cuda_unless_allowed(fake_cuda):
    assert session_providers([CUDA, "CPUExecutionProvider"]) == (
        (CUDA, {"use_tf32": "0"}),
        ("CPUExecutionProvider", {}),
    )
    assert session_providers([CUDA], allow_tf32=True) == ((CUDA, {"use_tf32": "1"}),)
    # options the user gives are kept, and an explicit use_tf32 wins
    given = [(CUDA, {"device_id": 1, "use_tf32": 1})]
    assert session_providers(given) == ((CUDA, {"device_id": "1", "use_tf32": "1"}),)
    assert given == [(CUDA, {"device_id": 1, "use_tf32": 1})]  # the argument is not modified


@pytest.mark.cuda  # not pinned to the CPU provider by conftest
def test_default_providers_prefer_cuda_without_tf32(fake_cuda):
    assert session_providers(None) == ((CUDA, {"use_tf32": "0"}), ("CPUExecutionProvider", {}))


@pytest.mark.skipif(HAS_CUDA, reason="needs a machine without CUDA")
def test_unavailable_provider_is_an_error_that_says_how_to_get_it():
    with pytest.raises(ValueError, match=r"'CUDAExecutionProvider' is not available .*skfishing\[gpu\]"):
        DeepFisherTransformer("tinyalexnet", providers=[CUDA]).transform(np.zeros((1, 32, 32, 3), np.uint8))


def test_cache_entries_of_one_provider_setting_are_not_used_by_another(tmp_path, fake_cuda, monkeypatch):
    """TF32 results must never be returned to an exact run: providers are in the key."""
    from skfishing.cache import FeatureCache

    keys = {}
    real = FeatureCache.sample_keys

    def record(self, X, context):
        keys.setdefault(context, real(self, X, context))
        return keys[context]

    monkeypatch.setattr(FeatureCache, "sample_keys", record)
    X = np.zeros((2, 32, 32, 3), np.uint8)
    for providers in (CPU, [("CPUExecutionProvider", {"arena_extend_strategy": "kSameAsRequested"})]):
        DeepFisherTransformer("tinyalexnet", providers=providers, memory=FeatureCache()).transform(X)
    assert len(keys) == 2


# -- CUDA against CPU ------------------------------------------------------------------


def _unit_features(model, X, providers, **params):
    Z = DeepFisherTransformer(model, providers=providers, **params).transform(X)
    return [Z[f] for f in ("forward", "backward")] if Z.dtype.names else [Z]


@pytest.mark.parametrize(
    "kind, layer",
    [
        ("gradient", 6),
        ("gradient", 7),
        ("gradient", 8),
        ("activation", 5),
        ("activation", 6),
        ("activation", 7),
        ("activation", 8),
        ("probabilities", 8),
    ],
)
@pytest.mark.parametrize("model", ["tinyalexnet", "caffe-alexnet"])
@pytest.mark.cuda
@needs_cuda
def test_cuda_features_equal_cpu_features(model, kind, layer):
    if model == "tinyalexnet":
        X = load_digits_images(size=32).images[:64]
    else:
        model = caffe_alexnet_model(seed=3)[0]
        X = np.random.default_rng(0).normal(size=(64, 3, 8, 8)).astype(np.float32)
    params = dict(features=kind, layer=layer, temperature=2.0)
    on_cpu = _unit_features(model, X, CPU, **params)
    on_cuda = _unit_features(model, X, [CUDA, "CPUExecutionProvider"], **params)
    for a, b in zip(on_cpu, on_cuda):
        assert np.abs(a - b).max() <= 1e-4


@pytest.mark.cuda
@needs_cuda
def test_cuda_sessions_run_without_tf32_and_cached_path_agrees():
    net = get_network(caffe_alexnet_model(seed=3)[0], [CUDA, "CPUExecutionProvider"])
    outputs = net.head.features("gradient", 7)
    X = np.random.default_rng(1).normal(size=(16, 3, 8, 8)).astype(np.float32)
    direct, _ = net.run(X, outputs)
    session = net.prepare(outputs)
    assert session.get_provider_options()[CUDA]["use_tf32"] == "0"
    state, _ = net.run_state(X)
    via_state = net.run_from_state(state, outputs)
    for a, b in zip(direct, via_state):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.cuda
@needs_cuda
def test_cuda_grid_search_and_bad_input():
    X = load_digits_images(size=32)
    images, y = X.images[:90], X.target[:90] % 2
    pipe = Pipeline(
        [("fish", DeepFisherTransformer("tinyalexnet", providers=[CUDA])), ("svc", TraceKernelSVC())]
    )
    search = GridSearchCV(pipe, {"fish__layer": [6, 7], "fish__temperature": [1.0, 2.0]}, cv=3).fit(images, y)
    assert search.best_score_ > 0.6
    fish = clone(pipe.named_steps["fish"])
    tensors = np.random.default_rng(2).normal(size=(4, 3, 32, 32)).astype(np.float32)
    tensors[2, 1, 3, 3] = np.nan
    with pytest.raises(ValueError, match="X contains NaN in sample 2"):
        fish.transform(tensors)
