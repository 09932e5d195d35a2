"""The kernel of convolution gradients on real images (issue 21, "Kernel").

The embedded network's convolution with the most floats per image (its
per-position factors) on 200 PASCAL VOC 2007 images at 64x64: the exact
trace kernel against the Gram matrix of the explicit weight gradients G,
and the TensorSketch at 8,192 components against the exact kernel. The same
checks on random features, and the sketch's unbiasedness over seeds, are in
tests/test_kernel_positions.py and tests/test_sketch_positions.py.
"""

from pathlib import Path

import numpy as np
import pytest

from skfishing import DeepFisherTransformer, TensorSketch, list_layers, trace_kernel
from skfishing.registry import list_models, resolve_model

VOC = Path(__file__).resolve().parents[2] / "shared" / "data" / "voc2007_trainval64.npz"

pytestmark = [
    pytest.mark.shared_data,
    pytest.mark.skipif(not VOC.exists(), reason="../shared/data/voc2007_trainval64.npz is absent"),
    pytest.mark.skipif(
        "tinyalexnet" not in [m.name for m in list_models()], reason="embedded model not built"
    ),
]


@pytest.fixture(scope="module")
def features():
    """Features of the largest convolution (T (d_in + d_out) floats per image) of 200 VOC images."""
    convs = [r for r in list_layers(resolve_model("tinyalexnet").source) if r["op_type"] == "Conv"]
    layer = max(convs, key=lambda r: r["factor_floats"])
    assert layer["T"] > 1
    images = np.load(VOC)["images"]
    images = images[np.sort(np.random.default_rng(0).permutation(len(images))[:200])]
    return DeepFisherTransformer("tinyalexnet", layer=layer["weight"]).fit_transform(images)


@pytest.fixture(scope="module")
def kernel(features):
    return trace_kernel(features)


def relative_error(K, reference):
    return np.linalg.norm(K - reference) / np.linalg.norm(reference)


def test_exact_kernel_is_the_gram_matrix_of_the_explicit_gradients(features, kernel):
    Z, K = features, kernel
    x, delta = Z["forward"].astype(np.float64), Z["backward"].astype(np.float64)
    G = np.einsum("ntd,nte->nde", delta, x).reshape(len(Z), -1)
    assert relative_error(K, G @ G.T) <= 1e-6
    np.testing.assert_allclose(np.diag(K), 1, rtol=1e-5)  # ||G||_F = 1
    half = len(Z) // 2
    assert relative_error(trace_kernel(Z[:half], Z[half:]), G[:half] @ G[half:].T) <= 1e-6


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sketch_at_8192_components_is_within_a_tenth_in_frobenius_norm(features, kernel, seed):
    K = kernel
    S = TensorSketch(n_components=8192, random_state=seed).fit(features).transform(features)
    S = S.astype(np.float64)
    assert relative_error(S @ S.T, K) <= 0.1
    # and not by chance: 64 components are far off
    small = TensorSketch(n_components=64, random_state=seed).fit(features).transform(features)
    assert relative_error(small.astype(np.float64) @ small.T, K) > 0.2
