"""DeepFisherTransformer: gradient features of a pretrained network."""

from __future__ import annotations

import os
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from numbers import Integral

import numpy as np
import onnx
from PIL import Image
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils._available_if import available_if
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import _check_feature_names_in, validate_data

from .batches import BATCH_SIZE, N_JOBS, from_frame, iter_batches
from .cache import DiskStore, FeatureCache, SharedCacheMixin, derived_keys, shared_cache
from .features import gradient_dtype, make_source
from .graph import TEMPERATURE_RANGE, check_labels
from .images import ImagePreprocessing
from .registry import resolve_model
from .sketch import TensorSketch
from .sketched import fit_sketch, fitted_sketch, layer_rows, sketch_rows

__all__ = ["DeepFisherTransformer"]

_F32 = np.finfo(np.float32)


def _not_gradient(transformer):
    return transformer.features != "gradient" or transformer.sketch is not None


class DeepFisherTransformer(SharedCacheMixin, TransformerMixin, BaseEstimator):
    r"""Deep Fishing gradient features of a pretrained classification network.

    For every sample, the network is run forward; the gradient of the
    cross-entropy between its tempered softmax output and a label vector
    :math:`g` (uniform by default) is back-propagated through the fully
    connected (FC) head. The gradient with respect to the weights of FC
    layer :math:`k` is the rank-1 matrix :math:`x_{k-1} \delta_k^\top`
    (Gordo et al., BMVC 2015, Eq. 10); it is returned factorized, as its two
    L2-normalised factors, and compared with :func:`skfishing.trace_kernel`.

    Nothing is learned: :meth:`transform` works without :meth:`fit`, which
    only checks the parameters and records the model's content, so that a
    fitted pipeline refuses to run on a model file changed since (and draws
    the random buckets of a ``sketch``, which needs it).

    Each batch goes through the network in one onnxruntime run, from the
    input straight to the two factors; only they come back to the host. In
    model selection the forward pass of each image runs once: a transformer
    shares a cache with its clones (``GridSearchCV`` clones it for every
    candidate and fold), and only the cheap backward pass of the head reruns
    for another layer or temperature (see :mod:`skfishing.cache`).

    Parameters
    ----------
    model : str, path-like or onnx.ModelProto, default="tinyalexnet"
        The classifier: a registered model name (see
        :func:`skfishing.registry.list_models`; ``"tinyalexnet"`` ships with
        the package), the path of an ONNX classifier file, or an
        ``onnx.ModelProto``. The model must not contain a backward subgraph:
        it is added here (:func:`skfishing.graph.add_backward`).

    layer : int or str, default=7
        FC layer, in the paper's numbering: the classifier is layer 8, the
        FC layer below it 7, and so on (a head of :math:`n` FC layers has
        layers :math:`9 - n` to 8; its input, e.g. AlexNet's pool5, is
        activation :math:`8 - n`). FC layer names from the graph are accepted
        too. With ``features="gradient"``, any other Conv, Gemm or MatMul
        node with a constant weight, named by its node name or its weight's
        name (:func:`skfishing.layers.list_layers` lists them): its
        gradient goes back through the trunk (:mod:`skfishing.vjp`), and the
        features hold its per-position factors (see
        :mod:`skfishing.layers`). Such layers do not use ``memory``: each
        transform, in a grid search too, runs the network again.

    temperature : float, default=2.0
        Softmax temperature :math:`\tau` of the loss (the paper uses 2).
        It must be a positive number that float32 represents with full
        precision (at least 1.2e-38).

    features : {"gradient", "activation", "probabilities"}, default="gradient"
        ``"gradient"``: factorized :math:`\partial E / \partial W_{layer}` as
        a structured array. ``"activation"``: the 2-D array
        :math:`x_{layer}` (the head input for the activation below the first
        FC layer, ReLU outputs for hidden FC layers, logits for the
        classifier). ``"probabilities"``: the network's softmax output
        (``layer`` and ``temperature`` are unused).

    labels : array-like of shape (n_classes,), default=None
        The label vector :math:`g` of the loss: a probability vector over
        the model's classes (non-negative, summing to one); None means
        uniform :math:`1 / P`.

    batch_size : int, default=32
        Number of samples per network run. Results do not depend on it.

    providers : list of str or (str, dict), default=None
        onnxruntime execution providers; None means CUDA when available,
        else CPU. A provider that is not available is an error.

    allow_tf32 : bool, default=False
        On the CUDA execution provider, let convolutions and matrix products
        run in TF32 (10 significant bits). Faster on recent NVIDIA GPUs, but
        inexact: unit-norm features differ from fp32 in their third
        significant digit (the benchmarks page gives the measurements).

    n_jobs : int, default=None
        Threads decoding images ahead of the network (image input only);
        None means up to 4, -1 all CPUs, -2 all but one.

    progress : bool, default=False
        Show a progress bar while transforming, when standard error is a
        terminal.

    cache_dir : str or path-like, default=None
        Where registered models are downloaded to; None means the
        ``SKFISHING_CACHE_DIR`` environment variable, else the user cache.

    preprocessing : ImagePreprocessing, default=None
        How images become network input; it takes precedence over every
        other source. None means the model's own: the preprocessing it was
        registered with, else for an ONNX file ``net.onnx`` the JSON file
        ``net.json`` beside it, else the model's ONNX metadata (see
        :func:`skfishing.registry.resolve_model`). A model without any takes
        only preprocessed arrays.

    memory : str, path-like or FeatureCache, default=None
        Cache each sample's forward pass (the head input, e.g. pool5, and
        the FC pre-activations: all that does not depend on ``layer``,
        ``temperature`` or ``labels``). A folder keeps it on disk too, where
        parallel workers (``GridSearchCV(n_jobs=...)``) and later runs share
        it; a :class:`~skfishing.cache.FeatureCache` is used as it is. None
        caches only in clones (model selection), in memory. The cache never
        changes a result.

    sketch : TensorSketch, default=None
        Return the :class:`~skfishing.TensorSketch` of the features instead
        of the features: a float32 array of ``n_components`` columns per
        sample, for a linear model (``SGDClassifier.partial_fit`` on a
        stream, Dask, Zarr). :meth:`fit` draws its buckets and signs, on a
        copy stored as ``sketch_`` (so :meth:`transform` needs :meth:`fit`
        first). For a layer applied at :math:`T` positions (a convolution,
        a linear layer on tokens), each batch's per-position factors are
        sketched right after the network run and dropped: memory per image
        is ``n_components`` floats whatever :math:`T`
        (:mod:`skfishing.sketched`). The result equals
        ``sketch_.transform`` of the features without it. None returns the
        features.

    Attributes
    ----------
    layer_ : int
        The resolved layer number.

    model_sha256_ : str
        SHA-256 of the model file (and of its external data files, if any)
        or of the serialized ModelProto, seen by :meth:`fit`.
        :meth:`transform` refuses to run if the model found at that name or
        path has changed since, so a fitted pipeline never silently computes
        features with other weights.

    feature_source_ : dict
        Where the features come from: ``model_sha256``, ``layer``,
        ``temperature`` and, when given, ``labels`` (the provenance that
        gradient features carry in their dtype, see
        :func:`skfishing.features.gradient_dtype`).

    feature_widths_ : tuple of int
        Widths of the output: ``(d, D)`` of the fields ``"forward"`` and
        ``"backward"`` for gradient features, ``(n_features,)`` otherwise.

    n_features_in_ : int
        Number of input features, when fitted on 2-D (tabular) input.

    sketch_ : TensorSketch or None
        The fitted copy of ``sketch`` (None without one).

    See Also
    --------
    TraceKernelSVC : Support vector classifier on gradient features.
    trace_kernel : Kernel between factorized gradient features.

    References
    ----------
    A. Gordo, A. Gaidon and F. Perronnin, "Deep Fishing: Gradient Features
    from Deep Nets", BMVC 2015.

    Examples
    --------
    >>> import numpy as np
    >>> from skfishing import DeepFisherTransformer
    >>> images = np.zeros((2, 32, 32, 3), dtype=np.uint8)
    >>> fish = DeepFisherTransformer("tinyalexnet", layer=7)
    >>> Z = fish.transform(images)
    >>> Z.dtype.names
    ('forward', 'backward')
    """

    _parameter_constraints = {
        "model": [str, os.PathLike, onnx.ModelProto],
        "layer": [Interval(Integral, None, None, closed="neither"), str],
        "temperature": TEMPERATURE_RANGE,
        "features": [StrOptions({"gradient", "activation", "probabilities"})],
        "labels": ["array-like", None],
        "batch_size": BATCH_SIZE,
        "providers": [list, tuple, None],
        "allow_tf32": ["boolean"],
        "n_jobs": N_JOBS,
        "progress": ["boolean"],
        "cache_dir": [str, os.PathLike, None],
        "memory": [str, os.PathLike, FeatureCache, None],
        "preprocessing": [ImagePreprocessing, None],
        "sketch": [TensorSketch, None],
    }

    def __init__(
        self,
        model="tinyalexnet",
        layer=7,
        temperature=2.0,
        features="gradient",
        *,
        labels=None,
        batch_size=32,
        providers=None,
        allow_tf32=False,
        n_jobs=None,
        progress=False,
        cache_dir=None,
        memory=None,
        preprocessing=None,
        sketch=None,
    ):
        self.model = model
        self.layer = layer
        self.temperature = temperature
        self.features = features
        self.labels = labels
        self.batch_size = batch_size
        self.providers = providers
        self.allow_tf32 = allow_tf32
        self.n_jobs = n_jobs
        self.progress = progress
        self.cache_dir = cache_dir
        self.memory = memory
        self.preprocessing = preprocessing
        self.sketch = sketch

    # -- fit ----------------------------------------------------------------

    def fit(self, X, y=None):
        """Check the parameters and the input, and record the model's content.

        Parameters
        ----------
        X : array-like or sequence of images
            Samples: images (file paths, PIL images, uint8 arrays) for image
            models, or network inputs already preprocessed (float array of
            shape ``(n_samples, *input_shape)``).
        y : None
            Ignored.

        Returns
        -------
        self : DeepFisherTransformer
        """
        X, network, preprocessing = self._fit(X)
        iter_batches(X, network.input_shape, preprocessing, batch_size=self.batch_size)
        return self

    def fit_transform(self, X, y=None):
        """Fit, then compute the features of ``X``.

        The same as ``fit(X).transform(X)``, with ``X`` checked once.

        Parameters
        ----------
        X : array-like or sequence of images
            As in :meth:`fit`.
        y : None
            Ignored.

        Returns
        -------
        Z : ndarray
            As in :meth:`transform`.
        """
        X, _, _ = self._fit(X)
        return self.transform(X)

    def _fit(self, X):
        self._validate_params()
        network, preprocessing = self._network()
        spec = self._trunk_layer(network)
        self._check_labels(network)
        self.model_sha256_ = network.sha256
        if spec is not None:  # a layer of the trunk (skfishing.vjp)
            self.layer_ = spec.name
            self.feature_widths_ = (spec.d_in, spec.d_out)
        else:
            outputs = self._outputs(network)
            self.layer_ = outputs[-1].layer
            self.feature_widths_ = tuple(network.head.width(t) for t in outputs)
        self.feature_source_ = make_source(network.sha256, self.layer_, self.temperature, self.labels)
        self.sketch_ = fit_sketch(self.sketch, self.feature_widths_)
        if self.memory is not None:
            self._cache()  # a memory= folder that cannot be written fails here
        X = self._check_tabular(X, network, preprocessing, reset=True)
        return X, network, preprocessing

    # -- transform ----------------------------------------------------------

    def transform(self, X):
        """Compute the features of ``X``.

        Parameters
        ----------
        X : array-like or sequence of images
            As in :meth:`fit`.

        Returns
        -------
        Z : ndarray
            For ``features="gradient"`` a structured array of shape
            ``(n_samples,)`` with float32 fields ``"forward"`` and
            ``"backward"``, each row of unit L2 norm; row ``i`` stands for
            ``outer(Z["forward"][i], Z["backward"][i])``, the normalised
            :math:`\\partial E / \\partial W_{layer}` of sample ``i`` up to a
            global sign. Otherwise a float32 array of shape
            ``(n_samples, n_features)`` with rows of unit L2 norm
            (probabilities are returned as they are). With ``sketch``, a
            float32 array of shape ``(n_samples, n_components)``: the sketch
            of those features.

            A factor that is zero (every ReLU of a layer off, or labels
            equal to the softmax output) has no direction: its row is
            returned as zeros, so the gradient is the zero matrix and its
            trace kernel with any sample is 0, and a ``RuntimeWarning``
            names the samples and the layer.

        Raises
        ------
        ValueError
            If the input or a sample is bad (the message names the sample),
            a sample's features are not finite, or the model changed since
            :meth:`fit`.

        Notes
        -----
        An image that cannot be read stops the call, naming it: a
        transformer returns one row per sample (what a ``Pipeline`` and the
        labels rely on), so it never drops one. To go on past unreadable
        files in a long extraction, use ``skfishing extract --skip-bad``,
        which lists them in its output and resumes where it stopped (see
        the user guide's page on features on disk).
        """
        self._validate_params()
        fitted_sketch(self)  # a sketch needs fit: say so before any work
        network, preprocessing = self._network()
        if hasattr(self, "model_sha256_") and network.sha256 != self.model_sha256_:
            raise ValueError(
                f"the model {self.model!r} has changed since this transformer was fitted "
                f"(sha256 {self.model_sha256_[:12]}... at fit, {network.sha256[:12]}... now); "
                "restore the original model file or fit again"
            )
        spec = self._trunk_layer(network)
        outputs = self._outputs(network) if spec is None else None
        labels = self._check_labels(network)
        X = self._check_input(X, network, preprocessing)
        if spec is not None:
            return self._transform_layer(network, preprocessing, X, spec, labels)
        writer = _Writer(self, network, outputs)
        cache, disk = self._cache()
        if cache is None:
            self._run(network, preprocessing, X, outputs, labels, writer)
        else:
            self._run_cached(cache, disk, network, preprocessing, X, outputs, labels, writer)
        return sketch_rows(writer.finish(), fitted_sketch(self))

    def _network(self):
        from .network import get_network  # onnxruntime: imported on first use (it is an extra)

        resolved = resolve_model(self.model, cache_dir=self.cache_dir, preprocessing=self.preprocessing)
        network = get_network(resolved.source, self.providers, allow_tf32=self.allow_tf32)
        return network, resolved.preprocessing

    def _outputs(self, network):
        """The tensors (:class:`~skfishing.head.Tensor`) holding the requested features."""
        head = network.head
        layer = self.layer
        if isinstance(layer, str) and self.features != "probabilities":
            names = {fc.name: fc.number for fc in head.layers}
            if layer not in names:
                raise ValueError(f"model has no FC layer named {layer!r}; its layers are:\n{head.describe()}")
            layer = names[layer]
        return head.features(self.features, layer)

    def _trunk_layer(self, network):
        """The :class:`~skfishing.vjp.LayerSpec` of a ``layer`` named outside the FC head, else None."""
        from .vjp import find_layer

        layer = self.layer
        if not isinstance(layer, str) or self.features != "gradient":
            return None
        if layer in {fc.name for fc in network.head.layers}:
            return None
        shape = network.input_shape if None not in network.input_shape else None
        try:
            return find_layer(network._model, layer, shape)
        except ValueError as exc:
            raise ValueError(
                f"model has no FC layer named {layer!r}; its layers are:\n{network.head.describe()}\n"
                f"and no other layer of that name: {exc}"
            ) from None

    def _transform_layer(self, network, preprocessing, X, spec, labels):
        """Gradient features of a layer outside the FC head, without the feature cache."""
        source = make_source(network.sha256, spec.name, self.temperature, self.labels)
        _, batches = self._batches(X, network, preprocessing)
        parts, start = [], 0
        for batch in batches:
            forward, backward = network.run_layer(
                batch, spec.name, temperature=self.temperature, labels=labels
            )
            parts.append(layer_rows(forward, backward, source, start, fitted_sketch(self)))
            start += len(batch)
        return np.concatenate(parts)

    def _check_labels(self, network):
        return None if self.labels is None else check_labels(self.labels, network.head.n_classes)

    def _cache(self):
        """The feature cache and disk store to use, or (None, None) for a one-off run."""
        memory = self.memory
        if isinstance(memory, FeatureCache):
            if memory.disk is not None:
                memory.disk.check_writable()
            return memory, memory.disk
        if memory is None and shared_cache(self) is None:
            return None, None
        disk = None
        if memory is not None:
            disk = DiskStore(memory)
            disk.check_writable()
        return self._own_cache(), disk

    def _make_cache(self, max_bytes=None):
        return FeatureCache(max_bytes=max_bytes or 1 << 30)

    def _check_tabular(self, X, network, preprocessing, *, reset):
        """Validate 2-D input of networks that take feature vectors.

        Such input gets scikit-learn's own checks (and ``n_features_in_``);
        images and image tensors are checked by :func:`~skfishing.batches.iter_batches`.
        """
        if preprocessing is not None or len(network.input_shape) != 1:
            return X
        return validate_data(self, X, reset=reset, dtype=[np.float32, np.float64])

    def _check_input(self, X, network, preprocessing):
        X = self._check_tabular(X, network, preprocessing, reset=False)
        if preprocessing is not None:
            X = from_frame(X)  # a one-column DataFrame of images: its values, not its column names
        if isinstance(X, (list, tuple)) or (
            not isinstance(X, (np.ndarray, str, bytes, os.PathLike, Image.Image)) and hasattr(X, "__iter__")
        ):
            X = list(X)
        if not isinstance(X, (np.ndarray, list)):  # a path, an image, None...: say what is wrong
            iter_batches(X, network.input_shape, preprocessing)
        return X

    def _batches(self, X, network, preprocessing, skip=None):
        return iter_batches(
            X,
            network.input_shape,
            preprocessing,
            batch_size=self.batch_size,
            dtype=network.input_dtype,
            n_jobs=self.n_jobs,
            progress=self.progress,
            desc="gradient features" if self.features == "gradient" else self.features,
            skip=skip,
            check_finite=False,  # the network checks: see _check_input_sums
        )

    def _run(self, network, preprocessing, X, outputs, labels, writer):
        """One network run per batch, from the input to the features.

        The next batch runs on the device while the host writes the last one.
        """
        network.prepare(outputs)
        n_samples, batches = self._batches(X, network, preprocessing)
        writer.allocate(n_samples)
        options = dict(temperature=self.temperature, labels=labels)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="skfishing-run") as runner:
            pending = deque()
            start = 0
            for batch in batches:
                rows = np.arange(start, start + len(batch))
                pending.append((rows, batch, runner.submit(network.run, batch, outputs, **options)))
                start += len(batch)
                if len(pending) > 1:
                    self._write(writer, *pending.popleft())
            while pending:
                self._write(writer, *pending.popleft())

    def _write(self, writer, rows, batch, future):
        values, input_sum = future.result()
        _check_input_sums(input_sum, batch, rows)
        writer.write(rows, values, batch)

    def _run_cached(self, cache, disk, network, preprocessing, X, outputs, labels, writer):
        """Features from cached states and head outputs; the network runs on misses only."""
        # The providers and their options (TF32 or not) are part of the key:
        # entries computed on one provider are never returned for another.
        context = (
            f"{network.sha256}|{network.providers!r}|{preprocessing!r}|"
            f"{np.dtype(network.input_dtype).str}|{network.input_shape}"
        )
        keys = cache.sample_keys(X, context)
        labels_id = None if labels is None else labels.tobytes().hex()
        output_keys = derived_keys(
            keys, f"{[t.name for t in outputs]}|{float(self.temperature)!r}|{labels_id}"
        )
        n_samples = len(keys)
        writer.allocate(n_samples)
        # the finished (checked, normalised) rows are kept: a hit is a copy
        stored = [None if k is None else cache.outputs.get(k) for k in output_keys]
        hits = np.array([i for i, row in enumerate(stored) if row is not None], dtype=np.intp)
        if len(hits):
            writer.copy(hits, np.stack([stored[i] for i in hits]))

        todo = [i for i, row in enumerate(stored) if row is None]
        width = network.state_width
        states = {}
        for i in todo:
            row = None if keys[i] is None else cache.states.get(keys[i])
            if row is None and keys[i] is not None and disk is not None:
                row = disk.get(keys[i], network.dtype, (width,))
                if row is not None:
                    cache.states.put(keys[i], row)
            if row is not None:
                states[i] = row
        missing = [i for i in todo if i not in states]
        skip = np.ones(n_samples, dtype=bool)
        skip[missing] = False
        _, batches = self._batches(X, network, preprocessing, skip=skip)
        computed = _computed_states(network, batches, missing, keys, cache, disk)
        options = dict(temperature=self.temperature, labels=labels)
        for rows in _chunks(todo, self.batch_size):
            rows = np.asarray(rows)
            state_rows = np.stack([states[i] if i in states else next(computed) for i in rows])
            values = network.run_from_state(state_rows, outputs, **options)
            writer.write(rows, values, None)
            for i, row in zip(rows, writer.written(rows)):
                if output_keys[i] is not None:
                    cache.outputs.put(output_keys[i], row)

    # -- scikit-learn API ---------------------------------------------------

    @available_if(_not_gradient)
    def get_feature_names_out(self, input_features=None):
        """Names of the output columns, after the layer: ``x7_0``, ``x7_1``, ...

        Activations are named ``x{k}_{i}`` (``y{k}_{i}`` for the logits),
        probabilities ``prob{k}_{i}``, sketched features as the sketch names
        them (``tensorsketch0``, ...). Gradient features have no columns: a
        structured array has two fields, ``"forward"`` and ``"backward"``,
        so without ``sketch`` this method does not exist for them and
        ``set_output`` leaves them as they are.

        Parameters
        ----------
        input_features : array-like of str, default=None
            Checked against the input feature names seen in :meth:`fit`, if
            any; unused otherwise.

        Returns
        -------
        names : ndarray of str objects
        """
        if hasattr(self, "n_features_in_"):
            _check_feature_names_in(self, input_features, generate_names=False)
        if self.sketch is not None:
            return fitted_sketch(self).get_feature_names_out()
        network, _ = self._network()
        (tensor,) = self._outputs(network)
        prefix = f"{tensor.kind}{tensor.layer}"
        return np.asarray([f"{prefix}_{i}" for i in range(network.head.width(tensor))], dtype=object)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = self.sketch is not None
        tags.non_deterministic = False
        tags.input_tags.two_d_array = True
        tags.input_tags.allow_nan = False
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags


def _chunks(rows, size):
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def _computed_states(network, batches, rows, keys, cache, disk):
    """States of ``rows`` in order, from the network batch by batch, stored as they come."""
    done = 0
    for batch in batches:
        batch_rows = np.asarray(rows[done : done + len(batch)])
        done += len(batch)
        state_rows, input_sum = network.run_state(batch)
        _check_input_sums(input_sum, batch, batch_rows)
        for i, row in zip(batch_rows, state_rows):
            if keys[i] is not None:
                cache.states.put(keys[i], row)
                if disk is not None:
                    disk.put(keys[i], row)
        yield from state_rows


def _check_input_sums(input_sum, batch, rows):
    """Name the first sample whose network input is not finite.

    ``input_sum`` (one value per sample, summed on the device) is finite
    unless the sample holds NaN or infinity or its sum overflows; only
    those samples are checked on the host.
    """
    if input_sum is None:
        return
    for i in np.flatnonzero(~np.isfinite(input_sum)):
        if not np.isfinite(batch[i]).all():
            what = "NaN" if np.isnan(batch[i]).any() else "infinity"
            raise ValueError(
                f"X contains {what} in sample {rows[i]} (after casting to {batch.dtype}); "
                "the network input must be finite."
            )


class _Writer:
    """Checks, normalises and writes batches of features into the result."""

    def __init__(self, transformer, network, outputs):
        self.kind = transformer.features
        self.outputs = outputs
        self.widths = [network.head.width(t) for t in outputs]
        self.temperature = transformer.temperature
        self.source = None
        if self.kind == "gradient":
            self.source = make_source(
                network.sha256, outputs[1].layer, transformer.temperature, transformer.labels
            )
        self.result = None

    def allocate(self, n_samples):
        if self.kind == "gradient":
            self.result = np.empty(n_samples, dtype=gradient_dtype(*self.widths, self.source))
            self._fields = [self.result["forward"], self.result["backward"]]
        else:
            self.result = np.empty((n_samples, self.widths[0]), dtype=np.float32)
            self._fields = [self.result]
        self._zero = {}  # tensor -> rows whose factor is zero

    def finish(self):
        """The result, after a warning naming the samples whose factor is zero."""
        for tensor, rows in self._zero.items():
            rows = np.unique(rows)
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
                stacklevel=4,  # finish, transform, scikit-learn's set_output wrapper, the caller
            )
        return self.result

    def write(self, rows, values, batch):
        for tensor, field, value in zip(self.outputs, self._fields, values):
            if self.kind == "probabilities":
                self._check_finite(tensor, rows, value, np.isfinite(value).all(axis=1), batch)
                field[rows] = value
                continue
            block = value.astype(np.float64)
            norms = np.sqrt(np.einsum("ij,ij->i", block, block))
            # float32 values cannot overflow float64 squares: the norm is finite iff the row is
            self._check_finite(tensor, rows, value, np.isfinite(norms), batch)
            self._note_zero(tensor, rows, norms == 0)
            np.divide(block, norms[:, None], out=block, where=norms[:, None] > 0)
            field[rows] = block

    def _note_zero(self, tensor, rows, zero):
        if self.kind != "probabilities" and zero.any():
            self._zero.setdefault(tensor, []).extend(np.asarray(rows)[zero].tolist())

    def written(self, rows):
        """The finished rows ``rows``, all fields side by side (float32), for a cache."""
        return np.concatenate([field[rows] for field in self._fields], axis=1)

    def copy(self, rows, joined):
        """Write finished rows given as :meth:`written` returns them."""
        start = 0
        for tensor, field, width in zip(self.outputs, self._fields, self.widths):
            field[rows] = joined[:, start : start + width]
            self._note_zero(tensor, rows, ~joined[:, start : start + width].any(axis=1))
            start += width

    def _check_finite(self, tensor, rows, value, finite, batch):
        if finite.all():
            return
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
