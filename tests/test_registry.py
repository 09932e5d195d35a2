"""Tests of the model registry (skfishing.registry).

Downloads are tested against an HTTP server on 127.0.0.1 started by the
tests; nothing here touches the internet.
"""

import hashlib
import http.server
import json
import pathlib
import socket
import threading
import time

import numpy as np
import onnx
import pooch
import pytest
from onnx import TensorProto, helper, numpy_helper

import skfishing.registry as registry
from skfishing.images import ImagePreprocessing
from skfishing.registry import (
    ModelSpec,
    ResolvedModel,
    fetch_model,
    get_cache_dir,
    list_models,
    model_path,
    register_model,
    resolve_model,
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
def isolated_registry(tmp_path, monkeypatch):
    """Fresh user registry and hash memo; the cache in a temporary folder."""
    monkeypatch.setattr(registry, "_USER_MODELS", {})
    monkeypatch.setattr(registry, "_HASHES", {})
    monkeypatch.setenv("SKFISHING_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


class _Server:
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
        threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        ).start()

    def close(self):
        if self.running:
            self.running = False
            self.httpd.shutdown()
            self.httpd.server_close()


@pytest.fixture
def server():
    served = _Server()
    yield served
    served.close()


def _register_remote(
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


def _cache_listing():
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
    assert alexnet.url.endswith(
        "validated/vision/classification/alexnet/model/bvlcalexnet-12.onnx"
    )
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
    spec = _register_remote(server)
    path = fetch_model("remote")
    assert path == get_cache_dir() / spec.filename
    assert path.read_bytes() == MODEL_BYTES
    onnx.checker.check_model(onnx.load(str(path)))
    assert server.hits == ["/tiny.onnx"]
    server.close()  # offline from now on: the cached file is enough
    registry._HASHES.clear()  # as in a new process: the file is hashed again
    assert fetch_model("remote") == path
    resolved = resolve_model("remote")
    assert resolved == ResolvedModel(path, PREP, "remote")


def test_cached_file_hashed_once_per_process(server, monkeypatch):
    _register_remote(server)
    calls = []
    file_hash = pooch.file_hash
    monkeypatch.setattr(
        pooch, "file_hash", lambda *a, **k: calls.append(a) or file_hash(*a, **k)
    )
    path = fetch_model("remote")
    downloaded = len(calls)  # pooch checks the temporary file
    fetch_model("remote")
    resolve_model("remote")
    assert len(calls) == downloaded  # the download was verified already
    registry._HASHES.clear()
    fetch_model("remote")
    fetch_model("remote")
    assert len(calls) == downloaded + 1
    time.sleep(0.01)
    path.write_bytes(MODEL_BYTES)  # touched: hashed again
    fetch_model("remote")
    assert len(calls) == downloaded + 2


def test_custom_cache_dir(server, tmp_path):
    _register_remote(server)
    path = fetch_model("remote", cache_dir=tmp_path / "elsewhere")
    assert path == tmp_path / "elsewhere" / "tiny.onnx" and path.is_file()
    assert _cache_listing() == []


def test_bad_checksum_leaves_nothing_in_cache(server):
    corrupt = MODEL_BYTES[:-1] + bytes([MODEL_BYTES[-1] ^ 1])
    _register_remote(server, body=corrupt)
    target = model_path("remote")
    with pytest.raises(ValueError) as info:
        fetch_model("remote")
    message = str(info.value)
    assert "does not match" in message
    assert server.url + "/tiny.onnx" in message and MODEL_SHA256 in message
    assert str(target) in message
    assert _cache_listing() == ["tiny.onnx.lock"]  # no partial or temporary file


def test_interrupted_transfer_leaves_nothing_in_cache(server):
    _register_remote(server, behaviour="truncate")
    with pytest.raises(ConnectionError, match="Could not download model 'remote'"):
        fetch_model("remote")
    assert _cache_listing() == ["tiny.onnx.lock"]
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
    assert _cache_listing() == ["gone.onnx.lock"]


def test_corrupt_cached_file_is_replaced(server):
    _register_remote(server)
    path = fetch_model("remote")
    path.write_bytes(b"garbage of another size")
    assert fetch_model("remote").read_bytes() == MODEL_BYTES
    assert len(server.hits) == 2
    # same size, other content: caught by the checksum, not the size
    path.write_bytes(bytes(len(MODEL_BYTES)))
    assert fetch_model("remote").read_bytes() == MODEL_BYTES
    assert len(server.hits) == 3


def test_corrupt_cached_file_offline_is_an_error(server):
    _register_remote(server)
    path = fetch_model("remote")
    path.write_bytes(bytes(len(MODEL_BYTES)))
    server.close()
    with pytest.raises(ConnectionError, match="install it by hand"):
        fetch_model("remote")


def test_concurrent_fetches_download_once(server):
    _register_remote(server, behaviour="slow")
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
    _register_remote(server)
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
    assert (
        resolve_model("mine").preprocessing == PREP and replaced.preprocessing == PREP
    )
    with pytest.raises(TypeError, match="either a ModelSpec or a name"):
        register_model(spec, preprocessing=PREP, overwrite=True)


def test_register_by_url_downloads(server):
    server.routes["/files/net.onnx?download=1"] = (MODEL_BYTES, "ok")
    spec = register_model(
        "net", url=server.url + "/files/net.onnx?download=1", sha256=MODEL_SHA256
    )
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
        ModelSpec(
            "x", "x.onnx", MODEL_SHA256, url="http://h/x.onnx", path=str(local_model)
        )
    with pytest.raises(TypeError, match="ModelSpec or a str"):
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
        (3, TypeError, "got int"),
    ],
)
def test_resolve_errors(model, error, match):
    with pytest.raises(error, match=match):
        resolve_model(model)


# -- the embedded model -------------------------------------------------------------


def _write_embedded(folder, sha256=MODEL_SHA256, **overrides):
    folder.mkdir(exist_ok=True)
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


def test_embedded_model_from_package_data(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "_DATA_DIR", tmp_path / "data")
    _write_embedded(tmp_path / "data")
    spec = {spec.name: spec for spec in list_models()}["tinyalexnet"]
    assert spec.preprocessing == ImagePreprocessing(
        32, resize=None, mean=(0.48, 0.45, 0.4), std=(0.27, 0.26, 0.28)
    )
    assert spec.url is None and spec.sha256 == MODEL_SHA256
    assert "43.2%" in spec.description
    resolved = resolve_model("tinyalexnet")
    assert resolved.source == tmp_path / "data" / "tinyalexnet.onnx"
    assert resolved.preprocessing.resize is None and resolved.name == "tinyalexnet"


def test_embedded_model_checksum_mismatch(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "_DATA_DIR", tmp_path / "data")
    _write_embedded(tmp_path / "data", sha256="0" * 64)
    with pytest.raises(ValueError, match="expected 0000"):
        resolve_model("tinyalexnet")


def test_embedded_metadata_malformed(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "_DATA_DIR", tmp_path / "data")
    _write_embedded(tmp_path / "data", input_size=None)
    with pytest.raises(ValueError, match="Malformed model metadata .*tinyalexnet.json"):
        list_models()


def test_no_embedded_model_without_metadata(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "_DATA_DIR", tmp_path / "empty")
    assert [spec.name for spec in list_models()] == ["alexnet", "vgg16"]


def test_shipped_embedded_model():
    metadata = pathlib.Path(registry.__file__).parent / "data" / "tinyalexnet.json"
    if not metadata.is_file():
        pytest.skip("the embedded model is not in the package data yet")
    name = json.loads(metadata.read_text())["name"]
    resolved = resolve_model(name)  # checks the shipped file against its sha256
    size = resolved.preprocessing.size
    model = onnx.load(str(resolved.source))
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims[1:] == [3, size, size]
