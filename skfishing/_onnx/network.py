"""Run a classifier's trunk and its FC head's backward pass on onnxruntime.

A :class:`FisherNetwork` holds the onnxruntime sessions of one classifier on
one set of execution providers. It runs the graphs of
:mod:`skfishing._onnx.graph` in three ways:

* :meth:`FisherNetwork.run`: network input → the requested features, in one
  session run per batch; nothing but the features (and one sum per sample,
  to check the input) comes back to the host;
* :meth:`FisherNetwork.run_state`: network input → the *state* of each
  sample (the head input and every pre-activation), what a cache keeps;
* :meth:`FisherNetwork.run_from_state`: state → the requested features.

Sessions are built on first use. On the CUDA execution provider, TF32 math
is off unless ``allow_tf32=True``: onnxruntime turns it on by default, and
it changes unit-norm features in their third significant digit (the
measurements are on the :ref:`benchmarks page <benchmarks>`).

:func:`get_network` builds a network once per model content, providers and
TF32 setting, and keeps a few in :mod:`skfishing.state`, so that cloning an
estimator (``GridSearchCV`` clones a lot) never rebuilds a graph or reloads
weights.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import shutil
import sys
import tempfile
import threading
import warnings

import numpy as np
import onnx
from onnx import helper
from sklearn.utils._param_validation import validate_params

from .. import state
from . import model_files
from .graph import LABELS, TEMPERATURE, build_model, network_input
from .head import HeadStructureError, find_fc_head

try:
    import onnxruntime as ort
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        "skfishing runs networks on onnxruntime, which is not installed. Install it with "
        "pip install 'skfishing[cpu]' (CPU) or pip install 'skfishing[gpu]' (NVIDIA CUDA); "
        "see the installation page of the documentation."
    ) from exc

__all__ = [
    "FisherNetwork",
    "default_providers",
    "get_network",
    "session_providers",
]

_CUDA = "CUDAExecutionProvider"


def _installed_onnxruntimes():
    """The onnxruntime distributions installed (they share the module ``onnxruntime``)."""
    from importlib import metadata

    names = []
    for name in ("onnxruntime", "onnxruntime-gpu"):
        try:
            metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        names.append(name)
    return names


def _warn_if_both_installed():
    if len(_installed_onnxruntimes()) > 1:
        warnings.warn(
            "both onnxruntime and onnxruntime-gpu are installed; they install the same module, "
            "so the one installed last wins (available providers now: "
            f"{ort.get_available_providers()}). For the GPU: pip uninstall -y onnxruntime "
            "onnxruntime-gpu && pip install onnxruntime-gpu; for the CPU only: pip uninstall -y "
            "onnxruntime onnxruntime-gpu && pip install onnxruntime",
            RuntimeWarning,
            stacklevel=4,
        )


def default_providers():
    """CUDA execution provider when onnxruntime has it, then CPU.

    Returns
    -------
    providers : list of str
    """
    state.memo(("onnxruntime-installation",), _warn_if_both_installed)
    available = ort.get_available_providers()
    return [p for p in (_CUDA, "CPUExecutionProvider") if p in available]


@validate_params(
    {"providers": [list, tuple, None], "allow_tf32": ["boolean"]}, prefer_skip_nested_validation=True
)
def session_providers(providers=None, *, allow_tf32=False):
    """Execution providers as onnxruntime takes them, exact unless told otherwise.

    Parameters
    ----------
    providers : sequence of str or (str, dict), default=None
        Provider names, or (name, options) pairs, in order of preference;
        None means :func:`default_providers`.
    allow_tf32 : bool, default=False
        Let the CUDA provider compute convolutions and matrix products in
        TF32 (10 significant bits): faster on recent NVIDIA GPUs, but
        unit-norm features then differ from fp32 in their third significant
        digit (see the benchmarks page). Without
        it ``use_tf32=0`` is set, unless the options already say.

    Returns
    -------
    providers : tuple of (str, dict)

    Raises
    ------
    ValueError
        If a provider is not available in the installed onnxruntime.
    """
    if providers is None:
        providers = default_providers()
    available = ort.get_available_providers()
    result = []
    for provider in providers:
        name, options = (provider, {}) if isinstance(provider, str) else (provider[0], dict(provider[1]))
        if name not in available:
            hint = ""
            if name == _CUDA:
                hint = " (for CUDA, install onnxruntime-gpu: pip install 'skfishing[gpu]')"
            raise ValueError(
                f"execution provider {name!r} is not available in this onnxruntime "
                f"{ort.__version__}; available: {available}{hint}"
            )
        if name == _CUDA:
            options.setdefault("use_tf32", "1" if allow_tf32 else "0")
        result.append((name, {key: str(value) for key, value in options.items()}))
    return tuple(result)


def _positions_second(factors):
    """Factors ``(N, d, T)`` as the views ``(N, T, d)`` that callers index; 2-D ones (T = 1) as they are.

    The layer graphs output the positions last (:func:`~skfishing._onnx.vjp.build_layer_model`):
    a convolution's own layout, in which the sketch reads each image's factors
    without a copy; the exact features copy them once, as they did before.
    """
    return [f.transpose(0, 2, 1) if f.ndim == 3 else f for f in factors]


def _session(model, providers, *, spinning=True, threads=None):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # the overridable defaults of tau and g warn
    if threads is not None:
        options.intra_op_num_threads = threads
    if not spinning:
        # Small graphs that run between larger ones, or graphs whose outputs
        # NumPy works on between runs: a thread pool that spin-waits would
        # steal the cores from that work.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    names = [name for name, _ in providers]
    opts = [options_ for _, options_ in providers]
    if names == ["CPUExecutionProvider"]:
        # on the CPU only, there is no fallback: a session read from a file keeps no copy of
        # the serialized model (and its weights) beside its own; one from bytes keeps them to
        # build the session again on a fallback to the CPU
        with _model_file(model) as path:
            if path is not None:
                return ort.InferenceSession(
                    path, sess_options=options, providers=names, provider_options=opts
                )
    return ort.InferenceSession(
        model.SerializeToString(), sess_options=options, providers=names, provider_options=opts
    )


@contextlib.contextmanager
def _model_file(model):
    """A temporary file holding ``model``, removed after; None where none can be written."""
    try:
        folder = tempfile.mkdtemp(prefix="skfishing-")
    except OSError:
        yield None
        return
    path = os.path.join(folder, "model.onnx")
    try:
        try:
            with open(path, "wb") as file:
                file.write(model.SerializeToString())
        except OSError:
            path = None
        yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _release_free_memory():
    """Give the heap that building a session freed back to the system (glibc only).

    Building a graph and a session allocates and frees the weights several
    times in pieces that glibc keeps in its heap; the peak memory of the
    runs that follow is lower without them.
    """
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
            pass


class FisherNetwork:
    """Sessions of one classifier on one set of execution providers.

    Parameters
    ----------
    model : onnx.ModelProto
        A classifier without backward subgraph.
    sha256 : str
        Identity of the model's content (see :func:`~skfishing._onnx.model_files.model_sha256`).
    providers : tuple of (str, dict)
        As returned by :func:`session_providers`.

    Attributes
    ----------
    head : FCHead
        The FC head found in the graph.
    input_name : str
        Name of the network input.
    input_shape : tuple
        Per-sample input shape (None for dynamic dimensions).
    input_dtype : numpy dtype
        Element type of the network input.
    dtype : numpy dtype
        Element type the head computes in.
    sha256 : str
        As given.
    providers : tuple of (str, dict)
        As given.
    """

    @validate_params(
        {"model": [onnx.ModelProto], "sha256": [str], "providers": [tuple, list]},
        prefer_skip_nested_validation=True,
    )
    def __init__(self, model, sha256, providers):
        self.head = find_fc_head(model)
        self.dtype = self.head.dtype
        self.sha256 = sha256
        self.providers = tuple(providers)
        self._model = model
        self._sessions = {}
        self._cuts = {}  # (position or layer, sample shape) -> Cut or None
        self._lock = threading.Lock()
        value_info = network_input(model, self.head)
        self.input_name = value_info.name
        dims = value_info.type.tensor_type.shape.dim
        self.input_shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims[1:])
        self.input_dtype = helper.tensor_dtype_to_np_dtype(value_info.type.tensor_type.elem_type)
        widths = [self.head.width(t) for t in self.head.state()]
        self._state_slices = dict(zip(self.head.state(), _slices(widths)))

    def _session_for(self, key):
        """The session of ``key``: ("features", outputs), ("state",) or ("from_state", outputs)."""

        def build():
            if key[0] == "from_state":
                return build_model(None, self.head, key[1], from_state=True)
            outputs = self.head.state() if key[0] == "state" else key[1]
            return build_model(self._model, self.head, outputs, input_sum=True)

        return self._session_of(key, build, spinning=key[0] != "from_state")

    def _session_of(self, key, build, *, spinning=True, threads=None):
        """The session of ``key``, built once from the model ``build()`` returns (None: no session)."""
        with self._lock:
            if key not in self._sessions:
                model = build()
                session = (
                    None
                    if model is None
                    else _session(model, self.providers, spinning=spinning, threads=threads)
                )
                self._sessions[key] = session
                del model
                _release_free_memory()
            return self._sessions[key]

    def used_providers(self):
        """The execution providers of the sessions built so far, as onnxruntime reports them.

        onnxruntime may leave out a provider it was given (CUDA without its
        libraries, for example): this says what runs, first the preferred.

        Returns
        -------
        providers : list of (str, dict)
            Names and options, each provider once; empty before a session is built.
        """
        with self._lock:
            sessions = list(self._sessions.values())
        used = {}
        for session in filter(None, sessions):
            options = session.get_provider_options()
            for name in session.get_providers():
                used.setdefault(name, dict(options.get(name, {})))
        return list(used.items())

    def _feeds(self, session, feeds, temperature, labels):
        # tau and g are initializers that are also graph inputs: onnxruntime
        # lists them as overridable initializers, not as inputs
        names = {i.name for i in session.get_overridable_initializers()}
        if TEMPERATURE in names:
            feeds[TEMPERATURE] = np.asarray(temperature, dtype=self.dtype)
        if LABELS in names and labels is not None:
            feeds[LABELS] = np.asarray(labels, dtype=self.dtype)
        return feeds

    def prepare(self, outputs):
        """Build, in the calling thread, the session that :meth:`run` uses for ``outputs``.

        :meth:`run` builds it on first use otherwise; preparing it first
        reports a graph that onnxruntime rejects before any batch is read.

        Parameters
        ----------
        outputs : sequence of Tensor
            The tensors :meth:`run` will compute.

        Returns
        -------
        session : onnxruntime.InferenceSession
            The session, with its providers and their options.
        """
        return self._session_for(("features", tuple(outputs)))

    def run(self, batch, outputs, *, temperature=2.0, labels=None):
        """The requested tensors of a batch of network inputs, in one run.

        Parameters
        ----------
        batch : ndarray of shape (n_samples, ...)
            Network inputs, each of shape ``input_shape``.
        outputs : tuple of Tensor
            What to compute (:meth:`~skfishing.FCHead.features`).
        temperature : float, default=2.0
            Softmax temperature of the loss.
        labels : array-like of shape (n_classes,), default=None
            Label vector of the loss; None means uniform.

        Returns
        -------
        features : list of ndarray
            In the order of ``outputs``, each of shape (n_samples, width).
        input_sum : ndarray of shape (n_samples,) or None
            The sum of each sample's input (None for non-float inputs): not
            finite exactly when the sample holds NaN or infinity, or its sum
            overflows.
        """
        session = self._session_for(("features", tuple(outputs)))
        feeds = self._feeds(session, {self.input_name: batch}, temperature, labels)
        results = self._run(session, feeds, batch)
        return results[: len(outputs)], (results[len(outputs)] if len(results) > len(outputs) else None)

    def _run(self, session, feeds, batch):
        """``session.run``, with an error that says what the network was given."""
        try:
            return session.run(None, feeds)
        except Exception as exc:  # onnxruntime's own exception types (Fail, InvalidArgument...)
            if type(exc).__module__.split(".")[0] != "onnxruntime":
                raise
            shape = "(" + ", ".join("any" if d is None else str(d) for d in self.input_shape) + ")"
            hints = []
            if None in self.input_shape and len(self.input_shape) == 3:
                hints.append(
                    "its height and width are free in the graph, but the FC head fixes them: give images "
                    "of the size the network was trained for (the preprocessing's size)"
                )
            if len(batch) > 1 and ("Reshape" in str(exc) or None not in self.input_shape):
                hints.append(
                    "if the graph runs one sample at a time (a batch size of 1 fixed inside it, for "
                    "example by a constant Reshape), pass batch_size=1"
                )
            raise ValueError(
                f"onnxruntime could not run the network on a batch of shape {batch.shape} ({batch.dtype}); "
                f"its input '{self.input_name}' takes samples of shape {shape}"
                + ("".join(f"; {hint}" for hint in hints))
                + f". onnxruntime said: {exc}"
            ) from exc

    def run_layer(self, batch, layer, *, temperature=2.0, labels=None, threads=None):
        """The per-position gradient factors of any layer (:mod:`skfishing._onnx.vjp`) for a batch.

        Parameters
        ----------
        batch : ndarray of shape (n_samples, ...)
            Network inputs, each of shape ``input_shape``.
        layer : str
            A Conv, Gemm or MatMul node with a constant weight, by node name
            or weight name.
        temperature, labels
            As in :meth:`run`.
        threads : int, default=None
            onnxruntime's threads for this run (a session of its own);
            None means its default, all the cores. One thread is for
            batches split across the CPUs (:mod:`skfishing._extraction.lanes`).

        Returns
        -------
        forward, backward : ndarray
            Of shapes ``(n_samples, T, d_in)`` and ``(n_samples, T, d_out)``
            (2-D for a Gemm on one row per image): views of the graph's
            outputs, whose positions come last in memory.
        """
        from .vjp import build_layer_model

        key = ("layer", layer, tuple(batch.shape[1:]), threads)
        session = self._session_of(
            key,
            lambda: build_layer_model(self._model, layer, input_shape=batch.shape[1:], positions_last=True),
            spinning=False,  # the factors are sketched or normalised on these cores between runs
            threads=threads,
        )
        feeds = self._feeds(session, {self.input_name: batch}, temperature, labels)
        return _positions_second(self._run(session, feeds, batch))

    def cut(self, layer, sample_shape):
        """The cut of the graph at a layer (:mod:`skfishing._onnx.cuts`), what a cache stores per image.

        Parameters
        ----------
        layer : str or int
            A layer's node or weight name (:func:`~skfishing._onnx.vjp.find_layer`),
            or the position of a layer node in the graph.
        sample_shape : tuple of int
            The shape of one network input.

        Returns
        -------
        cut : Cut or None
            None when the layer's cut cannot be stored per image: its
            gradient is then computed from the image every time.
        """
        from .cuts import layer_cut
        from .vjp import LayerGraphBuilder, find_layer, logits_of

        sample_shape = tuple(int(d) for d in sample_shape)
        key = (layer, sample_shape)
        with self._lock:
            if key in self._cuts:
                return self._cuts[key]
        builder = LayerGraphBuilder(self._model, sample_shape)
        position = layer
        if isinstance(layer, str):
            spec = find_layer(self._model, layer, sample_shape)
            position = next(i for i, node in enumerate(builder.graph.node) if spec.output_name in node.output)
        cut = layer_cut(builder, position, logits_of(self._model))
        with self._lock:
            self._cuts[key] = self._cuts[(position, sample_shape)] = cut
        return cut

    def run_cut(self, batch, cut):
        """The tensors of ``cut`` for a batch of network inputs, one row per sample.

        Parameters
        ----------
        batch : ndarray of shape (n_samples, ...)
            Network inputs.
        cut : Cut
            As returned by :meth:`cut` for this batch's sample shape.

        Returns
        -------
        rows : ndarray of shape (n_samples, cut.width)
        input_sum : ndarray of shape (n_samples,) or None
            As in :meth:`run`.
        """
        from .cuts import build_cut_model

        key = ("cut", cut.position, tuple(batch.shape[1:]))
        session = self._session_of(key, lambda: build_cut_model(self._model, cut, self.input_name))
        results = self._run(session, {self.input_name: batch}, batch)
        n = len(cut.names)
        rows = np.concatenate([r.reshape(len(batch), -1) for r in results[:n]], axis=1)
        return rows, (results[n] if len(results) > n else None)

    def _from_cut(self, session, rows, cut, temperature, labels):
        needed = {i.name for i in session.get_inputs()}
        feeds = {k: v for k, v in cut.split(rows).items() if k in needed}
        return session.run(None, self._feeds(session, feeds, temperature, labels))

    def run_layer_from_cut(self, rows, cut, layer, sample_shape, *, temperature=2.0, labels=None):
        """The per-position gradient factors of ``layer`` computed from the cut rows of images.

        Parameters
        ----------
        rows : ndarray of shape (n_samples, cut.width)
            As returned by :meth:`run_cut`.
        cut : Cut
            A cut at ``layer`` or before it.
        layer : str
            As in :meth:`run_layer`.
        sample_shape : tuple of int
            The shape of one network input.
        temperature, labels
            As in :meth:`run`.

        Returns
        -------
        forward, backward : ndarray
            As :meth:`run_layer` returns them.
        """
        from .cuts import from_cut
        from .vjp import build_layer_model

        def build():
            model = build_layer_model(self._model, layer, input_shape=sample_shape, positions_last=True)
            return from_cut(model, cut, self.input_name)

        key = ("layer_from_cut", layer, cut.position, tuple(sample_shape))
        session = self._session_of(key, build, spinning=False)  # as in run_layer
        return _positions_second(self._from_cut(session, rows, cut, temperature, labels))

    def run_state_from_cut(self, rows, cut, sample_shape):
        """The states (:meth:`run_state`) computed from cut rows, or None when the cut is inside the head.

        Parameters
        ----------
        rows : ndarray of shape (n_samples, cut.width)
            As returned by :meth:`run_cut`.
        cut : Cut
            A cut of the trunk.
        sample_shape : tuple of int
            The shape of one network input.

        Returns
        -------
        state : ndarray of shape (n_samples, n_state) or None
        """
        from .cuts import from_cut

        def build():
            try:
                return from_cut(build_model(self._model, self.head, self.head.state()), cut, self.input_name)
            except ValueError:  # the cut is past the head's input: the state is not computed from it
                return None

        session = self._session_of(("state_from_cut", cut.position, tuple(sample_shape)), build)
        if session is None:
            return None
        return np.concatenate(self._from_cut(session, rows, cut, 2.0, None), axis=1)

    def run_state(self, batch):
        """The states of a batch of network inputs.

        Parameters
        ----------
        batch : ndarray of shape (n_samples, ...)
            Network inputs, each of shape ``input_shape``.

        Returns
        -------
        state : ndarray of shape (n_samples, n_state)
            One row per sample: the tensors of
            :meth:`~skfishing.FCHead.state`, concatenated.
        input_sum : ndarray of shape (n_samples,) or None
            As in :meth:`run`.
        """
        results = self._run(self._session_for(("state",)), {self.input_name: batch}, batch)
        n = len(self._state_slices)
        return np.concatenate(results[:n], axis=1), (results[n] if len(results) > n else None)

    @property
    def state_width(self):
        """Number of values in the state of one sample."""
        return max(s.stop for s in self._state_slices.values())

    def run_from_state(self, state_rows, outputs, *, temperature=2.0, labels=None):
        """The requested tensors computed from states.

        Parameters
        ----------
        state_rows : ndarray of shape (n_samples, n_state)
            As returned by :meth:`run_state`.
        outputs, temperature, labels
            As in :meth:`run`.

        Returns
        -------
        features : list of ndarray
            In the order of ``outputs``.
        """
        parts = {t: state_rows[:, s] for t, s in self._state_slices.items()}
        computed = tuple(t for t in outputs if t not in parts)
        if computed:
            session = self._session_for(("from_state", computed))
            needed = {i.name for i in session.get_inputs()}
            feeds = {t.name: np.ascontiguousarray(p) for t, p in parts.items() if t.name in needed}
            parts.update(zip(computed, session.run(None, self._feeds(session, feeds, temperature, labels))))
        return [parts[t] for t in outputs]


def _slices(widths):
    offsets = np.cumsum([0] + list(widths))
    return [slice(int(a), int(b)) for a, b in zip(offsets[:-1], offsets[1:])]


@validate_params(
    {
        "model": [str, bytes, os.PathLike, onnx.ModelProto],
        "providers": [list, tuple, None],
        "allow_tf32": ["boolean"],
    },
    prefer_skip_nested_validation=True,
)
def get_network(model, providers=None, *, allow_tf32=False):
    """The :class:`FisherNetwork` of a model file or ModelProto, built once per process.

    Parameters
    ----------
    model : str, path-like or onnx.ModelProto
        The classifier, identified by its content
        (:func:`~skfishing._onnx.model_files.model_sha256`, or
        the SHA-256 of a ModelProto's serialization).
    providers : sequence of str or (str, dict), default=None
        Execution providers; None means :func:`default_providers`.
    allow_tf32 : bool, default=False
        See :func:`session_providers`.

    Returns
    -------
    network : FisherNetwork
    """
    providers = session_providers(providers, allow_tf32=allow_tf32)
    if isinstance(model, onnx.ModelProto):
        sha256 = hashlib.sha256(model.SerializeToString()).hexdigest()
    else:
        sha256 = model_files.model_sha256(model)

    def build():
        proto = model if isinstance(model, onnx.ModelProto) else model_files.load_onnx(model)
        try:
            return FisherNetwork(proto, sha256, providers)
        except HeadStructureError as exc:
            if isinstance(model, onnx.ModelProto):
                raise
            raise HeadStructureError(f"ONNX model '{os.fsdecode(model)}': {exc}") from exc

    return state.network((sha256, repr(providers)), build)


#: Names that moved to :mod:`skfishing._onnx.model_files`, still found here with a warning.
_MOVED_TO_MODEL_FILES = ("model_sha256", "load_onnx", "parse_model_file", "external_locations")


def __getattr__(name):
    if name in _MOVED_TO_MODEL_FILES:
        warnings.warn(
            f"{name} moved from the sessions module to skfishing._onnx.model_files (private, not "
            "user API); its old place will be removed in a future version",
            FutureWarning,
            stacklevel=2,
        )
        return getattr(model_files, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
