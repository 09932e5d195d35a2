"""Speed and memory of trace-kernel Gram matrices and multilabel fits.

Prints, for n factorized features with d = D float32 widths:

- the time of the trace-kernel Gram matrix against the linear Gram matrix of
  the forward part alone (with the same chunked code, and as a plain
  ``F @ F.T``), and their ratios (target <= 2.3);
- the peak extra memory of ``trace_kernel`` (tracemalloc, which sees NumPy's
  allocations) against the ``n^2 * 8`` bytes of the result (target <= 1.2);
- the time of a multilabel ``TraceKernelSVC`` fit against one Gram matrix plus
  one ``SVC(kernel="precomputed")`` fit per label (target <= 1.3).

Run ``python benchmarks/kernel_gram.py`` (n=4000, d=4096, 20 labels, about
two minutes on two idle cores) or with ``--n 1000 --d 512`` for a quick check.
"""

import argparse
import time
import tracemalloc

import numpy as np
from sklearn.svm import SVC

from skfishing import TraceKernelSVC, trace_kernel
from skfishing.cache import clear_caches


def features(n, d, rng):
    Z = np.empty(n, dtype=[("forward", "f4", (d,)), ("backward", "f4", (d,))])
    for field in ("forward", "backward"):
        values = rng.standard_normal((n, d), dtype=np.float32)
        Z[field] = values / np.linalg.norm(values, axis=1, keepdims=True)
    return Z


def multilabel_targets(Z, n_labels, rng):
    """Labels that are rank-1 linear functions of the gradient matrices."""
    d = Z.dtype["forward"].shape[0]
    score = (Z["forward"] @ rng.standard_normal((d, n_labels), dtype=np.float32)) * (
        Z["backward"] @ rng.standard_normal((d, n_labels), dtype=np.float32)
    )
    return (score > np.quantile(score, 0.75, axis=0)).astype(int)


def best_times(functions, repeat):
    """Best wall time of each function, run in turn so they share the load."""
    best = dict.fromkeys(functions, np.inf)
    for _ in range(repeat):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4000, help="number of samples")
    parser.add_argument("--d", type=int, default=4096, help="width d = D of the fields")
    parser.add_argument("--labels", type=int, default=20, help="multilabel labels")
    parser.add_argument("--repeat", type=int, default=3, help="timings keep the best")
    args = parser.parse_args()
    n, d = args.n, args.d
    rng = np.random.default_rng(0)
    Z = features(n, d, rng)
    forward = np.ascontiguousarray(Z["forward"])
    print(f"n={n}, d=D={d}, float32 fields, best of {args.repeat}")

    gram = best_times(
        {
            "trace": lambda: trace_kernel(Z),
            "linear": lambda: trace_kernel(forward),
            "plain": lambda: forward @ forward.T,
        },
        args.repeat,
    )
    trace, linear, plain = gram["trace"], gram["linear"], gram["plain"]
    print(f"trace Gram (forward and backward):   {trace:8.3f} s")
    print(f"linear Gram of forward, same code:   {linear:8.3f} s   ratio {trace / linear:.2f}")
    print(f"linear Gram of forward, F @ F.T:     {plain:8.3f} s   ratio {trace / plain:.2f}")

    tracemalloc.start()
    trace_kernel(Z)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    output = n * n * 8
    print(
        f"peak extra memory of trace_kernel:   {peak / 2**20:8.1f} MiB   "
        f"n^2*8 = {output / 2**20:.1f} MiB   ratio {peak / output:.3f}"
    )

    Y = multilabel_targets(Z, args.labels, rng)

    def by_hand():
        gram = trace_kernel(Z)
        for y in Y.T:
            SVC(kernel="precomputed").fit(gram, y)

    fits = best_times(
        {"ours": lambda: (clear_caches(), TraceKernelSVC().fit(Z, Y)), "by hand": by_hand}, args.repeat
    )
    fit, reference = fits["ours"], fits["by hand"]
    print(f"TraceKernelSVC.fit, {args.labels} labels:     {fit:8.3f} s")
    print(f"one Gram + {args.labels} precomputed SVC fits: {reference:8.3f} s   ratio {fit / reference:.2f}")


if __name__ == "__main__":
    main()
