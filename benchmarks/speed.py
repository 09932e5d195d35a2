"""Speed of gradient-feature extraction and of grid search, as ratios.

Everything compared runs side by side in one process, on the same inputs and
threads; the script prints each ratio with its inputs (absolute times on a
shared machine mean little).

1. Extraction throughput of ``DeepFisherTransformer(layer=7)`` (cold cache)
   vs onnxruntime forward-only throughput of the same network, and vs a
   PyTorch implementation of the same features with autograd.
2. ``GridSearchCV(cv=3)`` over layer {6, 7, 8} x temperature {1, 2, 4}:
   total time vs one plain transform plus the SVM fits, with the naive
   figure (cache disabled: the network runs for every candidate and fold).

The network is AlexNet-shaped (torchvision layout) at 224x224 with random
weights; torch (a dev-only dependency) builds and exports it.

Usage::

    python benchmarks/speed.py [--images 1000] [--batch-size 32] [--threads 2]
        [--skip-naive] [--skip-torch]
"""

import argparse
import os
import tempfile
import time
import warnings

import numpy as np


def alexnet(n_classes=1000):
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Flatten(),
        nn.Dropout(), nn.Linear(9216, 4096), nn.ReLU(),
        nn.Dropout(), nn.Linear(4096, 4096), nn.ReLU(),
        nn.Linear(4096, n_classes),
    ).eval()


def export(net, path):
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, torch.zeros(1, 3, 224, 224), path, dynamo=False, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})


def torch_features(net, X, batch_size, temperature=2.0):
    """x6 and delta7 by autograd, L2-normalised: the same features."""
    import torch

    linears = [m for m in net if isinstance(m, torch.nn.Linear)]
    out = []
    for start in range(0, len(X), batch_size):
        captured = {}
        hooks = [
            linears[1].register_forward_hook(lambda m, i, o: captured.update(x6=i[0], y7=o)),
        ]
        logits = net(torch.from_numpy(X[start : start + batch_size]))
        for h in hooks:
            h.remove()
        loss = -(torch.log_softmax(logits / temperature, dim=1) / logits.shape[1]).sum()
        (d7,) = torch.autograd.grad(loss, [captured["y7"]])
        fwd = torch.nn.functional.normalize(captured["x6"].detach(), dim=1)
        bwd = torch.nn.functional.normalize(-d7, dim=1)
        out.append((fwd.numpy(), bwd.numpy()))
    return out


def timed(fn, repeat=1):
    best = np.inf
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t)
    return best, result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000, help="images in the grid search")
    parser.add_argument("--throughput-images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--skip-torch", action="store_true")
    args = parser.parse_args()

    import onnxruntime as ort
    import torch
    from sklearn.base import clone
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import Pipeline

    from skfishing import DeepFisherTransformer, TraceKernelSVC
    from skfishing.cache import forward_cache

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    net = alexnet()
    tmp = tempfile.mkdtemp()
    path = os.path.join(tmp, "alexnet.onnx")
    export(net, path)
    print(f"AlexNet-shaped network, random weights, 224x224, batch {args.batch_size}, "
          f"{args.threads} threads, onnxruntime {ort.__version__}, torch {torch.__version__}")

    # 1. throughput
    n = args.throughput_images
    X = rng.normal(size=(n, 3, 224, 224)).astype(np.float32)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    fish = DeepFisherTransformer(path, layer=7, batch_size=args.batch_size).fit(X[:1])

    def forward_only():
        for start in range(0, n, args.batch_size):
            session.run(None, {"input": X[start : start + args.batch_size]})

    def ours():
        forward_cache.clear()
        return fish.transform(X)

    forward_only(), ours()  # warm up both
    t_fwd, t_ours = np.inf, np.inf
    for _ in range(3):  # interleaved, best of three each
        t_fwd = min(t_fwd, timed(forward_only)[0])
        t, Z = timed(ours)
        t_ours = min(t_ours, t)
    print(f"\n[extraction] {n} images")
    print(f"  onnxruntime forward only        {n / t_fwd:7.1f} img/s")
    print(f"  skfishing gradient (layer 7)    {n / t_ours:7.1f} img/s")
    print(f"  ratio skfishing / forward-only  {t_fwd / t_ours:7.3f}   (target >= 0.95)")
    if not args.skip_torch:
        with torch.enable_grad():
            torch_features(net, X[: args.batch_size], args.batch_size)
            t_torch, feats = timed(lambda: torch_features(net, X, args.batch_size), 2)
        fwd = np.concatenate([f for f, _ in feats])
        bwd = np.concatenate([b for _, b in feats])
        err = max(np.abs(fwd - Z["forward"]).max(), np.abs(bwd - Z["backward"]).max())
        print(f"  torch forward+autograd          {n / t_torch:7.1f} img/s   (max abs diff of features {err:.1e})")
        print(f"  ratio skfishing / torch         {t_torch / t_ours:7.3f}   (target >= 1.5)")

    # 2. grid search
    m = args.images
    X = rng.normal(size=(m, 3, 224, 224)).astype(np.float32)
    y = rng.integers(0, 2, size=m)
    grid = {"fish__layer": [6, 7, 8], "fish__temperature": [1.0, 2.0, 4.0]}
    pipe = Pipeline([("fish", DeepFisherTransformer(path, batch_size=args.batch_size)), ("svc", TraceKernelSVC())])
    cv = StratifiedKFold(3)
    search = GridSearchCV(pipe, grid, cv=cv)

    forward_cache.clear()
    t_transform, _ = timed(lambda: clone(pipe.named_steps["fish"]).fit_transform(X))
    # The SVM part alone: fit + score on precomputed features of each candidate and fold.
    t_svm = 0.0
    for layer in grid["fish__layer"]:
        for tau in grid["fish__temperature"]:
            Z = DeepFisherTransformer(path, layer=layer, temperature=tau, batch_size=args.batch_size).fit_transform(X)
            for train, test in cv.split(X, y):
                t = time.perf_counter()
                TraceKernelSVC().fit(Z[train], y[train]).score(Z[test], y[test])
                t_svm += time.perf_counter() - t
    forward_cache.clear()
    t_search, _ = timed(lambda: clone(search).fit(X, y))
    print(f"\n[grid search] {m} images, cv=3, 9 candidates (27 fits + refit)")
    print(f"  one plain transform (cold)      {t_transform:7.1f} s")
    print(f"  SVM fits + scoring alone        {t_svm:7.1f} s")
    print(f"  GridSearchCV (cold cache)       {t_search:7.1f} s")
    print(f"  ratio search / (transform+SVM)  {t_search / (t_transform + t_svm):7.3f}   (target <= 2)")
    if not args.skip_naive:
        original = forward_cache.get
        forward_cache.get = lambda key, directory=None: None
        try:
            t_naive, _ = timed(lambda: clone(search).fit(X, y))
        finally:
            forward_cache.get = original
        print(f"  GridSearchCV, cache disabled    {t_naive:7.1f} s   (naive: network runs per candidate and fold)")
        print(f"  ratio naive / (transform+SVM)   {t_naive / (t_transform + t_svm):7.3f}")


if __name__ == "__main__":
    main()
