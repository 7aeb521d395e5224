"""An OpenAI-compatible `/v1/completions` server over a transformers model, for tests.

    python -m tests.served_model --model DIR --port N [--shift] [--lowercase] [--nan]
                                 [--quiet-generated] [--cut-streams] [--die-after N]
                                 [--drift-from N] [--first-token-ms MS] [--token-ms MS]
                                 [--slots N]

Serves what the openai port asks of a real server: echo with `logprobs=K` (per prompt token
its log-probability and the top-K of the distribution before it), greedy or seeded sampled
completions with stop sequences, streaming (server-sent events, one chunk per token) and
GET /v1/models. It computes with the model in float32 on the CPU, so its numbers equal the
reference's; the flags add the faults the suites must catch: `--shift` echoes each prompt
token with the distribution computed at it (llama.cpp's server's bug), `--lowercase`
tokenizes a lower-cased prompt (a tokenizer that differs from the reference's), `--nan`
answers NaN log-probabilities, `--quiet-generated` lists no log-probabilities for generated
tokens (as some servers do for EOS), `--cut-streams` ends every stream after its first chunk
with no finish_reason (as llama-cpp-python's server cuts a stream another request
interrupts), `--die-after N` exits (as if killed) on its N+1-th completion
request, `--drift-from N` sharpens (doubles the logits of) every distribution from prompt
token N on. For load tests, timing is made deterministic: `--first-token-ms MS` sleeps MS
before a stream's first chunk and `--token-ms MS` before each later one (after the tokens are
computed, so a request's TTFT is at least MS and each gap at least its MS), and `--slots N`
serves at most N completion requests at once (a semaphore; the others queue, as a server's
batch slots make them). `running(...)` starts it in a process of its own for a test.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import torch
import transformers


class Model:
    def __init__(self, path: str, shift: bool, lowercase: bool, nan: bool,
                 quiet_generated: bool = False, cut_streams: bool = False,
                 drift_from: int | None = None, first_token_ms: float = 0.0,
                 token_ms: float = 0.0):
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        self.model = transformers.AutoModelForCausalLM.from_pretrained(
            path, dtype=torch.float32).eval()
        self.shift, self.lowercase, self.nan = shift, lowercase, nan
        self.quiet_generated, self.cut_streams = quiet_generated, cut_streams
        self.drift_from = drift_from
        self.first_token_ms, self.token_ms = first_token_ms, token_ms
        self.lock = threading.Lock()

    def ids(self, prompt) -> list[int]:
        if isinstance(prompt, list):
            return prompt
        return self.tokenizer(prompt.lower() if self.lowercase else prompt).input_ids

    @torch.inference_mode()
    def logprobs(self, ids: list[int], last: bool = False) -> torch.Tensor:
        """Log-probabilities at every position of `ids` (`last`: the last one only)."""
        with self.lock:
            logits = self.model(torch.tensor([ids])).logits[0]
        if self.drift_from is not None:  # prompt token N's distribution is row N - 1
            logits[self.drift_from - 1:] *= 2
        out = torch.log_softmax((logits[-1:] if last else logits).double(), -1)
        return out * float("nan") if self.nan else out

    def piece(self, token: int) -> str:
        return self.tokenizer.decode([token])

    def top(self, row: torch.Tensor, k: int) -> dict[str, float]:
        values, ids = row.topk(k)
        return {self.piece(i): v for i, v in zip(ids.tolist(), values.tolist())}

    def echo(self, ids: list[int], k: int) -> dict:
        lp = self.logprobs(ids)
        before = [None] + [lp[i if self.shift else i - 1] for i in range(1, len(ids))]
        return {"tokens": [self.piece(i) for i in ids],
                "token_logprobs": [None if r is None else r[t].item()
                                   for r, t in zip(before, ids)],
                "top_logprobs": [None if r is None else self.top(r, k) for r in before]}

    def generate(self, ids: list[int], body: dict):
        """(token, its log-prob row) for each new token, stopping at EOS, a stop sequence
        or max_tokens."""
        ids, text = list(ids), ""
        temperature = body.get("temperature") or 0
        generator = torch.Generator().manual_seed(int(body.get("seed") or 0))
        for produced in range(int(body.get("max_tokens") or 16)):
            row = self.logprobs(ids, last=True)[-1]
            if temperature:
                token = torch.multinomial((row / temperature).softmax(-1), 1,
                                          generator=generator).item()
            else:
                token = int(row.nan_to_num(nan=0).argmax())
            if token == self.tokenizer.eos_token_id:
                if produced >= int(body.get("min_tokens") or 0):
                    return
                token = int(row.nan_to_num(nan=0).topk(2).indices[1])  # the best but EOS
            ids.append(token)
            text += self.piece(token)
            yield token, row
            if any(s in text for s in body.get("stop") or []):
                return


def serve(model: Model, port: int, die_after: int | None = None,
          slots: int | None = None) -> ThreadingHTTPServer:
    completions = []
    busy = threading.BoundedSemaphore(slots) if slots else contextlib.nullcontext()

    class Handler(BaseHTTPRequestHandler):
        server_version = "served-model/1.0"

        def log_message(self, *args):
            pass

        def send_json(self, data, status=200):
            payload = json.dumps(data).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_GET(self):
            if self.path == "/v1/models":
                return self.send_json({"object": "list", "data": [{"id": "served-model"}]})
            self.send_json({"error": {"message": f"no route {self.path}"}}, status=404)

        def do_POST(self):
            try:
                with busy:
                    self.complete()
            except Exception as e:  # a real server answers 500 with its message
                self.send_json({"error": {"message": f"{type(e).__name__}: {e}"}}, 500)

        def complete(self):
            if self.path != "/v1/completions":
                return self.send_json({"error": {"message": f"no route {self.path}"}}, 404)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            completions.append(1)
            if die_after is not None and len(completions) > die_after:
                os._exit(1)  # as a server killed mid-run: the connection drops
            ids = model.ids(body["prompt"])
            k = body.get("logprobs")
            if body.get("stream"):
                return self.stream(ids, body)
            new = list(model.generate(ids, body))
            logprobs = None
            if k is not None and model.quiet_generated and not body.get("echo"):
                logprobs = {"tokens": [], "token_logprobs": [], "top_logprobs": []}
            elif k is not None:
                logprobs = model.echo(ids, k) if body.get("echo") else {
                    "tokens": [], "token_logprobs": [], "top_logprobs": []}
                logprobs["tokens"] += [model.piece(t) for t, _ in new]
                logprobs["token_logprobs"] += [r[t].item() for t, r in new]
                logprobs["top_logprobs"] += [model.top(r, k) for _, r in new]
            text = "".join(model.piece(t) for t, _ in new)
            stopped = len(new) < int(body.get("max_tokens") or 16)
            self.send_json({"object": "text_completion", "model": "served-model", "choices": [
                {"index": 0, "text": (model.tokenizer.decode(ids) if body.get("echo") else "")
                 + text, "logprobs": logprobs,
                 "finish_reason": "stop" if stopped else "length"}],
                "usage": {"prompt_tokens": len(ids), "completion_tokens": len(new)}})

        def stream(self, ids, body):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            n = int(body.get("max_tokens") or 16)
            new = list(model.generate(ids, body))[:1 if model.cut_streams else None]
            for i, (token, _) in enumerate(new):
                time.sleep((model.token_ms if i else model.first_token_ms) / 1e3)
                finish = None if model.cut_streams or i < len(new) - 1 else (
                    "length" if len(new) == n else "stop")
                chunk = {"choices": [{"index": 0, "text": model.piece(token),
                                      "finish_reason": finish}]}
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.flush()
            self.wfile.write(b"data: [DONE]\n\n")

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, required=True)
    for quirk in ("shift", "lowercase", "nan", "quiet-generated", "cut-streams"):
        parser.add_argument(f"--{quirk}", action="store_true")
    parser.add_argument("--die-after", type=int)
    parser.add_argument("--drift-from", type=int,
                        help="sharpen every distribution from this prompt token on")
    parser.add_argument("--first-token-ms", type=float, default=0.0,
                        help="sleep this long before a stream's first chunk")
    parser.add_argument("--token-ms", type=float, default=0.0,
                        help="sleep this long before each later chunk of a stream")
    parser.add_argument("--slots", type=int, help="serve at most this many requests at once")
    args = parser.parse_args()
    serve(Model(args.model, args.shift, args.lowercase, args.nan, args.quiet_generated,
                args.cut_streams, args.drift_from, args.first_token_ms, args.token_ms),
          args.port, args.die_after, args.slots).serve_forever()


@contextlib.contextmanager
def running(model: str | Path, *flags: str, timeout: float = 120.0):
    """`with running(dir, "--shift") as url:` the server answers at url (.../v1)."""
    from harness.net import free_port

    port = free_port()
    root = Path(__file__).resolve().parent.parent
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.served_model", "--model", str(model), "--port",
         str(port), *flags], cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"tests.served_model exited with {process.returncode}")
            try:
                urllib.request.urlopen(f"{url}/models", timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield url
    finally:
        process.kill()
        process.wait()


if __name__ == "__main__":
    main()
