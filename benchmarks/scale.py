"""Streaming sketch + linear model against the exact kernel SVM, as n grows.

Synthetic factorized features (d = D = 512, float32, unit rows, 10 classes
whose factors are drawn around class means) are generated chunk by chunk,
sketched with :class:`~skfishing.TensorSketch` (4,096 components) and fed to
``SGDClassifier.partial_fit``, one pass: the standard out-of-core loop, where
only one chunk is ever in memory. Beside it, :class:`~skfishing.TraceKernelSVC`
is fitted on n = 5k, 10k and 20k samples held in memory. Each measurement
runs in its own subprocess, so that its peak RSS (``ru_maxrss``) is its own.
Printed: wall time and peak RSS of the fit (the held-out data is made and
scored afterwards), throughput, accuracy on 10,000 held-out samples, and the
sketch stream's time in generating, sketching and fitting.

Run ``python benchmarks/scale.py`` (10^6 streamed samples; about ten minutes
on two cores), ``--stream 100000`` for a shorter stream, or ``--kernel``
with other sizes.
"""

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np

D = 512
N_CLASSES = 10
N_TEST = 10_000
NOISE = 2.5  # per coordinate, against class means of unit variance: within-class trace kernel about 0.02


def class_means(seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((2, N_CLASSES, D), dtype=np.float32)


def chunk(n, seed, means, noise=NOISE):
    """n factorized samples and their classes, from their own seed."""
    rng = np.random.default_rng(seed)
    y = rng.integers(N_CLASSES, size=n)
    Z = np.empty(n, dtype=[("forward", "f4", (D,)), ("backward", "f4", (D,))])
    for field, mean in zip(("forward", "backward"), means):
        values = mean[y] + noise * rng.standard_normal((n, D), dtype=np.float32)
        values /= np.linalg.norm(values, axis=1, keepdims=True)
        Z[field] = values
    return Z, y


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_stream(n, n_components, chunk_size):
    from sklearn.linear_model import SGDClassifier

    from skfishing import TensorSketch

    means = class_means()
    sketch = TensorSketch(n_components=n_components, random_state=0).fit(chunk(1, -1 % 2**32, means)[0])
    clf = SGDClassifier(alpha=1e-5, random_state=0, n_jobs=2)
    times = dict(generate=0.0, sketch=0.0, fit=0.0)
    start = time.perf_counter()
    for i, offset in enumerate(range(0, n, chunk_size)):
        t0 = time.perf_counter()
        Z, y = chunk(min(chunk_size, n - offset), i, means)
        t1 = time.perf_counter()
        F = sketch.transform(Z)
        t2 = time.perf_counter()
        clf.partial_fit(F, y, classes=np.arange(N_CLASSES))
        t3 = time.perf_counter()
        times["generate"] += t1 - t0
        times["sketch"] += t2 - t1
        times["fit"] += t3 - t2
        del Z, F
    seconds, peak = time.perf_counter() - start, peak_rss_mib()
    Z_test, y_test = chunk(N_TEST, 10**9, means)
    accuracy = clf.score(sketch.transform(Z_test), y_test)
    return dict(seconds=seconds, accuracy=accuracy, peak_rss_mib=peak, **times)


def run_kernel(n):
    from skfishing import TraceKernelSVC

    means = class_means()
    Z, y = chunk(n, 0, means)
    start = time.perf_counter()
    svc = TraceKernelSVC(C=1.0).fit(Z, y)
    seconds, peak = time.perf_counter() - start, peak_rss_mib()
    del Z
    Z_test, y_test = chunk(N_TEST, 10**9, means)
    accuracy = svc.score(Z_test, y_test)
    return dict(seconds=seconds, accuracy=accuracy, peak_rss_mib=peak)


def in_subprocess(*args):
    """Run this script with ``--child ...`` and parse its JSON line."""
    out = subprocess.run(
        [sys.executable, __file__, "--child", *map(str, args)], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--stream",
        type=int,
        nargs="+",
        default=[5000, 10_000, 20_000, 1_000_000],
        help="numbers of samples streamed through the sketch",
    )
    parser.add_argument(
        "--kernel",
        type=int,
        nargs="+",
        default=[5000, 10_000, 20_000],
        help="numbers of samples for TraceKernelSVC",
    )
    parser.add_argument("--n-components", type=int, default=4096)
    parser.add_argument("--chunk-size", type=int, default=5000)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *values = args.child
        result = run_stream(*map(int, values)) if kind == "stream" else run_kernel(int(values[0]))
        print(json.dumps(result))
        return
    print(
        f"d = D = {D}, {N_CLASSES} classes, accuracy on {N_TEST} held-out samples; "
        f"sketch: {args.n_components} components, chunks of {args.chunk_size}, one pass of "
        f"SGDClassifier.partial_fit; each row in a fresh subprocess"
    )
    print(f"{'method':28s} {'n':>9s} {'seconds':>9s} {'samples/s':>10s} {'peak RSS':>10s} {'accuracy':>9s}")
    rows = [("TraceKernelSVC", n) for n in args.kernel] + [("sketch + SGD stream", n) for n in args.stream]
    for method, n in sorted(rows, key=lambda row: (row[1], row[0])):
        if method == "TraceKernelSVC":
            r = in_subprocess("kernel", n)
        else:
            r = in_subprocess("stream", n, args.n_components, args.chunk_size)
        print(
            f"{method:28s} {n:9,d} {r['seconds']:9.1f} {n / r['seconds']:10,.0f} "
            f"{r['peak_rss_mib']:7,.0f} MiB {r['accuracy']:9.3f}",
            flush=True,
        )
        if method != "TraceKernelSVC":
            print(
                f"{'':28s} {'':9s} generate {r['generate']:.1f} s, sketch {r['sketch']:.1f} s "
                f"({n / r['sketch']:,.0f}/s), partial_fit {r['fit']:.1f} s ({n / r['fit']:,.0f}/s)",
                flush=True,
            )


if __name__ == "__main__":
    main()
