"""Writing the FC head's features of a transform, batch by batch, then normalising them.

:class:`FeatureWriter` receives what the network computed for each batch
(raw activations, factors or probabilities), checks that it is finite
(naming the sample), writes it into the result (the structured dtype of
:mod:`skfishing.features` for gradients), and at the end divides each row
by its L2 norm (computed in float64) and warns about rows that are zero.
"""

from __future__ import annotations

import warnings

import numpy as np

from ..features import gradient_dtype, make_source

__all__ = []  # used by DeepFisherTransformer; nothing here is for users

#: Rows normalised at once by :meth:`FeatureWriter.finish`.
NORMALISE_ROWS = 4096


class FeatureWriter:
    """Checks, writes and normalises the features of one transform.

    Parameters
    ----------
    kind : {"gradient", "activation", "probabilities"}
        The transformer's ``features``.
    outputs : sequence of Tensor
        The tensors written, in order (two for gradients: forward, backward).
    widths : sequence of int
        Their widths.
    n_samples : int
        Rows of the result.
    temperature : float
        For error messages.
    source : dict or None
        Provenance of gradient features (:func:`skfishing.features.make_source`).
    """

    def __init__(self, kind, outputs, widths, n_samples, temperature, source=None):
        self.kind = kind
        self.outputs = list(outputs)
        self.temperature = temperature
        if kind == "gradient":
            self.result = np.empty(n_samples, dtype=gradient_dtype(*widths, source))
            self.fields = [self.result["forward"], self.result["backward"]]
        else:
            self.result = np.empty((n_samples, widths[0]), dtype=np.float32)
            self.fields = [self.result]

    @classmethod
    def for_transformer(cls, transformer, network, outputs, n_samples):
        """The writer of ``transformer``'s features of ``outputs`` (head tensors) for ``n_samples``."""
        source = None
        if transformer.features == "gradient":
            source = make_source(
                network.sha256, outputs[1].layer, transformer.temperature, transformer.labels
            )
        widths = [network.head.width(t) for t in outputs]
        return cls(transformer.features, outputs, widths, n_samples, transformer.temperature, source)

    def write(self, rows, values, batch=None):
        """Check the raw ``values`` (one array per output) of the samples ``rows`` and write them.

        ``batch``, the network input of those rows when at hand, makes the
        error message about a non-finite result more precise.
        """
        for tensor, field, value in zip(self.outputs, self.fields, values):
            finite = np.isfinite(value).all(axis=1)
            if not finite.all():
                self._not_finite(tensor, rows, finite, batch)
            field[rows] = value

    def finish(self):
        """The result: rows divided by their L2 norm (not probabilities), after a warning naming zero rows."""
        if self.kind == "probabilities":
            return self.result
        zero = {}
        for tensor, field in zip(self.outputs, self.fields):
            for start in range(0, len(field), NORMALISE_ROWS):
                block = field[start : start + NORMALISE_ROWS].astype(np.float64)
                norms = np.sqrt(np.einsum("ij,ij->i", block, block))
                np.divide(block, norms[:, None], out=block, where=norms[:, None] > 0)
                field[start : start + NORMALISE_ROWS] = block
                rows = start + np.flatnonzero(norms == 0)
                if len(rows):
                    zero.setdefault(tensor, []).extend(rows.tolist())
        for tensor, rows in zero.items():
            self._warn_zero(tensor, np.asarray(rows))
        return self.result

    def _warn_zero(self, tensor, rows):
        shown = ", ".join(map(str, rows[:10])) + (", ..." if len(rows) > 10 else "")
        if tensor.kind == "delta":
            what = (
                f"backward factor {tensor.name} of layer {tensor.layer} (the labels equal the softmax "
                "output, or the ReLUs that pass the signal down are all off)"
            )
        elif self.kind == "gradient":
            what = (
                f"forward factor {tensor.name} of layer {tensor.layer + 1} (the ReLUs of layer "
                f"{tensor.layer} are all off, or the head input is zero)"
            )
        else:
            what = f"activation {tensor.name}"
        warnings.warn(
            f"{len(rows)} of {len(self.result)} samples have a zero {what}: samples {shown}. Their "
            "rows are zeros, not unit vectors: the gradient is the zero matrix, whose trace kernel "
            "with any sample is 0.",
            RuntimeWarning,
            stacklevel=6,  # _warn_zero, finish, _transform, (fit_)transform, set_output wrapper, caller
        )

    def _not_finite(self, tensor, rows, finite, batch):
        i = int(np.flatnonzero(~finite)[0])
        hint = "the temperature or the labels, or the range of the input"
        if batch is not None:
            hint = (
                f"the input values (largest magnitude in this sample: {np.abs(batch[i]).max():.3g}), "
                f"the temperature ({self.temperature!r}) or the labels"
            )
        raise ValueError(
            f"sample {rows[i]} gives non-finite features (NaN or infinity in {tensor.name}): the "
            f"network overflowed. Check {hint}."
        )
