"""Speed of gradient-feature extraction and of grid search, as ratios.

Everything compared runs side by side in one process, on the same inputs and
threads; the script prints each ratio with its inputs (absolute times on a
shared machine mean little).

1. Extraction throughput of ``DeepFisherTransformer(layer=7)`` (cold cache)
   vs onnxruntime forward-only throughput of the same network, and vs two
   PyTorch implementations of the same features with autograd (the
   textbook ``loss.backward()`` and one tuned to differentiate the head only).
2. ``GridSearchCV(cv=3)`` over layer {6, 7, 8} x temperature {1, 2, 4}:
   total time vs one plain transform plus the SVM fits, for the same images
   given as JPEG files, as uint8 arrays and as preprocessed float tensors,
   with the naive figure (cache disabled: the network runs for every
   candidate and fold).

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

from skfishing.images import ImagePreprocessing


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


def torch_features(net, X, batch_size, temperature=2.0, tuned=True):
    """x6 and delta7 by autograd, L2-normalised: the same features.

    ``tuned=True`` asks autograd for the gradient with respect to y7 only,
    so nothing below layer 7 is differentiated. ``tuned=False`` is the
    textbook way: hooks record x6 and dE/dy7 while ``loss.backward()``
    computes the gradient of every parameter, as a training step would.
    """
    import torch

    linears = [m for m in net if isinstance(m, torch.nn.Linear)]
    out = []
    for start in range(0, len(X), batch_size):
        captured = {}
        hooks = [linears[1].register_forward_hook(lambda m, i, o: captured.update(x6=i[0], y7=o))]  # noqa: B023 (runs in this iteration)
        if not tuned:
            hooks.append(linears[1].register_full_backward_hook(lambda m, gi, go: captured.update(d7=go[0])))  # noqa: B023
        logits = net(torch.from_numpy(X[start : start + batch_size]))
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

    from skfishing import DeepFisherTransformer
    from skfishing.cache import backward_cache, clear_caches, forward_cache
    from skfishing.registry import register_model

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
        clear_caches()
        return fish.transform(X)

    forward_only(), ours()  # warm up both
    t_fwd, t_ours = np.inf, np.inf
    for _ in range(5):  # interleaved, best of five each
        t_fwd = min(t_fwd, timed(forward_only)[0])
        t, Z = timed(ours)
        t_ours = min(t_ours, t)
    print(f"\n[extraction] {n} images")
    print(f"  onnxruntime forward only        {n / t_fwd:7.1f} img/s")
    print(f"  skfishing gradient (layer 7)    {n / t_ours:7.1f} img/s")
    print(f"  ratio skfishing / forward-only  {t_fwd / t_ours:7.3f}   (target >= 0.95)")
    if not args.skip_torch:
        for tuned, name in [(False, "loss.backward(), hooks"), (True, "autograd.grad to y7 only")]:
            with torch.enable_grad():
                torch_features(net, X[: args.batch_size], args.batch_size, tuned=tuned)
                t_torch, feats = timed(lambda: torch_features(net, X, args.batch_size, tuned=tuned), 2)  # noqa: B023
            fwd = np.concatenate([f for f, _ in feats])
            bwd = np.concatenate([b for _, b in feats])
            err = max(np.abs(fwd - Z["forward"]).max(), np.abs(bwd - Z["backward"]).max())
            print(f"  torch, {name:<25}{n / t_torch:7.1f} img/s   (max abs diff of features {err:.1e})")
            print(f"  ratio skfishing / that torch    {t_torch / t_ours:7.3f}   (target >= 1.5)")

    # 2. grid search, for each kind of input
    m = args.images
    y = rng.integers(0, 2, size=m)
    kinds = make_inputs(m, rng, tmp)
    register_model("speed-alexnet", path, preprocessing=PREPROCESSING, overwrite=True)
    print(f"\n[grid search] {m} images, cv=3, layer {{6, 7, 8}} x temperature {{1, 2, 4}}: "
          "9 candidates, 27 fits + refit")
    print(f"  {'input':<38}{'transform':>10}{'SVM':>7}{'search':>8}{'ratio':>7}   (target <= 2)")
    for name, X in kinds.items():
        t_transform, t_svm, t_search = grid_search_times("speed-alexnet", X, y, args.batch_size)
        ratio = t_search / (t_transform + t_svm)
        print(f"  {name:<38}{t_transform:9.1f}s{t_svm:6.1f}s{t_search:7.1f}s{ratio:7.2f}")
    print("  transform: one plain transform, cold cache; SVM: the 28 SVM fits and scorings on "
          "precomputed features;\n  search: GridSearchCV.fit, cold cache; ratio: search / (transform + SVM)")
    if not args.skip_naive:
        X = kinds["JPEG files (paths)"]
        originals = forward_cache.get, backward_cache.get
        forward_cache.get = backward_cache.get = lambda key, directory=None: None
        try:
            t_transform, t_svm, t_naive = grid_search_times("speed-alexnet", X, y, args.batch_size)
        finally:
            forward_cache.get, backward_cache.get = originals
        print(f"  naive: caches disabled, JPEG files  {t_naive:7.1f} s   "
              f"ratio {t_naive / (t_transform + t_svm):.2f} (the network runs for every candidate and fold)")


#: The preprocessing of torchvision's AlexNet.
PREPROCESSING = ImagePreprocessing(224, resize=256, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def make_inputs(m, rng, folder):
    """The same ``m`` images as JPEG files, uint8 arrays and float tensors.

    The images are smooth random 320x240 colour fields (upsampled noise),
    JPEG-compressed at quality 90 and decoded again, so that the three
    kinds hold identical pixels.
    """
    from PIL import Image

    from skfishing.images import preprocess_image

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


def grid_search_times(model, X, y, batch_size):
    """Seconds of one transform, of the SVM part alone, and of the grid search."""
    from sklearn.base import clone
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import Pipeline

    from skfishing import DeepFisherTransformer, TraceKernelSVC
    from skfishing.cache import clear_caches, gram_cache

    grid = {"fish__layer": [6, 7, 8], "fish__temperature": [1.0, 2.0, 4.0]}
    pipe = Pipeline([("fish", DeepFisherTransformer(model, batch_size=batch_size)), ("svc", TraceKernelSVC())])
    cv = StratifiedKFold(3)
    clear_caches()
    t_transform, _ = timed(lambda: clone(pipe.named_steps["fish"]).fit_transform(X))
    # The SVM part alone: fit + score on precomputed features of each candidate and fold, and the refit.
    t_svm = 0.0
    for layer in grid["fish__layer"]:
        for tau in grid["fish__temperature"]:
            Z = DeepFisherTransformer(model, layer=layer, temperature=tau, batch_size=batch_size).fit_transform(X)
            for train, test in cv.split(Z, y):
                gram_cache.clear()  # no Gram matrix from an earlier fit
                t = time.perf_counter()
                TraceKernelSVC().fit(Z[train], y[train]).score(Z[test], y[test])
                t_svm += time.perf_counter() - t
    gram_cache.clear()
    t = time.perf_counter()
    TraceKernelSVC().fit(Z, y)
    t_svm += time.perf_counter() - t
    clear_caches()
    t_search, _ = timed(lambda: GridSearchCV(pipe, grid, cv=cv).fit(X, y))
    return t_transform, t_svm, t_search


if __name__ == "__main__":
    main()
