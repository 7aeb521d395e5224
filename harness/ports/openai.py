"""The `openai` port's client: an OpenAI-compatible `/v1/completions` endpoint over HTTP.

Standard library only (urllib). Every failure is one `EndpointError` line naming the endpoint
and the request: connection refused, connection dropped (a server killed mid-run), timeout,
HTTP 4xx/5xx (with the server's own error message), malformed JSON, fewer log-probabilities
than asked. After a refused, dropped or timed-out request the client is marked broken and
every later request fails at once, so the cases after a dead server fail fast instead of each
waiting out its timeout.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit


class EndpointError(RuntimeError):
    """A request to the endpoint failed; the message names the endpoint and the request."""


class EndpointUnsupported(EndpointError):
    """The server answered but cannot do what was asked (e.g. echo prompt log-probabilities):
    the checks that need it are recorded as not run."""


@dataclass(frozen=True)
class Position:
    """One echoed prompt token: its text, its log-probability (None where the server gives
    none, e.g. the first token) and the top-K {token text: log-probability}."""

    token: str
    logprob: float | None
    top: dict[str, float]


@dataclass(frozen=True)
class Completion:
    text: str
    tokens: list[str] | None  # the generated tokens' texts, where the server lists them
    finish_reason: str | None


class OpenAIClient:
    """`base_url` ends in /v1 (e.g. http://127.0.0.1:8080/v1). `model`: the served model name
    sent with every request (default: the first one /v1/models lists). `api_key_env`: the
    environment variable holding the API key (sent as a bearer token)."""

    def __init__(self, base_url: str, model: str | None = None, *,
                 api_key_env: str | None = None, timeout: float = 60.0):
        self.base_url, self.model, self.timeout = base_url.rstrip("/"), model, timeout
        self.api_key = None
        if api_key_env:
            self.api_key = os.environ.get(api_key_env)
            if not self.api_key:
                raise EndpointError(f"--endpoint-api-key-env {api_key_env}: the environment "
                                    f"variable {api_key_env} is not set")
        self.info: dict = {"endpoint": self.base_url}  # what the server says of itself
        self.last_request: str | None = None
        self.broken: str | None = None

    # -- requests -----------------------------------------------------------------------

    def _url(self, path: str) -> str:
        """Paths starting with /v1/ are under base_url; others under the server root. The base
        URL's query (e.g. `?api-version=`) goes with every request."""
        parts = urlsplit(self.base_url)
        root = parts.path.rstrip("/").removesuffix("/v1")
        return urlunsplit(parts._replace(path=root + path))

    def _open(self, method: str, path: str, body: dict | None = None):
        self.last_request = f"{method} {path}" + (f" {_describe(body)}" if body else "")
        if self.broken:
            raise EndpointError(f"{self.base_url}: not tried ({self.last_request}): the "
                                f"endpoint failed earlier: {self.broken}")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self._url(path), data, headers, method=method)
        try:
            return urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as e:
            raise EndpointError(f"{self.base_url}: HTTP {e.code} for {self.last_request}: "
                                f"{_error_message(e)}") from None
        except urllib.error.URLError as e:
            raise self._transport_error(e.reason) from None
        except (OSError, http.client.HTTPException) as e:
            raise self._transport_error(e) from None

    def _transport_error(self, reason) -> EndpointError:
        if isinstance(reason, ConnectionRefusedError):
            what = f"server not listening at {self.base_url}"
        elif isinstance(reason, (TimeoutError, socket.timeout)):
            what = f"{self.base_url}: no answer within {self.timeout:g} s (--endpoint-timeout)"
        elif isinstance(reason, (ConnectionError, http.client.HTTPException)):
            what = f"{self.base_url}: connection dropped ({type(reason).__name__}: {reason})"
        else:
            what = f"{self.base_url}: {type(reason).__name__}: {reason}"
        self.broken = what
        return EndpointError(f"{what} ({self.last_request})")

    def _read(self, response) -> bytes:
        try:
            with response:
                return response.read()
        except (OSError, http.client.HTTPException) as e:
            raise self._transport_error(e) from None

    def _json(self, method: str, path: str, body: dict | None = None) -> dict:
        raw = self._read(self._open(method, path, body))
        try:
            data = json.loads(raw)
        except ValueError:
            raise EndpointError(f"{self.base_url}: malformed JSON in the answer to "
                                f"{self.last_request}: {raw[:80]!r}") from None
        if not isinstance(data, dict):
            raise EndpointError(f"{self.base_url}: expected a JSON object in the answer to "
                                f"{self.last_request}, got {type(data).__name__}")
        return data

    def completion(self, body: dict) -> dict:
        data = self._json("POST", "/v1/completions", {"model": self.model, **body})
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise EndpointError(f"{self.base_url}: no choices in the answer to "
                                f"{self.last_request}")
        return data

    # -- what the suites call -----------------------------------------------------------

    def health(self) -> dict:
        """Check the server answers and record what it says of itself (served models, the
        model used, its Server header and a version where it reports one)."""
        try:
            response = self._open("GET", "/v1/models")
        except EndpointError as e:
            if self.broken or "HTTP 404" not in str(e):
                raise
            response = self._open("GET", "/health")  # servers without /v1/models
        self.info["server"] = response.headers.get("Server")
        try:
            models = json.loads(self._read(response)).get("data") or []
            served = [m["id"] for m in models if isinstance(m, dict) and "id" in m]
        except (ValueError, AttributeError):
            served = []
        self.info["served_models"] = served
        if self.model is None and served:
            self.model = served[0]
        self.info["model"] = self.model
        try:  # vLLM answers GET /version; others 404, which says nothing about health
            self.info["version"] = self._json("GET", "/version").get("version")
        except EndpointError:
            if self.broken:
                raise
        return self.info

    def prompt_logprobs(self, prompt: str | list[int], k: int) -> list[Position]:
        """The echoed prompt, one Position per prompt token, with the top `k` log-probabilities
        of the distribution the server reports there."""
        data = self.completion({"prompt": prompt, "echo": True, "logprobs": k,
                                 "max_tokens": 1, "temperature": 0})
        logprobs = data["choices"][0].get("logprobs")
        if not isinstance(logprobs, dict) or not logprobs.get("tokens"):
            raise EndpointUnsupported(f"{self.base_url}: the answer to {self.last_request} "
                                      f"echoes no prompt log-probabilities")
        tokens, values = logprobs["tokens"], logprobs.get("token_logprobs") or []
        tops = logprobs.get("top_logprobs") or []
        # max_tokens is 1 (0 means "until the context ends" to some servers): cut the
        # generated token off at the prompt's length.
        length = len(prompt) if isinstance(prompt, list) else (data.get("usage") or {}).get(
            "prompt_tokens")
        if not isinstance(length, int) or not 0 < length <= len(tokens):
            raise EndpointError(f"{self.base_url}: cannot tell the prompt's tokens from the "
                                f"generated one in the answer to {self.last_request} (usage."
                                f"prompt_tokens {length!r}, {len(tokens)} tokens echoed)")
        if len(values) < length or len(tops) < length:
            raise EndpointError(f"{self.base_url}: {len(values)} token_logprobs and {len(tops)}"
                                f" top_logprobs for {length} prompt tokens in the answer to "
                                f"{self.last_request}")
        # A position may list fewer than k: top_logprobs is keyed by token text, so tokens
        # that print alike share one entry. A position listing nothing fails the comparison.
        return [Position(tokens[i], values[i], dict(tops[i] or {})) for i in range(length)]

    def next_logprobs(self, prompt: str | list[int], k: int) -> dict[str, float]:
        """The top `k` {token text: log-probability} of the next token after `prompt` (the
        first generated token's, temperature 0). `min_tokens` 1 (vLLM's and llama.cpp's
        servers take it) keeps a server from generating EOS there, which some answer with
        no log-probabilities at all; the values listed are those of the model's distribution
        (llama.cpp: equal to its echo's)."""
        data = self.completion({"prompt": prompt, "max_tokens": 1, "min_tokens": 1,
                                 "logprobs": k, "temperature": 0})
        logprobs = data["choices"][0].get("logprobs")
        tops = logprobs.get("top_logprobs") if isinstance(logprobs, dict) else None
        if not tops or not isinstance(tops[0], dict):
            raise EndpointUnsupported(f"{self.base_url}: the answer to {self.last_request} "
                                      "lists no top_logprobs for the generated token")
        return dict(tops[0])

    def greedy(self, prompt: str | list[int], n: int, stop: list[str] | None = None,
               tokens: bool = True, temperature: float = 0, seed: int | None = None) -> Completion:
        """Up to `n` tokens at `temperature` (0: greedy), and their texts if `tokens`."""
        body = {"prompt": prompt, "max_tokens": n, "temperature": temperature}
        if seed is not None:
            body["seed"] = seed
        if stop:
            body["stop"] = stop
        if tokens:
            body["logprobs"] = 1
        choice = self.completion(body)["choices"][0]
        listed = (choice.get("logprobs") or {}).get("tokens") if tokens else None
        return Completion(choice.get("text", ""), listed, choice.get("finish_reason"))

    def stream(self, prompt: str | list[int], n: int) -> Iterator[tuple[float, str, str | None]]:
        """(arrival time from time.perf_counter(), text, finish_reason) for each streamed
        chunk, temperature 0; a completed stream's last chunk names why it finished. Time the
        first chunk from just before calling next() on this iterator."""
        response = self._open("POST", "/v1/completions",
                              {"model": self.model, "prompt": prompt, "max_tokens": n,
                               "temperature": 0, "stream": True})
        request = self.last_request
        with response:
            while True:
                try:
                    line = response.readline()
                except (OSError, http.client.HTTPException) as e:
                    raise self._transport_error(e) from None
                arrived = time.perf_counter()
                if not line:
                    raise self._transport_error(ConnectionResetError(
                        "the stream ended without data: [DONE]"))
                line = line.strip()
                if not line.startswith(b"data:"):
                    continue  # blank separators, comments, event names
                payload = line.removeprefix(b"data:").strip()
                if payload == b"[DONE]":
                    return
                try:
                    choice = json.loads(payload)["choices"][0]
                    text, finish = choice.get("text", ""), choice.get("finish_reason")
                except (ValueError, KeyError, IndexError, TypeError, AttributeError):
                    raise EndpointError(f"{self.base_url}: malformed JSON in a streamed chunk "
                                        f"of {request}: {payload[:80]!r}") from None
                yield arrived, text, finish


def _describe(body: dict) -> str:
    """A request body in one short line: the prompt shortened, the other fields as sent."""
    prompt = body.get("prompt")
    shown = (f"{len(prompt)} token ids" if isinstance(prompt, list)
             else repr(prompt if len(prompt or "") <= 40 else prompt[:37] + "..."))
    rest = ", ".join(f"{k} {v}" for k, v in body.items() if k not in ("prompt", "model"))
    return f"(prompt {shown}" + (f", {rest})" if rest else ")")


def _error_message(error: urllib.error.HTTPError) -> str:
    """The server's own error message: OpenAI's {"error": {"message"}}, FastAPI's {"detail"},
    or the start of the body."""
    raw = error.read()
    try:
        data = json.loads(raw)
        inner = data.get("error", data.get("detail"))
        message = inner.get("message", inner) if isinstance(inner, dict) else inner
        if message:
            return " ".join(str(message).split())
    except (ValueError, AttributeError):
        pass
    return " ".join(raw[:200].decode(errors="replace").split()) or error.reason
