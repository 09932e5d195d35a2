"""Soak run: transform many small images in parallel workers, bounded memory.

Generates ``--images`` random 32x32 RGB images; ``--files`` of them (default
half) are written as PNG files (so decoding runs), the rest are given as
uint8 arrays. Chunks of ``--chunk`` images go to ``--workers`` joblib (loky)
processes, each with its own :class:`~skfishing.DeepFisherTransformer` on the
embedded network ``tinyalexnet`` when ``skfishing/data/tinyalexnet.onnx``
exists, else on a small random CNN with 32x32 input registered in every
worker. Then the same images are transformed in one process, and every row
is compared.

Printed: throughput, the peak resident memory (``VmHWM``) of each worker
after its first chunk and at the end (a growing figure would mean a leak),
the parent's peak, and the largest difference between the parallel and the
single-process rows (chunks are multiples of the batch size, so the network
sees the same batches and the rows are expected to be bit-identical).

Usage::

    python benchmarks/soak.py [--images 20000] [--files 10000] [--workers 2]
        [--chunk 1000] [--batch-size 50] [--cache-mb 64]
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

EMBEDDED = Path(__file__).resolve().parent.parent / "skfishing" / "data" / "tinyalexnet.onnx"
RANDOM_NAME = "soak-random-cnn"


def peak_rss_mb():
    """Peak resident set size of this process (VmHWM), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def random_cnn(path, size=32, widths=(64, 48, 10), channels=8, seed=0):
    """Save a small random image classifier: Conv, Relu, MaxPool, 3 FC layers."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)

    def init(name, array):
        return numpy_helper.from_array(np.asarray(array, np.float32), name)

    flat = channels * (size // 4) ** 2
    inits = [
        init("cw", rng.normal(size=(channels, 3, 3, 3)) / 3),
        init("cb", rng.normal(scale=0.1, size=channels)),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "cw", "cb"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[4, 4], strides=[4, 4]),
        helper.make_node("Flatten", ["p"], ["f"], axis=1),
    ]
    x, dims = "f", (flat,) + widths
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        inits += [
            init(f"W{i}", rng.normal(size=(a, b)) / np.sqrt(a)),
            init(f"b{i}", rng.normal(scale=0.3, size=b)),
        ]
        nodes.append(helper.make_node("Gemm", [x, f"W{i}", f"b{i}"], [f"y{i}"], name=f"fc{6 + i}"))
        x = f"y{i}"
        if i < len(widths) - 1:
            nodes.append(helper.make_node("Relu", [x], [f"h{i}"]))
            x = f"h{i}"
    graph = helper.make_graph(
        nodes,
        "soak-cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", widths[-1]])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


def make_transformer(model_path, batch_size, cache_mb):
    """The transformer of one process (registers the random CNN if needed)."""
    from skfishing import DeepFisherTransformer, ImagePreprocessing
    from skfishing.cache import FeatureCache
    from skfishing.registry import register_model

    name = "tinyalexnet"
    if model_path is not None:
        register_model(RANDOM_NAME, model_path, preprocessing=ImagePreprocessing(size=32), overwrite=True)
        name = RANDOM_NAME
    memory = FeatureCache(max_bytes=cache_mb << 20)
    return DeepFisherTransformer(name, layer=7, batch_size=batch_size, n_jobs=1, memory=memory)


def work(chunk_id, X, model_path, batch_size, cache_mb):
    """One chunk in a worker: features, plus the worker's pid and peak RSS."""
    fish = make_transformer(model_path, batch_size, cache_mb)
    Z = fish.fit(X[:1]).transform(X)
    return chunk_id, Z, os.getpid(), peak_rss_mb()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--files", type=int, default=None, help="how many are PNG files (default: half)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--chunk", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--cache-mb", type=int, default=64, help="in-memory forward cache of each process")
    args = parser.parse_args()
    if args.chunk % args.batch_size:
        parser.error("--chunk must be a multiple of --batch-size (same batches in both runs)")
    n_files = args.images // 2 if args.files is None else min(args.files, args.images)

    from joblib import Parallel, delayed

    with tempfile.TemporaryDirectory(prefix="skfishing-soak-") as tmp:
        tmp = Path(tmp)
        model_path = None
        if not EMBEDDED.exists():
            model_path = str(tmp / "random-cnn.onnx")
            random_cnn(model_path)
        t0 = time.perf_counter()
        pixels = np.random.default_rng(0).integers(0, 256, (args.images, 32, 32, 3), dtype=np.uint8)
        from PIL import Image

        # files and arrays interleaved by chunk so that both kinds go everywhere
        is_file = np.zeros(args.images, bool)
        is_file[np.random.default_rng(1).permutation(args.images)[:n_files]] = True
        inputs = []
        for i in range(args.images):
            if is_file[i]:
                path = tmp / f"{i:06d}.png"
                Image.fromarray(pixels[i]).save(path)
                inputs.append(str(path))
            else:
                inputs.append(pixels[i])
        t_gen = time.perf_counter() - t0
        chunks = [(c, inputs[s : s + args.chunk]) for c, s in enumerate(range(0, args.images, args.chunk))]
        print(
            f"model: {'tinyalexnet' if model_path is None else 'random CNN 32x32 (tinyalexnet.onnx absent)'}"
        )
        print(
            f"images: {args.images} ({n_files} PNG files, {args.images - n_files} uint8 arrays), "
            f"generated in {t_gen:.1f} s; {len(chunks)} chunks of {args.chunk}, batch {args.batch_size}, "
            f"{args.workers} worker processes, forward cache {args.cache_mb} MiB per process"
        )

        t0 = time.perf_counter()
        results = Parallel(n_jobs=args.workers, backend="loky", return_as="generator")(
            delayed(work)(c, X, model_path, args.batch_size, args.cache_mb) for c, X in chunks
        )
        parts, peaks = {}, {}
        for chunk_id, Z, pid, rss in results:
            parts[chunk_id] = Z
            peaks.setdefault(pid, []).append(rss)
        t_par = time.perf_counter() - t0
        parallel = np.concatenate([parts[c] for c in range(len(chunks))])
        print(f"parallel: {t_par:.1f} s, {args.images / t_par:.0f} images/s")
        for pid, values in sorted(peaks.items()):
            print(
                f"  worker {pid}: {len(values)} chunks, peak RSS {values[0]:.0f} MiB after its first "
                f"chunk, {values[-1]:.0f} MiB at the end"
            )

        t0 = time.perf_counter()
        single = make_transformer(model_path, args.batch_size, args.cache_mb)
        serial = np.concatenate([single.fit(X[:1]).transform(X) for _, X in chunks])
        t_ser = time.perf_counter() - t0
        print(f"single process: {t_ser:.1f} s, {args.images / t_ser:.0f} images/s")
        print(
            f"parent peak RSS: {peak_rss_mb():.0f} MiB (holds the {pixels.nbytes >> 20} MiB of pixels, "
            f"both feature sets, and ran the single-process pass)"
        )

        assert parallel.dtype == serial.dtype and parallel.shape == serial.shape == (args.images,)
        diffs = {f: np.abs(parallel[f] - serial[f]).max() for f in parallel.dtype.names}
        identical = all(np.array_equal(parallel[f], serial[f]) for f in parallel.dtype.names)
        n_rows = (
            sum(
                not all(np.array_equal(parallel[f][i], serial[f][i]) for f in parallel.dtype.names)
                for i in range(args.images)
            )
            if not identical
            else 0
        )
        print(
            f"rows: {args.images}, dtype {parallel.dtype}; bit-identical to the single-process run: "
            f"{identical} ({n_rows} rows differ; max |diff| forward {diffs['forward']:.2e}, "
            f"backward {diffs['backward']:.2e})"
        )
        if not identical:
            raise SystemExit("parallel rows differ from the single-process run")


if __name__ == "__main__":
    main()
