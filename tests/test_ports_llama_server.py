"""The llama.cpp server's lifecycle, with a stand-in `llama_cpp.server` (a few lines of
http.server) so it runs without the build; the real server is tested in test_ports_llama.py."""

import os
import stat
import sys

import pytest

from harness.ports.llama_server import LlamaServer, availability
from harness.ports.openai import EndpointError, OpenAIClient

FAKE_MAIN = """
import argparse, json, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

parser = argparse.ArgumentParser()
for name in ("model", "model_alias", "host", "port", "logits_all", "n_ctx", "n_threads",
             "n_threads_batch", "interrupt_requests"):
    parser.add_argument("--" + name)
args = parser.parse_args()
print("fake llama.cpp server", " ".join(sys.argv[1:]), flush=True)
if args.model_alias == "crash":
    sys.exit("error: failed to load model")

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"data": [{"id": args.model_alias}]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

HTTPServer((args.host, int(args.port)), Handler).serve_forever()
"""


@pytest.fixture
def fake(tmp_path):
    """A Python whose `llama_cpp.server` is the stand-in; and a GGUF file to name."""
    package = tmp_path / "site" / "llama_cpp"
    (package / "server").mkdir(parents=True)
    (package / "__init__.py").write_text("__version__ = '0.0-fake'\n")
    (package / "server" / "__init__.py").write_text("")
    (package / "server" / "app.py").write_text("")
    (package / "server" / "__main__.py").write_text(FAKE_MAIN)
    python = tmp_path / "python"
    python.write_text(f"#!/bin/sh\nPYTHONPATH={tmp_path / 'site'} exec {sys.executable} "
                      f'"$@"\n')
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    return str(python), gguf


def test_starts_answers_with_its_alias_logs_and_stops(fake, tmp_path):
    python, gguf = fake
    log = tmp_path / "logs" / "llama.log"
    with LlamaServer(gguf, log, python=python, alias="smollm2-135m") as server:
        assert server.info["served_models"] == ["smollm2-135m"]
        assert server.url.startswith("http://127.0.0.1:")
        pid = server.process.pid
    assert server.process.poll() is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    text = log.read_text()
    assert "fake llama.cpp server --model" in text and "--logits_all true" in text
    with pytest.raises(EndpointError, match="server not listening at"):
        OpenAIClient(server.url).health()


def test_a_server_that_exits_before_answering_names_its_log(fake, tmp_path):
    python, gguf = fake
    log = tmp_path / "llama.log"
    server = LlamaServer(gguf, log, python=python, alias="crash")
    with pytest.raises(RuntimeError) as error:
        server.start()
    assert str(error.value) == (
        f"llama.cpp server exited with code 1 before answering at {server.url}; "
        f"last log line: 'error: failed to load model' (log: {log})")


def test_a_missing_gguf_is_named(fake, tmp_path):
    python, _ = fake
    with pytest.raises(FileNotFoundError, match="nope.gguf: GGUF file not found"):
        LlamaServer(tmp_path / "nope.gguf", tmp_path / "log", python=python).start()


def test_availability_names_the_version_or_why_not(fake, tmp_path):
    python, _ = fake
    assert availability(python) == (True, "0.0-fake")
    broken = tmp_path / "broken"
    (broken / "llama_cpp").mkdir(parents=True)
    (broken / "llama_cpp" / "__init__.py").write_text("raise ImportError('libllama.so: no')\n")
    other = tmp_path / "python-broken"
    other.write_text(f"#!/bin/sh\nPYTHONPATH={broken} exec {sys.executable} \"$@\"\n")
    other.chmod(0o755)
    usable, why = availability(str(other))
    assert not usable and why.startswith(
        f"llama_cpp.server is not importable by {other} (ImportError: libllama.so: no)")
    usable, why = availability(str(tmp_path / "no-python"))
    assert not usable and why.startswith(f"{tmp_path / 'no-python'}: cannot run")
