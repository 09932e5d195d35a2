"""Time and memory of the trace kernel of layers applied at several positions.

For random float32 features at T positions (fields of shapes (T, d) and
(T, D)), prints the time and peak extra memory (tracemalloc) of
``trace_kernel(Z)`` and, as the reference, of the naive way: every weight
gradient ``G = sum_t outer(backward[t], forward[t])`` built at once in
float64 and ``G @ G.T``. Layouts:

- MobileNetV2's last 1x1 convolution at 224x224 (T = 49, 320 -> 1280):
  G is cheaper than the factors;
- a 3x3 convolution at 14x14 (T = 196, 64 * 9 -> 64): G again;
- a linear layer on 4 tokens (T = 4, 512 -> 512): the factors.

Run ``python benchmarks/kernel_positions.py`` (n = 400) or with ``--n``.
On a machine shared with other jobs, set ``OPENBLAS_NUM_THREADS=1``: BLAS
threads that wait for busy cores make every small product many times slower.
"""

import argparse
import time
import tracemalloc

import numpy as np

from skfishing import trace_kernel

LAYOUTS = {
    "1x1 conv, T=49, 320->1280": (49, 320, 1280),
    "3x3 conv, T=196, 576->64": (196, 576, 64),
    "linear, T=4, 512->512": (4, 512, 512),
}


def features(n, T, d, D, rng):
    Z = np.empty(n, dtype=[("forward", "f4", (T, d)), ("backward", "f4", (T, D))])
    Z["forward"] = rng.standard_normal((n, T, d), dtype=np.float32)
    Z["backward"] = rng.standard_normal((n, T, D), dtype=np.float32)
    return Z


def naive(Z):
    f, b = Z["forward"].astype(np.float64), Z["backward"].astype(np.float64)
    G = np.matmul(b.transpose(0, 2, 1), f).reshape(len(Z), -1)
    return G @ G.T


def measure(function, Z):
    start = time.perf_counter()
    tracemalloc.start()
    try:
        K = function(Z)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return K, time.perf_counter() - start, peak


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=400, help="number of samples")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"n={args.n}, float32 fields; time (s) and peak extra memory (MiB, tracemalloc)")
    for name, (T, d, D) in LAYOUTS.items():
        Z = features(args.n, T, d, D, rng)
        K, seconds, peak = measure(trace_kernel, Z)
        reference, naive_seconds, naive_peak = measure(naive, Z)
        error = np.linalg.norm(K - reference) / np.linalg.norm(reference)
        print(
            f"{name:28s} trace_kernel {seconds:7.2f} s {peak / 2**20:8.1f} MiB   "
            f"naive G {naive_seconds:7.2f} s {naive_peak / 2**20:8.1f} MiB   relative difference {error:.1e}"
        )


if __name__ == "__main__":
    main()
