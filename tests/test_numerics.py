"""Numerics of the features at the edges: every accepted temperature, label
vectors, zero factors, Gemm's alpha and beta, 16-bit images.

References are independent of the package: the backward factor
:math:`\\delta_L = g - \\sigma(y_L / \\tau)` is evaluated in 80-digit decimal
arithmetic (float64 itself cancels at high temperatures), the rest of the
head in float64 NumPy, and ONNX models are run as they are by onnxruntime.
"""

import warnings
from decimal import Decimal, localcontext

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper
from PIL import Image

from onnx_models import mlp_model, numpy_fisher
from skfishing import DeepFisherTransformer, add_backward, trace_kernel
from skfishing._extraction.images import load_image
from skfishing._onnx.graph import build_head_model
from skfishing._onnx.head import Tensor
from skfishing._onnx.network import get_network
from skfishing.cache import FeatureCache

CPU = ["CPUExecutionProvider"]
F32 = np.finfo(np.float32)
#: From the smallest to the largest temperature that validation accepts.
TEMPERATURES = [
    float(F32.tiny),
    1e-2,
    0.5,
    2.0,
    1e3,
    1e5,
    1e7,
    1e8,
    1e12,
    3 * 2.0**40,
    1e20,
    1e30,
    float(F32.max),
]


# -- references ---------------------------------------------------------------------


def exact_delta(logits, temperature, labels):
    """``g - softmax(logits / temperature)`` per row, in 80-digit decimals.

    ``labels=None`` is the exactly uniform vector 1/P (which no float holds
    for P = 3); other labels are taken as the floats they are.
    """
    n_classes = logits.shape[1]
    out = np.empty(logits.shape)
    with localcontext() as ctx:
        ctx.prec = 80
        tau = Decimal(float(temperature))
        g = [Decimal(1) / n_classes] * n_classes if labels is None else [Decimal(float(v)) for v in labels]
        for r, row in enumerate(logits):
            z = [Decimal(float(v)) / tau for v in row]
            top = max(z)
            e = [(v - top).exp() for v in z]
            total = sum(e)
            out[r] = [float(gi - ei / total) for gi, ei in zip(g, e)]
    return out


def head_reference(X, weights, biases, temperature, labels):
    """Pre-activations and every delta_k (lowest layer first), float64."""
    xs, ys = [np.asarray(X, np.float64)], []
    for j, (W, b) in enumerate(zip(weights, biases)):
        ys.append(xs[-1] @ W + b)
        if j < len(weights) - 1:
            xs.append(np.maximum(ys[-1], 0))
    deltas = [exact_delta(ys[-1], temperature, labels)]
    for j in range(len(weights) - 2, -1, -1):
        deltas.insert(0, (deltas[0] @ weights[j + 1].T) * (ys[j] > 0))
    return xs, deltas


def _cosines(got, ref):
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    return np.einsum("ij,ij->i", got, ref) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))


def _label_vectors(n_classes):
    """Uniform, one-hot, priors (exact in float32: counts over 2^16), and near-uniform."""
    counts = np.random.default_rng(2).integers(1, 100, n_classes).astype(np.float64)
    counts[-1] += 2**16 - counts.sum()
    vectors = {"uniform": None, "one-hot": np.eye(n_classes)[1], "priors": counts / 2**16}
    if n_classes == 32:  # 1/32 +- 2^-20 is exact in float32
        near = np.full(n_classes, 1 / 32)
        near[0] += 2.0**-20
        near[1] -= 2.0**-20
        vectors["near-uniform"] = near
    return vectors


# -- item 8: every accepted temperature ------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_classes", [3, 32])
@pytest.mark.parametrize("labels", ["uniform", "one-hot", "priors", "near-uniform"])
def test_backward_factors_are_right_at_every_temperature(dtype, n_classes, labels):
    """Every delta_k is a positive multiple of the exact one, from tau = 1.2e-38 to 3.4e38.

    In float32, g - softmax(y / tau) cancelled: all deltas were zero from
    tau = 1e8 and |cos| was 0.48 at 1e7.
    """
    vectors = _label_vectors(n_classes)
    if labels not in vectors:
        pytest.skip("near-uniform labels exact in float32 need a power-of-two number of classes")
    g = vectors[labels]
    model, weights, biases = mlp_model((6, 12, 9, n_classes), dtype=dtype, seed=1)
    net = get_network(model, CPU)
    X = np.random.default_rng(0).normal(size=(20, 6)).astype(dtype)
    tensors = tuple(Tensor("delta", k) for k in net.head.numbers)
    for tau in TEMPERATURES:
        values, _ = net.run(X, tensors, temperature=tau, labels=g)
        _, deltas = head_reference(X, weights, biases, tau, g)
        for tensor, got, ref in zip(tensors, values, deltas):
            assert np.isfinite(got).all(), (tau, tensor)
            alive = np.linalg.norm(ref, axis=1) > 0  # a hidden layer may be dead for a sample
            np.testing.assert_array_equal(got[~alive], 0, err_msg=f"tau={tau} {tensor}")
            cos = _cosines(got[alive], ref[alive])
            assert cos.min() > 1 - 1e-6, f"tau={tau} {tensor.name}: min cos {cos.min()}"


def test_backward_factor_is_exact_up_to_2_pow_40():
    """Below tau = 2^40 the graph's delta_L is g - softmax itself, not a multiple."""
    model, weights, biases = mlp_model((6, 12, 9, 32), dtype=np.float64, seed=1)
    net = get_network(model, CPU)
    X = np.random.default_rng(0).normal(size=(8, 6))
    for tau in [0.5, 2.0, 1e5, 2.0**40]:
        for g in [None, _label_vectors(32)["priors"]]:
            (got,), _ = net.run(X, (Tensor("delta", 8),), temperature=tau, labels=g)
            _, deltas = head_reference(X, weights, biases, tau, g)
            scale = np.abs(deltas[-1]).max()
            np.testing.assert_allclose(got, deltas[-1], rtol=0, atol=1e-13 * scale)


@pytest.mark.parametrize("n_classes", [7, 1000])
@pytest.mark.parametrize("temperature", [2.0, 1e30])
def test_backward_factors_do_not_depend_on_the_batch(temperature, n_classes):
    """A sample's delta is the same to the bit alone, in any batch, and from a cached state
    (row sums are products with a column of ones: onnxruntime's ReduceSum depends on the batch).
    """
    model, _, _ = mlp_model((16, 64, 48, n_classes), seed=1)
    net = get_network(model, CPU)
    X = np.random.default_rng(0).normal(size=(37, 16)).astype(np.float32)
    tensors = tuple(Tensor("delta", k) for k in net.head.numbers)
    full, _ = net.run(X, tensors, temperature=temperature)
    state, _ = net.run_state(X)
    for size in (1, 2, 5, 16):
        for start in range(0, len(X) - size, 9):
            rows = slice(start, start + size)
            alone, _ = net.run(X[rows], tensors, temperature=temperature)
            from_state = net.run_from_state(state[rows], tensors, temperature=temperature)
            for a, b, c in zip(full, alone, from_state):
                np.testing.assert_array_equal(a[rows], b)
                np.testing.assert_array_equal(a[rows], c)


@pytest.mark.parametrize("layer", [6, 7, 8])
@pytest.mark.parametrize("temperature", [1e-2, 1e7, 1e8, 1e30])
def test_transform_is_right_at_high_temperatures(layer, temperature):
    """Unit-norm rows equal to the normalised exact gradient; none is zero, no warning."""
    model, weights, biases = mlp_model((6, 12, 9, 10), seed=3)
    X = np.random.default_rng(4).normal(size=(20, 6)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Z = DeepFisherTransformer(model, layer=layer, temperature=temperature).fit_transform(X)
    xs, deltas = head_reference(X, weights, biases, temperature, None)
    j = layer - 6
    for field, ref in [("forward", xs[j]), ("backward", deltas[j])]:
        ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
        np.testing.assert_allclose(Z[field], ref, atol=2e-6, err_msg=field)


# -- item 11: labels are a probability vector ----------------------------------------------


BAD_LABELS = [
    ([50, 30, 20], r"labels must sum to one \(a probability vector, within 1e-05\), got a sum of 100"),
    ([0, 0, 0], r"labels must sum to one .* got a sum of 0"),
    ([0.5, 0.5, 1e-4], r"labels must sum to one .* got a sum of 1.0001"),
    (
        [-0.5, 1.0, 0.5],
        r"labels must be finite and non-negative \(a probability vector\), got -0.5 for class 0",
    ),
    ([0.5, np.nan, 0.5], r"labels must be finite and non-negative .* got nan for class 1"),
    ([0.5, np.inf, 0.5], r"labels must be finite and non-negative .* got inf for class 1"),
    (["a", "b", "c"], r"labels must be numbers"),
    ([0.5, 0.5], r"labels must have shape \(3,\), got \(2,\)"),
]


@pytest.mark.parametrize("labels, message", BAD_LABELS, ids=[str(v) for v, _ in BAD_LABELS])
def test_labels_that_are_not_a_probability_vector_are_refused(labels, message):
    """The transformer and the graph builders refuse them, saying what is wrong."""
    model, _, _ = mlp_model()
    head = get_network(model, CPU).head
    X = np.zeros((2, 6), np.float32)
    with pytest.raises(ValueError, match=message):
        DeepFisherTransformer(model, labels=labels).fit(X)
    with pytest.raises(ValueError, match=message):
        DeepFisherTransformer(model, labels=labels).transform(X)
    with pytest.raises(ValueError, match=message):
        add_backward(model, labels=labels)
    with pytest.raises(ValueError, match=message):
        build_head_model(head, labels=labels)


@pytest.mark.parametrize(
    "labels",
    [
        [0.2, 0.3, 0.5],
        [0, 1, 0],
        np.array([0.1, 0.2, 0.7], np.float32),  # sums to 1 + 1.5e-8 in float32
        [1 / 3 + 4e-6, 1 / 3, 1 / 3],  # within the tolerance
    ],
)
def test_probability_vectors_give_the_gradient_of_the_loss(labels):
    """Accepted labels give the gradient of -sum g log softmax(y / tau), by finite differences."""
    model, weights, biases = mlp_model(dtype=np.float64)
    X = np.random.default_rng(5).normal(size=(4, 6))
    tau = 2.0
    Z = DeepFisherTransformer(model, layer=8, temperature=tau, labels=labels).fit_transform(X)
    g = np.asarray(labels, np.float64)
    xs, _, _ = numpy_fisher(X, weights, biases, tau)

    def loss(logits):
        z = logits / tau
        z = z - z.max()
        return -(g * (z - np.log(np.exp(z).sum()))).sum()

    for i in range(len(X)):
        logits = xs[-1][i] @ weights[-1] + biases[-1]
        step = 1e-6
        grad = np.array(
            [(loss(logits + step * e) - loss(logits - step * e)) / (2 * step) for e in np.eye(len(logits))]
        )
        ref = -grad / np.linalg.norm(grad)  # delta_L is minus the gradient, up to a positive factor
        np.testing.assert_allclose(Z["backward"][i], ref, atol=1e-6)


# -- item 23: zero factors -------------------------------------------------------------------


def gemm_mlp(layers, n_inputs, *, dtype=np.float32, opset=17):
    """An MLP of Gemm nodes with ReLU between them.

    ``layers`` is a list of dicts with ``B`` (as stored in the graph), ``C``
    (or None) and optional Gemm attributes (``alpha``, ``beta``, ``transB``).
    """
    nodes, inits, x = [], [], "input"
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    for i, layer in enumerate(layers):
        inits.append(numpy_helper.from_array(np.asarray(layer["B"], dtype), f"B{i}"))
        inputs = [x, f"B{i}"]
        if layer.get("C") is not None:
            inits.append(numpy_helper.from_array(np.asarray(layer["C"], dtype), f"C{i}"))
            inputs.append(f"C{i}")
        attrs = {k: layer[k] for k in ("alpha", "beta", "transB") if k in layer}
        nodes.append(helper.make_node("Gemm", inputs, [f"y{i}"], name=f"fc{i}", **attrs))
        x = f"y{i}"
        if i < len(layers) - 1:
            nodes.append(helper.make_node("Relu", [x], [f"r{i}"]))
            x = f"r{i}"
    n_classes = layers[-1]["B"].shape[0 if layers[-1].get("transB") else 1]
    graph = helper.make_graph(
        nodes,
        "gemm-mlp",
        [helper.make_tensor_value_info("input", elem, ["N", n_inputs])],
        [helper.make_tensor_value_info(x, elem, ["N", n_classes])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _dead_layer_model():
    """4 -> 4 (identity, no bias) -> 5 -> 3: a sample with no positive input has x6 = 0."""
    rng = np.random.default_rng(6)
    return gemm_mlp(
        [
            {"B": np.eye(4), "C": np.zeros(4)},
            {"B": rng.normal(size=(4, 5)), "C": rng.normal(size=5)},
            {"B": rng.normal(size=(5, 3)), "C": rng.normal(size=3)},
        ],
        4,
    )


DEAD = [1, 4]  # samples whose input is <= 0 everywhere


def _dead_layer_input():
    X = np.abs(np.random.default_rng(7).normal(size=(6, 4))).astype(np.float32) + 0.1
    X[DEAD] *= -1
    return X


@pytest.mark.parametrize(
    "layer, field, message",
    [
        (7, "forward", r"2 of 6 samples have a zero forward factor fish_x6 of layer 7 .*: samples 1, 4\."),
        (
            6,
            "backward",
            r"2 of 6 samples have a zero backward factor fish_delta6 of layer 6 .*: samples 1, 4\.",
        ),
    ],
    ids=["forward-7", "backward-6"],
)
@pytest.mark.parametrize("cached", [False, True], ids=["one-off", "cached"])
def test_zero_factor_is_a_zero_row_with_a_warning(layer, field, message, cached):
    """A dead ReLU layer: the gradient is the zero matrix, returned as zero rows (no NaN),
    and a RuntimeWarning names the samples and the layer, also when the rows come from a cache.
    """
    X = _dead_layer_input()
    memory = FeatureCache() if cached else None
    fish = DeepFisherTransformer(_dead_layer_model(), layer=layer, memory=memory).fit(X)
    for _ in range(2 if cached else 1):  # the second run of a cached one copies finished rows
        with pytest.warns(RuntimeWarning, match=message):
            Z = fish.transform(X)
        assert all(np.isfinite(Z[name]).all() for name in Z.dtype.names)
        np.testing.assert_array_equal(Z[field][DEAD], 0)
        alive = np.setdiff1d(np.arange(len(X)), DEAD)
        np.testing.assert_allclose(np.linalg.norm(Z[field][alive], axis=1), 1, rtol=1e-6)
        K = trace_kernel(Z)
        assert np.isfinite(K).all()
        np.testing.assert_array_equal(K[DEAD], 0)
        np.testing.assert_array_equal(K[:, DEAD], 0)


def test_no_warning_when_no_factor_is_zero():
    X = _dead_layer_input()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Z = DeepFisherTransformer(_dead_layer_model(), layer=8).fit_transform(X)
    np.testing.assert_allclose(np.linalg.norm(Z["backward"], axis=1), 1, rtol=1e-6)


def test_equal_logits_give_a_zero_backward_factor_with_a_warning():
    """delta_L = 1/P - softmax is exactly zero when every logit is the same."""
    rng = np.random.default_rng(8)
    model = gemm_mlp(
        [{"B": rng.normal(size=(4, 5)), "C": np.full(5, 9.0)}, {"B": np.zeros((5, 3)), "C": np.full(3, 0.7)}],
        4,
    )
    X = rng.normal(size=(3, 4)).astype(np.float32)
    for tau in [2.0, 1e30]:
        with pytest.warns(RuntimeWarning, match=r"3 of 3 samples have a zero backward factor fish_delta8"):
            Z = DeepFisherTransformer(model, layer=8, temperature=tau).fit_transform(X)
        np.testing.assert_array_equal(Z["backward"], 0)


def test_zero_activation_rows_warn_too():
    X = _dead_layer_input()
    with pytest.warns(RuntimeWarning, match=r"2 of 6 samples have a zero activation fish_x6: samples 1, 4\."):
        A = DeepFisherTransformer(_dead_layer_model(), layer=6, features="activation").fit_transform(X)
    np.testing.assert_array_equal(A[DEAD], 0)
    assert np.isfinite(A).all()


# -- item 20: Gemm alpha and beta ----------------------------------------------------------------


GEMM_VARIANTS = {
    "alpha-beta": dict(alpha=0.5, beta=2.0),
    "alpha-beta-transB": dict(alpha=1.7, beta=0.3, transB=1),
    "alpha-only-transB": dict(alpha=3.0, transB=1),
    "beta-row-bias": dict(beta=-1.5, row_bias=True),
}


@pytest.mark.parametrize("variant", GEMM_VARIANTS)
def test_gemm_alpha_and_beta_are_read(variant):
    """Logits equal onnxruntime's on the original model; gradients equal the float64 reference
    of y = alpha * x @ B + beta * C (B transposed where transB=1).
    """
    attrs = dict(GEMM_VARIANTS[variant])
    row_bias = attrs.pop("row_bias", False)
    rng = np.random.default_rng(9)
    widths = (6, 8, 7, 4)
    layers, weights, biases = [], [], []
    for a, b in zip(widths[:-1], widths[1:]):
        W = rng.normal(size=(a, b)) / np.sqrt(a)
        C = rng.normal(scale=0.5, size=(1, b) if row_bias else b)
        layer = {"B": W.T if attrs.get("transB") else W, "C": C, **attrs}
        layers.append(layer)
        weights.append(attrs.get("alpha", 1.0) * W.astype(np.float32).astype(np.float64))
        biases.append(attrs.get("beta", 1.0) * C.astype(np.float32).astype(np.float64).reshape(-1))
    model = gemm_mlp(layers, widths[0])
    X = rng.normal(size=(9, widths[0])).astype(np.float32)

    original = ort.InferenceSession(model.SerializeToString(), providers=CPU).run(None, {"input": X})[0]
    xs, deltas, acts = numpy_fisher(X, weights, biases, 2.0)
    np.testing.assert_allclose(acts[-1], original, atol=1e-5)  # the reference reads Gemm as onnxruntime does

    logits = DeepFisherTransformer(model, layer=8, features="activation").fit_transform(X)
    norm = np.linalg.norm(original, axis=1, keepdims=True)
    np.testing.assert_allclose(logits, original / norm, atol=1e-6)
    for layer in (6, 7, 8):
        Z = DeepFisherTransformer(model, layer=layer).fit_transform(X)
        j = layer - 6
        for field, ref in [("forward", xs[j]), ("backward", deltas[j])]:
            ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
            np.testing.assert_allclose(Z[field], ref, atol=1e-5, err_msg=f"{field} {layer}")


# -- item 22: 16-bit images ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I"])
def test_16_bit_samples_round_to_8_bits_exactly(mode):
    """Every 16-bit value v becomes round(v * 255 / 65535), compared exactly (not truncated)."""
    values = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    img = Image.fromarray(values)
    if mode == "I":
        img = Image.fromarray(values.astype(np.int32))
    elif mode == "I;16B":
        img = img.convert("I").convert("I;16B")
    assert img.mode == mode
    rgb = np.asarray(load_image(img))
    # v * 255 / 65535 = v / 257 is never halfway between integers (257 is odd)
    expected = np.floor(np.arange(65536) / 257 + 0.5).astype(np.uint8).reshape(256, 256)
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel], expected)


def test_32_bit_samples_outside_the_16_bit_range_are_clipped():
    values = np.array([[-70000, -1, 0, 65535, 65536, 2**31 - 1]], dtype=np.int32)
    rgb = np.asarray(load_image(Image.fromarray(values)))
    np.testing.assert_array_equal(rgb[0, :, 0], [0, 0, 0, 255, 255, 255])
