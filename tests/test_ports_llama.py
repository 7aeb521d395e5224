"""The real port: llama.cpp (llama-cpp-python's server) serving the shipped SmolLM2-135M Q4_1
GGUF, checked with the openai client and the top-K comparison. Skipped, with the reason,
where llama-cpp-python[server] is not built (see harness/ports/llama_server.py)."""

import json

import pytest
import torch
from transformers import AutoTokenizer

from harness.ports.llama_server import LlamaServer, availability, shipped_gguf
from harness.ports.openai import EndpointError, OpenAIClient
from harness.ports.topk import align, piece_ids, token_mismatch, topk_from_entries, topk_verdict
from harness.reference_runner import ReferenceRunner
from tests.conftest import tiny_checkpoint

PROMPT = "The capital of France is"
K = 5


def start_server(tmp_path_factory, name):
    usable, why = availability()
    if not usable:
        pytest.skip(why)
    log = tmp_path_factory.mktemp("llama") / f"{name}.log"
    server = LlamaServer(shipped_gguf(), log)
    server.start()
    return server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = start_server(tmp_path_factory, "llama-server")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def reference():
    path = tiny_checkpoint("smollm2-135m")
    return ReferenceRunner(path), AutoTokenizer.from_pretrained(path)


def test_echo_is_tokenized_as_the_reference_does(server, reference):
    _, tokenizer = reference
    positions = OpenAIClient(server.url).prompt_logprobs(PROMPT, K)
    expected = [tokenizer.decode([i]) for i in tokenizer(PROMPT)["input_ids"]]
    assert token_mismatch([p.token for p in positions], expected) is None


def test_the_shifted_prompt_logprobs_fail_by_name(server, reference):
    """llama.cpp's server pairs prompt token i with the distribution computed at token i
    (the one predicting i + 1): the comparison must say so, not pass and not misalign."""
    runner, tokenizer = reference
    positions = OpenAIClient(server.url).prompt_logprobs(PROMPT, K)
    ids = torch.tensor([tokenizer(PROMPT)["input_ids"]])
    logits = runner.prefill(ids, all_logits=True)[0]
    port = topk_from_entries([p.top for p in positions], piece_ids(tokenizer))
    result = topk_verdict(*align(logits, port), max_abs_diff_limit=1.0, top1_limit=0.0,
                          kl_limit=10.0, tail_slack=1.0)
    assert not result.passed
    assert result.failures[0].startswith("the port's prompt log-probabilities match the "
                                         "reference's one position later (offset +1)")


def test_greedy_and_stream_agree(server):
    client = OpenAIClient(server.url)
    greedy = client.greedy(PROMPT, 8)
    streamed = "".join(text for _, text, _ in client.stream(PROMPT, 8))
    assert greedy.text and greedy.text == streamed


def test_a_killed_server_fails_the_request_then_fails_fast(tmp_path_factory):
    server = start_server(tmp_path_factory, "killed")
    client = OpenAIClient(server.url)
    client.health()
    server.kill()
    with pytest.raises(EndpointError, match=rf"server not listening at {server.url} \(POST "
                       r"/v1/completions \(prompt 'The capital of France is', echo True"):
        client.prompt_logprobs(PROMPT, K)
    with pytest.raises(EndpointError, match="not tried .* the endpoint failed earlier"):
        client.greedy(PROMPT, 1)


# -- the suites on the llama-cpp port: started by the run, its log kept in the run --------

pytest_plugins = ["pytester"]

SMOLLM = ("--model", "smollm2-135m", "--port", "smollm2-135m=llama-cpp")


def suite_rows(pytester, run_id: str) -> dict[str, dict]:
    path = pytester.path / "reports" / run_id / "records-main.jsonl"
    return {r["test"]: r for r in map(json.loads, path.read_text().splitlines())}


@pytest.fixture
def llama_suites(suites):
    usable, why = availability()
    if not usable:
        pytest.skip(why)
    return suites


def test_the_numerics_suite_fails_llama_cpp_by_its_shift_and_passes_it_realigned(
        llama_suites):
    args = ("copied_suites/numerics", *SMOLLM, "--seqlen", "32", "-k", "teacher")
    plain = llama_suites.runpytest(*args, "--run-id", "plain")
    fixed = llama_suites.runpytest(*args, "--fix-echo-shift", "--run-id", "fixed")
    plain.assert_outcomes(failed=1)
    row = suite_rows(llama_suites, "plain")["test_teacher_forced"]
    assert row["case"] == "smollm2-135m-cpu-4bit-bs1-in32-out8-llama-cpp"
    assert row["reason"].startswith("the port's prompt log-probabilities match the "
                                    "reference's one position later (offset +1)")
    assert row["port_profile"] == "4bit" and row["echo_shift_corrected"] is False
    fixed.assert_outcomes(passed=1)
    row = suite_rows(llama_suites, "fixed")["test_teacher_forced"]
    assert row["echo_shift_corrected"] is True and row["top1_agreement"] >= 0.9
    log = llama_suites.path / "reports" / "fixed" / "llama-cpp-smollm2-135m.log"
    assert row["server_log"] == str(log) and "POST /v1/completions" in log.read_text()


def test_mmlu_through_llama_cpp_is_gated_against_a_reference_baseline(llama_suites):
    args = ("copied_suites/accuracy", "--model", "smollm2-135m", "--task", "mmlu",
            "--questions-per-subject", "1", "--baselines-dir", str(llama_suites.path / "bl"))
    (llama_suites.path / "bl").mkdir()
    reference = llama_suites.runpytest(*args, "--accuracy-runner", "reference",
                                       "--accuracy-baseline", "none", "--run-id", "ref")
    reference.assert_outcomes(passed=1)
    from harness.baselines import save_ours

    save_ours(llama_suites.path / "reports" / "ref", "ref", "accuracy",
              llama_suites.path / "bl")
    served = llama_suites.runpytest(*args, "--port", "smollm2-135m=llama-cpp",
                                    "--accuracy-baseline", "ref", "--run-id", "served")
    served.assert_outcomes(passed=1)
    row = suite_rows(llama_suites, "served")["test_multiple_choice"]
    assert row["questions"] == 57 and row["port"] == "llama-cpp"
    overall = next(c for c in row["comparisons"] if c["category"] == "overall")
    assert overall["baseline"] == "ref" and overall["gated"]
