"""Small ONNX classifiers of the shapes skfishing must handle, built in tests.

Each builder returns an ``onnx.ModelProto`` and a NumPy reference of the FC
head: ``reference(head_input) -> (activations, logits)`` as float64, used by
:func:`numpy_fisher` to compute the paper's features independently of the
ONNX graph.
"""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _init(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def mlp_model(
    widths=(6, 5, 4, 3),
    *,
    seed=0,
    dtype=np.float32,
    trans_b=0,
    matmul=False,
    dropout=False,
    softmax=False,
    flatten=False,
    opset=17,
):
    """A tabular MLP ``widths[0] -> ... -> widths[-1]`` with ReLU between layers.

    Returns (model, weights, biases) with weights stored as (in, out).
    """
    rng = np.random.default_rng(seed)
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    nodes, inits = [], []
    x = "input"
    weights, biases = [], []
    n_layers = len(widths) - 1
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        W = (rng.normal(size=(a, b)) / np.sqrt(a)).astype(dtype)
        bias = rng.normal(scale=0.5, size=b).astype(dtype)
        weights.append(W.astype(np.float64))
        biases.append(bias.astype(np.float64))
        if flatten:
            nodes.append(helper.make_node("Flatten", [x], [f"flat{i}"], axis=1))
            x = f"flat{i}"
        if matmul:
            inits += [_init(f"W{i}", W), _init(f"b{i}", bias)]
            nodes.append(helper.make_node("MatMul", [x, f"W{i}"], [f"mm{i}"], name=f"fc{i}"))
            nodes.append(helper.make_node("Add", [f"b{i}", f"mm{i}"], [f"y{i}"]))
        else:
            inits += [_init(f"W{i}", W.T.copy() if trans_b else W), _init(f"b{i}", bias)]
            nodes.append(
                helper.make_node("Gemm", [x, f"W{i}", f"b{i}"], [f"y{i}"], transB=trans_b, name=f"fc{i}")
            )
        x = f"y{i}"
        if i < n_layers - 1:
            nodes.append(helper.make_node("Relu", [x], [f"r{i}"]))
            x = f"r{i}"
            if dropout:
                nodes.append(helper.make_node("Dropout", [x], [f"d{i}"]))
                x = f"d{i}"
    outputs = [helper.make_tensor_value_info(x, elem, ["N", widths[-1]])]
    if softmax:
        nodes.append(helper.make_node("Softmax", [x], ["prob"], axis=1))
        outputs = [helper.make_tensor_value_info("prob", elem, ["N", widths[-1]])]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", elem, ["N", widths[0]])],
        outputs,
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model, weights, biases


def any_width_model(*, seed=0):
    """A tabular classifier that takes any number of input features.

    Its trunk summarises each row by (mean, max, min, L2 norm), so the FC
    head (4 -> 6 -> 5 -> 3) always gets 4 inputs; scikit-learn's estimator
    checks feed data of many widths.
    """
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node(op, ["input"], [op], axes=[1], keepdims=1)
        for op in ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceL2")
    ]
    nodes.append(
        helper.make_node("Concat", ["ReduceMean", "ReduceMax", "ReduceMin", "ReduceL2"], ["stats"], axis=1)
    )
    inits, x = [], "stats"
    widths = (4, 6, 5, 3)
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        inits += [
            _init(f"W{i}", (rng.normal(size=(a, b)) / np.sqrt(a)).astype(np.float32)),
            _init(f"b{i}", rng.normal(scale=0.3, size=b).astype(np.float32)),
        ]
        nodes.append(helper.make_node("Gemm", [x, f"W{i}", f"b{i}"], [f"y{i}"], name=f"fc{i}"))
        x = f"y{i}"
        if i < 2:
            nodes.append(helper.make_node("Relu", [x], [f"r{i}"]))
            x = f"r{i}"
    graph = helper.make_graph(
        nodes,
        "any-width",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", "d"])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", 3])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def caffe_alexnet_model(*, seed=0, n_classes=7):
    """A bvlcalexnet-shaped graph: fixed batch 1, constant Reshape, Dropout,
    Gemm with transB=1 and a final Softmax. Input (1, 3, 8, 8).

    Returns (model, conv_weight, conv_bias, weights, biases), weights (in, out).
    """
    rng = np.random.default_rng(seed)
    conv_w = (rng.normal(size=(4, 3, 3, 3)) / 3).astype(np.float32)
    conv_b = rng.normal(scale=0.1, size=4).astype(np.float32)
    widths = [4 * 3 * 3, 10, 9, n_classes]  # pool5 is (4, 3, 3)
    weights = [
        (rng.normal(size=(a, b)) / np.sqrt(a)).astype(np.float32) for a, b in zip(widths[:-1], widths[1:])
    ]
    biases = [rng.normal(scale=0.3, size=b).astype(np.float32) for b in widths[1:]]
    inits = [
        _init("conv1_w_0", conv_w),
        _init("conv1_b_0", conv_b),
        _init("OC2_DUMMY_1", np.array([1, 36], np.int64)),
    ]
    nodes = [
        helper.make_node(
            "Conv", ["data_0", "conv1_w_0", "conv1_b_0"], ["conv1_1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]
        ),
        helper.make_node("Relu", ["conv1_1"], ["conv1_2"]),
        helper.make_node(
            "MaxPool", ["conv1_2"], ["pool5_1"], kernel_shape=[3, 3], strides=[3, 3], pads=[0, 0, 1, 1]
        ),
        helper.make_node("Reshape", ["pool5_1", "OC2_DUMMY_1"], ["OC2_DUMMY_0"]),
    ]
    x = "OC2_DUMMY_0"
    for i, name in enumerate(["fc6", "fc7", "fc8"]):
        inits += [_init(f"{name}_w_0", weights[i].T.copy()), _init(f"{name}_b_0", biases[i])]
        nodes.append(
            helper.make_node("Gemm", [x, f"{name}_w_0", f"{name}_b_0"], [f"{name}_1"], transB=1, name=name)
        )
        x = f"{name}_1"
        if i < 2:
            nodes += [
                helper.make_node("Relu", [x], [f"{name}_2"]),
                helper.make_node("Dropout", [f"{name}_2"], [f"{name}_3"]),
            ]
            x = f"{name}_3"
    nodes.append(helper.make_node("Softmax", [x], ["prob_1"]))
    graph = helper.make_graph(
        nodes,
        "bvlcalexnet-like",
        [helper.make_tensor_value_info("data_0", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("prob_1", TensorProto.FLOAT, [1, n_classes])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])
    model.ir_version = 7
    onnx.checker.check_model(model, full_check=True)
    return (
        model,
        conv_w,
        conv_b,
        [w.astype(np.float64) for w in weights],
        [b.astype(np.float64) for b in biases],
    )


def numpy_fisher(x, weights, biases, temperature=2.0, labels=None):
    """Reference features of an FC head in float64 NumPy.

    ``x`` is the (flattened) head input. Returns dicts ``forward[j]``,
    ``backward[j]`` for FC layer j (0-based from the lowest), plus the
    activations list (head input, hidden ReLU outputs, logits).
    """
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    xs, ys = [x], []
    for j, (W, b) in enumerate(zip(weights, biases)):
        y = xs[-1] @ W + b
        ys.append(y)
        if j < len(weights) - 1:
            xs.append(np.maximum(y, 0))
    logits = ys[-1]
    n_classes = logits.shape[1]
    g = np.full(n_classes, 1.0 / n_classes) if labels is None else np.asarray(labels, dtype=np.float64)
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    soft = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    deltas = [None] * len(weights)
    deltas[-1] = g - soft
    for j in range(len(weights) - 2, -1, -1):
        deltas[j] = (deltas[j + 1] @ weights[j + 1].T) * (ys[j] > 0)
    return xs, deltas, xs + [logits]


def torch_model(kind, *, seed=0, n_classes=10, double=False):
    """A random AlexNet- ("alexnet") or VGG-shaped ("vgg") torch network,
    eval mode, and its ONNX export (legacy exporter, dynamic batch).

    Input (N, 3, 16, 16). AlexNet follows torchvision's classifier order
    (Dropout, Linear, ReLU, Dropout, Linear, ReLU, Linear); VGG has an
    adaptive average pool and (Linear, ReLU, Dropout) x 2, Linear. With
    ``double=True`` the convolutions are left out of the trunk (onnxruntime
    has no float64 Conv kernel on CPU): a max-pool feeds the same head.
    """

    import torch
    from torch import nn

    torch.manual_seed(seed)
    if kind == "alexnet":
        net = nn.Sequential(
            nn.Conv2d(3, 6, 5, stride=2, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Dropout(),
            nn.Linear(32, 24),
            nn.ReLU(),
            nn.Dropout(),
            nn.Linear(24, 20),
            nn.ReLU(),
            nn.Linear(20, n_classes),
        )
    elif kind == "vgg":
        net = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(4, 6, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d((2, 2)),
            nn.Flatten(),
            nn.Linear(24, 30),
            nn.ReLU(),
            nn.Dropout(),
            nn.Linear(30, 25),
            nn.ReLU(),
            nn.Dropout(),
            nn.Linear(25, n_classes),
        )
    else:
        raise ValueError(kind)
    if double:
        first = next(i for i, m in enumerate(net) if isinstance(m, nn.Flatten))
        head = [m for m in list(net)[first + 1 :]]
        fc6 = next(m for m in head if isinstance(m, nn.Linear))
        head[head.index(fc6)] = nn.Linear(48, fc6.out_features)
        net = nn.Sequential(nn.MaxPool2d(4), nn.Flatten(), *head)
    with torch.no_grad():  # biases that keep some ReLUs off and some on
        for module in net:
            if isinstance(module, nn.Linear):
                module.bias.normal_(0, 0.3)
    net = net.double() if double else net.float()
    net.eval()
    example = torch.zeros(1, 3, 16, 16, dtype=torch.float64 if double else torch.float32)
    return net, torch_onnx(net, example)


def torch_gradients(net, X, temperature=2.0):
    """Per-image ``dE/dW`` of every Linear layer by torch autograd.

    E is the cross-entropy between uniform labels and softmax(logits / tau).
    Returns a list (one per Linear, lowest first) of arrays (n, in, out),
    each per-image matrix divided by its Frobenius norm.
    """
    import torch
    from torch import nn

    linears = [m for m in net if isinstance(m, nn.Linear)]
    grads = [[] for _ in linears]
    for x in X:
        net.zero_grad()
        logits = net(torch.as_tensor(x[None]))
        log_soft = torch.log_softmax(logits / temperature, dim=1)
        loss = -(log_soft / logits.shape[1]).sum()
        loss.backward()
        for out, lin in zip(grads, linears):
            G = lin.weight.grad.detach().numpy().astype(np.float64).T  # (in, out)
            out.append(G / np.linalg.norm(G))
    return [np.stack(g) for g in grads]


def tiny_cnn_model(seed=0, n_classes=10):
    """A random AlexNet-shaped CNN taking (N, 3, 32, 32) input.

    Trunk: conv 3x3 (8) -> ReLU -> max-pool 4 -> conv 3x3 (16) -> ReLU ->
    max-pool 2, i.e. a "pool5" of 16 x 4 x 4 = 256 values; head: fc6 (64),
    ReLU, fc7 (32), ReLU, fc8 (``n_classes`` logits).
    """
    rng = np.random.default_rng(seed)

    def init(name, values):
        return numpy_helper.from_array(np.asarray(values, dtype=np.float32), name)

    inits = [
        init("conv1_w", rng.normal(size=(8, 3, 3, 3)) / np.sqrt(27)),
        init("conv1_b", rng.normal(scale=0.1, size=8)),
        init("conv2_w", rng.normal(size=(16, 8, 3, 3)) / np.sqrt(72)),
        init("conv2_b", rng.normal(scale=0.1, size=16)),
    ]
    pads = [1, 1, 1, 1]
    nodes = [
        helper.make_node("Conv", ["input", "conv1_w", "conv1_b"], ["c1"], kernel_shape=[3, 3], pads=pads),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[4, 4], strides=[4, 4]),
        helper.make_node("Conv", ["p1", "conv2_w", "conv2_b"], ["c2"], kernel_shape=[3, 3], pads=pads),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("MaxPool", ["r2"], ["pool5"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["pool5"], ["flat"], axis=1),
    ]
    x = "flat"
    widths = (256, 64, 32, n_classes)
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        name = f"fc{6 + i}"
        inits += [
            init(f"{name}_w", rng.normal(size=(a, b)) / np.sqrt(a)),
            init(f"{name}_b", rng.normal(scale=0.1, size=b)),
        ]
        nodes.append(helper.make_node("Gemm", [x, f"{name}_w", f"{name}_b"], [name], name=name))
        x = name
        if i < 2:
            nodes.append(helper.make_node("Relu", [x], [f"{name}_relu"]))
            x = f"{name}_relu"
    graph = helper.make_graph(
        nodes,
        "tiny-cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", n_classes])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def torch_onnx(net, example, *, opset=17, dynamic=True):
    """The legacy (``dynamo=False``) ONNX export of ``net`` at ``opset``.

    Input ``input``, output ``logits``; the batch dimension is dynamic unless
    ``dynamic=False`` (then fixed to the example's).
    """
    import io
    import warnings

    import torch

    buf = io.BytesIO()
    axes = {"input": {0: "N"}, "logits": {0: "N"}} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            example,
            buf,
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes=axes,
            opset_version=opset,
        )
    return onnx.load_from_string(buf.getvalue())


#: Spellings of "one row per sample" between a trunk and its FC head.
FLATTEN_SPELLINGS = (
    "view",  # x.view(x.size(0), -1)
    "reshape",  # x.reshape(x.shape[0], -1)
    "torch.flatten",  # torch.flatten(x, 1)
    "nn.Flatten",
    "gap-view",  # AdaptiveAvgPool2d(1), then view(x.size(0), -1)
    "gap-flatten",
    "mean-squeeze",  # x.mean((2, 3), keepdim=True).squeeze(3).squeeze(2)
    "maxpool-squeeze",  # max-pool to 1x1, then squeeze(-1).squeeze(-1)
    "maxpool-view",
)


def flatten_net(spelling, *, seed=0, n_classes=5, batchnorm=False):
    """A small torch CNN (input (N, 3, 8, 8)) whose trunk output is flattened
    by one of :data:`FLATTEN_SPELLINGS`, then fc6 -> ReLU -> fc7 -> ReLU ->
    fc8, eval mode. With ``batchnorm=True`` the head is Linear ->
    BatchNorm1d -> ReLU -> Dropout -> Linear -> ReLU -> Linear, with random
    running statistics.
    """
    import torch
    from torch import nn

    torch.manual_seed(seed)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            pooled = spelling.split("-")[0] in ("gap", "mean", "maxpool")
            width = 4 if pooled else 4 * 4 * 4
            if batchnorm:
                bn = nn.BatchNorm1d(12)
                with torch.no_grad():
                    bn.running_mean.normal_(0, 0.5)
                    bn.running_var.uniform_(0.5, 2.0)
                    bn.weight.normal_(1.0, 0.3)
                    bn.bias.normal_(0, 0.3)
                layers = [nn.Linear(width, 12), bn, nn.ReLU(), nn.Dropout()]
            else:
                layers = [nn.Linear(width, 12), nn.ReLU()]
            layers += [nn.Linear(12, 9), nn.ReLU(), nn.Linear(9, n_classes)]
            self.head = nn.Sequential(*layers)
            with torch.no_grad():
                for module in self.head:
                    if isinstance(module, nn.Linear):
                        module.bias.normal_(0, 0.3)

        def forward(self, x):
            x = torch.relu(self.conv(x))
            if spelling.startswith("gap"):
                x = nn.functional.adaptive_avg_pool2d(x, 1)
            elif spelling.startswith("mean"):
                x = x.mean((2, 3), keepdim=True)
            elif spelling.startswith("maxpool"):
                x = nn.functional.max_pool2d(x, 8)
            else:
                x = nn.functional.max_pool2d(x, 2)
            last = spelling.split("-")[-1]
            if last in ("view",):
                x = x.view(x.size(0), -1)
            elif last == "reshape":
                x = x.reshape(x.shape[0], -1)
            elif last in ("torch.flatten", "flatten"):
                x = torch.flatten(x, 1)
            elif last == "nn.Flatten":
                x = nn.Flatten()(x)
            elif last == "squeeze":
                x = x.squeeze(3).squeeze(2)
            return self.head(x)

    return Net().eval()


def torch_weight_gradients(net, X, temperature=2.0):
    """Per-sample ``dE/dW`` of every Linear layer of ``net`` by torch autograd.

    E is the cross-entropy between uniform labels and softmax(logits / tau).
    Returns a list (one per Linear, in module order) of float64 arrays
    (n, in, out), not normalised.
    """
    import torch
    from torch import nn

    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    grads = [[] for _ in linears]
    for x in X:
        net.zero_grad()
        logits = net(torch.as_tensor(x[None]))
        log_soft = torch.log_softmax(logits / temperature, dim=1)
        (-(log_soft / logits.shape[1]).sum()).backward()
        for out, lin in zip(grads, linears):
            out.append(lin.weight.grad.detach().numpy().astype(np.float64).T)
    return [np.stack(g) for g in grads]


def _random_fc(rng, widths):
    """Weights (in, out) and biases of FC layers of ``widths``, float32."""
    weights = [
        (rng.normal(size=(a, b)) / np.sqrt(a)).astype(np.float32) for a, b in zip(widths[:-1], widths[1:])
    ]
    biases = [rng.normal(scale=0.3, size=b).astype(np.float32) for b in widths[1:]]
    return weights, biases


def _conv(rng, nodes, inits, x, name, out_channels, in_channels, kernel, *, group=1, out=None, **attrs):
    """A Conv node with random weights ``{name}_w_0`` / ``{name}_b_0`` (Caffe2 names)."""
    fan_in = in_channels // group * kernel * kernel
    weight = rng.normal(size=(out_channels, in_channels // group, kernel, kernel)) / np.sqrt(fan_in)
    inits += [
        _init(f"{name}_w_0", weight.astype(np.float32)),
        _init(f"{name}_b_0", rng.normal(scale=0.1, size=out_channels).astype(np.float32)),
    ]
    out = out or f"{name}_1"
    nodes.append(
        helper.make_node(
            "Conv",
            [x, f"{name}_w_0", f"{name}_b_0"],
            [out],
            kernel_shape=[kernel, kernel],
            group=group,
            **attrs,
        )
    )
    return out


def _pool5_width(nodes, inits, inputs, pool5):
    graph = helper.make_graph(nodes, "trunk", inputs, [helper.make_tensor_value_info(pool5, 1, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    dims = [d.dim_value for d in inferred.graph.output[0].type.tensor_type.shape.dim]
    return int(np.prod(dims[1:]))


def zoo_alexnet_model(*, size=99, channels=(8, 16, 12, 12, 8), fc=(24, 20), n_classes=10, seed=0):
    """The op structure of the model zoo's ``bvlcalexnet-12.onnx``, small and random.

    The Caffe BVLC AlexNet as Caffe2 converted it: input ``data_0`` with a
    fixed batch of 1, conv1 11x11 stride 4, LRN, max-pools padded at the end
    (Caffe's ceil mode), grouped conv2/conv4/conv5, a constant
    ``Reshape`` to ``[1, pool5 width]`` (``OC2_DUMMY_1``), ``Gemm`` with
    ``transB=1`` (fc6, fc7, fc8), ``Dropout`` with a mask output, and
    ``Softmax`` (``prob_1``) at the output; opset 12. The full model has
    ``size=224``, ``channels=(96, 256, 384, 384, 256)``, ``fc=(4096, 4096)``
    and 1000 classes.

    Returns (model, weights, biases): the FC weights (in, out) and biases
    as float64.
    """
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    c1, c2, c3, c4, c5 = channels
    ceil_pads = dict(kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 1])
    x = _conv(rng, nodes, inits, "data_0", "conv1", c1, 3, 11, strides=[4, 4])
    nodes += [
        helper.make_node("Relu", [x], ["conv1_2"]),
        helper.make_node("LRN", ["conv1_2"], ["norm1_1"], size=5, alpha=1e-4, beta=0.75, bias=1.0),
        helper.make_node("MaxPool", ["norm1_1"], ["pool1_1"], **ceil_pads),
    ]
    x = _conv(rng, nodes, inits, "pool1_1", "conv2", c2, c1, 5, group=2, pads=[2, 2, 2, 2])
    nodes += [
        helper.make_node("Relu", [x], ["conv2_2"]),
        helper.make_node("LRN", ["conv2_2"], ["norm2_1"], size=5, alpha=1e-4, beta=0.75, bias=1.0),
        helper.make_node("MaxPool", ["norm2_1"], ["pool2_1"], **ceil_pads),
    ]
    x = "pool2_1"
    for name, out_c, in_c, group in (("conv3", c3, c2, 1), ("conv4", c4, c3, 2), ("conv5", c5, c4, 2)):
        x = _conv(rng, nodes, inits, x, name, out_c, in_c, 3, group=group, pads=[1, 1, 1, 1])
        nodes.append(helper.make_node("Relu", [x], [f"{name}_2"]))
        x = f"{name}_2"
    nodes.append(helper.make_node("MaxPool", [x], ["pool5_1"], **ceil_pads))
    inputs = [helper.make_tensor_value_info("data_0", TensorProto.FLOAT, [1, 3, size, size])]
    width = _pool5_width(nodes, inits, inputs, "pool5_1")
    inits.append(_init("OC2_DUMMY_1", np.array([1, width], np.int64)))
    nodes.append(helper.make_node("Reshape", ["pool5_1", "OC2_DUMMY_1"], ["OC2_DUMMY_0"]))
    weights, biases = _random_fc(rng, (width, *fc, n_classes))
    x = "OC2_DUMMY_0"
    for i, name in enumerate(["fc6", "fc7", "fc8"]):
        inits += [_init(f"{name}_w_0", weights[i].T.copy()), _init(f"{name}_b_0", biases[i])]
        nodes.append(
            helper.make_node(
                "Gemm", [x, f"{name}_w_0", f"{name}_b_0"], [f"{name}_1"], transB=1, alpha=1.0, beta=1.0
            )
        )
        x = f"{name}_1"
        if i < 2:
            nodes += [
                helper.make_node("Relu", [x], [f"{name}_2"]),
                helper.make_node("Dropout", [f"{name}_2"], [f"{name}_3", f"_{name}_mask_0"]),
            ]
            x = f"{name}_3"
    nodes.append(helper.make_node("Softmax", [x], ["prob_1"]))
    graph = helper.make_graph(
        nodes,
        "bvlcalexnet",
        inputs,
        [helper.make_tensor_value_info("prob_1", TensorProto.FLOAT, [1, n_classes])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])
    model.ir_version = 7
    onnx.checker.check_model(model, full_check=True)
    return model, [w.astype(np.float64) for w in weights], [b.astype(np.float64) for b in biases]


def zoo_vgg16_model(*, size=64, channels=(4, 6, 8, 8, 8), fc=(24, 20), n_classes=10, seed=0):
    """The op structure of the model zoo's ``vgg16-12.onnx``, small and random.

    The MXNet Gluon export: input ``data`` (batch 1), thirteen 3x3 convs in
    blocks of 2, 2, 3, 3, 3 with ReLU and a 2x2 max-pool after each block,
    then ``Flatten -> Gemm -> Relu -> Dropout -> Flatten -> Gemm -> Relu ->
    Dropout -> Flatten -> Gemm`` (``transB=1``), logits without Softmax, and
    Gluon's names (``vgg0_conv0_fwd``, ``flatten_60``, ``vgg0_dense0_fwd``).
    The full model has ``size=224``, ``channels=(64, 128, 256, 512, 512)``,
    ``fc=(4096, 4096)`` and 1000 classes.

    Returns (model, weights, biases) as :func:`zoo_alexnet_model`.
    """
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    x, in_c, conv, counter = "data", 3, 0, 60
    for block, (repeat, out_c) in enumerate(zip((2, 2, 3, 3, 3), channels)):
        for _ in range(repeat):
            # He initialisation, small biases: thirteen random layers still
            # tell images apart at pool5
            weight = rng.normal(size=(out_c, in_c, 3, 3)) * np.sqrt(2 / (9 * in_c))
            inits += [
                _init(f"vgg0_conv{conv}_weight", weight.astype(np.float32)),
                _init(f"vgg0_conv{conv}_bias", rng.normal(scale=0.01, size=out_c).astype(np.float32)),
            ]
            nodes += [
                helper.make_node(
                    "Conv",
                    [x, f"vgg0_conv{conv}_weight", f"vgg0_conv{conv}_bias"],
                    [f"vgg0_conv{conv}_fwd"],
                    name=f"vgg0_conv{conv}_fwd",
                    kernel_shape=[3, 3],
                    pads=[1, 1, 1, 1],
                    strides=[1, 1],
                ),
                helper.make_node(
                    "Relu", [f"vgg0_conv{conv}_fwd"], [f"vgg0_relu{conv}_fwd"], name=f"vgg0_relu{conv}_fwd"
                ),
            ]
            x, in_c, conv = f"vgg0_relu{conv}_fwd", out_c, conv + 1
        nodes.append(
            helper.make_node(
                "MaxPool",
                [x],
                [f"vgg0_pool{block}_fwd"],
                name=f"vgg0_pool{block}_fwd",
                kernel_shape=[2, 2],
                strides=[2, 2],
                pads=[0, 0, 0, 0],
            )
        )
        x = f"vgg0_pool{block}_fwd"
    inputs = [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, size, size])]
    width = _pool5_width(nodes, inits, inputs, x)
    weights, biases = _random_fc(rng, (width, *fc, n_classes))
    for i in range(3):
        flat = f"flatten_{counter + 5 * i}"
        inits += [
            _init(f"vgg0_dense{i}_weight", weights[i].T.copy()),
            _init(f"vgg0_dense{i}_bias", biases[i]),
        ]
        nodes += [
            helper.make_node("Flatten", [x], [flat], name=flat),
            helper.make_node(
                "Gemm",
                [flat, f"vgg0_dense{i}_weight", f"vgg0_dense{i}_bias"],
                [f"vgg0_dense{i}_fwd"],
                name=f"vgg0_dense{i}_fwd",
                alpha=1.0,
                beta=1.0,
                transA=0,
                transB=1,
            ),
        ]
        x = f"vgg0_dense{i}_fwd"
        if i < 2:
            nodes += [
                helper.make_node("Relu", [x], [f"vgg0_dense{i}_relu_fwd"], name=f"vgg0_dense{i}_relu_fwd"),
                helper.make_node(
                    "Dropout",
                    [f"vgg0_dense{i}_relu_fwd"],
                    [f"vgg0_dropout{i}_fwd"],
                    name=f"vgg0_dropout{i}_fwd",
                ),
            ]
            x = f"vgg0_dropout{i}_fwd"
    graph = helper.make_graph(
        nodes,
        "vgg16",
        inputs,
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, n_classes])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])
    model.ir_version = 7
    onnx.checker.check_model(model, full_check=True)
    return model, [w.astype(np.float64) for w in weights], [b.astype(np.float64) for b in biases]


def with_output(model, tensor):
    """A copy of ``model`` that also outputs ``tensor`` (type left to the runtime)."""
    copy = onnx.ModelProto.FromString(model.SerializeToString())
    copy.graph.output.append(helper.make_tensor_value_info(tensor, TensorProto.FLOAT, None))
    return copy


def quantized_models(model, calibration, directory, *, input_name="input", preprocess=False, **options):
    """``model`` quantized by ``onnxruntime.quantization`` in three formats.

    Returns a dict ``{"QDQ": ..., "QOperator": ..., "dynamic": ...}`` of
    ModelProto: ``quantize_static`` (int8, per tensor) in both formats with
    ``calibration`` (an array of samples) as calibration data, and
    ``quantize_dynamic``. ``preprocess=True`` runs the quantizer's
    ``quant_pre_process`` first (shape inference and graph optimisation; the
    quantizer fails without it on torchvision exports of networks with
    BatchNorm; where its symbolic shape inference fails, it runs with
    ``skip_symbolic_shape=True``, as a user would). ``options`` go to ``quantize_static`` (``per_channel``,
    ``op_types_to_quantize``, ``calibrate_method``, ``extra_options``...).
    """
    import logging
    import os

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_dynamic, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.samples = iter([{input_name: x[None]} for x in calibration])

        def get_next(self):
            return next(self.samples, None)

    source = os.path.join(directory, "float.onnx")
    onnx.save(model, source)
    if preprocess:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        try:
            quant_pre_process(source, os.path.join(directory, "preprocessed.onnx"))
        except AssertionError:  # its symbolic shape inference fails on some exports (torchvision vit_b_16)
            quant_pre_process(source, os.path.join(directory, "preprocessed.onnx"), skip_symbolic_shape=True)
        source = os.path.join(directory, "preprocessed.onnx")
    result = {}
    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # the quantizer's advice on pre-processing
    try:
        for name in ("QDQ", "QOperator"):
            path = os.path.join(directory, f"{name}.onnx")
            quantize_static(source, path, Reader(), quant_format=getattr(QuantFormat, name), **options)
            result[name] = onnx.load(path)
        path = os.path.join(directory, "dynamic.onnx")
        quantize_dynamic(source, path)
        result["dynamic"] = onnx.load(path)
    finally:
        logging.getLogger().setLevel(level)
    return result


def dequantized_weights(qmodel, layers):
    """The FC weights (in, out) and biases of a quantized model, float64,
    found by the names ``onnxruntime.quantization`` gives them.

    ``layers`` lists ``(weight name, bias name, stored (out, in))`` of the
    float model.
    """
    inits = {i.name: numpy_helper.to_array(i).astype(np.float64) for i in qmodel.graph.initializer}

    def deq(prefix):
        return (inits[f"{prefix}_quantized"] - inits[f"{prefix}_zero_point"]) * inits[f"{prefix}_scale"]

    weights, biases = [], []
    for weight, bias, out_in in layers:
        if f"{weight}_Transposed_quantized" in inits:  # quantize_dynamic stores W (in, out)
            w = deq(f"{weight}_Transposed")
        else:
            w = deq(weight)
            w = w.T if out_in else w
        if bias in inits:
            b = inits[bias]
        elif f"{bias}_quantized_scale" in inits:  # QDQ: int32 with its own scale
            b = (inits[f"{bias}_quantized"] - inits[f"{bias}_quantized_zero_point"]) * inits[
                f"{bias}_quantized_scale"
            ]
        elif f"{bias}_scale" in inits:  # QLinearAdd: int8 bias
            b = deq(bias)
        else:  # QGemm: int32 bias in units of input scale x weight scale
            node = next(n for n in qmodel.graph.node if f"{bias}_quantized" in n.input)
            b = inits[f"{bias}_quantized"] * inits[node.input[1]] * inits[f"{weight}_scale"]
        weights.append(w)
        biases.append(b.reshape(-1))
    return weights, biases


def head_input_values(model, head, X, input_name="input", *, one_by_one=True):
    """The head input of ``model`` as onnxruntime computes it in the graph as
    it is (one sample at a time, or the whole batch), then rounded and
    dequantized in NumPy as the int8 model does before its first FC layer;
    float64 (n, width)."""
    import onnxruntime as ort

    elem = {np.dtype(np.uint8): TensorProto.UINT8, np.dtype(np.int8): TensorProto.INT8}
    quantization = head.input_quantization
    quantized = quantization is not None and quantization.quantized
    kind = elem[np.asarray(quantization.zero_point).dtype] if quantized else TensorProto.FLOAT
    copy = onnx.ModelProto.FromString(model.SerializeToString())
    copy.graph.output.append(helper.make_tensor_value_info(head.input_name, kind, None))
    session = ort.InferenceSession(copy.SerializeToString(), providers=["CPUExecutionProvider"])
    batches = [x[None] for x in X] if one_by_one else [X]
    value = np.concatenate(
        [session.run([head.input_name], {input_name: b})[0].reshape(len(b), -1) for b in batches]
    ).astype(np.float64)
    if quantization is not None:
        scale, zero = (np.asarray(v, np.float64) for v in quantization[:2])
        if not quantized:  # the model rounds it to its integers first
            info = np.iinfo(np.asarray(quantization.zero_point).dtype)
            value = np.clip(np.round(value / scale) + zero, info.min, info.max)
        value = (value - zero) * scale
    return value
