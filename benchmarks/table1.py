"""The paper's Table 1: forward vs gradient features on PASCAL VOC 2007.

Every row of Table 1 of Gordo et al. (BMVC 2015): activations x5, x6, x7,
logits y8, probabilities x8, the concatenations x5;x6, x6;x7, x7;y8, and the
gradients dE/dW6, dE/dW7, dE/dW8. Each feature is L2-normalised (a
concatenation joins normalised parts and is scaled back to unit norm); one
linear SVM per class (C=1) is fitted on the ``train`` split and the VOC2007
11-point interpolated AP, difficult entries ignored, is reported on ``val``
(sklearn's non-interpolated AP beside it). Gradients use temperature 2 and
uniform labels, compared with the trace kernel.

With the embedded network on the benchmark archive::

    python benchmarks/table1.py --data ../shared/data/voc2007_trainval64.npz

The real protocol, for users who have the files (VOCdevkit folder with
JPEGImages and ImageSets/Main)::

    python benchmarks/table1.py --model alexnet --data /path/to/VOCdevkit

VOC 2012 (a VOCdevkit folder holding VOC2012; fit on train, scored on val as
in the paper, whose VOC 2012 test labels are not public)::

    python benchmarks/table1.py --model alexnet --dataset voc2012 --data /path/to/VOCdevkit

Sketch rows (``--sketch``): each gradient row is also classified by a linear
model on its :class:`~skfishing.TensorSketch` (seed 0) with each number of
components given, the scalable replacement of the kernel SVM: ``LinearSVC``
(squared hinge, the same ``C``) and ``SGDClassifier`` (hinge, ``alpha = 1 /
(C n)``, the SVM's regularisation, 30 epochs), one per class::

    python benchmarks/table1.py --data ../shared/data/voc2007_trainval64.npz \
        --rows dE/dW6 dE/dW7 --sketch 1024 4096 8192 32768

Convolution rows (beyond the paper): ``dE/dW:conv3`` is the gradient of the
network's third convolution (graph order, as ``skfishing layers`` lists
them), a sum over its output pixels of rank-1 terms (see
:mod:`skfishing._onnx.layers`); ``x5+dE/dW:conv3`` adds pool5, as the mean of the
two unit kernels. They run when ``--rows`` names them (its default is the
paper's rows). Each is classified by the same SVMs on the exact trace
kernel of its per-position factors when the features of all train and val
images fit in ``--exact-memory`` MiB, else on the linear kernel of their
:class:`~skfishing.TensorSketch` (``--n-components``, seed 0), computed a
chunk of images at a time; the output says which. The rows of
docs/benchmarks.rst (on two cores, the exact kernels of these layers take
long: ``--exact-memory 0`` sketches them all)::

    python benchmarks/table1.py --data ../shared/data/voc2007_trainval64.npz \
        --rows x5 dE/dW:conv3 dE/dW:conv4 dE/dW:conv5 x5+dE/dW:conv3 x5+dE/dW:conv4 x5+dE/dW:conv5 \
        --exact-memory 0 --per-class
"""

import argparse
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import SGDClassifier
from sklearn.multiclass import OneVsRestClassifier
from sklearn.svm import SVC, LinearSVC

from skfishing import DeepFisherTransformer, TensorSketch, TraceKernelSVC, list_layers, trace_kernel
from skfishing.cache import FeatureCache
from skfishing.datasets import load_voc2007, load_voc2007_npz, load_voc2012
from skfishing.metrics import average_precision_report
from skfishing.registry import resolve_model

#: Row name -> list of (features, layer) parts; one part with features
#: "gradient" is a gradient row.
ROWS = {
    "x5": [("activation", 5)],
    "x6": [("activation", 6)],
    "x7": [("activation", 7)],
    "y8": [("activation", 8)],
    "x8": [("probabilities", 8)],
    "x5;x6": [("activation", 5), ("activation", 6)],
    "dE/dW6": [("gradient", 6)],
    "x6;x7": [("activation", 6), ("activation", 7)],
    "dE/dW7": [("gradient", 7)],
    "x7;y8": [("activation", 7), ("activation", 8)],
    "dE/dW8": [("gradient", 8)],
    # Beyond the paper: "convK" is the K-th convolution of the network (see conv_layers).
    "dE/dW:conv3": [("gradient", "conv3")],
    "dE/dW:conv4": [("gradient", "conv4")],
    "dE/dW:conv5": [("gradient", "conv5")],
    "x5+dE/dW:conv3": [("activation", 5), ("gradient", "conv3")],
    "x5+dE/dW:conv4": [("activation", 5), ("gradient", "conv4")],
    "x5+dE/dW:conv5": [("activation", 5), ("gradient", "conv5")],
}

#: The rows of the paper's Table 1 (the default of --rows).
PAPER_ROWS = [name for name, parts in ROWS.items() if all(isinstance(layer, int) for _, layer in parts)]

#: Default memory for the exact kernel of a convolution row: the factors of all train and val images (MiB).
EXACT_MEMORY = 4096


def load(data, max_per_split=None, seed=0, dataset="voc2007"):
    """Train and val Bunches from a VOCdevkit folder or an .npz archive (VOC 2007)."""
    path = Path(data)
    if dataset == "voc2012":
        if path.suffix == ".npz":
            raise SystemExit("--dataset voc2012 reads a VOCdevkit folder, not an .npz archive")
        train, val = load_voc2012(path, split="train"), load_voc2012(path, split="val")
    elif path.suffix == ".npz":
        train, val = load_voc2007_npz(path, split="train"), load_voc2007_npz(path, split="val")
    else:
        train, val = load_voc2007(path, split="train"), load_voc2007(path, split="val")
    if max_per_split:
        rng = np.random.default_rng(seed)
        for bunch in (train, val):
            keep = np.sort(rng.permutation(len(bunch.labels))[:max_per_split])
            bunch.images = (
                bunch.images[keep]
                if isinstance(bunch.images, np.ndarray)
                else [bunch.images[i] for i in keep]
            )
            bunch.labels, bunch.difficult = bunch.labels[keep], bunch.difficult[keep]
    return train, val


def features(model, kind, layer, images, *, temperature=2.0, batch_size=64, progress=False, memory=None):
    """One part of a row, L2-normalised (probabilities are normalised here).

    ``memory``: a FeatureCache shared by the rows, so that the network runs
    once per image for the whole table.
    """
    fish = DeepFisherTransformer(
        model,
        layer=layer,
        temperature=temperature,
        features=kind,
        batch_size=batch_size,
        progress=progress,
        memory=memory,
    )
    Z = fish.fit_transform(images)
    if kind == "probabilities":
        Z = Z / np.linalg.norm(Z, axis=1, keepdims=True)
    return Z


def row_features(model, parts, images, **kw):
    blocks = [features(model, kind, layer, images, **kw) for kind, layer in parts]
    if len(blocks) == 1:
        return blocks[0]
    return np.hstack(blocks) / np.sqrt(len(blocks))


def conv_layers(model):
    """``{"conv1": layer, ...}``: the model's convolutions in graph order, as rows of list_layers."""
    convs = [row for row in list_layers(resolve_model(model).source) if row["op_type"] == "Conv"]
    return {f"conv{k}": row for k, row in enumerate(convs, 1)}


def conv_plan(layer, n_images, exact_memory=EXACT_MEMORY, n_components=8192):
    """How a convolution's kernel is computed for ``n_images``: "exact" or "TS<n_components>".

    Exact when the float32 per-position factors of all images take at most
    ``exact_memory`` MiB.
    """
    floats = layer["factor_floats"]  # None when the model's shapes are not static
    if floats is not None and n_images * floats * 4 <= exact_memory * 2**20:
        return "exact"
    return f"TS{n_components}"


def _chunks(images, size):
    for start in range(0, len(images), size):
        yield images[start : start + size]


def sketched(model, layer, images, sketch, *, chunk=256, **kw):
    """TensorSketch of a layer's gradient features, a chunk of images at a time.

    ``sketch``: an unfitted TensorSketch, fitted on the first chunk (only
    the layout is learned). Only one chunk's factors are held at a time.
    """
    blocks = []
    for part in _chunks(images, chunk):
        Z = features(model, "gradient", layer, part, **kw)
        if not blocks:
            sketch.fit(Z)
        blocks.append(sketch.transform(Z))
    return np.vstack(blocks).astype(np.float64)


def part_kernels(model, part, train, val, *, layers, exact_memory, n_components, **kw):
    """Unit kernels of one part of a row: (train x train, val x train, how).

    ``how`` is "exact" (the trace kernel, or the linear kernel of a forward
    feature) or "TS<n>" (the linear kernel of the TensorSketch).
    """
    kind, layer = part
    how = "exact"
    if isinstance(layer, str):
        if layer not in layers:
            raise SystemExit(f"the model has {len(layers)} convolutions: no {layer}")
        how = conv_plan(layers[layer], len(train.labels) + len(val.labels), exact_memory, n_components)
        layer = layers[layer]["weight"]
    if how != "exact":
        sketch = TensorSketch(n_components=n_components, random_state=0)
        S_train = sketched(model, layer, train.images, sketch, **kw)
        S_val = sketched(model, layer, val.images, sketch, **kw)
        return S_train @ S_train.T, S_val @ S_train.T, how
    Z_train = features(model, kind, layer, train.images, **kw)
    Z_val = features(model, kind, layer, val.images, **kw)
    return trace_kernel(Z_train), trace_kernel(Z_val, Z_train), how


def kernel_svm_decisions(K_train, K_val, labels, C=1.0):
    """One ``SVC(kernel="precomputed")`` per label column, as TraceKernelSVC fits: val decisions."""
    return np.column_stack(
        [SVC(C=C, kernel="precomputed").fit(K_train, y).decision_function(K_val) for y in labels.T]
    )


def run_kernel_row(model, parts, train, val, kernels, *, C=1.0, **kw):
    """A row of named convolutions: SVMs on the mean of its parts' unit kernels.

    ``kernels``: a dict of part -> kernels, shared by the rows so that each
    part's kernels are computed once. Returns (val decisions, how).
    """
    for part in parts:
        if part not in kernels:
            kernels[part] = part_kernels(model, part, train, val, **kw)
    K_train = sum(kernels[p][0] for p in parts) / len(parts)
    K_val = sum(kernels[p][1] for p in parts) / len(parts)
    how = " + ".join(kernels[p][2] for p in parts)
    return kernel_svm_decisions(K_train, K_val, train.labels, C), how


def sketch_classifiers(C, n_samples):
    """Linear models fitted on the sketch of a gradient row, by name."""
    return {
        "LinearSVC": LinearSVC(C=C),
        "SGD": SGDClassifier(alpha=1 / (C * n_samples), max_iter=30, tol=None, random_state=0),
    }


def run_sketch_rows(name, Z_train, Z_val, train, val, components, *, C=1.0):
    """Sketch rows of one gradient row: {f"{name} TS{m} {classifier}": report}."""
    results = {}
    for m in components:
        t = time.perf_counter()
        sketch = TensorSketch(n_components=m, random_state=0).fit(Z_train)
        F_train, F_val = sketch.transform(Z_train), sketch.transform(Z_val)
        seconds = time.perf_counter() - t
        for label, clf in sketch_classifiers(C, len(F_train)).items():
            t = time.perf_counter()
            clf = OneVsRestClassifier(clf).fit(F_train, train.labels)
            report = average_precision_report(
                val.labels, clf.decision_function(F_val), difficult=val.difficult, classes=list(train.classes)
            )
            report.seconds, report.kernel = seconds + time.perf_counter() - t, f"TS{m} ({label})"
            results[f"{name} TS{m} {label}"] = report
    return results


def run_table1(
    model,
    train,
    val,
    rows=ROWS,
    *,
    C=1.0,
    temperature=2.0,
    batch_size=64,
    progress=False,
    sketch=(),
    exact_memory=EXACT_MEMORY,
    n_components=8192,
):
    """Fit on train, score on val; returns {row: report} (see average_precision_report).

    ``sketch``: numbers of TensorSketch components for the sketch rows of
    gradient rows (see :func:`run_sketch_rows`); none by default.
    ``exact_memory`` (MiB) and ``n_components``: how the convolution rows'
    kernels are computed (see :func:`conv_plan`). Each report's ``kernel``
    says how its row's kernel was computed.
    """
    results = {}
    cache = FeatureCache(max_bytes=4 << 30)  # the network runs once per image for all rows
    kernels, layers = {}, None
    for name in rows:
        parts = ROWS[name]
        t = time.perf_counter()
        kw = dict(temperature=temperature, batch_size=batch_size, progress=progress, memory=cache)
        if any(isinstance(layer, str) for _, layer in parts):
            layers = layers or conv_layers(model)
            decision, how = run_kernel_row(
                model,
                parts,
                train,
                val,
                kernels,
                C=C,
                layers=layers,
                exact_memory=exact_memory,
                n_components=n_components,
                **kw,
            )
            report = average_precision_report(
                val.labels, decision, difficult=val.difficult, classes=list(train.classes)
            )
            report.seconds, report.kernel = time.perf_counter() - t, how
            results[name] = report
            continue
        Z_train = row_features(model, parts, train.images, **kw)
        Z_val = row_features(model, parts, val.images, **kw)
        svc = TraceKernelSVC(C=C).fit(Z_train, train.labels)
        report = average_precision_report(
            val.labels, svc.decision_function(Z_val), difficult=val.difficult, classes=list(train.classes)
        )
        report.seconds, report.kernel = time.perf_counter() - t, "exact"
        results[name] = report
        if sketch and len(parts) == 1 and parts[0][0] == "gradient":
            results.update(run_sketch_rows(name, Z_train, Z_val, train, val, sketch, C=C))
    return results


def format_table(results, per_class=False):
    w = max(10, *(len(name) for name in results))
    lines = [f"{'features':{w}s} {'VOC07 11-pt mAP':>16s} {'sklearn mAP':>12s} {'seconds':>8s}  kernel"]
    for name, report in results.items():
        lines.append(
            f"{name:{w}s} {100 * report.voc07_map:16.2f} {100 * report.sklearn_map:12.2f} "
            f"{report.seconds:8.1f}  {report.kernel}"
        )
    if any(r.kernel != "exact" for r in results.values()):
        lines.append(
            "kernel: exact = SVM on the exact (trace) kernel; TS<n> = on the linear kernel of a TensorSketch"
        )
    if per_class:
        names = list(results)
        classes = list(next(iter(results.values())).classes)
        lines.append("")
        lines.append("per-class VOC07 11-point AP (%)")
        widths = [max(9, len(n) + 1) for n in names]
        lines.append(f"{'class':12s}" + "".join(f"{n:>{w}s}" for n, w in zip(names, widths)))
        for c, cls in enumerate(classes):
            lines.append(
                f"{cls:12s}"
                + "".join(f"{100 * results[n].voc07_ap[c]:{w}.1f}" for n, w in zip(names, widths))
            )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="tinyalexnet")
    parser.add_argument("--data", required=True, help="VOCdevkit folder or .npz archive")
    parser.add_argument(
        "--dataset",
        choices=("voc2007", "voc2012"),
        default="voc2007",
        help="which VOC release to read from --data (default: voc2007)",
    )
    parser.add_argument(
        "--rows",
        nargs="+",
        default=PAPER_ROWS,
        choices=list(ROWS),
        help="rows to compute (default: the paper's; the convolution rows are asked for by name)",
    )
    parser.add_argument("--C", type=float, default=1.0)
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--max-per-split", type=int, default=None, help="random subset of train and of val")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--per-class", action="store_true")
    parser.add_argument(
        "--sketch",
        type=int,
        nargs="+",
        default=[],
        metavar="N_COMPONENTS",
        help="also fit linear models on TensorSketch features of the gradient rows",
    )
    parser.add_argument(
        "--exact-memory",
        type=float,
        default=EXACT_MEMORY,
        metavar="MIB",
        help="convolution rows: exact kernel when the factors of all images fit in this many MiB, "
        f"else a TensorSketch (default {EXACT_MEMORY})",
    )
    parser.add_argument(
        "--n-components",
        type=int,
        default=8192,
        help="TensorSketch components of the convolution rows that are sketched (default 8192)",
    )
    args = parser.parse_args(argv)
    train, val = load(args.data, args.max_per_split, dataset=args.dataset)
    print(
        f"model {args.model}; {args.dataset} data {args.data}: {len(train.labels)} train, {len(val.labels)} val images; "
        f"C={args.C}, temperature={args.temperature}, uniform labels"
    )
    named = sorted({layer for row in args.rows for _, layer in ROWS[row] if isinstance(layer, str)})
    if named:
        layers, n = conv_layers(args.model), len(train.labels) + len(val.labels)
        for key in named:
            if key in layers:
                spec = layers[key]
                print(
                    f"{key} = {spec['name']} ({spec['weight']}): T={spec['T']}, d_in={spec['d_in']}, "
                    f"d_out={spec['d_out']}, {spec['factor_floats']:,} floats per image; kernel: "
                    f"{conv_plan(spec, n, args.exact_memory, args.n_components)}"
                )
    results = run_table1(
        args.model,
        train,
        val,
        args.rows,
        C=args.C,
        temperature=args.temperature,
        batch_size=args.batch_size,
        progress=True,
        sketch=args.sketch,
        exact_memory=args.exact_memory,
        n_components=args.n_components,
    )
    print(format_table(results, per_class=args.per_class))


if __name__ == "__main__":
    main()
