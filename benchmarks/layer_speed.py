"""Per-image gradients of a convolution: skfishing against Opacus, torch.func and BackPACK (issue 21).

The setting of issue 21's "Speed and memory against the anchors": ResNet-18
(torchvision's layout, random weights, eval mode), the weight gradient of its
last 3x3 convolution ``layer4.1.conv2`` for 256 images at 224x224 in batches
of 32, on 2 CPU threads, for the paper's loss at tau = 2: the cross-entropy
between the tempered softmax and the uniform label vector,
``E = -sum_c g_c log softmax(y / tau)_c`` (the same loss in every row).

Rows, each in a fresh Python process:

* torch forward only (``torch.no_grad``);
* Opacus ``GradSampleModule`` (``loss_reduction="sum"``; only the layer's
  weight requires a gradient, and only that module is in training mode, as
  Opacus records activations in training mode only);
* ``torch.func``: ``vmap(grad(loss))`` over the batch, for that weight;
* BackPACK ``BatchGrad`` on the model ``extend``-ed with its converter;
* onnxruntime forward only, the same network exported to ONNX;
* skfishing ``dE/dW8`` (the classifier, ``layer=8``);
* skfishing ``layer4.1.conv2`` exact (its per-position factors);
* skfishing ``layer4.1.conv2`` sketched (``sketch=TensorSketch(8192)``:
  8,192 float32 per image, sketched during extraction).

The anchors materialise the gradient (2.36 million floats per image).

Every process is pinned to ``--threads`` CPUs, with ``torch.set_num_threads``
and onnxruntime's ``intra_op_num_threads`` (skfishing's sessions too) set to
that number, and BLAS limited to it. It makes the images (seeded normal
noise, held in memory), runs one batch to warm up, then times all of them;
``img/s`` counts the timed images. Memory is the process's peak RSS, and the
peak above the same framework's forward-only row. The rows of one framework
import the same libraries (torch rows: torch, torchvision, Opacus, BackPACK;
onnxruntime rows: onnxruntime and skfishing), so that what is above the
forward-only row is the computation's, not an import's. Then the ratios of
the issue's targets are printed, and skfishing's exact gradient of two
images is compared with ``torch.func``'s.

Then, in one process pinned to one CPU, where a sketched image's time
goes: onnxruntime's forward pass alone, the layer graph's run (forward
pass, reverse pass to the layer and its patches), the sketch of its
factors, and, within the sketch, the real FFTs alone (two per position:
the cost that any sketch of this layer by :class:`~skfishing.TensorSketch`
has). Each is the best of ``--repeat`` timings, in milliseconds per image;
the fractions of the forward pass bound what the sketched row can reach:
the layer graph alone, then with the FFTs.

The rows run in ``--repeat`` rounds (3 by default), each round every row
in turn, so that a slow spell of the machine falls on every row alike; a
row's throughput is its best round, its memory the largest peak of its
rounds. Timings on a machine whose cores other processes share mean
little: rerun on a quiet one. Usage::

    python benchmarks/layer_speed.py            # the issue's setting (minutes)
    python benchmarks/layer_speed.py --smoke    # 8 images at 64x64, batch 4: checks that it runs
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np

LAYER = "layer4.1.conv2"
NODE = "/layer4/layer4.1/conv2/Conv"  # its node in torch.onnx.export's graph (dynamo=False)
TAU = 2.0

ROWS = {
    "torch-forward": "torch forward only",
    "opacus": "Opacus GradSampleModule",
    "torch-func": "torch.func vmap(grad)",
    "backpack": "BackPACK BatchGrad (converter)",
    "ort-forward": "onnxruntime forward only",
    "skfishing-dw8": "skfishing dE/dW8 (classifier)",
    "skfishing-exact": f"skfishing {LAYER} exact",
    "skfishing-sketched": f"skfishing {LAYER} sketched",
}
TORCH_ROWS = ("torch-forward", "opacus", "torch-func", "backpack")


# -- the network and the loss ---------------------------------------------------------


def resnet18():
    """torchvision's ResNet-18, random weights (seed 0), eval mode."""
    import torch
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.resnet18().eval()


def loss(logits):
    """The paper's loss, summed over the batch: -sum_c g_c log softmax(y / tau)_c, g uniform."""
    import torch

    g = torch.full((logits.shape[-1],), 1.0 / logits.shape[-1], dtype=logits.dtype)
    return -(g * torch.log_softmax(logits / TAU, dim=-1)).sum()


def only_the_layer(net):
    """``net`` with a gradient for the layer's weight only; the weight."""
    for p in net.parameters():
        p.requires_grad_(False)
    weight = net.get_submodule(LAYER).weight
    weight.requires_grad_(True)
    return weight


def export(path, size):
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            resnet18(),
            torch.zeros(1, 3, size, size),
            path,
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
            opset_version=17,
        )


# -- one row, in its own process ------------------------------------------------------


def torch_row(name, X, batch, threads):
    import torch

    torch.set_num_threads(threads)
    for extra in ("opacus", "backpack"):  # imported by every torch row: see the module's docstring
        try:
            __import__(extra)
        except ImportError:
            if name in ("opacus", "backpack"):
                raise
    net = resnet18()
    if name == "torch-forward":

        def step(x):
            with torch.no_grad():
                return net(x)

    elif name == "opacus":
        from opacus import GradSampleModule

        weight = only_the_layer(net)
        model = GradSampleModule(net, loss_reduction="sum").eval()
        net.get_submodule(LAYER).train()  # Opacus records activations in training mode only

        def step(x):
            loss(model(x)).backward()
            result = weight.grad_sample
            weight.grad_sample = weight.grad = None
            return result

    elif name == "torch-func":
        from torch.func import functional_call, grad, vmap

        weight = only_the_layer(net).detach()
        params = {k: v.detach() for k, v in net.named_parameters()}
        buffers = dict(net.named_buffers())
        key = f"{LAYER}.weight"

        def one(w, x):
            return loss(functional_call(net, ({**params, key: w}, buffers), (x[None],)))

        per_image = vmap(grad(one), in_dims=(None, 0))

        def step(x):
            return per_image(weight, x)

    else:  # backpack
        from backpack import backpack, extend
        from backpack.extensions import BatchGrad

        only_the_layer(net)
        model = extend(net, use_converter=True)  # in-place ReLUs break it otherwise
        (weight,) = [p for p in model.parameters() if p.requires_grad]

        def step(x):
            with backpack(BatchGrad()):
                loss(model(x)).backward()
            result = weight.grad_batch
            weight.grad = weight.grad_batch = None
            return result

    return lambda rows: step(torch.from_numpy(X[rows]))


def ort_row(name, X, batch, threads, model, n_components):
    import onnxruntime as ort

    base = ort.SessionOptions

    class Options(base):  # every session of this process, skfishing's too, on `threads` threads
        def __init__(self):
            super().__init__()
            self.intra_op_num_threads = threads

    ort.SessionOptions = Options
    from skfishing import DeepFisherTransformer, TensorSketch

    if name == "ort-forward":
        session = ort.InferenceSession(model, Options(), providers=["CPUExecutionProvider"])
        return lambda rows: session.run(None, {"input": X[rows]})
    params = dict(batch_size=batch, providers=["CPUExecutionProvider"])
    if name == "skfishing-dw8":
        fish = DeepFisherTransformer(model, layer=8, **params)
    elif name == "skfishing-exact":
        fish = DeepFisherTransformer(model, layer=NODE, **params)
    else:
        fish = DeepFisherTransformer(
            model, layer=NODE, sketch=TensorSketch(n_components, random_state=0), **params
        )
    fish.fit(X[:1])
    return lambda rows: fish.transform(X[rows])


def run_row(args):
    """Time one row; print its numbers as JSON on the last line."""
    X = np.random.default_rng(0).normal(size=(args.images, 3, args.size, args.size)).astype(np.float32)
    batches = [slice(i, i + args.batch_size) for i in range(0, args.images, args.batch_size)]
    if args.row in TORCH_ROWS:
        step = torch_row(args.row, X, args.batch_size, args.threads)
    else:
        step = ort_row(args.row, X, args.batch_size, args.threads, args.model, args.n_components)
    if args.row.startswith("skfishing"):  # one transform of all images: it cuts them into batches itself
        batches = [slice(None)]
    step(slice(0, args.batch_size))  # warm-up
    start = time.perf_counter()
    for rows in batches:
        out = None  # a batch's gradients are dropped before the next batch
        out = step(rows)
    seconds = time.perf_counter() - start
    del out
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"row": args.row, "img_s": args.images / seconds, "peak_mib": peak}))


def run_breakdown(args):
    """One core's milliseconds per image of each step of a sketched batch; JSON on the last line."""
    import onnxruntime as ort
    import scipy.fft
    from threadpoolctl import threadpool_limits

    from skfishing import TensorSketch
    from skfishing._extraction.sketched import fit_sketch, sketch_factors
    from skfishing._onnx.network import get_network

    n = args.batch_size // 2  # a lane's part of a batch (lanes: skfishing/_extraction/lanes.py)
    X = np.random.default_rng(0).normal(size=(n, 3, args.size, args.size)).astype(np.float32)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    forward = ort.InferenceSession(args.model, options, providers=["CPUExecutionProvider"])
    network = get_network(args.model, ["CPUExecutionProvider"])
    factors = network.run_layer(X, NODE, threads=1)
    sketch = fit_sketch(TensorSketch(args.n_components, random_state=0), tuple(f.shape[2] for f in factors))
    positions = factors[0].shape[1]
    counts = np.random.default_rng(0).normal(size=(args.n_components, 2 * positions)).astype(np.float32)

    def ms(step):
        times = []
        for _ in range(args.repeat + 1):  # the first run warms up
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        return min(times[1:]) * 1e3

    with threadpool_limits(1):
        result = {
            "forward": ms(lambda: forward.run(None, {"input": X})) / n,
            "layer graph": ms(lambda: network.run_layer(X, NODE, threads=1)) / n,
            "sketch": ms(lambda: sketch_factors(sketch, *factors, threads=1)) / n,
            "ffts": ms(lambda: scipy.fft.rfft(counts, axis=0, workers=1)),  # one image's 2 T real FFTs
        }
    print(json.dumps({"row": "breakdown", "positions": positions, **result}))


# -- the table ------------------------------------------------------------------------


def child(args, row, model, threads=None):
    """Run ``row`` in a process pinned to ``threads`` CPUs (default ``--threads``); its JSON."""
    threads = threads or args.threads
    cpus = sorted(os.sched_getaffinity(0))[:threads]
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    command = [sys.executable, os.path.abspath(__file__), "--row", row, "--model", model]
    for option in ("images", "size", "batch_size", "threads", "n_components", "repeat"):
        command += [f"--{option.replace('_', '-')}", str(getattr(args, option))]
    result = subprocess.run(
        command,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        preexec_fn=lambda: os.sched_setaffinity(0, cpus),
    )
    if result.returncode != 0:
        return {"row": row, "error": (result.stderr.strip().splitlines() or ["(no message)"])[-1]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def best(old, new):
    """The row's best throughput and largest peak memory so far; an error if any round failed."""
    if old is None or "error" in old or "error" in new:
        return old if old is not None and "error" in old else new
    return {
        "row": new["row"],
        "img_s": max(old["img_s"], new["img_s"]),
        "peak_mib": max(old["peak_mib"], new["peak_mib"]),
    }


def gradient_check(model, size):
    """Max difference of skfishing's exact unit-norm G against torch.func's, two images."""
    import torch
    from torch.func import functional_call, grad, vmap

    from skfishing import DeepFisherTransformer

    X = np.random.default_rng(1).normal(size=(2, 3, size, size)).astype(np.float32)
    Z = DeepFisherTransformer(model, layer=NODE, providers=["CPUExecutionProvider"]).fit_transform(X)
    ours = np.einsum("ntd,nte->ned", Z["forward"].astype(np.float64), Z["backward"].astype(np.float64))
    net = resnet18()
    params = {k: v.detach() for k, v in net.named_parameters()}
    buffers = dict(net.named_buffers())
    key = f"{LAYER}.weight"

    def one(w, x):
        return loss(functional_call(net, ({**params, key: w}, buffers), (x[None],)))

    theirs = vmap(grad(one), in_dims=(None, 0))(params[key], torch.from_numpy(X)).double().numpy()
    theirs = theirs.reshape(2, theirs.shape[1], -1)  # (n, d_out, d_in): d_in in (channel, ky, kx) order
    theirs /= np.linalg.norm(theirs.reshape(2, -1), axis=1)[:, None, None]
    ours = ours / np.linalg.norm(ours.reshape(2, -1), axis=1)[:, None, None]
    # the sign of E is a convention: the unit features equal up to a global sign
    return min(np.abs(ours - theirs).max(), np.abs(ours + theirs).max())


def table(args):
    with tempfile.TemporaryDirectory() as tmp:
        model = os.path.join(tmp, "resnet18.onnx")
        export(model, args.size)
        results = {}
        for round_ in range(args.repeat):
            for row in args.rows:
                result = child(args, row, model)
                print(f"  ... round {round_ + 1}, {ROWS[row]}: {result}", file=sys.stderr, flush=True)
                results[row] = best(results.get(row), result)
        steps = child(args, "breakdown", model, threads=1)
        check = gradient_check(model, args.size)

    print(
        f"\nResNet-18 {LAYER}: {args.images} images at {args.size}x{args.size}, batch {args.batch_size}, "
        f"{args.threads} threads, loss at tau = {TAU}; sketch n_components = {args.n_components}; "
        f"best of {args.repeat} rounds"
    )
    print(f"{'run':<40}{'img/s':>8}{'peak MiB':>10}{'above fwd':>11}")
    forward = {True: results.get("torch-forward", {}), False: results.get("ort-forward", {})}
    for row in args.rows:
        r = results[row]
        if "error" in r:
            print(f"{ROWS[row]:<40}  failed: {r['error']}")
            continue
        base = forward[row in TORCH_ROWS].get("peak_mib")
        above = "" if base is None or row.endswith("forward") else f"{r['peak_mib'] - base:11.0f}"
        print(f"{ROWS[row]:<40}{r['img_s']:8.1f}{r['peak_mib']:10.0f}{above}")

    def value(row, key):
        return results.get(row, {}).get(key)

    print("\ntargets (issue 21)")
    sketched = value("skfishing-sketched", "img_s")
    for other, target in (("opacus", 2.0), ("backpack", 3.0), ("ort-forward", 0.8)):
        if sketched and value(other, "img_s"):
            ratio = sketched / value(other, "img_s")
            print(f"  sketched img/s / {ROWS[other]:<32}{ratio:6.2f}   (target >= {target})")
    ours = [value(r, "peak_mib") for r in ("skfishing-sketched", "ort-forward")]
    theirs = [value(r, "peak_mib") for r in ("opacus", "torch-forward")]
    if None not in ours + theirs:
        ratio = (ours[0] - ours[1]) / (theirs[0] - theirs[1])
        print(
            f"  memory above forward-only, skfishing sketched / Opacus: {ours[0] - ours[1]:.0f} / "
            f"{theirs[0] - theirs[1]:.0f} MiB = {ratio:.3f}   (target <= 0.1)"
        )
    exact = [value(r, "peak_mib") for r in ("skfishing-exact", "ort-forward")]
    if None not in exact:
        print(f"  memory above forward-only, skfishing exact: {exact[0] - exact[1]:.0f} MiB")
    print_breakdown(steps, args, results)
    print(f"\n[check] skfishing exact against torch.func, unit-norm G, 2 images: max |diff| = {check:.1e}")
    failed = [row for row in args.rows if "error" in results[row]] + (
        ["breakdown"] if "error" in steps else []
    )
    if failed:
        sys.exit(f"rows that failed: {', '.join(failed)}")
    if not check <= 1e-4:
        sys.exit(f"skfishing's gradient of {LAYER} differs from torch.func's by {check:.1e} (> 1e-4)")


def print_breakdown(steps, args, results):
    """Where a sketched image's time goes on one core, and what it bounds."""
    print(f"\nwhere the time goes, one core, {args.batch_size // 2} images per run, best of {args.repeat}")
    if "error" in steps:
        print(f"  failed: {steps['error']}")
        return
    forward = steps["forward"]
    for key, label in (
        ("forward", "onnxruntime forward pass"),
        ("layer graph", f"layer graph run (forward, reverse to {LAYER}, patches)"),
        ("sketch", "sketch of its factors"),
        ("ffts", f"  of which the {2 * steps['positions']} real FFTs"),
    ):
        print(f"  {label:<62}{steps[key]:7.2f} ms/img{steps[key] / forward:7.3f} of forward")
    bounds = (
        ("the layer graph alone (a free sketch)", forward / steps["layer graph"]),
        ("the layer graph and the FFTs alone", forward / (steps["layer graph"] + steps["ffts"])),
        ("the layer graph and the sketch", forward / (steps["layer graph"] + steps["sketch"])),
    )
    print("  throughput of forward pass reached by")
    for label, bound in bounds:
        print(f"    {label:<60}{bound:7.3f}")
    ort = results.get("ort-forward", {}).get("img_s")
    for other, target in (("opacus", 2.0), ("backpack", 3.0)):
        theirs = results.get(other, {}).get("img_s")
        if ort and theirs:
            print(
                f"  {target:g}x {ROWS[other]} takes {target * theirs / ort:.3f} of onnxruntime's forward pass"
            )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="8 images at 64x64, batch 4: seconds")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n-components", type=int, default=8192)
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    parser.add_argument("--repeat", type=int, default=3, help="rounds of all rows (best throughput)")
    parser.add_argument("--row", choices=[*ROWS, "breakdown"], help=argparse.SUPPRESS)  # in a child process
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.smoke:
        args.images, args.size, args.batch_size, args.repeat = 8, 64, 4, 1
    if args.row == "breakdown":
        run_breakdown(args)
    elif args.row:
        run_row(args)
    else:
        table(args)


if __name__ == "__main__":
    main()
