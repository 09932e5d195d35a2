"""DeepFisherTransformer: gradient features of a pretrained network."""

from __future__ import annotations

import os
from numbers import Integral, Real

import numpy as np
import onnx
from PIL import Image
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from .cache import backward_cache, derived_keys, forward_cache, sample_keys
from .batches import iter_batches
from .features import gradient_dtype
from .network import get_network
from .registry import resolve_model

__all__ = ["DeepFisherTransformer"]


def _l2_normalize(rows, out=None):
    """Rows scaled to unit L2 norm, in float32; all-zero rows stay zero.

    The arithmetic is in float64, a block of rows at a time (no full-size
    float64 temporary).
    """
    rows = np.asarray(rows)
    if out is None:
        out = np.empty(rows.shape, dtype=np.float32)
    step = max(1, (1 << 20) // max(1, rows.shape[1]))  # blocks of about 8 MB in float64
    for start in range(0, len(rows), step):
        block = rows[start : start + step].astype(np.float64)
        norms = np.sqrt(np.einsum("ij,ij->i", block, block))[:, None]
        np.divide(block, norms, out=block, where=norms > 0)
        out[start : start + step] = block
    return out


def _check_cache_folder(folder):
    """Create the ``memory=`` folder before the network runs, or say why not."""
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise type(exc)(
            f"DeepFisherTransformer(memory={os.fspath(folder)!r}): cannot create the forward-cache "
            f"folder: {exc.strerror or exc}; pass a writable folder or memory=None"
        ) from exc


class DeepFisherTransformer(TransformerMixin, BaseEstimator):
    """Deep Fishing gradient features of a pretrained classification network.

    For every sample, the network is run forward; the gradient of the
    cross-entropy between its tempered softmax output and a label vector
    ``g`` (uniform by default) is back-propagated through the fully
    connected (FC) head. The gradient with respect to the weights of FC
    layer ``k`` is the rank-1 matrix ``x_{k-1} delta_k^T`` (Gordo et al.,
    BMVC 2015, Eq. 10); it is returned factorized, as its two L2-normalised
    factors, and compared with :func:`skfishing.trace_kernel`.

    The transformer is stateless: :meth:`fit` only validates parameters and
    input. Networks are built once per model and execution providers and
    shared between clones.

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
        FC layer below it 7, and so on (a head of ``n`` FC layers has layers
        ``9 - n`` to ``8``; its input, e.g. AlexNet's pool5, is activation
        ``8 - n``). FC layer names from the graph are accepted too.

    temperature : float, default=2.0
        Softmax temperature ``tau`` of the loss (the paper uses 2).

    features : {"gradient", "activation", "probabilities"}, default="gradient"
        ``"gradient"``: factorized ``dE/dW_layer`` as a structured array.
        ``"activation"``: the 2-D array ``x_layer`` (the head input for the
        activation below the first FC layer, ReLU outputs for hidden FC
        layers, logits for the classifier). ``"probabilities"``: the
        network's softmax output (``layer`` and ``temperature`` are unused).

    labels : array-like of shape (n_classes,), default=None
        The label vector ``g`` of the loss; None means uniform ``1 / P``.

    batch_size : int, default=32
        Number of samples per network run. Results do not depend on it.

    providers : list of str, default=None
        onnxruntime execution providers; None means CUDA when available,
        else CPU.

    n_jobs : int, default=None
        Threads decoding images ahead of the network (image input only).

    progress : bool, default=False
        Show a progress bar while transforming.

    cache_dir : str or path-like, default=None
        Where registered models are downloaded to; None means the
        ``SKFISHING_CACHE_DIR`` environment variable, else the user cache.

    memory : str or path-like, default=None
        Directory where each sample's forward pass (the head input, e.g.
        pool5, and the FC pre-activations: all that does not depend on
        ``layer``, ``temperature`` or ``labels``) is cached on disk, so that
        parallel workers (``GridSearchCV(n_jobs=...)``) and later runs share
        it. It is always cached in memory too (see :mod:`skfishing.cache`);
        the cache never changes a result.

    Attributes
    ----------
    layer_ : int
        The resolved layer number.

    model_sha256_ : str
        SHA-256 of the model file (or serialized ModelProto) seen by
        :meth:`fit`. :meth:`transform` refuses to run if the model found at
        that name or path has changed since, so a fitted pipeline never
        silently computes features with other weights.

    n_features_in_ : int
        Number of input features, when fitted on 2-D (tabular) input.

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
    >>> Z = DeepFisherTransformer("tinyalexnet", layer=7).fit_transform(images)
    >>> Z.dtype.names
    ('forward', 'backward')
    """

    _parameter_constraints = {
        "model": [str, os.PathLike, onnx.ModelProto],
        "layer": [Interval(Integral, None, None, closed="neither"), str],
        "temperature": [Interval(Real, 0, None, closed="neither")],
        "features": [StrOptions({"gradient", "activation", "probabilities"})],
        "labels": ["array-like", None],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "providers": [list, tuple, None],
        "n_jobs": [Interval(Integral, 1, None, closed="left"), None],
        "progress": ["boolean"],
        "cache_dir": [str, os.PathLike, None],
        "memory": [str, os.PathLike, None],
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
        n_jobs=None,
        progress=False,
        cache_dir=None,
        memory=None,
    ):
        self.model = model
        self.layer = layer
        self.temperature = temperature
        self.features = features
        self.labels = labels
        self.batch_size = batch_size
        self.providers = providers
        self.n_jobs = n_jobs
        self.progress = progress
        self.cache_dir = cache_dir
        self.memory = memory

    def _network(self):
        resolved = resolve_model(self.model, cache_dir=self.cache_dir)
        return get_network(resolved.source, self.providers), resolved.preprocessing

    def _resolve_layer(self, network):
        """The layer number and the head outputs to read for it."""
        head = network.head
        if self.features == "probabilities":
            return head.layers[-1].number, ["probabilities"]
        layer = self.layer
        if isinstance(layer, str):
            names = {fc.name: fc.number for fc in head.layers}
            if layer not in names:
                raise ValueError(f"model has no FC layer named {layer!r}; its layers are:\n{head.describe()}")
            layer = names[layer]
        kind = "backward" if self.features == "gradient" else "activation"
        if layer not in network.layer_numbers(kind):
            raise ValueError(
                f"layer={self.layer!r} does not exist for features={self.features!r} in this "
                f"model (valid: {network.layer_numbers(kind)}); its layers are:\n{head.describe()}"
            )
        if kind == "backward":
            return layer, [("forward", layer), ("backward", layer)]
        return layer, [("activation", layer)]

    def _check_labels(self, network):
        if self.labels is None:
            return None
        labels = np.asarray(self.labels, dtype=np.float64)
        if labels.shape != (network.head.n_classes,):
            raise ValueError(
                f"labels must have shape ({network.head.n_classes},), one value per "
                f"class of the model, got shape {labels.shape}"
            )
        if not np.isfinite(labels).all():
            raise ValueError("labels contains NaN or infinity")
        return labels

    def fit(self, X, y=None):
        """Check parameters and input; no learning happens.

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

        The same as ``fit(X).transform(X)``, but ``X`` is validated once:
        samples whose forward pass is cached are not checked again (they
        were checked when first computed), which matters in a grid search.

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
        """Check the parameters and set the fitted attributes."""
        self._validate_params()
        network, preprocessing = self._network()
        self.layer_, _ = self._resolve_layer(network)
        self.model_sha256_ = network.sha256
        self._check_labels(network)
        X = self._check_tabular(X, network, preprocessing, reset=True)
        return X, network, preprocessing

    def _check_tabular(self, X, network, preprocessing, *, reset):
        """Validate 2-D input of networks that take feature vectors.

        Such input gets scikit-learn's own checks (and ``n_features_in_``);
        images and image tensors are checked by :func:`~skfishing.images.iter_batches`.
        """
        if preprocessing is not None or len(network.input_shape) != 1:
            return X
        return validate_data(self, X, reset=reset, dtype=[np.float32, np.float64])

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
            ``dE/dW_layer`` of sample ``i`` up to a global sign. Otherwise a
            float32 array of shape ``(n_samples, n_features)`` with rows of
            unit L2 norm (probabilities are returned as they are).
        """
        check_is_fitted(self)
        network, preprocessing = self._network()
        if network.sha256 != self.model_sha256_:
            raise ValueError(
                f"the model {self.model!r} has changed since this transformer was fitted "
                f"(sha256 {self.model_sha256_[:12]}... at fit, {network.sha256[:12]}... now); "
                "restore the original model file or fit again"
            )
        layer, keys = self._resolve_layer(network)
        labels = self._check_labels(network)
        X = self._check_tabular(X, network, preprocessing, reset=False)
        if isinstance(X, (list, tuple)) or (
            not isinstance(X, (np.ndarray, str, bytes, os.PathLike, Image.Image)) and hasattr(X, "__iter__")
        ):
            X = list(X)
        if self.memory is not None:
            _check_cache_folder(self.memory)
        if not isinstance(X, (np.ndarray, list)):  # a path, an image, None...: say what is wrong
            iter_batches(X, network.input_shape, preprocessing)
        n_samples, blocks = self._run(network, preprocessing, X, keys, labels)
        if self.features == "probabilities":
            return blocks[0].astype(np.float32)
        if self.features == "activation":
            return _l2_normalize(blocks[0])
        forward, backward = blocks
        source = {"model_sha256": network.sha256, "layer": layer, "temperature": float(self.temperature)}
        if self.labels is not None:
            source["labels"] = tuple(float(v) for v in np.ravel(self.labels))
        Z = np.empty(n_samples, dtype=gradient_dtype(forward.shape[1], backward.shape[1], source))
        _l2_normalize(forward, out=Z["forward"])
        _l2_normalize(backward, out=Z["backward"])
        return Z

    def _run(self, network, preprocessing, X, keys, labels):
        """Features of every sample; the network runs on cache misses only.

        Returns the number of samples and one array per key.
        """
        context = f"{network.key}|{preprocessing!r}|{np.dtype(network.dtype).str}|{network.input_shape}"
        cache_keys = sample_keys(X, context)
        states = [None if key is None else forward_cache.get(key, self.memory) for key in cache_keys]
        hits = np.array([state is not None for state in states], dtype=bool)
        n_samples, batches = iter_batches(
            X,
            network.input_shape,
            preprocessing,
            batch_size=self.batch_size,
            dtype=network.dtype,
            n_jobs=self.n_jobs,
            progress=self.progress,
            desc="network forward pass",
            skip=hits if len(hits) else None,
        )
        blocks = [None] * len(keys)
        # The backward pass of a sample is kept too, under its own key: the
        # folds of a cross-validation see each sample several times.
        b = next((j for j, key in enumerate(keys) if isinstance(key, tuple) and key[0] == "backward"), None)
        if b is not None:
            labels_id = None if labels is None else labels.tobytes().hex()
            delta_keys = derived_keys(cache_keys, f"{keys[b]}|{float(self.temperature)!r}|{labels_id}")
        rest = [key for j, key in enumerate(keys) if j != b]

        def head(rows, state):
            outputs = network.features(state, rest, temperature=self.temperature, labels=labels)
            if b is not None:
                row_keys = [delta_keys[i] for i in rows]
                outputs.insert(b, self._backward_rows(network, state, row_keys, keys[b], labels))
            for j, output in enumerate(outputs):
                if blocks[j] is None:
                    blocks[j] = np.empty((n_samples, output.shape[1]), dtype=output.dtype)
                blocks[j][rows] = output

        hit_rows = np.flatnonzero(hits)
        for start in range(0, len(hit_rows), self.batch_size):
            rows = hit_rows[start : start + self.batch_size]
            head(rows, np.stack([states[i] for i in rows]))
        miss_rows = np.flatnonzero(~hits)
        if len(miss_rows):
            done = 0
            for batch in batches:
                rows = miss_rows[done : done + len(batch)]
                done += len(batch)
                state = network.run_forward(batch)
                for i, row in zip(rows, state):
                    if cache_keys[i] is not None:
                        forward_cache.put(cache_keys[i], row, self.memory)
                head(rows, state)
        return n_samples, blocks

    def _backward_rows(self, network, state, row_keys, key, labels):
        """Backward rows of a batch: from :data:`backward_cache` where kept,
        else computed from ``state`` and kept under ``row_keys``."""
        deltas = [None if k is None else backward_cache.get(k) for k in row_keys]
        todo = [j for j, delta in enumerate(deltas) if delta is None]
        if todo:
            part = state if len(todo) == len(deltas) else state[todo]
            computed = network.features(part, [key], temperature=self.temperature, labels=labels)[0]
            for j, row in zip(todo, computed):
                deltas[j] = row
                if row_keys[j] is not None:
                    backward_cache.put(row_keys[j], row)
        return np.stack(deltas)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = True
        tags.non_deterministic = False
        tags.input_tags.two_d_array = True
        tags.input_tags.allow_nan = False
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags
