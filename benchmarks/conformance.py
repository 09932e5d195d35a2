r"""Which ONNX files skfishing reads: architecture x export spelling x format.

Each row exports (or builds) a classifier, quantizes it where the format
asks, and runs :class:`~skfishing._onnx.network` on a few random images:

* float32 rows: accepted when the head is found; the cell gives the largest
  difference between the features' ``dE/dW_k = -x_{k-1} delta_k^T / tau``
  and torch autograd's gradient of the same Linear layer's weights (the
  last Linear modules of the network, in order), over every FC layer;
* int8 rows (``onnxruntime.quantization``: ``quantize_static`` in QDQ and
  QOperator format, ``quantize_dynamic``): the correlation of the trace
  kernel of the int8 features with the float model's, for the lowest FC
  layer;
* refused rows: the start of skfishing's message.

The full rows use torchvision's and timm's architectures with random
weights, made to behave like trained ones (:func:`realistic`: BatchNorm
statistics recomputed on photo crops, a zero-initialised classifier given
random weights), and random crops of scikit-learn's two sample photographs
(:func:`photo_crops`) rather than white noise: 32 crops for the BatchNorm
statistics, 16 others to calibrate the quantizer, 8 others for the
gradients and kernels. The quantizer runs with onnxruntime's advice for x86
CPUs (:func:`user_quantization`), the same for every architecture.

``--smoke`` runs tiny networks only (every flatten spelling at opsets 9, 13
and 21, the zoo's AlexNet and VGG16 structures, a BatchNorm1d head, each
in the four formats) in seconds; without it, torchvision's and timm's
architectures (random weights, 224x224) are added where those packages are
installed. torch builds the networks; the builders live in
``tests/onnx_models.py``. Usage::

    python benchmarks/conformance.py --smoke
    python benchmarks/conformance.py            # + torchvision and timm
    python benchmarks/conformance.py --no-tiny --only resnet18 vit_tiny_patch16_224
    python benchmarks/conformance.py --no-tiny --only vit_b_16 --calibration 8
"""

import argparse
import io
import os
import sys
import tempfile
import warnings

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import onnx_models  # noqa: E402
from skfishing import HeadStructureError  # noqa: E402
from skfishing._onnx.head import Tensor  # noqa: E402
from skfishing._onnx.network import get_network  # noqa: E402

CPU = ["CPUExecutionProvider"]
FORMATS = ("float32", "QDQ", "QOperator", "dynamic")
TORCHVISION = (
    "alexnet",
    "vgg11",
    "resnet18",
    "mobilenet_v2",
    "efficientnet_b0",
    "densenet121",
    "convnext_tiny",
    "vit_b_16",
)
TIMM = ("vit_tiny_patch16_224", "mobilenetv3_small_100")
TEMPERATURE = 2.0


def photo_crops(n, size=224, seed=0):
    """``n`` random crops of scikit-learn's two sample photographs, ImageNet-normalised.

    Square crops of 30 % to 100 % of the shorter side, at a random place,
    flipped at random, resized to ``size`` (bilinear): images with the
    structure of photographs (edges, textures, smooth regions), not white noise.
    """
    import torch
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    mean = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
    std = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]
    out = np.empty((n, 3, size, size), np.float32)
    for i in range(n):
        photo = photos[rng.integers(len(photos))]
        side = int(min(photo.shape[:2]) * rng.uniform(0.3, 1.0))
        top = rng.integers(photo.shape[0] - side + 1)
        left = rng.integers(photo.shape[1] - side + 1)
        crop = photo[top : top + side, left : left + side].transpose(2, 0, 1) / np.float32(255)
        if rng.random() < 0.5:
            crop = crop[:, :, ::-1]
        resized = torch.nn.functional.interpolate(
            torch.as_tensor(np.ascontiguousarray(crop, np.float32))[None],
            size=(size, size),
            mode="bilinear",
            antialias=True,
            align_corners=False,
        )[0].numpy()
        out[i] = (resized - mean) / std
    return out


def realistic(net, images, batch_size=8):
    """Give a randomly initialised network the statistics of a trained one, and leave it in eval mode.

    * BatchNorm running statistics are recomputed on ``images`` (the
      BatchNorm modules alone in train mode, ``momentum=None``: the
      cumulative average over the batches), so that every normalised layer
      sees zero-mean, unit-variance activations as in training, instead of
      the running statistics of a fresh module (mean 0, variance 1) which
      let the activations of a deep network vanish or blow up;
    * a Linear layer whose weights are all zero (torchvision's ViT initialises
      its classifier so) gets ``nn.Linear``'s default random weights.

    Returns two diagnostics: the spread of the logits (the standard
    deviation across ``images`` of each logit, averaged over the logits,
    divided by the standard deviation of all logits; near 0 when the network
    gives every image the same logits), and the noise gain: the relative
    change of the classifier's input when Gaussian noise of 1 % of the
    images' standard deviation is added to them. A random network can be
    chaotic (a large gain), which no trained classifier is: then any
    perturbation, int8 rounding included, moves its features far.
    """
    import torch
    from torch import nn

    net.eval()
    for module in net.modules():
        if isinstance(module, nn.Linear) and not module.weight.detach().any():
            module.reset_parameters()
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
            module.reset_running_stats()
            module.momentum = None
            module.train()
    inputs = []
    hook = [m for m in net.modules() if isinstance(m, nn.Linear)][-1].register_forward_hook(
        lambda module, args, output: inputs.append(args[0].detach())
    )

    def run(batch):
        return torch.cat(
            [net(torch.as_tensor(batch[s : s + batch_size])) for s in range(0, len(batch), batch_size)]
        )

    with torch.no_grad():
        run(images)
        net.eval()
        inputs.clear()
        logits = run(images).numpy()
        noise = np.random.default_rng(0).normal(size=images.shape).astype(np.float32)
        clean = torch.cat(inputs)
        inputs.clear()
        run(images + np.float32(0.01 * images.std()) * noise)
        noisy = torch.cat(inputs)
    hook.remove()
    gain = float((noisy - clean).norm() / clean.norm())
    return float(logits.std(axis=0).mean() / logits.std()), gain


def features_gradients(model, X):
    """Per-sample dE/dW_k from skfishing's features, lowest layer first, and the head."""
    net = get_network(model, CPU)
    grads = []
    for k in net.head.numbers:
        (x, delta), _ = net.run(X, (Tensor("x", k - 1), Tensor("delta", k)), temperature=TEMPERATURE)
        grads.append(-np.einsum("ni,nj->nij", x.astype(np.float64), delta) / TEMPERATURE)
    return net, grads


def float_cell(net, model, X, chunk=2048):
    """Largest difference to torch autograd over the head's layers.

    The loss is :func:`onnx_models.torch_weight_gradients`'s; the gradients
    are compared one sample and ``chunk`` rows at a time, so that VGG's
    25088 x 4096 layer needs no stack of per-sample gradients in memory.
    """
    import torch
    from torch import nn

    network = get_network(model, CPU)
    factors = []
    for k in network.head.numbers:
        (x, delta), _ = network.run(X, (Tensor("x", k - 1), Tensor("delta", k)), temperature=TEMPERATURE)
        factors.append((x.astype(np.float64), delta.astype(np.float64)))
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)][-len(factors) :]
    error = 0.0
    for i, sample in enumerate(X):
        net.zero_grad()
        logits = net(torch.as_tensor(sample[None]))
        (-(torch.log_softmax(logits / TEMPERATURE, dim=1) / logits.shape[1]).sum()).backward()
        for (x, delta), linear in zip(factors, linears):
            expected = linear.weight.grad.detach().numpy().T  # (in, out)
            for start in range(0, expected.shape[0], chunk):
                got = -np.outer(x[i, start : start + chunk], delta[i]) / TEMPERATURE
                error = max(error, float(np.abs(got - expected[start : start + chunk]).max()))
    return f"accepted, {len(factors)} FC layer(s), max |grad - torch| = {error:.1e}"


def kernel(net, X, k):
    (x, delta), _ = net.run(X, (Tensor("x", k - 1), Tensor("delta", k)))
    return (x @ x.T) * (delta @ delta.T)


def int8_cell(float_model, int8_model, X):
    """Trace-kernel correlation with the float model, at the float model's lowest FC layer."""
    import onnxruntime

    try:  # the quantizer can write files that onnxruntime itself refuses
        onnxruntime.InferenceSession(int8_model.SerializeToString(), providers=CPU)
    except Exception as exc:  # noqa: BLE001 - that is the cell
        message = str(exc).split("] : ")[-1]
        return f"the quantized file does not load in onnxruntime: {type(exc).__name__}: {message[:200]}"
    float_net, int8_net = get_network(float_model, CPU), get_network(int8_model, CPU)
    k = float_net.head.numbers[0]
    if int8_net.head.numbers != float_net.head.numbers:
        return f"head differs: layers {int8_net.head.numbers}, float32 has {float_net.head.numbers}"
    corr = np.corrcoef(kernel(float_net, X, k).ravel(), kernel(int8_net, X, k).ravel())[0, 1]
    return f"accepted, trace kernel correlation with float32 (layer {k}) = {corr:.4f}"


def refused(exc):
    message = str(exc).split("; ")[0]
    return f"refused: {type(exc).__name__}: {message[:160]}"


def rows_for(name, spelling, net, model, X, calibration, input_name="input", note="", **quantization):
    """One row per format for a float model (``net`` is its torch module or None).

    ``quantization`` goes to :func:`onnx_models.quantized_models`; ``note``
    is appended to the float32 cell.
    """
    try:
        cell = float_cell(net, model, X) if net is not None else float_only(model, X)
        yield name, spelling, "float32", cell + note
    except (HeadStructureError, ValueError) as exc:
        yield name, spelling, "float32", refused(exc)
        return
    with tempfile.TemporaryDirectory() as directory:
        try:
            quantized = onnx_models.quantized_models(
                model, calibration, directory, input_name=input_name, **quantization
            )
        except Exception as exc:  # noqa: BLE001 - the quantizer's failure is a cell too
            for fmt in FORMATS[1:]:
                yield name, spelling, fmt, f"not quantized: {type(exc).__name__}: {str(exc)[:120]}"
            return
        for fmt in FORMATS[1:]:
            try:
                yield name, spelling, fmt, int8_cell(model, quantized[fmt], X)
            except (HeadStructureError, ValueError) as exc:
                yield name, spelling, fmt, refused(exc)


def float_only(model, X):
    _, grads = features_gradients(model, X)
    return f"accepted, {len(grads)} FC layer(s) (no torch oracle)"


def smoke_rows():
    import torch

    rng = np.random.default_rng(0)
    images = rng.normal(size=(24, 3, 8, 8)).astype(np.float32)
    for spelling in onnx_models.FLATTEN_SPELLINGS:
        net = onnx_models.flatten_net(spelling)
        for opset in (9, 13, 21):
            model = onnx_models.torch_onnx(net, torch.zeros(1, 3, 8, 8), opset=opset)
            try:
                cell = float_cell(net, model, images[:6])
            except (HeadStructureError, ValueError) as exc:
                cell = refused(exc)
            yield "tiny-cnn", f"{spelling} (opset {opset})", "float32", cell
    net = onnx_models.flatten_net("view", batchnorm=True)
    model = onnx_models.torch_onnx(net, torch.zeros(1, 3, 8, 8), opset=13)
    yield from rows_for(
        "tiny-cnn + BatchNorm1d head", "view (opset 13)", net, model, images[16:], images[:16]
    )
    net = onnx_models.flatten_net("view")
    model = onnx_models.torch_onnx(net, torch.zeros(1, 3, 8, 8), opset=13)
    yield from rows_for("tiny-cnn", "view (opset 13)", net, model, images[16:], images[:16])
    for name, build, input_name in (
        ("zoo bvlcalexnet-12 structure", onnx_models.zoo_alexnet_model, "data_0"),
        ("zoo vgg16-12 structure", onnx_models.zoo_vgg16_model, "data"),
    ):
        model, _, _ = build()
        size = model.graph.input[0].type.tensor_type.shape.dim[2].dim_value
        zoo_images = rng.uniform(-1, 1, size=(12, 3, size, size)).astype(np.float32)
        spelling = "Caffe2 constant Reshape" if "alexnet" in name else "Gluon Flatten"
        yield from rows_for(name, spelling, None, model, zoo_images[8:], zoo_images[:8], input_name)


def user_quantization():
    """The ``quantize_static`` settings of the full rows: onnxruntime's advice for x86 CPUs.

    ``quant_pre_process`` first; per-channel int8 weights, uint8
    activations, MinMax calibration, every operator the quantizer knows.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantType

    return {
        "preprocess": True,
        "per_channel": True,
        "activation_type": QuantType.QUInt8,
        "weight_type": QuantType.QInt8,
        "calibrate_method": CalibrationMethod.MinMax,
    }


def full_rows(only=None, n_images=8, n_calibration=16, n_statistics=32):
    """torchvision's and timm's architectures, random weights made realistic, on photo crops."""
    import torch

    statistics = photo_crops(n_statistics, seed=0)  # BatchNorm statistics
    calibration = photo_crops(n_calibration, seed=1)  # the quantizer's calibration
    images = photo_crops(n_images, seed=2)  # gradients and kernels
    nets = []
    try:
        import torchvision

        nets += [(name, lambda n=name: getattr(torchvision.models, n)(weights=None)) for name in TORCHVISION]
    except ImportError:
        print("torchvision not installed: its rows are left out", file=sys.stderr)
    try:
        import timm

        nets += [(f"timm {name}", lambda n=name: timm.create_model(n, pretrained=False)) for name in TIMM]
    except ImportError:
        print("timm not installed: its rows are left out", file=sys.stderr)
    for name, make in nets:
        if only and name.removeprefix("timm ") not in only:
            continue
        torch.manual_seed(0)
        net = make()
        spread, gain = realistic(net, statistics)
        for dynamo in (False, True):
            spelling = "torch.onnx dynamo=True" if dynamo else "torch.onnx dynamo=False, opset 17"
            try:
                model = export(net, dynamo)
            except Exception as exc:  # noqa: BLE001 - an export failure is a cell too
                yield name, spelling, "float32", f"not exported: {type(exc).__name__}: {str(exc)[:120]}"
                continue
            if dynamo:  # one quantization per architecture is enough
                try:
                    yield name, spelling, "float32", float_cell(net, model, images[:4])
                except (HeadStructureError, ValueError) as exc:
                    yield name, spelling, "float32", refused(exc)
            else:
                note = f", logit spread {spread:.2f}, noise gain {gain:.3f}"
                yield from rows_for(
                    name, spelling, net, model, images, calibration, note=note, **user_quantization()
                )
            del model


def export(net, dynamo):
    import onnx
    import torch

    example = torch.zeros(1, 3, 224, 224)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:  # a batch of 2: torch.export specialises a batch of 1
            program = torch.onnx.export(
                net,
                (torch.zeros(2, 3, 224, 224),),
                dynamo=True,
                dynamic_shapes=({0: torch.export.Dim("N")},),
                external_data=False,
            )
            return program.model_proto
        buf = io.BytesIO()
        torch.onnx.export(
            net,
            example,
            buf,
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
        )
        return onnx.load_from_string(buf.getvalue())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny networks only (seconds)")
    parser.add_argument(
        "--only", nargs="+", metavar="NAME", help="torchvision/timm architectures to run (default: all)"
    )
    parser.add_argument("--no-tiny", action="store_true", help="leave out the tiny networks")
    parser.add_argument("--images", type=int, default=8, help="images of the gradient and kernel checks")
    parser.add_argument("--calibration", type=int, default=16, help="calibration images of the quantizer")
    args = parser.parse_args(argv)
    rows = [] if args.no_tiny else list(smoke_rows())
    if not args.smoke:
        for row in full_rows(args.only, args.images, args.calibration):
            print("  ".join(row), file=sys.stderr, flush=True)  # progress: the big ones take minutes
            rows.append(row)
    widths = [
        max(len(str(row[i])) for row in rows + [("architecture", "spelling", "format")]) for i in range(3)
    ]
    header = ("architecture", "spelling", "format", "result")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths + [0])))
    for row in rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths + [0])))
    return rows


if __name__ == "__main__":
    main()
