r"""Factorized gradient features: their structured dtype and provenance.

:class:`~skfishing.DeepFisherTransformer` returns the gradient
:math:`\partial E / \partial W_k = x_{k-1} \delta_k^\top` of each image as
the two factors :math:`x_{k-1}` and :math:`\delta_k`, in a NumPy structured
array with fields ``"forward"`` and ``"backward"``. Where the features come
from (model, layer, temperature, labels) travels in the dtype's metadata.
"""

from __future__ import annotations

from numbers import Integral

import numpy as np
from sklearn.utils._param_validation import Interval, validate_params

__all__ = ["gradient_dtype"]


@validate_params(
    {
        "forward_dim": [Interval(Integral, 1, None, closed="left")],
        "backward_dim": [Interval(Integral, 1, None, closed="left")],
        "source": [dict, None],
    },
    prefer_skip_nested_validation=True,
)
def gradient_dtype(forward_dim, backward_dim, source=None):
    r"""Structured dtype of factorized gradient features.

    Parameters
    ----------
    forward_dim, backward_dim : int
        Widths of the ``"forward"`` (:math:`x_{k-1}`) and ``"backward"``
        (:math:`\delta_k`) fields.
    source : dict, default=None
        Where the features come from (model sha256, layer, temperature),
        kept as the dtype's ``metadata``: it travels with the array through
        indexing, concatenation and pickling, so that
        :class:`~skfishing.TraceKernelSVC` can refuse features of another
        model or layer at predict time. None means no provenance.

    Returns
    -------
    dtype : numpy.dtype
        Fields ``"forward"`` (float32, shape ``(forward_dim,)``) and
        ``"backward"`` (float32, shape ``(backward_dim,)``).

    Examples
    --------
    >>> from skfishing.features import gradient_dtype
    >>> gradient_dtype(3, 2)
    dtype([('forward', '<f4', (3,)), ('backward', '<f4', (2,))])
    """
    fields = [("forward", np.float32, (int(forward_dim),)), ("backward", np.float32, (int(backward_dim),))]
    if source is None:
        return np.dtype(fields)
    return np.dtype(fields, metadata=dict(source))
