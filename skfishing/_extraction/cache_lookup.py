"""A transform through the estimator's feature cache: read what is cached, compute the rest once.

:class:`CacheLookup` stands between :class:`~skfishing.DeepFisherTransformer`
and its network when a :class:`~skfishing.cache.FeatureCache` is in use
(model selection, or ``memory=``). Per image, under keys of its content
(:meth:`~skfishing.cache.FeatureCache.sample_keys`), the cache holds:

* the **state** (head input and FC pre-activations): every feature of the
  FC head, at any temperature and labels, is computed from it
  (:meth:`CacheLookup.head_batches`);
* the **head outputs** asked for (raw, per outputs, temperature and labels),
  in memory only, since cross-validation asks for each image once per fold;
* the **cut** at a layer of the trunk (:mod:`skfishing._onnx.cuts`), and the
  position of that cut: every trunk layer at or after it, and the state,
  are computed from the cut, at any temperature and labels
  (:meth:`CacheLookup.layer_batches`).

The image's forward pass runs only for images that have neither a state
(for the head) nor a cut at or before the layer asked for (for a trunk
layer); a cut computed for a layer before the cached one replaces it as the
image's cut. States, cuts and their positions are written to the
``memory=`` folder too, verified on read (:class:`~skfishing.cache.DiskStore`).
"""

from __future__ import annotations

import numpy as np

from ..cache import derived_keys
from .batches import check_input_sums

__all__ = []  # used by DeepFisherTransformer; nothing here is for users

#: Context of the key of an image's cut position (:meth:`CacheLookup.layer_batches`).
CUT_POSITION = "cut position"


class CacheLookup:
    """The cached network values of the samples of one transform.

    Parameters
    ----------
    cache : FeatureCache
        The cache.
    disk : DiskStore or None
        The ``memory=`` folder, if any.
    network : FisherNetwork
        The network.
    checked : skfishing._extraction.batches.CheckedInput
        The validated input.
    preprocessing : ImagePreprocessing or None
        Part of the keys.
    batches : callable
        ``batches(skip)``: the batches of network input of the samples
        whose ``skip`` is False, in order.
    batch_size : int
        Rows per run of the graphs that start from the cache.
    """

    def __init__(self, cache, disk, network, checked, preprocessing, batches, batch_size):
        self.cache, self.disk, self.network = cache, disk, network
        self.batches, self.batch_size = batches, batch_size
        self.sample_shape = checked.sample_shape
        # The providers and their options (TF32 or not) are part of the key:
        # entries computed on one provider are never returned for another.
        context = (
            f"{network.sha256}|{network.providers!r}|{preprocessing!r}|"
            f"{np.dtype(network.input_dtype).str}|{network.input_shape}"
        )
        self.keys = cache.sample_keys(checked.samples, context)
        self.n_samples = len(self.keys)

    # -- entries ------------------------------------------------------------

    def _get(self, key, dtype, shape):
        """An entry from memory, else from the disk (then kept in memory), else None."""
        if key is None:
            return None
        row = self.cache.states.get(key)
        if row is None and self.disk is not None:
            row = self.disk.get(key, dtype, shape)
            if row is not None:
                self.cache.states.put(key, row)
        return row

    def _put(self, key, row):
        if key is not None:
            self.cache.states.put(key, row)
            if self.disk is not None:
                self.disk.put(key, row)

    def _cut_key(self, i, position):
        return derived_keys([self.keys[i]], f"cut at node {position}|{self.sample_shape}")[0]

    def _position_key(self, i):
        return derived_keys([self.keys[i]], f"{CUT_POSITION}|{self.sample_shape}")[0]

    def _cut_of(self, i, before=None):
        """``(cut, row)``: the cached cut of sample ``i`` (at or before node ``before``), or (None, None)."""
        where = self._get(self._position_key(i), np.int64, (1,))
        if where is None or (before is not None and int(where[0]) > before):
            return None, None
        cut = self.network.cut(int(where[0]), self.sample_shape)
        if cut is None:
            return None, None
        row = self._get(self._cut_key(i, cut.position), self.network.dtype, (cut.width,))
        return (cut, row) if row is not None else (None, None)

    def _put_cut(self, i, cut, row):
        if self.keys[i] is None:
            return
        self._put(self._cut_key(i, cut.position), row)
        self._put(self._position_key(i), np.array([cut.position], dtype=np.int64))

    def _computed(self, rows, run):
        """Values of ``rows`` in order, from the images batch by batch: ``run(batch)`` -> (values, input_sum)."""
        skip = np.ones(self.n_samples, dtype=bool)
        skip[rows] = False
        done = 0
        for batch in self.batches(skip):
            batch_rows = np.asarray(rows[done : done + len(batch)])
            done += len(batch)
            values, input_sum = run(batch)
            check_input_sums(input_sum, batch, batch_rows)
            yield from zip(batch_rows, values)

    # -- the FC head ----------------------------------------------------------

    def head_batches(self, outputs, widths, temperature, labels):
        """Raw values of the head tensors ``outputs`` of every sample, from states.

        Parameters
        ----------
        outputs : sequence of Tensor
            What to compute.
        widths : sequence of int
            Their widths.
        temperature : float
            The loss's temperature.
        labels : ndarray or None
            The loss's label vector.

        Yields
        ------
        rows : ndarray of int
            The samples.
        values : list of ndarray
            One array per output, rows in the order of ``rows``.
        batch : None
            (The network input is not at hand.)
        """
        network, cache = self.network, self.cache
        labels_id = None if labels is None else labels.tobytes().hex()
        output_keys = derived_keys(
            self.keys, f"{[t.name for t in outputs]}|{float(temperature)!r}|{labels_id}"
        )
        stored = [None if k is None else cache.outputs.get(k) for k in output_keys]
        hits = np.array([i for i, row in enumerate(stored) if row is not None], dtype=np.intp)
        if len(hits):
            yield hits, _split(np.stack([stored[i] for i in hits]), widths), None

        todo = [i for i, row in enumerate(stored) if row is None]
        width = network.state_width
        states = {}
        for i in todo:
            row = self._get(self.keys[i], network.dtype, (width,))
            if row is not None:
                states[i] = row
        from_cuts = {}
        for i in todo:
            if i not in states and self.keys[i] is not None:
                cut, row = self._cut_of(i)
                if cut is not None:
                    from_cuts.setdefault(cut, []).append((i, row))
        for cut, items in from_cuts.items():
            for part in _chunks(items, self.batch_size):
                computed = network.run_state_from_cut(np.stack([r for _, r in part]), cut, self.sample_shape)
                if computed is None:
                    break  # a cut inside the head: the state comes from the image
                for (i, _), row in zip(part, computed):
                    states[i] = row
                    self._put(self.keys[i], row)
        missing = [i for i in todo if i not in states]
        computed = self._computed(missing, network.run_state)
        options = dict(temperature=temperature, labels=labels)
        for rows in _chunks(todo, self.batch_size):
            rows = np.asarray(rows)
            state_rows = []
            for i in rows:
                if i not in states:
                    _, row = next(computed)
                    self._put(self.keys[i], row)
                state_rows.append(states[i] if i in states else row)
            state_rows = np.stack(state_rows)
            values = network.run_from_state(state_rows, outputs, **options)
            for i, joined in zip(rows, np.concatenate(values, axis=1)):
                if output_keys[i] is not None:
                    cache.outputs.put(output_keys[i], joined)
            yield rows, values, None

    # -- a layer of the trunk -------------------------------------------------

    def layer_batches(self, layer, cut, temperature, labels):
        """The per-position gradient factors of a trunk layer for every sample, from cuts.

        Parameters
        ----------
        layer : str
            The layer (node or weight name).
        cut : Cut
            Its cut (:meth:`~skfishing._onnx.network.FisherNetwork.cut`).
        temperature : float
            The loss's temperature.
        labels : ndarray or None
            The loss's label vector.

        Yields
        ------
        rows : ndarray of int
            Consecutive samples, in order.
        forward, backward : ndarray
            Their factors, as :meth:`~skfishing._onnx.network.FisherNetwork.run_layer` returns them.
        """
        network = self.network
        cuts = {}
        for i in range(self.n_samples):
            if self.keys[i] is not None:
                found, row = self._cut_of(i, before=cut.position)
                if found is not None:
                    cuts[i] = (found, row)
        missing = [i for i in range(self.n_samples) if i not in cuts]

        computed = self._computed(missing, lambda batch: network.run_cut(batch, cut))
        options = dict(temperature=temperature, labels=labels)
        for start in range(0, self.n_samples, self.batch_size):
            rows = np.arange(start, min(start + self.batch_size, self.n_samples))
            groups = {}
            for j, i in enumerate(rows):
                if i in cuts:
                    found, row = cuts[i]
                else:
                    _, row = next(computed)
                    found = cut
                    self._put_cut(i, cut, row)
                groups.setdefault(found, []).append((j, row))
            forward = backward = None
            for found, items in groups.items():
                where = [j for j, _ in items]
                f, b = network.run_layer_from_cut(
                    np.stack([r for _, r in items]), found, layer, self.sample_shape, **options
                )
                if forward is None:  # in the factors' memory layout (positions last: see run_layer)
                    forward, backward = (np.empty_like(x, shape=(len(rows),) + x.shape[1:]) for x in (f, b))
                forward[where], backward[where] = f, b
            yield rows, forward, backward


def _chunks(items, size):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _split(joined, widths):
    offsets = np.cumsum([0] + list(widths))
    return [joined[:, a:b] for a, b in zip(offsets[:-1], offsets[1:])]
