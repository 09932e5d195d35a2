r"""Features sketched during extraction: ``DeepFisherTransformer(sketch=...)``.

A layer applied at :math:`T` positions has, per image, the weight gradient
:math:`G = \sum_t \delta_t x_t^\top`; its factors take :math:`T (d_{in} +
d_{out})` floats (:mod:`skfishing._onnx.layers`), 2.4 million for ResNet-18's last
3x3 convolution. A :class:`~skfishing.TensorSketch` is linear, so the
sketch of :math:`G` is the sum over positions of the sketches of
:math:`x_t \otimes \delta_t`. Each batch's factors are sketched right after
the network run and dropped: what is kept is ``n_components`` float32 per
image, whatever :math:`T`.

Per block of (image, position) rows, whose temporaries take a few MiB, on
as many threads as the process has CPUs (the sparse products and FFTs
release the GIL): the CountSketch of each factor is one sparse matrix
product of the factor with the positions along its rows (the layer graphs
output the factors so, :func:`~skfishing._onnx.vjp.build_layer_model`'s
``positions_last``, and no copy is made), each gets its real FFT along the
positions' axis, the spectra are multiplied and summed over the positions of
an image; one inverse FFT per image ends it. The result is the sketch of the
unit-norm :math:`G` (:math:`\|G\|_F` is computed from the factors'
products in their precision, summed in float64), equal to what
``TensorSketch.transform`` gives on the features of
:func:`~skfishing._onnx.layers.layer_features`, with the same buckets and signs.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import scipy.fft
import scipy.sparse as sp
from sklearn import get_config
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from .._onnx.layers import check_finite_factors, layer_features, squared_norms
from ..features import gradient_dtype
from .lanes import cpus

#: Bytes of temporaries per block of (image, position) rows.
_BLOCK_BYTES = 8 * 2**20


def fit_sketch(sketch, widths):
    """A fitted copy of ``sketch`` for features of ``widths``, or None without one.

    Parameters
    ----------
    sketch : TensorSketch or None
        The transformer's ``sketch`` parameter (left unfitted).
    widths : tuple of int
        ``(d_in, d_out)`` of gradient features, ``(n_features,)`` of others.

    Returns
    -------
    sketch_ : TensorSketch or None
    """
    if sketch is None:
        return None
    if len(widths) == 2:  # only the widths matter: the buckets and signs of each factor's coordinates
        layout = np.zeros(1, dtype=gradient_dtype(*widths))
    else:
        layout = np.zeros((1, widths[0]), dtype=np.float32)
    return clone(sketch).fit(layout)


def fitted_sketch(transformer):
    """The transformer's fitted sketch, None without ``sketch``; an error if :meth:`fit` has not drawn it."""
    if transformer.sketch is None:
        return None
    sketch = getattr(transformer, "sketch_", None)
    if sketch is None:
        raise NotFittedError(
            f"This {type(transformer).__name__} has sketch={transformer.sketch!r} but is not fitted with it: "
            "call fit first, which draws the sketch's random buckets and signs once (a transform without "
            "fit would draw new ones at every call, and its features would not be comparable)."
        )
    return sketch


def sketch_rows(Z, sketch):
    """``Z`` as it is without a sketch, else its sketch (features of an FC layer: T = 1)."""
    return Z if sketch is None else sketch.transform(Z)


def layer_rows(forward, backward, source, first_row, sketch, threads=None):
    """A batch's features from a layer model's factors: normalised factors, or their sketch.

    Parameters
    ----------
    forward, backward : ndarray of shape (n_samples, T, d_in), (n_samples, T, d_out)
        The factors of the batch (2-D for one position), as
        :meth:`~skfishing._onnx.network.FisherNetwork.run_layer` returns them.
    source : dict
        Provenance of the factors (see :func:`~skfishing._onnx.layers.layer_features`).
    first_row : int
        Index of the batch's first sample, to name a bad one in errors.
    sketch : TensorSketch or None
        A fitted sketch, or None for the factors themselves.

    Returns
    -------
    rows : ndarray
        :func:`~skfishing._onnx.layers.layer_features`'s structured array, or with
        ``sketch`` a float32 array of shape ``(n_samples, n_components)``.
    """
    if sketch is None:
        return layer_features(forward, backward, source, first_row=first_row)
    return sketch_factors(sketch, forward, backward, first_row=first_row, threads=threads)


def sketch_factors(sketch, forward, backward, first_row=0, threads=None):
    r"""The sketch of each sample's unit-norm :math:`G = \sum_t \delta_t x_t^\top`, from its factors.

    Parameters
    ----------
    sketch : TensorSketch
        Fitted on features of widths ``(d_in, d_out)``.
    forward, backward : ndarray of shape (n_samples, T, d_in), (n_samples, T, d_out)
        The factors (2-D for one position).
    first_row : int, default=0
        Index of the first sample, to name a bad one in errors.
    threads : int, default=None
        Threads that sketch blocks of rows in parallel (their FFTs and
        sparse products release the GIL); None means the CPUs this process
        may run on.

    Returns
    -------
    sketches : ndarray of shape (n_samples, n_components), dtype float32
        Zeros for a sample whose :math:`G` is zero.

    Raises
    ------
    ValueError
        If the factors' widths are not the sketch's, or a sample's factors
        are not finite (naming it).
    """
    if forward.ndim == 2:
        forward, backward = forward[:, None], backward[:, None]
    check_finite_factors(forward, backward, first_row)
    fitted = tuple(len(h) for h in sketch.hashes_)
    if (forward.shape[2], backward.shape[2]) != fitted:
        raise ValueError(
            f"the layer's factors have widths ({forward.shape[2]}, {backward.shape[2]}), but the sketch "
            f"was fitted for widths {fitted}: fit the transformer again after changing its layer."
        )
    n, positions = forward.shape[:2]
    m = sketch.n_components
    dtype = np.result_type(forward.dtype, backward.dtype, np.float32)
    # CountSketch as (m, d) matrices: applied to a block's factors transposed, each gives
    # (m, rows) with the rows along the contiguous axis, the layout the sparse product is fast in
    counts = [
        sp.csr_matrix((sign.astype(dtype), (h, np.arange(len(h)))), shape=(m, len(h)))
        for h, sign in zip(sketch.hashes_, sketch.signs_)
    ]
    half = m // 2 + 1
    # per row: two counts (m reals each), their spectra and the product (half complex each)
    row_bytes = (2 * m + 6 * half) * dtype.itemsize
    budget = min(_BLOCK_BYTES, get_config()["working_memory"] * 2**20)
    block = max(1, int(budget // row_bytes))
    if positions > block:  # blocks within an image
        blocks = [(i, t, min(t + block, positions)) for i in range(n) for t in range(0, positions, block)]
    else:  # whole images per block
        per = max(1, block // positions)
        blocks = [(i, 0, min(i + per, n)) for i in range(0, n, per)]

    norms = np.zeros(n)  # the squared norms of G, from the factors' products in their precision

    def spectra(job):
        """(first image, summed spectra) of a block: one row per image it holds."""
        i, a, b = job
        if positions > block:  # positions a .. b-1 of image i
            parts, images = [f[i, a:b].T for f in (forward, backward)], 1
            if a == 0:
                norms[i] = squared_norms(forward[i : i + 1], backward[i : i + 1], dtype)[0]
        else:  # images i .. b-1, all their positions
            parts, images = (
                [f[i:b].transpose(2, 0, 1).reshape(f.shape[2], -1) for f in (forward, backward)],
                b - i,
            )
            norms[i:b] = squared_norms(forward[i:b], backward[i:b], dtype)
        product = None
        for rows, count in zip(parts, counts):
            # rows: (d, the block's positions), no copy for one image whose positions come last
            counted = count @ np.ascontiguousarray(rows, dtype=dtype)
            part = scipy.fft.rfft(counted, axis=0, workers=1)
            product = part if product is None else np.multiply(product, part, out=product)
        return i, product.reshape(half, images, -1).sum(axis=2).T

    spectrum = np.zeros((n, half), dtype=np.result_type(dtype, np.complex64))
    threads = min(threads or cpus(), len(blocks))  # blocks in parallel: their products, FFTs and sums
    with contextlib.ExitStack() as stack:
        run = map
        if threads > 1:
            run = stack.enter_context(ThreadPoolExecutor(threads, thread_name_prefix="skfishing-sketch")).map
        for i, summed in run(spectra, blocks):
            spectrum[i : i + len(summed)] += summed
    out = scipy.fft.irfft(spectrum, n=m, axis=1, workers=max(threads, 1))
    norms = np.sqrt(norms)  # from the factors' products in their precision, as precise as the sketch
    scale = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
    out *= scale[:, None].astype(out.dtype)
    bad = ~np.isfinite(out).all(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"sample {first_row + i} gives gradient factors too large to sketch in {dtype} (their products "
            "overflow): the network's values are out of range. Check the input values, the temperature "
            "or the labels."
        )
    return out.astype(np.float32, copy=False)
