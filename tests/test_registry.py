"""Tests of the model registry (skfishing.registry).

Downloads are tested against an HTTP server on 127.0.0.1 started by the
tests; nothing here touches the internet.
"""

import hashlib
import http.server
import json
import os
import pathlib
import shutil
import socket
import threading
import time

import numpy as np
import onnx
import pooch
import pytest
from conftest import models_restored
from onnx import TensorProto, helper, numpy_helper

import skfishing.registry as registry
from skfishing import ImagePreprocessing, state
from skfishing.registry import (
    ModelRegistry,
    ModelSpec,
    ResolvedModel,
    fetch_model,
    get_cache_dir,
    list_models,
    model_path,
    process_registry,
    register_model,
    resolve_model,
    unregister_model,
)

PREP = ImagePreprocessing(8, resize=10, channel_order="BGR", scale=1.0)


def _onnx_model(seed=0):
    weights = np.random.default_rng(seed).normal(size=(4, 2)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])],
        [numpy_helper.from_array(weights, "w")],
    )
    return helper.make_model(graph)


MODEL_BYTES = _onnx_model().SerializeToString()
MODEL_SHA256 = hashlib.sha256(MODEL_BYTES).hexdigest()


@pytest.fixture(autouse=True)
def isolated_registry(restore_models, tmp_path, monkeypatch):
    """Models registered by a test are removed after it; the cache in a temporary folder."""
    monkeypatch.setenv("SKFISHING_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


class Server:
    """Serve ``routes[path] = (body, behaviour)`` on 127.0.0.1, counting hits.

    ``behaviour`` is "ok", "slow" (the body in chunks, with pauses) or
    "truncate" (announce the full length, send half, hang up).
    """

    def __init__(self):
        self.routes, self.hits = {}, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.hits.append(self.path)
                if self.path not in server.routes:
                    self.send_error(404)
                    return
                body, behaviour = server.routes[self.path]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if behaviour == "truncate":
                    self.wfile.write(body[: len(body) // 2])
                    self.close_connection = True
                elif behaviour == "slow":
                    for start in range(0, len(body), 64):
                        self.wfile.write(body[start : start + 64])
                        self.wfile.flush()
                        time.sleep(0.005)
                else:
                    self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.running = True
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def close(self):
        if self.running:
            self.running = False
            self.httpd.shutdown()
            self.httpd.server_close()


@pytest.fixture
def server():
    served = Server()
    yield served
    served.close()


def register_remote(
    server,
    route="/tiny.onnx",
    body=MODEL_BYTES,
    behaviour="ok",
    sha256=MODEL_SHA256,
    name="remote",
):
    server.routes[route] = (body, behaviour)
    return register_model(
        name,
        url=server.url + route,
        sha256=sha256,
        size_bytes=len(MODEL_BYTES),
        preprocessing=PREP,
    )


def cache_listing():
    cache = get_cache_dir()
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- built-in models and cache folder ------------------------------------------


def test_builtin_models():
    specs = {spec.name: spec for spec in list_models()}
    alexnet, vgg16 = specs["alexnet"], specs["vgg16"]
    assert alexnet.url.startswith("https://huggingface.co/onnxmodelzoo/legacy_models/")
    assert alexnet.url.endswith("validated/vision/classification/alexnet/model/bvlcalexnet-12.onnx")
    assert alexnet.sha256.startswith("6b0da951") and alexnet.size_bytes == 243_863_787
    assert alexnet.preprocessing == ImagePreprocessing(
        224,
        resize=256,
        channel_order="BGR",
        scale=1.0,
        mean=(122.7717, 115.9465, 102.9801),  # RGB order: B mean is 102.98
    )
    assert vgg16.url.endswith("validated/vision/classification/vgg/model/vgg16-12.onnx")
    assert vgg16.sha256.startswith("722c42f5") and vgg16.size_bytes == 553_437_752
    assert vgg16.preprocessing.channel_order == "RGB"
    assert vgg16.preprocessing.scale == pytest.approx(1 / 255)
    assert vgg16.preprocessing.mean == (0.485, 0.456, 0.406)
    assert vgg16.preprocessing.std == (0.229, 0.224, 0.225)


def test_cache_dir_precedence(tmp_path, monkeypatch):
    assert get_cache_dir(tmp_path / "arg") == tmp_path / "arg"
    assert get_cache_dir() == tmp_path / "cache"  # from the environment
    assert get_cache_dir("~/x") == pathlib.Path.home() / "x"
    monkeypatch.delenv("SKFISHING_CACHE_DIR")
    assert get_cache_dir() == pathlib.Path(pooch.os_cache("skfishing"))
    assert model_path("alexnet", cache_dir=tmp_path) == tmp_path / "bvlcalexnet-12.onnx"


# -- downloads ----------------------------------------------------------------


def test_download_then_offline(server):
    spec = register_remote(server)
    path = fetch_model("remote")
    assert path == get_cache_dir() / spec.filename
    assert path.read_bytes() == MODEL_BYTES
    onnx.checker.check_model(onnx.load(str(path)))
    assert server.hits == ["/tiny.onnx"]
    server.close()  # offline from now on: the cached file is enough
    state.file_hashes().clear()  # as in a new process: the file is hashed again
    assert fetch_model("remote") == path
    resolved = resolve_model("remote")
    assert resolved == ResolvedModel(path, PREP, "remote")


def test_cached_file_hashed_once_per_process(server, monkeypatch):
    register_remote(server)
    calls = []
    file_hash = pooch.file_hash
    monkeypatch.setattr(pooch, "file_hash", lambda *a, **k: calls.append(a) or file_hash(*a, **k))
    path = fetch_model("remote")
    downloaded = len(calls)  # pooch checks the temporary file
    fetch_model("remote")
    resolve_model("remote")
    assert len(calls) == downloaded  # the download was verified already
    state.file_hashes().clear()
    fetch_model("remote")
    fetch_model("remote")
    assert len(calls) == downloaded + 1
    time.sleep(0.01)
    path.write_bytes(MODEL_BYTES)  # touched: hashed again
    fetch_model("remote")
    assert len(calls) == downloaded + 2


def test_custom_cache_dir(server, tmp_path):
    register_remote(server)
    path = fetch_model("remote", cache_dir=tmp_path / "elsewhere")
    assert path == tmp_path / "elsewhere" / "tiny.onnx" and path.is_file()
    assert cache_listing() == []


def test_bad_checksum_leaves_nothing_in_cache(server):
    corrupt = MODEL_BYTES[:-1] + bytes([MODEL_BYTES[-1] ^ 1])
    register_remote(server, body=corrupt)
    target = model_path("remote")
    with pytest.raises(ValueError) as info:
        fetch_model("remote")
    message = str(info.value)
    assert "does not match" in message
    assert server.url + "/tiny.onnx" in message and MODEL_SHA256 in message
    assert str(target) in message
    assert cache_listing() == []  # no partial or temporary file


def test_interrupted_transfer_leaves_nothing_in_cache(server):
    register_remote(server, behaviour="truncate")
    with pytest.raises(ConnectionError, match="Could not download model 'remote'"):
        fetch_model("remote")
    assert cache_listing() == []
    # the next try, with a working server, succeeds
    server.routes["/tiny.onnx"] = (MODEL_BYTES, "ok")
    assert fetch_model("remote").read_bytes() == MODEL_BYTES


def test_server_down_says_how_to_install_by_hand(tmp_path):
    url = f"http://127.0.0.1:{_free_port()}/tiny.onnx"
    register_model("remote", url=url, sha256=MODEL_SHA256, size_bytes=len(MODEL_BYTES))
    target = model_path("remote")
    with pytest.raises(ConnectionError) as info:
        fetch_model("remote")
    message = str(info.value)
    for expected in (
        url,
        MODEL_SHA256,
        str(target),
        f"{len(MODEL_BYTES):,} bytes",
        "SKFISHING_CACHE_DIR",
    ):
        assert expected in message
    assert not target.exists()
    # following the instructions works offline
    target.write_bytes(MODEL_BYTES)
    assert fetch_model("remote") == target


def test_http_error(server):
    register_model("remote", url=server.url + "/gone.onnx", sha256=MODEL_SHA256)
    with pytest.raises(ConnectionError, match="404"):
        fetch_model("remote")
    assert cache_listing() == []


def test_corrupt_cached_file_is_replaced(server):
    register_remote(server)
    path = fetch_model("remote")
    path.write_bytes(b"garbage of another size")
    assert fetch_model("remote").read_bytes() == MODEL_BYTES
    assert len(server.hits) == 2
    # same size, other content: caught by the checksum, not the size
    path.write_bytes(bytes(len(MODEL_BYTES)))
    assert fetch_model("remote").read_bytes() == MODEL_BYTES
    assert len(server.hits) == 3


def test_corrupt_cached_file_offline_is_an_error(server):
    register_remote(server)
    path = fetch_model("remote")
    path.write_bytes(bytes(len(MODEL_BYTES)))
    server.close()
    with pytest.raises(ConnectionError, match="install it by hand"):
        fetch_model("remote")


def test_concurrent_fetches_download_once(server):
    register_remote(server, behaviour="slow")
    results, errors = [], []

    def fetch():
        try:
            results.append(fetch_model("remote"))
        except Exception as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=fetch) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(set(results)) == 1 and results[0].read_bytes() == MODEL_BYTES
    assert len(server.hits) == 1


def test_download_progress_bar(server, capsys):
    register_remote(server)
    fetch_model("remote", progress=True)
    assert "100%" in capsys.readouterr().err


# -- registering models ---------------------------------------------------------


@pytest.fixture
def local_model(tmp_path):
    path = tmp_path / "models" / "mine.onnx"
    path.parent.mkdir()
    path.write_bytes(MODEL_BYTES)
    return path


def test_register_local_file(local_model):
    spec = register_model(
        "mine",
        str(local_model),
        preprocessing=PREP,
        sha256=MODEL_SHA256.upper(),
        description="my net",
    )
    assert spec == ModelSpec(
        "mine",
        "mine.onnx",
        MODEL_SHA256,
        preprocessing=PREP,
        description="my net",
        path=str(local_model),
    )
    assert spec in list_models()
    assert fetch_model("mine") == local_model
    assert resolve_model("mine") == ResolvedModel(local_model, PREP, "mine")
    # the file given by path is recognised as the registered model
    assert resolve_model(local_model) == ResolvedModel(local_model, PREP, "mine")
    assert resolve_model(str(local_model)).preprocessing == PREP


def test_local_file_checked_against_sha256(local_model):
    register_model("mine", local_model, sha256=MODEL_SHA256)
    assert fetch_model("mine") == local_model
    time.sleep(0.01)
    local_model.write_bytes(bytes(len(MODEL_BYTES)))  # modified after hashing
    with pytest.raises(ValueError, match=f"expected {MODEL_SHA256}"):
        fetch_model("mine")
    local_model.unlink()
    with pytest.raises(FileNotFoundError, match="mine.onnx"):
        fetch_model("mine")


def test_register_spec_and_overwrite(local_model):
    spec = ModelSpec("mine", "mine.onnx", None, path=str(local_model))
    assert register_model(spec) is spec
    with pytest.raises(ValueError, match="already registered.*overwrite=True"):
        register_model("mine", local_model)
    with pytest.raises(ValueError, match="already registered"):
        register_model("alexnet", local_model)
    replaced = register_model("mine", local_model, preprocessing=PREP, overwrite=True)
    assert resolve_model("mine").preprocessing == PREP and replaced.preprocessing == PREP
    with pytest.raises(TypeError, match="either a ModelSpec or a name"):
        register_model(spec, preprocessing=PREP, overwrite=True)


def test_register_by_url_downloads(server):
    server.routes["/files/net.onnx?download=1"] = (MODEL_BYTES, "ok")
    spec = register_model("net", url=server.url + "/files/net.onnx?download=1", sha256=MODEL_SHA256)
    assert spec.filename == "net.onnx"
    assert fetch_model("net").read_bytes() == MODEL_BYTES


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"path": "/no/such/file.onnx"}, FileNotFoundError, "no such file"),
        ({}, ValueError, "exactly one of url"),
        ({"url": "http://127.0.0.1/x.onnx"}, ValueError, "needs its sha256"),
        (
            {"url": "http://127.0.0.1/x.onnx", "sha256": "abc"},
            ValueError,
            "64 hexadecimal digits",
        ),
        (
            {"url": "http://127.0.0.1/x.onnx", "sha256": "g" * 64},
            ValueError,
            "64 hexadecimal digits",
        ),
        (
            {"url": "http://127.0.0.1/x.onnx", "sha256": MODEL_SHA256, "size_bytes": 0},
            ValueError,
            "size_bytes",
        ),
        (
            {
                "url": "http://127.0.0.1/x.onnx",
                "sha256": MODEL_SHA256,
                "preprocessing": 224,
            },
            TypeError,
            "ImagePreprocessing",
        ),
    ],
)
def test_register_invalid(kwargs, error, match):
    with pytest.raises(error, match=match):
        register_model("bad", **kwargs)
    assert "bad" not in {spec.name for spec in list_models()}


def test_model_spec_validation(local_model):
    with pytest.raises(ValueError, match="bare file name"):
        ModelSpec("x", "sub/x.onnx", None, path=str(local_model))
    with pytest.raises(ValueError, match="non-empty string"):
        ModelSpec("", "x.onnx", None, path=str(local_model))
    with pytest.raises(ValueError, match="exactly one of url"):
        ModelSpec("x", "x.onnx", MODEL_SHA256, url="http://h/x.onnx", path=str(local_model))
    with pytest.raises(TypeError, match="'spec_or_name' parameter .*ModelSpec' or .*'str'"):
        register_model(3)


# -- resolving the model argument -------------------------------------------------


def test_resolve_unregistered_file_and_proto(local_model):
    assert resolve_model(local_model) == ResolvedModel(local_model, None, None)
    proto = _onnx_model()
    resolved = resolve_model(proto)
    assert resolved.source is proto and resolved.preprocessing is None


@pytest.mark.parametrize(
    "model, error, match",
    [
        ("alexnett", ValueError, r"Unknown model 'alexnett'.*alexnet, vgg16"),
        ("models/net.onnx", FileNotFoundError, r"No such model file.*alexnet"),
        ("net.onnx", FileNotFoundError, "No such model file"),
        (pathlib.Path("alexnet"), FileNotFoundError, "No such model file"),
        (3, TypeError, "'model' parameter of resolve_model.*Got 3"),
    ],
)
def test_resolve_errors(model, error, match):
    with pytest.raises(error, match=match):
        resolve_model(model)


# -- the embedded model and the built-in table -------------------------------------

SHIPPED_DATA = pathlib.Path(registry.__file__).parent / "data"


def _write_data(folder, *, embedded=True, sha256=MODEL_SHA256, **overrides):
    """A data folder: the shipped model table, and an embedded model unless not ``embedded``."""
    folder.mkdir(exist_ok=True)
    shutil.copyfile(SHIPPED_DATA / "models.json", folder / "models.json")
    if not embedded:
        return folder
    (folder / "tinyalexnet.onnx").write_bytes(MODEL_BYTES)
    meta = {
        "name": "tinyalexnet",
        "file": "tinyalexnet.onnx",
        "sha256": sha256,
        "size_bytes": len(MODEL_BYTES),
        "input_name": "input",
        "input_size": 32,
        "channel_order": "RGB",
        "scale": 1 / 255,
        "mean": [0.48, 0.45, 0.4],
        "std": [0.27, 0.26, 0.28],
        "val_top1": 0.4321,
        "val_top5": 0.7,
    }
    meta.update(overrides)
    (folder / "tinyalexnet.json").write_text(json.dumps(meta))
    return folder


def test_embedded_model_from_package_data(tmp_path):
    models = ModelRegistry(_write_data(tmp_path / "data"))
    spec = models.get("tinyalexnet")
    assert spec.preprocessing == ImagePreprocessing(
        32, resize=None, mean=(0.48, 0.45, 0.4), std=(0.27, 0.26, 0.28)
    )
    assert spec.url is None and spec.sha256 == MODEL_SHA256
    assert "43.2%" in spec.description
    resolved = models.resolve("tinyalexnet")
    assert resolved.source == tmp_path / "data" / "tinyalexnet.onnx"
    assert resolved.preprocessing.resize is None and resolved.name == "tinyalexnet"
    # the built-in table comes from the same folder
    assert [spec.name for spec in models.list()] == ["alexnet", "vgg16", "tinyalexnet"]
    assert models.get("alexnet") == {spec.name: spec for spec in list_models()}["alexnet"]


def test_embedded_model_checksum_mismatch(tmp_path):
    models = ModelRegistry(_write_data(tmp_path / "data", sha256="0" * 64))
    with pytest.raises(ValueError, match="expected 0000"):
        models.resolve("tinyalexnet")


def test_embedded_metadata_malformed(tmp_path):
    folder = _write_data(tmp_path / "data", input_size=None)
    with pytest.raises(ValueError, match="Malformed model metadata .*tinyalexnet.json"):
        ModelRegistry(folder)


def test_model_table_malformed(tmp_path):
    folder = _write_data(tmp_path / "data", embedded=False)
    table = json.loads((folder / "models.json").read_text())
    del table["download"][1]["sha256"]
    (folder / "models.json").write_text(json.dumps(table))
    with pytest.raises(ValueError, match="Malformed model table .*models.json"):
        ModelRegistry(folder)


def test_no_embedded_model_without_metadata(tmp_path):
    models = ModelRegistry(_write_data(tmp_path / "data", embedded=False))
    assert [spec.name for spec in models.list()] == ["alexnet", "vgg16"]
    assert ModelRegistry(tmp_path / "empty").list() == []  # no table, no built-in model


def test_model_table_and_metadata_are_read_once(tmp_path):
    """Defect 5 (issue 13): the embedded model's JSON was re-read on every call."""
    folder = _write_data(tmp_path / "data")
    models = ModelRegistry(folder)
    specs = models.list()
    for name in ("models.json", "tinyalexnet.json"):
        (folder / name).write_text("{not json")  # a registry that read them again would fail
    for _ in range(3):
        assert models.resolve("tinyalexnet").source == folder / "tinyalexnet.onnx"
        assert models.path("alexnet", cache_dir=tmp_path) == tmp_path / "bvlcalexnet-12.onnx"
    assert models.list() == specs


def test_process_registry_reads_package_data_once(monkeypatch):
    """Defect 5, through the module's functions: resolve_model runs on every fit and transform."""
    list_models()  # the process's registry exists from here on
    reads = []
    loads = json.loads
    monkeypatch.setattr(json, "loads", lambda *args, **kwargs: reads.append(1) or loads(*args, **kwargs))
    for _ in range(5):
        resolve_model("tinyalexnet")
        list_models()
        model_path("alexnet")
    assert reads == []
    assert process_registry() is process_registry()
    ModelRegistry()  # building a registry reads the table and the metadata: the count can fail
    assert len(reads) == 2


def test_shipped_embedded_model():
    metadata = SHIPPED_DATA / "tinyalexnet.json"
    if not metadata.is_file():
        pytest.skip("the embedded model is not in the package data yet")
    name = json.loads(metadata.read_text())["name"]
    resolved = resolve_model(name)  # checks the shipped file against its sha256
    size = resolved.preprocessing.size
    model = onnx.load(str(resolved.source))
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims[1:] == [3, size, size]


# -- one registry per process, in skfishing.state -------------------------------------


def test_state_holds_the_process_registry(local_model, monkeypatch):
    models = process_registry()
    assert isinstance(models, ModelRegistry) and process_registry() is models
    with pytest.warns(FutureWarning, match="process_registry"):
        assert state.models() is models  # the old spelling still works
    register_model("mine", local_model, sha256=MODEL_SHA256)
    assert "mine" in models and models.get("mine").path == str(local_model)
    calls = []
    file_hash = pooch.file_hash
    monkeypatch.setattr(pooch, "file_hash", lambda *a, **k: calls.append(a) or file_hash(*a, **k))
    fetch_model("mine")
    fetch_model("mine")
    assert len(calls) == 1
    state.clear()  # checksums are forgotten, registrations stay
    assert process_registry() is models and "mine" in models
    fetch_model("mine")
    assert len(calls) == 2


def test_restoring_the_registered_models(local_model):
    """What the tests rely on for isolation (tests/conftest.py)."""
    builtin = list_models()
    register_model("kept", local_model)
    with models_restored():
        register_model("mine", local_model)
        unregister_model("kept")
        register_model("alexnet", local_model, overwrite=True)
    names = {spec.name: spec for spec in list_models()}
    assert list(names) == [spec.name for spec in builtin] + ["kept"]
    assert names["alexnet"] is builtin[0]


def test_registries_are_independent(local_model, tmp_path):
    mine, other = ModelRegistry(), ModelRegistry()
    mine.register("mine", local_model, preprocessing=PREP)
    assert mine.resolve("mine") == ResolvedModel(local_model, PREP, "mine")
    assert "mine" not in other and "mine" not in {spec.name for spec in list_models()}
    with pytest.raises(ValueError, match="Unknown model 'mine'"):
        other.fetch("mine")


def test_unregister_model(local_model, tmp_path):
    register_model("mine", local_model)
    assert unregister_model("mine").path == str(local_model)
    assert "mine" not in {spec.name for spec in list_models()}
    with pytest.raises(ValueError, match="No model named 'mine' was registered"):
        unregister_model("mine")
    with pytest.raises(ValueError, match="'alexnet' is built in"):
        unregister_model("alexnet")
    # a replaced built-in model comes back
    register_model("alexnet", local_model, overwrite=True)
    assert model_path("alexnet") == local_model
    unregister_model("alexnet")
    assert model_path("alexnet", cache_dir=tmp_path) == tmp_path / "bvlcalexnet-12.onnx"


# -- the checksum memo ------------------------------------------------------------------


@pytest.mark.parametrize("how", ["rewritten in place", "renamed over"])
def test_file_replaced_with_same_size_and_mtime_is_hashed_again(local_model, how):
    """``cp -p`` and ``rsync -a`` keep size and mtime: the memo must not trust them alone."""
    register_model("mine", local_model, sha256=MODEL_SHA256)
    assert fetch_model("mine") == local_model  # hashed and remembered
    before = local_model.stat()
    other = bytes(len(MODEL_BYTES))
    if how == "rewritten in place":  # cp -p: same inode
        time.sleep(0.02)  # a tick of the coarse clock that stamps ctime
        local_model.write_bytes(other)
    else:  # rsync -a: a temporary file renamed over the old one
        temporary = local_model.with_name(".mine.onnx.tmp")
        temporary.write_bytes(other)
        os.replace(temporary, local_model)
    os.utime(local_model, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = local_model.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    with pytest.raises(ValueError, match=f"has sha256 {hashlib.sha256(other).hexdigest()}, expected"):
        fetch_model("mine")


def test_cached_download_replaced_with_same_size_and_mtime_is_downloaded_again(server):
    register_remote(server)
    path = fetch_model("remote")
    before = path.stat()
    time.sleep(0.02)
    path.write_bytes(bytes(len(MODEL_BYTES)))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert fetch_model("remote").read_bytes() == MODEL_BYTES
    assert len(server.hits) == 2


# -- parameter validation ------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, parameter",
    [
        (lambda: fetch_model(3), "name"),
        (lambda: fetch_model("alexnet", cache_dir=3), "cache_dir"),
        (lambda: fetch_model("alexnet", progress="yes"), "progress"),
        (lambda: model_path(None), "name"),
        (lambda: get_cache_dir(1.5), "cache_dir"),
        (lambda: resolve_model("alexnet", cache_dir=[]), "cache_dir"),
        (
            lambda: register_model("x", url="http://h/x.onnx", sha256=MODEL_SHA256, size_bytes=-1),
            "size_bytes",
        ),
        (lambda: register_model("x", 3), "path"),
        (lambda: register_model("x", url=b"http://h/x.onnx"), "url"),
        (
            lambda: register_model("x", url="http://h/x.onnx", sha256=MODEL_SHA256, overwrite="no"),
            "overwrite",
        ),
        (lambda: unregister_model(None), "name"),
        (lambda: ModelRegistry(3), "data_dir"),
    ],
)
def test_invalid_parameters_name_the_parameter(call, parameter, tmp_path):
    names = {spec.name for spec in list_models()}
    with pytest.raises((TypeError, ValueError), match=f"'{parameter}' parameter of"):
        call()
    assert {spec.name for spec in list_models()} == names
    assert not get_cache_dir().exists()  # nothing downloaded or created
