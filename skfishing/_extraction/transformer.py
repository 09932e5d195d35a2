"""DeepFisherTransformer: gradient features of a pretrained network."""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from numbers import Integral
from typing import NamedTuple

import numpy as np
import onnx
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils._available_if import available_if
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import _check_feature_names_in, validate_data

from .._kernels.sketch import TensorSketch
from .._onnx.graph import TEMPERATURE_RANGE, check_labels
from ..cache import DiskStore, FeatureCache, SharedCacheMixin, shared_cache
from ..features import make_source
from ..registry import resolve_model
from .batches import BATCH_SIZE, N_JOBS, check_input, check_input_sums
from .cache_lookup import CacheLookup
from .feature_writer import FeatureWriter
from .images import ImagePreprocessing
from .lanes import in_lanes, lanes_for
from .sketched import fit_sketch, fitted_sketch, layer_rows, sketch_rows

__all__ = ["DeepFisherTransformer"]


def _not_gradient(transformer):
    return transformer.features != "gradient" or transformer.sketch is not None


class _Plan(NamedTuple):
    """What :meth:`DeepFisherTransformer._check` resolved: how the network runs."""

    preprocessing: object  # ImagePreprocessing or None
    spec: object  # the LayerSpec of a trunk layer, or None
    outputs: tuple  # the head tensors of an FC layer, or None
    labels: object  # the checked label vector, or None


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
        it is added here (:func:`skfishing.add_backward`).

    layer : int or str, default=7
        FC layer, in the paper's numbering: the classifier is layer 8, the
        FC layer below it 7, and so on (a head of :math:`n` FC layers has
        layers :math:`9 - n` to 8; its input, e.g. AlexNet's pool5, is
        activation :math:`8 - n`). FC layer names from the graph are accepted
        too. With ``features="gradient"``, any other Conv, Gemm or MatMul
        node with a constant weight, named by its node name or its weight's
        name (:func:`skfishing.list_layers` lists them): its
        gradient goes back through the trunk (:mod:`skfishing._onnx.vjp`), and the
        features hold its per-position factors (see
        :mod:`skfishing._onnx.layers`). In model selection the cache keeps, per
        image, the tensors the graph carries past such a layer (its *cut*),
        and every layer after it is computed from them at any temperature,
        without the image (see the user guide's page on the cache).

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
        ``temperature`` or ``labels``; for a layer of the trunk, the
        tensors of the graph's cut at it). A folder keeps it on disk too, where
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
        (:mod:`skfishing._extraction.sketched`). The result equals
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
        self._check(X, fitting=True)
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
        return self._transform(*self._check(X, fitting=True))

    def _check(self, X, *, fitting):
        """Check the parameters, the model and the input once; when fitting, record the fitted attributes.

        Returns the validated input (:class:`~skfishing._extraction.batches.CheckedInput`),
        the network and the :class:`_Plan` that :meth:`_transform` runs.
        """
        self._validate_params()
        network, preprocessing = self._network()
        if not fitting and hasattr(self, "model_sha256_") and network.sha256 != self.model_sha256_:
            raise ValueError(
                f"the model {self.model!r} has changed since this transformer was fitted "
                f"(sha256 {self.model_sha256_[:12]}... at fit, {network.sha256[:12]}... now); "
                "restore the original model file or fit again"
            )
        spec = self._trunk_layer(network)
        outputs = self._outputs(network) if spec is None else None
        labels = self._check_labels(network)
        if fitting:
            self.model_sha256_ = network.sha256
            if spec is not None:  # a layer of the trunk (skfishing._onnx.vjp)
                self.layer_ = spec.name
                self.feature_widths_ = (spec.d_in, spec.d_out)
            else:
                self.layer_ = outputs[-1].layer
                self.feature_widths_ = tuple(network.head.width(t) for t in outputs)
            self.feature_source_ = make_source(network.sha256, self.layer_, self.temperature, self.labels)
            self.sketch_ = fit_sketch(self.sketch, self.feature_widths_)
            if self.memory is not None:
                self._cache()  # a memory= folder that cannot be written fails here
        X = self._check_tabular(X, network, preprocessing, reset=fitting)
        checked = check_input(X, network.input_shape, preprocessing)
        return checked, network, _Plan(preprocessing, spec, outputs, labels)

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
        fitted_sketch(self)  # a sketch needs fit: say so before any work
        checked, network, plan = self._check(X, fitting=False)
        return self._transform(checked, network, plan)

    def _transform(self, checked, network, plan):
        """Run the batches of the checked input, write their features, normalise them."""
        if plan.spec is not None:
            return self._transform_layer(checked, network, plan)
        writer = FeatureWriter.for_transformer(self, network, plan.outputs, len(checked))
        for rows, values, batch in self._head_batches(checked, network, plan):
            writer.write(rows, values, batch)
        return sketch_rows(writer.finish(), fitted_sketch(self))

    def _network(self):
        from .._onnx.network import get_network  # onnxruntime: imported on first use (it is an extra)

        resolved = resolve_model(self.model, cache_dir=self.cache_dir, preprocessing=self.preprocessing)
        network = get_network(resolved.source, self.providers, allow_tf32=self.allow_tf32)
        return network, resolved.preprocessing

    def _outputs(self, network):
        """The tensors (:class:`~skfishing._onnx.head.Tensor`) holding the requested features."""
        head = network.head
        layer = self.layer
        if isinstance(layer, str) and self.features != "probabilities":
            names = {fc.name: fc.number for fc in head.layers}
            if layer not in names:
                raise ValueError(f"model has no FC layer named {layer!r}; its layers are:\n{head.describe()}")
            layer = names[layer]
        return head.features(self.features, layer)

    def _trunk_layer(self, network):
        """The :class:`~skfishing._onnx.vjp.LayerSpec` of a ``layer`` named outside the FC head, else None."""
        from .._onnx.vjp import find_layer

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

    def _transform_layer(self, checked, network, plan):
        """Gradient features of a layer outside the FC head, batch by batch."""
        source = make_source(network.sha256, plan.spec.name, self.temperature, self.labels)
        sketch = fitted_sketch(self)

        def rows_of(rows, forward, backward, threads=None):
            # the one place where a batch of a trunk layer's factors becomes features
            return layer_rows(forward, backward, source, rows[0], sketch, threads=threads)

        features = None
        for rows, part in self._layer_rows(checked, network, plan, rows_of):
            if features is None:  # filled batch by batch: no second copy of all the factors at the end
                features = np.empty((len(checked),) + part.shape[1:], dtype=part.dtype)
            features[rows[0] : rows[-1] + 1] = part  # rows: consecutive samples
        return features

    def _layer_rows(self, checked, network, plan, rows_of):
        """``(rows, features)`` of a trunk layer: from the cache's cuts, in lanes on the CPU, or batch by batch."""
        options = dict(temperature=self.temperature, labels=plan.labels)
        cache, disk = self._cache()
        cut = None if cache is None else network.cut(plan.spec.name, checked.sample_shape)
        if cut is not None:
            lookup = self._lookup(cache, disk, network, checked, plan)
            for rows, forward, backward in lookup.layer_batches(plan.spec.name, cut, **options):
                yield rows, rows_of(rows, forward, backward)
            return
        lanes = lanes_for(network, self.batch_size)
        if lanes > 1:

            def job(rows, part):
                forward, backward = network.run_layer(part, plan.spec.name, threads=1, **options)
                return rows, rows_of(rows, forward, backward, threads=1)

            yield from in_lanes(self._batches(checked, network), job, lanes)
            return
        start = 0
        for batch in self._batches(checked, network):
            forward, backward = network.run_layer(batch, plan.spec.name, **options)
            rows = np.arange(start, start + len(batch))
            yield rows, rows_of(rows, forward, backward)
            start += len(batch)

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
        images and image tensors are checked by :func:`~skfishing._extraction.batches.check_input`.
        """
        if preprocessing is not None or len(network.input_shape) != 1:
            return X
        return validate_data(self, X, reset=reset, dtype=[np.float32, np.float64])

    def _batches(self, checked, network, skip=None):
        return checked.batches(
            batch_size=self.batch_size,
            dtype=network.input_dtype,
            n_jobs=self.n_jobs,
            progress=self.progress,
            desc="gradient features" if self.features == "gradient" else self.features,
            skip=skip,
            check_finite=False,  # the network checks: see check_input_sums
        )

    def _lookup(self, cache, disk, network, checked, plan):
        return CacheLookup(
            cache,
            disk,
            network,
            checked,
            plan.preprocessing,
            lambda skip: self._batches(checked, network, skip),
            self.batch_size,
        )

    def _head_batches(self, checked, network, plan):
        """``(rows, values, batch)``: raw head outputs, from the cache's states or straight from the input."""
        options = dict(temperature=self.temperature, labels=plan.labels)
        cache, disk = self._cache()
        if cache is not None:
            widths = [network.head.width(t) for t in plan.outputs]
            lookup = self._lookup(cache, disk, network, checked, plan)
            yield from lookup.head_batches(plan.outputs, widths, **options)
            return
        # one network run per batch; the next batch runs on the device while the host writes the last
        network.prepare(plan.outputs)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="skfishing-run") as runner:
            pending = deque()
            start = 0
            for batch in self._batches(checked, network):
                rows = np.arange(start, start + len(batch))
                pending.append((rows, batch, runner.submit(network.run, batch, plan.outputs, **options)))
                start += len(batch)
                if len(pending) > 1:
                    yield _finished(*pending.popleft())
            while pending:
                yield _finished(*pending.popleft())

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


def _finished(rows, batch, future):
    values, input_sum = future.result()
    check_input_sums(input_sum, batch, rows)
    return rows, values, batch
