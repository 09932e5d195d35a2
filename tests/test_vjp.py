"""The gradient of any layer (skfishing._onnx.vjp) against torch.func's per-image gradients.

Each test exports a network with random weights to ONNX, builds the model
that outputs the per-position factors of one layer's gradient, rebuilds the
explicit G = sum_t outer(delta_t, x_t) from them and compares it, at unit
norm, with torch.func's vmap(grad) in float64 (the float32 reference would be
less accurate than the ONNX result for the early layers of deep networks).
Batch norms are calibrated on the test images so that random networks keep
unit-scale activations, then folded into their convolutions as exporters do.
"""

import copy

import numpy as np
import onnx
import pytest
from layer_oracle import (
    calibrate,
    explicit_gradients,
    layer_named_by,
    onnx_factors,
    torch_per_sample,
    unit,
)
from onnx import TensorProto, helper, numpy_helper

from onnx_models import mlp_model
from skfishing._onnx.vjp import RULES, NoRuleError, build_layer_model, find_layer, layer_candidates

TOLERANCE = 1e-4


def _export(module, images, path, dynamo):
    import torch

    kwargs = {"input_names": ["input"], "output_names": ["logits"]}
    if dynamo:
        kwargs["dynamic_shapes"] = ({0: torch.export.Dim("N")},)
    else:
        kwargs["dynamic_axes"] = {"input": {0: "N"}}
    torch.onnx.export(module, (torch.as_tensor(images),), str(path), dynamo=dynamo, **kwargs)
    return onnx.load(str(path))


def _fold_batch_norms(module):
    import torch
    from torch.fx.experimental.optimization import fuse

    if not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in module.modules()):
        return module
    return fuse(module)


def _max_error(module, model, params, images, labels, positions_last=False):
    """Largest difference of unit-norm G (ONNX factors) and torch's float64 per-image gradients, per parameter."""
    errors = {}
    named = dict(module.named_parameters())
    reference = copy.deepcopy(module).double()
    for param in params:
        layer = layer_named_by(model, named[param].detach().numpy())
        forward, backward = onnx_factors(model, layer, images, labels=labels, positions_last=positions_last)
        ours = unit(explicit_gradients(forward, backward))
        theirs = unit(
            torch_per_sample(reference, param, images.astype(np.float64), labels=labels.astype(np.float64))
        )
        errors[param] = float(np.abs(ours - theirs).max())
    return errors


def _check(module, params, tmp_path, dynamo, size=64, n_classes=1000, positions_last=False):
    import torch

    torch.manual_seed(0)
    images = np.random.default_rng(0).normal(size=(2, 3, size, size)).astype(np.float32)
    labels = np.random.default_rng(1).dirichlet(np.ones(n_classes)).astype(np.float32)
    module = _fold_batch_norms(calibrate(module.eval(), images))
    model = _export(module, images, tmp_path / "model.onnx", dynamo)
    errors = _max_error(module, model, params, images, labels, positions_last)
    assert max(errors.values()) <= TOLERANCE, errors


# -- a small network with most rules, torch only ---------------------------


def _small_network():
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
            self.bn = nn.BatchNorm2d(8)
            self.grouped = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=4)
            self.depthwise = nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=8, bias=False)
            self.squeeze = nn.Conv2d(16, 4, 1)
            self.excite = nn.Conv2d(4, 16, 1)
            self.branch = nn.Conv2d(16, 8, 1)
            self.norm = nn.LayerNorm(24)
            self.mix = nn.Linear(24, 24)
            self.fc = nn.Linear(24, 10)

        def forward(self, x):
            x = nn.functional.relu6(self.bn(self.stem(x)))
            x = nn.functional.max_pool2d(x, 3, stride=1, padding=1)
            x = x + nn.functional.leaky_relu(self.grouped(x), 0.1)
            x = nn.functional.hardswish(self.depthwise(x))
            scale = nn.functional.hardsigmoid(
                self.excite(nn.functional.silu(self.squeeze(x.mean((2, 3), keepdim=True))))
            )
            x = x * scale
            x = torch.cat([x, torch.sigmoid(self.branch(x))], dim=1)
            x = nn.functional.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
            x = torch.where(x > 0.5, x, 0.5 * x) / (x.pow(2).mean(1, keepdim=True) + 1).sqrt()
            x = x - torch.exp(-x.abs()) * torch.log_softmax(x, dim=1)
            tokens = self.norm(x.flatten(2).transpose(1, 2))
            attention = torch.softmax(tokens @ tokens.transpose(1, 2) / 5.0, dim=-1)
            tokens = nn.functional.gelu(self.mix(attention @ tokens), approximate="tanh")
            return self.fc(torch.tanh(tokens[:, 0] + tokens.mean(1)))

    return Block()


SMALL_PARAMS = [
    "stem.weight",
    "grouped.weight",
    "depthwise.weight",
    "squeeze.weight",
    "mix.weight",
    "fc.weight",
]


@pytest.mark.parametrize("positions_last", [False, True])  # the layout the transformer reads
@pytest.mark.parametrize("dynamo", [False, True])
def test_small_network_matches_torch(tmp_path, dynamo, positions_last):
    if dynamo:
        pytest.importorskip("onnxscript")  # torch's dynamo exporter needs it
    _check(
        _small_network(), SMALL_PARAMS, tmp_path, dynamo, size=16, n_classes=10, positions_last=positions_last
    )


@pytest.mark.parametrize("which", ["convolutions", "mlp"])
def test_positions_last_is_the_same_factors_transposed(which):
    # every layer: convolutions with and without groups (the Conv's own layout, and transposed
    # in the graph), a Gemm (no positions), and the MatMul nodes of an MLP
    if which == "convolutions":
        model = _graph_with("Relu", grouped=True)
        x = np.random.default_rng(3).normal(size=(2, 3, 6, 6)).astype(np.float32)
    else:
        model, *_ = mlp_model(matmul=True)
        x = np.random.default_rng(3).normal(size=(4, 6)).astype(np.float32)
    specs = layer_candidates(model)
    assert {s.op_type for s in specs} == ({"Conv", "Gemm"} if which == "convolutions" else {"MatMul"})
    for spec in specs:
        plain = onnx_factors(model, spec.name, x)
        last = onnx_factors(model, spec.name, x, positions_last=True)
        for a, b in zip(plain, last):
            assert a.shape == b.shape
            np.testing.assert_array_equal(a, b)


# -- hand-built graphs: errors ------------------------------------------------


def _graph_with(op_type, grouped=False):
    """Conv -> ``op_type`` [-> Conv with 2 groups] -> GlobalAveragePool -> Flatten -> Gemm, random weights."""
    rng = np.random.default_rng(0)
    width = 6 if grouped else 4
    inits = [
        numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "conv_w"),
        numpy_helper.from_array(rng.normal(size=(5, width)).astype(np.float32), "fc_w"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "conv_w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node(op_type, ["c"], ["a"], name="odd"),
        helper.make_node("GlobalAveragePool", ["a"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "fc_w"], ["y"], name="fc", transB=1),
    ]
    if grouped:  # 4 -> 6 channels in 2 groups, stride 2, between op_type and the pooling
        inits.append(numpy_helper.from_array(rng.normal(size=(6, 2, 3, 3)).astype(np.float32), "grouped_w"))
        nodes.insert(
            2, helper.make_node("Conv", ["a", "grouped_w"], ["g"], name="grouped", group=2, strides=[2, 2])
        )
        nodes[3].input[0] = "g"
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_op_without_rule_is_named():
    assert "Sin" not in RULES
    with pytest.raises(NoRuleError, match=r"Sin node 'odd' lies between layer 'conv' and the logits"):
        build_layer_model(_graph_with("Sin"), "conv")


def test_layers_by_node_or_weight_name():
    model = _graph_with("Relu")
    assert find_layer(model, "conv_w").name == find_layer(model, "conv").name == "conv"
    specs = {s.name: s for s in layer_candidates(model)}
    assert (specs["conv"].T, specs["conv"].d_in, specs["conv"].d_out) == (36, 27, 4)
    assert (specs["fc"].T, specs["fc"].d_in, specs["fc"].d_out) == (1, 4, 5)
    with pytest.raises(ValueError, match=r"no layer named 'conv9'.*'conv', 'fc'"):
        find_layer(model, "conv9")


def test_relu_network_matches_numpy():
    # y = W2 mean_hw(relu(conv(x))): delta at the conv output is relu'(c) * (W2^T delta_L) / (H W)
    import onnxruntime as ort

    model = _graph_with("Relu")
    x = np.random.default_rng(2).normal(size=(2, 3, 6, 6)).astype(np.float32)
    forward, backward = onnx_factors(model, "conv", x, temperature=3.0)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    conv = onnx.ModelProto.FromString(model.SerializeToString())
    conv.graph.output.append(helper.make_tensor_value_info("c", TensorProto.FLOAT, None))
    c = ort.InferenceSession(conv.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        ["c"], {"x": x}
    )[0]
    y = session.run(None, {"x": x})[0].astype(np.float64)
    soft = np.exp(y / 3.0 - (y / 3.0).max(1, keepdims=True))
    delta_l = 1 / 5 - soft / soft.sum(1, keepdims=True)
    fc_w = numpy_helper.to_array(model.graph.initializer[1]).astype(np.float64)
    expected = (delta_l @ fc_w)[:, :, None, None] * (c > 0) / 36
    np.testing.assert_allclose(backward, expected.reshape(2, 4, 36).transpose(0, 2, 1), rtol=1e-5, atol=1e-7)
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    patches = np.stack(
        [padded[:, :, i : i + 3, j : j + 3].reshape(2, 27) for i in range(6) for j in range(6)], 1
    )
    np.testing.assert_array_equal(forward, patches)


# -- real architectures ---------------------------------------------------------

TORCHVISION = {
    "resnet18": ["conv1.weight", "layer3.0.downsample.0.weight", "layer4.1.conv2.weight"],
    "mobilenet_v2": ["features.0.0.weight", "features.17.conv.1.0.weight", "features.18.0.weight"],
    "efficientnet_b0": [
        "features.1.0.block.0.0.weight",
        "features.1.0.block.1.fc1.weight",
        "features.7.0.block.3.0.weight",
    ],
    "densenet121": [
        "features.conv0.weight",
        "features.denseblock1.denselayer1.conv1.weight",
        "features.denseblock4.denselayer16.conv2.weight",
    ],
    "convnext_tiny": ["features.0.0.weight", "features.1.0.block.3.weight", "features.7.2.block.0.weight"],
}


@pytest.mark.slow
@pytest.mark.oracle
@pytest.mark.parametrize("dynamo", [False, True])
@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_torchvision_matches_torch(tmp_path, name, dynamo):
    torchvision = pytest.importorskip("torchvision")
    _check(getattr(torchvision.models, name)(weights=None), TORCHVISION[name], tmp_path, dynamo)


@pytest.mark.slow
@pytest.mark.oracle
@pytest.mark.parametrize("dynamo", [False, True])
def test_vit_matches_torch(tmp_path, dynamo):
    timm = pytest.importorskip("timm")
    module = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64)
    params = [
        "patch_embed.proj.weight",
        "blocks.0.attn.qkv.weight",
        "blocks.0.attn.proj.weight",
        "blocks.11.mlp.fc2.weight",
    ]
    _check(module, params, tmp_path, dynamo)
