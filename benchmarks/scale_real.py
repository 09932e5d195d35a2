"""Scaling up on real photographs: Tiny ImageNet, 200 classes, three ways.

The 40,000 training and 10,000 validation images of Tiny ImageNet at 32x32
(``../shared/data/tinyimagenet32_{train,val}.npz``) go through the embedded
network ``"tinyalexnet"`` once: its layer-7 activations x7 and its gradient
features dE/dW7 (512 + 512 values) are written to disk in parts of 5,000
images. Then, each in a fresh subprocess so that its peak RSS is its own:

* activations x7 + ``LinearSVC``, on the whole training set: the baseline a
  user would reach for;
* ``TraceKernelSVC`` on dE/dW7, on the first n training images (class-
  balanced), for the sizes given;
* ``TensorSketch`` (8,192 components) + ``SGDClassifier.partial_fit`` on
  dE/dW7, streamed from the parts on disk, over the whole training set.

Printed per row: top-1 accuracy on the 10,000 validation images, wall time
of the fit (with the reading of its features; the network's time is
printed once, above) and peak RSS of the subprocess.

``python benchmarks/scale_real.py`` runs it all (about half an hour on two
cores); ``--smoke`` runs the same steps on 600 images in seconds, on the
real data when it is there and on random images otherwise.
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
PART = 5000


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def load(data, smoke):
    """Train and val images and labels: the real ones, or random ones for --smoke without data."""
    files = [Path(data) / f"tinyimagenet32_{split}.npz" for split in ("train", "val")]
    if all(f.is_file() for f in files):
        (train, val) = (np.load(f) for f in files)
        X, y, X_val, y_val = train["images"], train["labels"], val["images"], val["labels"]
        if smoke:  # 400 training images of 20 classes (20 each), their 200 val images
            rows = np.flatnonzero(y < 20)
            rows = rows[np.argsort(np.arange(len(rows)) % 200 // 10, kind="stable")][:400]
            X, y = X[rows], y[rows]
            val_rows = np.flatnonzero(y_val < 20)[:200]
            X_val, y_val = X_val[val_rows], y_val[val_rows]
        return X, y.astype(np.int64), X_val, y_val.astype(np.int64), "Tiny ImageNet"
    if not smoke:
        sys.exit(f"scale_real.py: no {files[0]} (run with --data DIR, or --smoke for random images)")
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, size=(600, 32, 32, 3), dtype=np.uint8)
    y = np.arange(600) % 20
    return X[:400], y[:400], X[400:], y[400:], "random images (no data found: accuracy is chance)"


def extract(X, y, X_val, y_val, folder):
    """x7 and dE/dW7 of every image to parts on disk; returns the seconds taken."""
    from skfishing import DeepFisherTransformer
    from skfishing.cache import FeatureCache
    from skfishing.features import save_features

    # one network pass per image: the activations come from the cached forward pass
    cache = FeatureCache()
    fish = DeepFisherTransformer("tinyalexnet", layer=7, batch_size=256, memory=cache)
    acts = DeepFisherTransformer("tinyalexnet", layer=7, features="activation", memory=cache)
    start = time.perf_counter()
    for split, images, labels in (("train", X, y), ("val", X_val, y_val)):
        for i, offset in enumerate(range(0, len(images), PART)):
            rows = slice(offset, offset + PART)
            grad, act = folder / f"{split}_grad{i:03d}.npz", folder / f"{split}_act{i:03d}.npz"
            if act.exists():  # done in an earlier run (--features)
                continue
            np.save(folder / f"{split}_labels{i:03d}.npy", labels[rows])
            if not grad.exists():
                save_features(grad, fish.fit_transform(images[rows]), fish)
            save_features(act, acts.fit_transform(images[rows]), acts)
            cache.clear()
    return time.perf_counter() - start


def read(folder, split, kind, n=None):
    from skfishing.features import load_features

    parts = sorted(folder.glob(f"{split}_{kind}*.npz"))
    labels = sorted(folder.glob(f"{split}_labels*.npy"))
    Z = np.concatenate([load_features(p).features for p in parts])
    y = np.concatenate([np.load(p) for p in labels])
    if n is not None:  # the first n of a class-balanced order
        order = np.argsort(np.argsort(y, kind="stable") % (len(y) // len(np.unique(y))), kind="stable")
        Z, y = Z[order[:n]], y[order[:n]]
    return Z, y


def run_linear(folder):
    from sklearn.svm import LinearSVC

    start = time.perf_counter()
    A, y = read(folder, "train", "act")
    clf = LinearSVC(C=1.0, random_state=0).fit(A, y)
    seconds, peak = time.perf_counter() - start, peak_rss_mib()
    A_val, y_val = read(folder, "val", "act")
    return dict(n=len(y), seconds=seconds, peak_rss_mib=peak, accuracy=clf.score(A_val, y_val))


def run_kernel(folder, n):
    from skfishing import TraceKernelSVC

    start = time.perf_counter()
    Z, y = read(folder, "train", "grad", n)
    svc = TraceKernelSVC(C=1.0).fit(Z, y)
    seconds, peak = time.perf_counter() - start, peak_rss_mib()
    Z_val, y_val = read(folder, "val", "grad")
    return dict(n=len(y), seconds=seconds, peak_rss_mib=peak, accuracy=svc.score(Z_val, y_val))


def run_sketch(folder, n_components, epochs):
    from sklearn.linear_model import SGDClassifier

    from skfishing import TensorSketch
    from skfishing.features import load_features

    start = time.perf_counter()
    parts = sorted(folder.glob("train_grad*.npz"))
    labels = sorted(folder.glob("train_labels*.npy"))
    classes = np.unique(np.concatenate([np.load(p) for p in labels]))
    sketch = TensorSketch(n_components=n_components, random_state=0).fit(load_features(parts[0]).features)
    clf = SGDClassifier(alpha=1e-5, random_state=0)
    rng = np.random.default_rng(0)
    n = 0
    for _ in range(epochs):
        for i in rng.permutation(len(parts)):
            F = sketch.transform(load_features(parts[i]).features)
            y = np.load(labels[i])
            order = rng.permutation(len(y))
            clf.partial_fit(F[order], y[order], classes=classes)
            n += len(y)
    seconds, peak = time.perf_counter() - start, peak_rss_mib()
    Z_val, y_val = read(folder, "val", "grad")
    accuracy = clf.score(sketch.transform(Z_val), y_val)
    return dict(n=n // epochs, seconds=seconds, peak_rss_mib=peak, accuracy=accuracy)


def in_subprocess(*args):
    out = subprocess.run(
        [sys.executable, __file__, "--child", *map(str, args)], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DATA), help="folder of tinyimagenet32_*.npz")
    parser.add_argument("--smoke", action="store_true", help="600 images, in seconds")
    parser.add_argument("--kernel", type=int, nargs="+", default=[5000, 10_000, 20_000])
    parser.add_argument("--n-components", type=int, default=8192)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--features", help="folder for the features (default: a temporary one)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, folder, *values = args.child
        folder = Path(folder)
        if kind == "linear":
            result = run_linear(folder)
        elif kind == "kernel":
            result = run_kernel(folder, int(values[0]))
        else:
            result = run_sketch(folder, int(values[0]), int(values[1]))
        print(json.dumps(result))
        return
    X, y, X_val, y_val, source = load(args.data, args.smoke)
    kernel_sizes = [min(n, len(y)) for n in ([200, 400] if args.smoke else args.kernel)]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.features or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        seconds = extract(X, y, X_val, y_val, folder)
        n_images = len(X) + len(X_val)
        print(
            f"{source}: {len(X):,} training and {len(X_val):,} validation images, "
            f"{len(np.unique(y))} classes; tinyalexnet, x7 and dE/dW7 of every image in "
            f"{seconds:.1f} s ({n_images / seconds:,.0f} images/s), written to disk"
        )
        print(f"{'method':34s} {'n train':>8s} {'seconds':>8s} {'peak RSS':>10s} {'top-1':>6s}")
        rows = [("x7 + LinearSVC", ("linear",))]
        rows += [("dE/dW7 + TraceKernelSVC", ("kernel", n)) for n in kernel_sizes]
        rows += [
            (
                f"dE/dW7 + sketch {args.n_components} + SGD",
                ("sketch", args.n_components, 1 if args.smoke else args.epochs),
            )
        ]
        for name, (kind, *values) in rows:
            r = in_subprocess(kind, folder, *values)
            print(
                f"{name:34s} {r['n']:8,d} {r['seconds']:8.1f} {r['peak_rss_mib']:6,.0f} MiB "
                f"{r['accuracy']:6.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
