"""
=========================================
Extraction and training on a Dask cluster
=========================================

The whole scale path on a :mod:`dask.distributed` cluster: image files are
turned into gradient features by the workers (each loads the network once),
written to a chunked Zarr store, sketched with
:class:`~skfishing.TensorSketch` and used to train a linear model block by
block with dask-ml's ``Incremental``; then a grid search runs on the same
workers through joblib's Dask backend.

It needs the optional dependencies and starts its own two-process
``LocalCluster`` (or uses the scheduler given with ``--scheduler``)::

    pip install "skfishing[dask]"
    python examples/dask_cluster.py

It is not run when the documentation is built (it starts worker processes);
it takes about a minute on two cores.
"""

import argparse
import tempfile
import time
from pathlib import Path

import dask.array as da
import joblib
import numpy as np
from dask_ml.wrappers import Incremental
from distributed import Client, LocalCluster
from PIL import Image
from sklearn.linear_model import SGDClassifier
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.pipeline import make_pipeline

from skfishing import (
    DeepFisherTransformer,
    TensorSketch,
    TraceKernelSVC,
)
from skfishing.datasets import load_digits_images
from skfishing.distributed import dask_transform, to_zarr


def write_images(images, folder):
    """Save images as PNG files: the cluster reads paths, as with real data."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        paths.append(str(folder / f"{i:05d}.png"))
        Image.fromarray(image).save(paths[-1])
    return paths


def main(scheduler, workdir):
    digits = load_digits_images(size=32)
    train_images, test_images, y_train, y_test = train_test_split(
        digits.images,
        digits.target,
        test_size=0.3,
        stratify=digits.target,
        random_state=0,
    )
    folder = Path(workdir)
    train_paths = write_images(train_images, folder / "train")
    test_paths = write_images(test_images, folder / "test")
    print(
        f"{len(train_paths)} train and {len(test_paths)} test images as PNG files in {folder}"
    )

    cluster = (
        None
        if scheduler
        else LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            dashboard_address=None,
        )
    )
    with Client(scheduler or cluster) as client:
        print("cluster:", client)

        # 1. Extraction on the workers, into chunked Zarr stores read lazily.
        fish = DeepFisherTransformer("tinyalexnet", layer=7)
        start = time.perf_counter()
        Z_train = to_zarr(
            dask_transform(fish, train_paths, chunk_size=128),
            folder / "train.zarr",
        )
        Z_test = to_zarr(
            dask_transform(fish, test_paths, chunk_size=128),
            folder / "test.zarr",
        )
        print(
            f"extracted {Z_train.shape[0] + Z_test.shape[0]} images in {time.perf_counter() - start:.1f} s: "
            f"{Z_train.dtype['forward'].shape[0]} x {Z_train.dtype['backward'].shape[0]} gradients, "
            f"stored in {Z_train.numblocks[0]} + {Z_test.numblocks[0]} chunks"
        )

        # 2. Sketch on the workers, and a linear model trained block by block.
        sketch = TensorSketch(
            n_components=4096, random_state=0
        ).fit(Z_train[:1].compute())
        F_train, F_test = (
            dask_transform(sketch, Z_train),
            dask_transform(sketch, Z_test),
        )
        y_train_blocks = da.from_array(
            y_train, chunks=(F_train.chunks[0],)
        )
        model = Incremental(
            SGDClassifier(alpha=1e-4, random_state=0),
            scoring="accuracy",
            random_state=0,
        )
        start = time.perf_counter()
        for _epoch in range(5):
            model.partial_fit(
                F_train, y_train_blocks, classes=np.arange(10)
            )
        accuracy = model.score(
            F_test,
            da.from_array(y_test, chunks=(F_test.chunks[0],)),
        )
        print(
            f"sketch + SGDClassifier, 5 passes with Incremental: {time.perf_counter() - start:.1f} s, "
            f"test accuracy {accuracy:.3f}"
        )

        # The exact kernel SVM for comparison (small n: it fits in memory).
        exact = (
            TraceKernelSVC()
            .fit(Z_train.compute(), y_train)
            .score(Z_test.compute(), y_test)
        )
        print(
            f"TraceKernelSVC on the same features: test accuracy {exact:.3f}"
        )

        # 3. Model selection on the cluster through joblib's Dask backend.
        pipe = make_pipeline(
            DeepFisherTransformer("tinyalexnet"),
            TensorSketch(4096, random_state=0),
            SGDClassifier(random_state=0),
        )
        grid = {
            "deepfishertransformer__layer": [6, 7],
            "sgdclassifier__alpha": [1e-4, 1e-3],
        }
        start = time.perf_counter()
        with joblib.parallel_backend("dask"):
            search = GridSearchCV(pipe, grid, cv=3, n_jobs=-1).fit(
                train_images[:600], y_train[:600]
            )
        print(
            f"GridSearchCV on the cluster: {time.perf_counter() - start:.1f} s, best {search.best_params_}, "
            f"CV accuracy {search.best_score_:.3f}"
        )
    if cluster is not None:
        cluster.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description="Extraction and training on a Dask cluster."
    )
    parser.add_argument(
        "--scheduler",
        help="address of a running scheduler; default: a LocalCluster",
    )
    parser.add_argument(
        "--workdir",
        help="folder for the PNG files and Zarr stores (kept); "
        "default: a temporary folder, deleted at the end",
    )
    args = parser.parse_args()
    if args.workdir:
        main(args.scheduler, args.workdir)
    else:
        with tempfile.TemporaryDirectory(
            prefix="skfishing-dask-"
        ) as workdir:
            main(args.scheduler, workdir)
