"""Speed of gradient-feature extraction, preprocessing and grid search, as ratios.

Everything compared runs side by side in one process, on the same inputs,
providers and threads; each line prints a ratio with its target (absolute
times on a shared machine mean little).

1. [exactness] (``--providers cuda``): features on the CUDA provider against
   the CPU provider, TF32 off (the default) and on (``allow_tf32=True``).
2. [host overhead]: a network of negligible compute (global average pool and
   a small FC head) on float32 3x224x224 input: what ``transform`` adds to a
   bare ``session.run`` of the same network, per image.
3. [preprocessing]: uint8 arrays and JPEG files to the network tensor
   (``benchmarks/preprocessing.py``).
4. [extraction]: ``DeepFisherTransformer(layer=7)`` on an AlexNet-shaped
   network (torchvision layout, random weights, 224x224) against
   onnxruntime forward-only, and against PyTorch autograd computing the same
   features (the textbook ``loss.backward()`` with hooks, and one tuned to
   differentiate the head only).
5. [grid search]: ``GridSearchCV(cv=3)`` over layer {6, 7, 8} x temperature
   {1, 2, 4}: total time against one plain transform plus the SVM fits, for
   the same images as JPEG files, uint8 arrays and float tensors.

torch (a dev-only dependency) builds and exports the networks. Usage::

    python benchmarks/speed.py                      # CPU, everything
    python benchmarks/speed.py --providers cuda     # on a CUDA machine
    python benchmarks/speed.py --only extraction host-overhead
    python benchmarks/speed.py --smoke              # tiny sizes: checks that it runs
"""

import argparse
import os
import tempfile
import time
import warnings

import numpy as np

from skfishing import ImagePreprocessing

SECTIONS = ("exactness", "host-overhead", "preprocessing", "extraction", "grid-search")

#: The preprocessing of torchvision's AlexNet.
PREPROCESSING = ImagePreprocessing(224, resize=256, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def alexnet(n_classes=1000, width=1):
    """torchvision's AlexNet layout, random weights; ``width`` divides every layer's width."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    c = [64 // width, 192 // width, 384 // width, 256 // width, 4096 // width]
    return nn.Sequential(
        nn.Conv2d(3, c[0], 11, stride=4, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(c[0], c[1], 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(c[1], c[2], 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(c[2], c[3], 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(c[3], c[3], 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(3, 2),
        nn.Flatten(),
        nn.Dropout(),
        nn.Linear(c[3] * 36, c[4]),
        nn.ReLU(),
        nn.Dropout(),
        nn.Linear(c[4], c[4]),
        nn.ReLU(),
        nn.Linear(c[4], n_classes),
    ).eval()


def negligible_network():
    """Global average pool, then FC 3 -> 16 -> 16 -> 10: almost no compute."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(3, 16),
        nn.ReLU(),
        nn.Linear(16, 16),
        nn.ReLU(),
        nn.Linear(16, 10),
    ).eval()


def export(net, path):
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            torch.zeros(1, 3, 224, 224),
            path,
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
        )


def torch_features(net, X, batch_size, device, temperature=2.0, tuned=True):
    """x6 and delta7 by autograd, L2-normalised: the same features.

    ``tuned=True`` asks autograd for the gradient with respect to y7 only,
    so nothing below layer 7 is differentiated. ``tuned=False`` is the
    textbook way: hooks record x6 and dE/dy7 while ``loss.backward()``
    computes the gradient of every parameter, as a training step would.
    Inputs start on the host, as for onnxruntime.
    """
    import torch

    linears = [m for m in net if isinstance(m, torch.nn.Linear)]
    out = []
    for start in range(0, len(X), batch_size):
        captured = {}
        hooks = [linears[1].register_forward_hook(lambda m, i, o: captured.update(x6=i[0], y7=o))]  # noqa: B023
        if not tuned:
            hooks.append(linears[1].register_full_backward_hook(lambda m, gi, go: captured.update(d7=go[0])))  # noqa: B023
        logits = net(torch.from_numpy(X[start : start + batch_size]).to(device))
        loss = -(torch.log_softmax(logits / temperature, dim=1) / logits.shape[1]).sum()
        if tuned:
            (captured["d7"],) = torch.autograd.grad(loss, [captured["y7"]])
        else:
            net.zero_grad()
            loss.backward()
        for h in hooks:
            h.remove()
        fwd = torch.nn.functional.normalize(captured["x6"].detach(), dim=1)
        bwd = torch.nn.functional.normalize(-captured["d7"].detach(), dim=1)
        out.append((fwd.cpu().numpy(), bwd.cpu().numpy()))
    return out


def timed(fn, repeat=1):
    best = np.inf
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t)
    return best, result


def run_session(session, X, batch):
    """The network alone: a bare ``session.run`` per batch of ``X``."""
    for start in range(0, len(X), batch):
        session.run(None, {"input": X[start : start + batch]})


def interleaved(functions, repeat=5):
    """Best time of each function, run in turns so that load hits them alike."""
    for fn in functions.values():
        fn()  # warm up
    best = dict.fromkeys(functions, np.inf)
    for _ in range(repeat):
        for name, fn in functions.items():
            best[name] = min(best[name], timed(fn)[0])
    return best


class Setup:
    """Providers, threads and the exported networks."""

    def __init__(self, args):
        import onnxruntime as ort

        self.args = args
        self.cuda = args.providers == "cuda"
        self.tmp = tempfile.mkdtemp()
        if self.cuda:
            self.providers = [("CUDAExecutionProvider", {"use_tf32": "0"}), "CPUExecutionProvider"]
        else:
            self.providers = ["CPUExecutionProvider"]
        self.ort = ort
        self.width = 16 if args.smoke else 1  # --smoke: a network 16 times narrower
        self.repeat = 1 if args.smoke else 5

    def session(self, path):
        options = self.ort.SessionOptions()
        if not self.cuda:
            options.intra_op_num_threads = self.args.threads
        return self.ort.InferenceSession(path, options, providers=self.providers)

    def network_file(self, name, net):
        path = os.path.join(self.tmp, f"{name}.onnx")
        if not os.path.exists(path):
            export(net, path)
        return path


def exactness(setup, rng):
    from skfishing import DeepFisherTransformer

    path = setup.network_file("alexnet", alexnet(width=setup.width))
    X = rng.normal(size=(8 if setup.args.smoke else 256, 3, 224, 224)).astype(np.float32)
    print("\n[exactness] CUDA against CPU, AlexNet shape, 256 images, max abs difference of unit-norm rows")
    print(
        f"  {'features':<22}{'TF32 off (default)':>20}{'allow_tf32=True':>18}   (target <= 1e-4 with TF32 off)"
    )
    for kind, layer in [
        ("gradient", 6),
        ("gradient", 7),
        ("gradient", 8),
        ("activation", 6),
        ("activation", 7),
    ]:

        def unit(layer=layer, kind=kind, **params):
            Z = DeepFisherTransformer(
                path, layer=layer, features=kind, batch_size=setup.args.batch_size, **params
            ).transform(X)
            return np.hstack([Z[f] for f in Z.dtype.names]) if Z.dtype.names else Z

        cpu = unit(providers=["CPUExecutionProvider"])
        exact = np.abs(unit(providers=["CUDAExecutionProvider"]) - cpu).max()
        fast = np.abs(unit(providers=["CUDAExecutionProvider"], allow_tf32=True) - cpu).max()
        print(f"  {kind + ' ' + str(layer):<22}{exact:20.1e}{fast:18.1e}")


def host_overhead(setup, rng):
    from skfishing import DeepFisherTransformer

    path = setup.network_file("negligible", negligible_network())
    n, batch = (64 if setup.args.smoke else 2048), setup.args.batch_size
    X = rng.normal(size=(n, 3, 224, 224)).astype(np.float32)
    session = setup.session(path)
    fish = DeepFisherTransformer(path, layer=7, batch_size=batch, providers=setup.providers)

    best = interleaved(
        {"bare": lambda: run_session(session, X, batch), "transform": lambda: fish.transform(X)},
        setup.repeat,
    )
    per_image = {name: t / n * 1e6 for name, t in best.items()}
    print(
        f"\n[host overhead] negligible-compute network (global average pool + FC 3-16-16-10), "
        f"{n} float32 3x224x224 images, batch {batch}"
    )
    print(f"  bare session.run of the network          {per_image['bare']:8.1f} us/img")
    print(f"  DeepFisherTransformer(layer=7).transform {per_image['transform']:8.1f} us/img")
    print(
        f"  overhead of transform                    {per_image['transform'] - per_image['bare']:8.1f} us/img"
        "   (target <= 30; includes the check of every input value, done in the graph)"
    )


def preprocessing(setup, rng):
    try:
        import preprocessing as bench  # benchmarks/preprocessing.py, beside this script
    except ImportError:
        print("\n[preprocessing] benchmarks/preprocessing.py not found")
        return
    print()
    bench.main(["--images", "2", "--large-images", "1", "--rounds", "1"] if setup.args.smoke else [])


def extraction(setup, rng):
    import torch

    from skfishing import DeepFisherTransformer

    net = alexnet(width=setup.width)
    path = setup.network_file("alexnet", net)
    n, batch = setup.args.throughput_images, setup.args.batch_size
    X = rng.normal(size=(n, 3, 224, 224)).astype(np.float32)
    session = setup.session(path)
    fish = DeepFisherTransformer(path, layer=7, batch_size=batch, providers=setup.providers)

    best = interleaved(
        {"forward": lambda: run_session(session, X, batch), "ours": lambda: fish.transform(X)}, setup.repeat
    )
    Z = fish.transform(X)
    target = 0.9 if setup.cuda else 0.97
    print(
        f"\n[extraction] AlexNet shape, random weights, {n} images of 224x224, batch {batch}, "
        f"{'CUDA' if setup.cuda else f'CPU, {setup.args.threads} threads'}"
    )
    print(f"  onnxruntime forward only        {n / best['forward']:8.1f} img/s")
    print(f"  skfishing gradient (layer 7)    {n / best['ours']:8.1f} img/s")
    print(f"  ratio skfishing / forward-only  {best['forward'] / best['ours']:8.3f}   (target >= {target})")
    if setup.args.skip_torch:
        return
    device = "cuda" if setup.cuda else "cpu"
    if setup.cuda:  # exact fp32, as skfishing: the older flags and the newer precision settings
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        for backend in (torch.backends.cuda.matmul, getattr(torch.backends.cudnn, "conv", None)):
            if hasattr(backend, "fp32_precision"):
                backend.fp32_precision = "ieee"
    net = net.to(device)
    targets = {False: ">= 2.0" if setup.cuda else ">= 1.5", True: "none" if setup.cuda else ">= 1.5"}
    for tuned, name in [(False, "loss.backward(), hooks"), (True, "autograd.grad to y7 only")]:
        with torch.enable_grad():
            torch_features(net, X[:batch], batch, device, tuned=tuned)

            def run():
                result = torch_features(net, X, batch, device, tuned=tuned)  # noqa: B023
                if setup.cuda:
                    torch.cuda.synchronize()
                return result

            t_torch, feats = timed(run, min(2, setup.repeat))
        fwd = np.concatenate([f for f, _ in feats])
        bwd = np.concatenate([b for _, b in feats])
        err = max(np.abs(fwd - Z["forward"]).max(), np.abs(bwd - Z["backward"]).max())
        print(f"  torch, {name:<25}{n / t_torch:8.1f} img/s   (max abs diff of features {err:.1e})")
        print(f"  ratio skfishing / that torch    {t_torch / best['ours']:8.3f}   (target {targets[tuned]})")


def make_inputs(m, rng, folder):
    """The same ``m`` images as JPEG files, uint8 arrays and float tensors.

    The images are smooth random 320x240 colour fields (upsampled noise),
    JPEG-compressed at quality 90 and decoded again, so that the three
    kinds hold identical pixels.
    """
    from PIL import Image

    from skfishing._extraction.images import preprocess_image

    paths, arrays = [], []
    for i in range(m):
        small = rng.integers(0, 256, size=(15, 20, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((320, 240), Image.BICUBIC)
        file = os.path.join(folder, f"image{i:04d}.jpg")
        image.save(file, quality=90)
        paths.append(file)
        arrays.append(np.asarray(Image.open(file).convert("RGB")))
    arrays = np.stack(arrays)
    tensors = np.stack([preprocess_image(a, PREPROCESSING) for a in arrays]).astype(np.float32)
    return {
        "JPEG files (paths)": paths,
        f"uint8 images {arrays.shape}": arrays,
        "float32 tensors (preprocessed input)": tensors,
    }


def grid_search_times(model, X, y, batch_size, providers, naive=False):
    """Seconds of one transform, of the SVM part alone, and of the grid search."""
    from sklearn.base import BaseEstimator, clone
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import Pipeline

    from skfishing import DeepFisherTransformer, TraceKernelSVC

    class Uncached(DeepFisherTransformer):
        """Clones share no cache: the network runs for every candidate and fold."""

        def __sklearn_clone__(self):
            return BaseEstimator.__sklearn_clone__(self)

    grid = {"fish__layer": [6, 7, 8], "fish__temperature": [1.0, 2.0, 4.0]}
    kind = Uncached if naive else DeepFisherTransformer
    pipe = Pipeline(
        [("fish", kind(model, batch_size=batch_size, providers=providers)), ("svc", TraceKernelSVC())]
    )
    cv = StratifiedKFold(3)
    # Sessions are built once per process, not per image: build those of both
    # paths (straight to the features, and through the cached state) untimed.
    DeepFisherTransformer(model, batch_size=batch_size, providers=providers).transform(X[:2])
    for layer in grid["fish__layer"]:
        clone(pipe.named_steps["fish"]).set_params(layer=layer).transform(X[:2])
    t_transform, _ = timed(
        lambda: DeepFisherTransformer(model, batch_size=batch_size, providers=providers).fit_transform(X)
    )
    # The SVM part alone: fit + score on precomputed features of each candidate and fold, and the refit.
    t_svm = 0.0
    for layer in grid["fish__layer"]:
        for tau in grid["fish__temperature"]:
            Z = DeepFisherTransformer(
                model, layer=layer, temperature=tau, batch_size=batch_size, providers=providers
            ).fit_transform(X)
            for train, test in cv.split(Z, y):
                t = time.perf_counter()
                TraceKernelSVC().fit(Z[train], y[train]).score(Z[test], y[test])
                t_svm += time.perf_counter() - t
    t = time.perf_counter()
    TraceKernelSVC().fit(Z, y)
    t_svm += time.perf_counter() - t
    t_search, _ = timed(lambda: GridSearchCV(pipe, grid, cv=cv).fit(X, y))
    return t_transform, t_svm, t_search


def grid_search(setup, rng):
    from skfishing.registry import register_model

    path = setup.network_file("alexnet", alexnet(width=setup.width))
    m = setup.args.images
    y = rng.integers(0, 2, size=m)
    kinds = make_inputs(m, rng, setup.tmp)
    register_model("speed-alexnet", path, preprocessing=PREPROCESSING, overwrite=True)
    print(
        f"\n[grid search] {m} images, cv=3, layer {{6, 7, 8}} x temperature {{1, 2, 4}}: "
        "9 candidates, 27 fits + refit"
    )
    print(f"  {'input':<38}{'transform':>10}{'SVM':>7}{'search':>8}{'ratio':>7}   (target <= 2)")
    for name, X in kinds.items():
        times = grid_search_times("speed-alexnet", X, y, setup.args.batch_size, setup.providers)
        t_transform, t_svm, t_search = times
        print(
            f"  {name:<38}{t_transform:9.1f}s{t_svm:6.1f}s{t_search:7.1f}s{t_search / (t_transform + t_svm):7.2f}"
        )
    print(
        "  transform: one plain transform; SVM: the 28 SVM fits and scorings on precomputed "
        "features;\n  search: GridSearchCV.fit from scratch; ratio: search / (transform + SVM)"
    )
    if setup.args.naive:
        X = kinds["JPEG files (paths)"]
        t_transform, t_svm, t_naive = grid_search_times(
            "speed-alexnet", X, y, setup.args.batch_size, setup.providers, naive=True
        )
        print(
            f"  naive: no cache shared, JPEG files  {t_naive:7.1f} s   "
            f"ratio {t_naive / (t_transform + t_svm):.2f} (the network runs for every candidate and fold)"
        )


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--providers",
        choices=("cpu", "cuda"),
        default="cpu",
        help="execution provider of every run (cuda: TF32 off, as skfishing's default)",
    )
    parser.add_argument("--only", nargs="+", choices=SECTIONS, help="run these sections only")
    parser.add_argument("--images", type=int, default=1000, help="images in the grid search")
    parser.add_argument("--throughput-images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of onnxruntime and torch")
    parser.add_argument("--skip-torch", action="store_true")
    parser.add_argument("--naive", action="store_true", help="also time a grid search without cache (slow)")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny sizes and a narrow network: checks that every section runs"
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.images, args.throughput_images, args.batch_size = 12, 4, 4

    import onnxruntime as ort
    import torch

    torch.set_num_threads(args.threads)
    setup = Setup(args)
    if setup.cuda and "CUDAExecutionProvider" not in ort.get_available_providers():
        parser.error(f"--providers cuda: this onnxruntime {ort.__version__} has no CUDA provider")
    sections = args.only or [s for s in SECTIONS if setup.cuda or s != "exactness"]
    device = torch.cuda.get_device_name() if setup.cuda else f"{args.threads} CPU threads"
    print(
        f"skfishing speed, {args.providers.upper()} ({device}), onnxruntime {ort.__version__}, "
        f"torch {torch.__version__}"
    )
    functions = {
        "exactness": exactness,
        "host-overhead": host_overhead,
        "preprocessing": preprocessing,
        "extraction": extraction,
        "grid-search": grid_search,
    }
    for section in sections:
        functions[section](setup, np.random.default_rng(0))


if __name__ == "__main__":
    main()
