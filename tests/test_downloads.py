"""Downloads: file names from URLs and names, the declared size, lock files."""

import hashlib
import http.server
import os
import threading
import time

import pytest

from skfishing.registry import ModelSpec, fetch_model, get_cache_dir, model_path, register_model
from test_registry import MODEL_BYTES, MODEL_SHA256, PREP, Server, cache_listing, register_remote


@pytest.fixture(autouse=True)
def isolated_registry(restore_models, tmp_path, monkeypatch):
    monkeypatch.setenv("SKFISHING_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def server():
    served = Server()
    yield served
    served.close()


class _Endless:
    """An HTTP server on 127.0.0.1 sending ``size`` bytes in 64 KiB pieces, counting what it sent."""

    def __init__(self, size):
        self.sent = 0
        served = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Length", str(size))
                self.end_headers()
                piece = b"\0" * 65536
                try:
                    while served.sent < size:
                        self.wfile.write(piece)
                        served.sent += len(piece)
                except OSError:  # the client hung up
                    pass

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02})
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


def test_download_stops_once_more_than_the_declared_size_arrived():
    """An 82 KB model served as 64 MB: the transfer stops right after the
    declared size, not at the checksum, and nothing stays in the cache."""
    size = 64 << 20
    server = _Endless(size)
    try:
        register_model(
            "big", url=server.url + "/big.onnx", sha256="0" * 64, size_bytes=82_000, preprocessing=PREP
        )
        with pytest.raises(ValueError, match=r"more than the 82,000 bytes declared \(size_bytes\)"):
            fetch_model("big")
    finally:
        server.close()
    # the client read one 1 MiB chunk past the limit; socket buffers hold a few MB more
    assert server.sent < size // 4, server.sent
    assert cache_listing() == []


def test_lock_files_do_not_pile_up(server):
    """Each fetch removes its lock file; the cache holds only the models."""
    for name in ("one", "two", "three"):
        register_remote(server, route=f"/{name}.onnx", name=name)
        fetch_model(name)
    assert cache_listing() == ["one.onnx", "three.onnx", "two.onnx"]
    corrupt = MODEL_BYTES[:-1] + bytes([MODEL_BYTES[-1] ^ 1])
    register_remote(server, route="/bad.onnx", body=corrupt, name="bad")
    with pytest.raises(ValueError, match="does not match"):
        fetch_model("bad")
    assert cache_listing() == ["one.onnx", "three.onnx", "two.onnx"]


@pytest.mark.skipif(os.name == "nt", reason="fcntl")
def test_removed_lock_file_is_never_held_twice(tmp_path):
    """A process waiting on a lock file that its holder removes locks the
    current file instead: two holders never overlap."""
    from skfishing._io.download import file_lock

    path = tmp_path / "m.onnx.lock"
    inside, overlaps = [0], []
    guard = threading.Lock()

    def work():
        for _ in range(40):
            with file_lock(path):
                with guard:
                    inside[0] += 1
                    overlaps.append(inside[0])
                time.sleep(0.001)  # give others the chance to enter if they could
                with guard:
                    inside[0] -= 1

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert max(overlaps) == 1 and len(overlaps) == 240
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("url_path", ["/models/..", "/..", "/"])
def test_url_without_a_file_name_gives_the_model_name(server, url_path):
    """A URL ending in /.. gave the file name '..' (the cache's parent folder)."""
    for route in ("/", "/models/"):  # requests removes dot segments
        server.routes[route] = (MODEL_BYTES, "ok")
    spec = register_model("dots", url=server.url + url_path, sha256=MODEL_SHA256, preprocessing=PREP)
    assert spec.filename == "dots.onnx"
    assert model_path("dots") == get_cache_dir() / "dots.onnx"
    assert fetch_model("dots").read_bytes() == MODEL_BYTES


@pytest.mark.parametrize(
    "name, filename, match",
    [
        ("x\0y", "x.onnx", "control characters"),
        ("x\ny", "x.onnx", "control characters"),
        ("x", "..", "bare file name"),
        ("x", ".", "bare file name"),
        ("x", "x\0.onnx", "bare file name"),
    ],
)
def test_names_with_nul_or_dots_are_refused(name, filename, match):
    with pytest.raises(ValueError, match=match):
        ModelSpec(name, filename, MODEL_SHA256, url="http://127.0.0.1/x.onnx")
    if filename not in (".", ".."):  # from a URL, those give the model's name (test above)
        with pytest.raises(ValueError, match=match):
            register_model(name, url=f"http://127.0.0.1/{filename}", sha256=MODEL_SHA256)


def test_a_folder_where_the_model_belongs_is_named(server):
    register_remote(server)
    model_path("remote").mkdir(parents=True)
    with pytest.raises(IsADirectoryError, match=r"tiny\.onnx is a folder, where the model file belongs"):
        fetch_model("remote")


def test_exact_size_downloads(server):
    """The limit is not off by one: a file of exactly size_bytes downloads."""
    body = MODEL_BYTES
    server.routes["/exact.onnx"] = (body, "slow")
    register_model(
        "exact",
        url=server.url + "/exact.onnx",
        sha256=hashlib.sha256(body).hexdigest(),
        size_bytes=len(body),
        preprocessing=PREP,
    )
    assert fetch_model("exact").read_bytes() == body
