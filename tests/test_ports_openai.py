"""The openai port's client against a stub server in this process (127.0.0.1, a free port)."""

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from harness.net import free_port
from harness.ports.openai import EndpointError, EndpointUnsupported, OpenAIClient

PROMPT_TOKENS = ["The", " capital", " of"]
ECHO = {"tokens": PROMPT_TOKENS + [" France"], "token_logprobs": [None, -5.0, -0.5, -0.2],
        "top_logprobs": [None, {" capital": -5.0, " city": -1.0},
                         {" of": -0.5, " is": -2.0}, {" France": -0.2, " the": -3.0}]}


def completion(logprobs=ECHO, prompt_tokens=3, text=" France"):
    return {"choices": [{"text": text, "logprobs": logprobs, "finish_reason": "length"}],
            "usage": {"prompt_tokens": prompt_tokens}}


class Stub:
    """Routes "METHOD /path" -> handler(request, body); records the requests it got."""

    def __init__(self):
        self.routes = {"GET /v1/models": lambda r, b: r.send_json(
            {"object": "list", "data": [{"id": "stub-model"}]})}
        self.requests = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "stub-server/1.2"

            def log_message(self, *args):
                pass

            def send_json(self, data, status=200, raw=None):
                body = raw if raw is not None else json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def handle_any(self, method):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                stub.requests.append((method, self.path, body, dict(self.headers)))
                route = stub.routes.get(f"{method} {self.path}")
                if route is None:
                    return self.send_json({"detail": "Not Found"}, status=404)
                route(self, body)

            def do_GET(self):
                self.handle_any("GET")

            def do_POST(self):
                self.handle_any("POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub():
    server = Stub()
    yield server
    server.close()


def on_completions(stub, handler):
    stub.routes["POST /v1/completions"] = handler


def one_line(error) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_health_records_what_the_server_says_of_itself(stub):
    stub.routes["GET /version"] = lambda r, b: r.send_json({"version": "0.9.1"})
    client = OpenAIClient(stub.url)
    info = client.health()
    assert info == {"endpoint": stub.url, "server": info["server"],
                    "served_models": ["stub-model"], "model": "stub-model", "version": "0.9.1"}
    assert info["server"].startswith("stub-server/1.2")


def test_health_falls_back_to_slash_health_and_keeps_a_given_model(stub):
    del stub.routes["GET /v1/models"]
    stub.routes["GET /health"] = lambda r, b: r.send_json({"status": "ok"})
    client = OpenAIClient(stub.url, "mine")
    info = client.health()
    assert info["model"] == "mine" and info["served_models"] == [] and "version" not in info
    assert [path for _, path, _, _ in stub.requests] == ["/v1/models", "/health", "/version"]


def test_not_listening():
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(EndpointError) as error:
        OpenAIClient(url).health()
    assert one_line(error) == f"server not listening at {url} (GET /v1/models)"


def test_prompt_logprobs_sends_echo_and_cuts_the_generated_token(stub):
    on_completions(stub, lambda r, b: r.send_json(completion()))
    client = OpenAIClient(stub.url, "m")
    positions = client.prompt_logprobs("The capital of", 2)
    assert [p.token for p in positions] == PROMPT_TOKENS
    assert [p.logprob for p in positions] == [None, -5.0, -0.5]
    assert positions[0].top == {} and positions[2].top == {" of": -0.5, " is": -2.0}
    _, _, body, _ = stub.requests[-1]
    assert body == {"model": "m", "prompt": "The capital of", "echo": True, "logprobs": 2,
                    "max_tokens": 1, "temperature": 0}


def test_prompt_logprobs_of_token_ids_uses_their_count(stub):
    on_completions(stub, lambda r, b: r.send_json(completion(prompt_tokens=None)))
    positions = OpenAIClient(stub.url, "m").prompt_logprobs([1, 2], 2)
    assert [p.token for p in positions] == ["The", " capital"]


def test_fewer_logprobs_than_asked_are_kept_as_listed(stub):
    # top_logprobs is keyed by token text: tokens that print alike share one entry, so a
    # server may list fewer than asked; what it listed is compared, nothing is invented.
    on_completions(stub, lambda r, b: r.send_json(completion()))
    positions = OpenAIClient(stub.url, "m").prompt_logprobs("The capital of", 5)
    assert positions[2].top == {" of": -0.5, " is": -2.0}


def test_a_server_that_does_not_echo_logprobs_is_unsupported_not_broken(stub):
    on_completions(stub, lambda r, b: r.send_json(completion(logprobs=None)))
    client = OpenAIClient(stub.url, "m")
    with pytest.raises(EndpointUnsupported, match="echoes no prompt log-probabilities"):
        client.prompt_logprobs("The capital of", 2)
    assert client.greedy("The capital of", 1, tokens=False).text == " France"


@pytest.mark.parametrize("status, body, expected", [
    (500, {"error": {"message": "CUDA out of\nmemory", "type": "server_error"}},
     "HTTP 500 for POST /v1/completions (prompt 'x', max_tokens 4, temperature 0, "
     "logprobs 1): CUDA out of memory"),
    (400, {"detail": "logprobs must be <= 20"}, "HTTP 400 for POST /v1/completions"),
    (422, None, "HTTP 422 for POST /v1/completions (prompt 'x', max_tokens 4, temperature 0, "
     "logprobs 1): not json at all"),
])
def test_http_errors_carry_the_servers_message(stub, status, body, expected):
    raw = b"not json\n at all" if body is None else None
    on_completions(stub, lambda r, b: r.send_json(body, status=status, raw=raw))
    client = OpenAIClient(stub.url, "m")
    with pytest.raises(EndpointError) as error:
        client.greedy("x", 4)
    assert expected in one_line(error)
    assert (body or {}).get("detail", "") in str(error.value)
    assert client.broken is None  # a refused request says nothing about the next one


def test_malformed_json(stub):
    on_completions(stub, lambda r, b: r.send_json(None, raw=b'{"choices": [{"text": "Pa'))
    with pytest.raises(EndpointError) as error:
        OpenAIClient(stub.url, "m").greedy("x", 4)
    assert one_line(error).startswith(f"{stub.url}: malformed JSON in the answer to POST "
                                      "/v1/completions (prompt 'x'")


def test_no_choices(stub):
    on_completions(stub, lambda r, b: r.send_json({"choices": []}))
    with pytest.raises(EndpointError, match="no choices in the answer to POST /v1/completions"):
        OpenAIClient(stub.url, "m").greedy("x", 4)


def test_timeout_then_later_requests_fail_fast(stub):
    def slow(request, body):
        time.sleep(1.5)
        request.send_json(completion())
    on_completions(stub, slow)
    client = OpenAIClient(stub.url, "m", timeout=0.3)
    with pytest.raises(EndpointError) as error:
        client.greedy("x", 4)
    assert one_line(error).startswith(f"{stub.url}: no answer within 0.3 s (--endpoint-timeout)"
                                      " (POST /v1/completions (prompt 'x'")
    served = len(stub.requests)
    with pytest.raises(EndpointError) as error:
        client.prompt_logprobs("y", 2)
    assert one_line(error).startswith(
        f"{stub.url}: not tried (POST /v1/completions (prompt 'y'")
    assert "the endpoint failed earlier: " in str(error.value)
    assert len(stub.requests) == served  # nothing was sent


def test_connection_dropped_mid_request(stub):
    def die(request, body):  # as a killed server: the socket closes with no answer
        request.close_connection = True
        request.connection.shutdown(socket.SHUT_RDWR)
    on_completions(stub, die)
    client = OpenAIClient(stub.url, "m")
    with pytest.raises(EndpointError) as error:
        client.prompt_logprobs("The capital of", 2)
    assert one_line(error).startswith(f"{stub.url}: connection dropped (")
    assert "(POST /v1/completions (prompt 'The capital of', echo True" in str(error.value)
    assert client.last_request.startswith("POST /v1/completions (prompt 'The capital of'")
    with pytest.raises(EndpointError, match="the endpoint failed earlier: .*connection dropped"):
        client.greedy("x", 1)


def sse(request, chunks, done=True, pause=0.05):
    request.send_response(200)
    request.send_header("Content-Type", "text/event-stream")
    request.end_headers()
    for chunk in chunks:
        request.wfile.write(chunk if isinstance(chunk, bytes) else
                            f"data: {json.dumps({'choices': [{'text': chunk}]})}\n\n".encode())
        request.wfile.flush()
        time.sleep(pause)
    if done:
        request.wfile.write(b"data: [DONE]\n\n")
    request.close_connection = True


def test_stream_yields_each_chunk_with_its_arrival_time(stub):
    on_completions(stub, lambda r, b: sse(r, [" Paris", ".", b": keep-alive\n\n", " It"]))
    client = OpenAIClient(stub.url, "m")
    chunks = list(client.stream("The capital of France is", 3))
    assert [text for _, text, _ in chunks] == [" Paris", ".", " It"]
    times = [t for t, _, _ in chunks]
    assert times == sorted(times) and times[-1] - times[0] > 0.05
    _, _, body, _ = stub.requests[-1]
    assert body["stream"] is True and body["temperature"] == 0 and body["max_tokens"] == 3


@pytest.mark.parametrize("chunks, done, expected", [
    ([" Paris", b"data: {not json\n\n"], True, "malformed JSON in a streamed chunk of POST "),
    ([" Paris"], False, "connection dropped (ConnectionResetError: the stream ended without "
     "data: [DONE])"),
])
def test_stream_errors(stub, chunks, done, expected):
    on_completions(stub, lambda r, b: sse(r, chunks, done=done))
    stream = OpenAIClient(stub.url, "m").stream("The capital of France is", 3)
    assert next(stream)[1] == " Paris"
    with pytest.raises(EndpointError) as error:
        next(stream)
    assert expected in one_line(error)


def test_greedy_returns_text_and_tokens_with_stop_sequences(stub):
    on_completions(stub, lambda r, b: r.send_json(
        completion(logprobs={"tokens": [" Paris", "."]}, text=" Paris.")))
    result = OpenAIClient(stub.url, "m").greedy("The capital of France is", 8, stop=["\n"])
    assert (result.text, result.tokens, result.finish_reason) == (" Paris.", [" Paris", "."],
                                                                  "length")
    _, _, body, _ = stub.requests[-1]
    assert body["stop"] == ["\n"] and body["temperature"] == 0 and body["logprobs"] == 1


def test_api_key_from_the_named_environment_variable(stub, monkeypatch):
    monkeypatch.setenv("MY_KEY", "sekrit")
    OpenAIClient(stub.url, api_key_env="MY_KEY").health()
    assert stub.requests[0][3]["Authorization"] == "Bearer sekrit"
    monkeypatch.delenv("MY_KEY")
    with pytest.raises(EndpointError, match="^--endpoint-api-key-env MY_KEY: the environment "
                       "variable MY_KEY is not set$"):
        OpenAIClient(stub.url, api_key_env="MY_KEY")
