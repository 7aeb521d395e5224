"""The suites run on ports that are not the engine: an OpenAI-compatible server (the test
server of tests/served_model.py, over a tiny model, with the faults it can add), an hf
directory and a plug-in runner; one record per case says which port ran it."""

import csv
import json
import textwrap

import pytest
import torch

from tests.conftest import REMOTE_CLASS, remote_code_checkpoint, tiny_checkpoint
from tests.served_model import running

pytest_plugins = ["pytester"]

MODEL = "alpaca2-tiny"
NUMERICS = ("copied_suites/numerics", "--model", MODEL, "--seqlen", "16")


def records(pytester, run_id: str) -> list[dict]:
    path = pytester.path / "reports" / run_id / "records-main.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def by_test(rows: list[dict]) -> dict[str, dict]:
    return {r["test"]: r for r in rows}


@pytest.fixture(scope="module")
def model_dir():
    return tiny_checkpoint(MODEL)


def served(suites, url, *args, run_id="served"):
    return suites.runpytest(*args, "--port", f"{MODEL}=openai", "--endpoint", url,
                            "--run-id", run_id)


def test_a_served_port_that_computes_as_the_reference_passes_and_records_its_port(
        suites, model_dir):
    with running(model_dir) as url:
        result = served(suites, url, *NUMERICS)
    result.assert_outcomes(passed=2, skipped=1)
    found = by_test(records(suites, "served"))
    teacher = found["test_teacher_forced"]
    assert teacher["case"] == f"{MODEL}-cpu-16bit-bs1-in16-out8-openai"
    assert teacher["max_abs_logprob_diff"] < 1e-6 and teacher["top1_agreement"] == 1.0
    assert teacher["positions"] == teacher["prompt_tokens"] - 1
    assert (teacher["port"], teacher["port_kind"], teacher["endpoint"]) == (
        "openai", "openai", url)
    assert teacher["served_model"] == "served-model"
    assert teacher["server"].startswith("served-model/1.0")
    assert found["test_greedy_generation"]["outcome"] == "passed"
    assert found["test_padding_invariance"]["reason"].startswith(
        "not run: a served port (openai) batches requests itself")


def test_a_shifted_echo_fails_by_name_and_is_corrected_only_when_asked(suites, model_dir):
    with running(model_dir, "--shift") as url:
        plain = served(suites, url, *NUMERICS, "-k", "teacher", run_id="shifted")
        fixed = served(suites, url, *NUMERICS, "-k", "teacher", "--fix-echo-shift",
                       run_id="fixed")
    plain.assert_outcomes(failed=1)
    (row,) = records(suites, "shifted")
    assert row["reason"].startswith("the port's prompt log-probabilities match the reference's "
                                    "one position later (offset +1)")
    assert row["echo_shift_corrected"] is False
    fixed.assert_outcomes(passed=1)
    (row,) = records(suites, "fixed")
    assert row["echo_shift_corrected"] is True and row["compared_from_token"] == 2
    assert row["max_abs_logprob_diff"] < 1e-6


def test_a_server_that_tokenizes_differently_is_named_at_the_first_difference(suites,
                                                                             model_dir):
    with running(model_dir, "--lowercase") as url:
        result = served(suites, url, *NUMERICS, "-k", "teacher")
    result.assert_outcomes(failed=1)
    (row,) = records(suites, "served")
    assert row["reason"].startswith("tokenizer mismatch at prompt token ")
    assert "the server echoed" in row["reason"] and "the reference tokenizer has" in row["reason"]


def test_a_served_failure_names_the_first_prompt_token_beyond_the_limit(suites, model_dir):
    with running(model_dir, "--drift-from", "9") as url:
        result = served(suites, url, *NUMERICS, "-k", "teacher")
    result.assert_outcomes(failed=1)
    (row,) = records(suites, "served")
    assert row["first_divergence_position"] == 9
    assert f"): prompt token 9 ({row['first_divergence_token']!r})" in row["failures"]


def test_nan_log_probabilities_fail_the_gate(suites, model_dir):
    with running(model_dir, "--nan") as url:
        result = served(suites, url, *NUMERICS, "-k", "teacher")
    result.assert_outcomes(failed=1)
    (row,) = records(suites, "served")
    assert row["reason"].startswith("max |d logprob| nan over the port's top-K")


def test_a_server_not_listening_is_a_start_up_error(suites):
    from harness.net import free_port

    url = f"http://127.0.0.1:{free_port()}/v1"
    result = served(suites, url, *NUMERICS)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    line = next(x for x in result.errlines if "server not listening" in x)
    assert line.startswith(f"ERROR: --port openai: server not listening at {url} (GET "
                           "/v1/models)")
    assert not (suites.path / "reports" / "served").exists()


def test_a_server_killed_mid_run_fails_that_case_by_endpoint_and_the_later_ones_fast(
        suites, model_dir):
    with running(model_dir, "--die-after", "1") as url:
        result = served(suites, url, *NUMERICS[:-1], "16,24,32", "-k", "teacher")
    result.assert_outcomes(failed=2, passed=1)
    rows = sorted(records(suites, "served"), key=lambda r: r["seqlen"])
    assert rows[0]["outcome"] == "passed"
    assert rows[1]["outcome"] == "error"
    assert f"{url}: connection dropped" in rows[1]["reason"]
    assert "POST /v1/completions (prompt" in rows[1]["reason"]
    assert "not tried" in rows[2]["reason"] and "the endpoint failed earlier" in rows[2]["reason"]


def test_perf_of_a_served_port_streams_at_each_concurrency_level(suites, model_dir):
    with running(model_dir) as url:
        result = served(suites, url, "copied_suites/perf", "--model", MODEL,
                        "--seqlen-in-pair", "16", "--seqlen-out-pair", "6", "--repeats", "2",
                        "--warmup", "0", "--concurrency", "1,2", "--perf-baseline", "none")
    result.assert_outcomes(passed=2)
    rows = {r["case"]: r for r in records(suites, "served")}
    one, two = (rows[f"{MODEL}-cpu-16bit-bs1-in16-out6-openai-c{c}"] for c in (1, 2))
    assert (one["completed"], two["completed"]) == (2, 4)
    for row in (one, two):
        assert 0 < row["median_ttft_ms"] <= row["p99_ttft_ms"]
        assert row["p50_itl_ms" if "p50_itl_ms" in row else "median_itl_ms"] > 0
        assert row["forward_first_token_time(ms)"] == row["median_ttft_ms"]
        assert row["output_throughput"] > 0 and row["request_throughput"] > 0
        assert row["total_output_tokens"] > 0
    csv_rows = list(csv.DictReader(open(suites.path / "reports" / "served" / "perf.csv")))
    assert {r["batch_size"] for r in csv_rows} == {"1", "2"}


def test_perf_fails_requests_the_server_cut_short(suites, model_dir):
    with running(model_dir, "--cut-streams") as url:
        result = served(suites, url, "copied_suites/perf", "--model", MODEL,
                        "--seqlen-in-pair", "16", "--seqlen-out-pair", "6", "--repeats", "2",
                        "--warmup", "0", "--concurrency", "2", "--perf-baseline", "none")
    result.assert_outcomes(failed=1)
    (row,) = records(suites, "served")
    assert row["interrupted_requests"] == 4
    assert row["reason"].startswith("4 of 4 requests ended with no finish_reason after 1 to 1 "
                                    "tokens of 6: the server cut them short")


def test_humaneval_and_multiple_choice_run_through_the_server(suites, model_dir):
    with running(model_dir) as url:
        result = served(suites, url, "copied_suites/accuracy", "--model", MODEL, "--task",
                        "ceval,humaneval", "--questions-per-subject", "1",
                        "--humaneval-problems", "2", "--accuracy-baseline", "none",
                        "--max-new-tokens", "24", "--allow-unsandboxed")
    found = by_test(records(suites, "served"))
    # A random tiny model does not list the answer letters among its top 20: a gate that
    # cannot read them fails (the real model's letters are listed; see test_ports_llama).
    assert found["test_multiple_choice"]["outcome"] == "failed"
    assert "questions with non-finite log-probabilities" in found["test_multiple_choice"][
        "reason"]
    humaneval = found["test_humaneval"]
    assert humaneval["outcome"] == "passed" and humaneval["problems"] == 2
    assert humaneval["port"] == "openai" and humaneval["served_model"] == "served-model"
    result.assert_outcomes(passed=1, failed=1)


def test_one_model_on_two_ports_runs_side_by_side_in_one_run(suites, model_dir):
    with running(model_dir) as url:
        result = suites.runpytest(*NUMERICS, "--dtype", "fp32", "--batch", "1", "-k", "teacher",
                                  "--port", f"{MODEL}=engine", "--port", f"{MODEL}=openai",
                                  "--endpoint", url, "--run-id", "both")
    result.assert_outcomes(passed=2)
    rows = {r["port"]: r for r in records(suites, "both")}
    assert rows["engine"]["case"] == f"{MODEL}-cpu-fp32-bs1-in16-out8"
    assert rows["openai"]["case"] == f"{MODEL}-cpu-16bit-bs1-in16-out8-openai"
    assert rows["openai"]["endpoint"] == url and "endpoint" not in rows["engine"]
    assert (rows["engine"]["port_kind"], rows["openai"]["port_kind"]) == ("engine", "openai")


def test_a_port_given_twice_for_a_model_is_a_start_up_error(suites):
    result = suites.runpytest(*NUMERICS, "--port", f"{MODEL}=hf", "--port", f"{MODEL}=hf")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert any(f"--port: hf is given twice for {MODEL}" in line for line in result.errlines)


@pytest.mark.parametrize("quirk", [(), ("--quiet-generated",)], ids=["generated", "echoed"])
def test_the_next_token_distribution_is_the_reference_one_by_either_request(model_dir, quirk):
    """Read off the generated token's log-probabilities, or, where the server lists none
    there, off the echo of the prompt and a probe token."""
    from transformers import AutoTokenizer

    from harness.ports.openai import OpenAIClient
    from harness.ports.options import PortSpec
    from harness.ports.served import ServedRunner
    from harness.reference_runner import ReferenceRunner

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    text = "The capital of France is"
    ids = tokenizer(text, return_tensors="pt").input_ids
    expected = torch.log_softmax(ReferenceRunner(model_dir).prefill(ids)[0].double(), -1)
    with running(model_dir, *quirk) as url:
        runner = ServedRunner(OpenAIClient(url), tokenizer, None, spec=PortSpec("openai"),
                              profile="16bit", logprobs=5)
        found = runner.next_distribution(text)
    assert found.keys() == set(expected.topk(5).indices.tolist())
    assert max(abs(v - expected[i].item()) for i, v in found.items()) < 1e-5


def test_hf_port_of_a_plain_directory_passes_numerics(suites):
    result = suites.runpytest(*NUMERICS, "--dtype", "fp32", "--batch", "2", "--port", "hf",
                              "--run-id", "hf")
    result.assert_outcomes(passed=3)
    rows = records(suites, "hf")
    assert {r["case"].rsplit("-", 1)[-1] for r in rows} == {"hf"}
    assert {(r["port"], r["port_kind"]) for r in rows} == {("hf", "hf")}
    assert by_test(rows)["test_teacher_forced"]["max_abs_diff"] <= 1e-5


def test_an_int8_dtype_on_an_hf_port_is_a_start_up_error(suites):
    result = suites.runpytest(*NUMERICS, "--dtype", "w8a8", "--port", "hf")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert any("--port hf: an hf port runs fp32, bf16 or fp16, not w8a8" in line
               for line in result.errlines)


def test_remote_code_needs_trust_at_start_up_and_runs_its_own_class_with_it(suites,
                                                                            tmp_path):
    remote = remote_code_checkpoint(tmp_path / "remote")  # alpaca2-tiny's weights
    args = (*NUMERICS, "--dtype", "fp32", "--batch", "2", "--port", f"{MODEL}=hf",
            "--model-path", f"{MODEL}={remote}")
    refused = suites.runpytest(*args)
    assert refused.ret == pytest.ExitCode.USAGE_ERROR
    assert any(f"--model-path {MODEL}: {remote / 'config.json'}: auto_map loads remote code "
               f"{REMOTE_CLASS}; pass --trust-remote-code" in line for line in refused.errlines)
    # In a process of its own: transformers' remote-code loading does not survive pytester's
    # in-process restoring of sys.modules between runs.
    trusted = suites.runpytest_subprocess(*args, "--trust-remote-code", "--run-id", "remote")
    trusted.assert_outcomes(passed=3)
    assert {r["port"] for r in records(suites, "remote")} == {"hf"}


def test_a_tensor_parallel_remote_code_directory_runs_each_rank_from_its_part_model(
        suites, tmp_path):
    from tests.test_ports_hf import TP_CLASS, cut_for_tp

    cut = cut_for_tp(tiny_checkpoint(MODEL), tmp_path / "cut", 2)
    args = (*NUMERICS, "--dtype", "fp32", "--batch", "2", "--port", f"{MODEL}=hf",
            "--model-path", f"{MODEL}={cut}", "--tp", "2")
    refused = suites.runpytest(*args)
    assert refused.ret == pytest.ExitCode.USAGE_ERROR
    assert any(f"--model-path {MODEL}: {cut / 'part_model' / '0' / 'config.json'}: auto_map "
               f"loads remote code {TP_CLASS}" in line for line in refused.errlines)
    result = suites.runpytest_subprocess(*args, "--trust-remote-code", "--run-id", "tp")
    result.assert_outcomes(passed=3)
    rows = by_test(records(suites, "tp"))
    teacher = rows["test_teacher_forced"]
    assert teacher["case"] == f"{MODEL}-cpu-fp32-bs2-in16-out8-hf-tp2"
    assert teacher["max_abs_diff"] <= 2e-5  # 1.04e-5 measured (split sums in another order)


PLUGIN = textwrap.dedent('''
    """A team's own runner: here transformers on the CPU, built by a factory."""
    from harness.reference_runner import ReferenceRunner

    calls = []


    def make(path, *, model, precision, hardware):
        calls.append((model, precision.dtype_name, hardware))
        return ReferenceRunner(path, precision)
''')


def test_a_plug_in_runner_by_import_path_and_by_entry_point(suites, monkeypatch):
    (suites.path / "team_runner.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(suites.path))
    one = (*NUMERICS, "--dtype", "fp32", "--batch", "1", "-k", "teacher")
    by_path = suites.runpytest(*one, "--port", f"{MODEL}=team_runner:make", "--run-id", "path")
    by_path.assert_outcomes(passed=1)
    (row,) = records(suites, "path")
    assert row["port"] == "team_runner:make" and row["case"].endswith("-team_runner:make")
    assert row["port_kind"] == "plugin"
    dist = suites.path / "team_runner-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: team-runner\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[llmgate.runners]\nteam = team_runner:make\n")
    by_name = suites.runpytest(*one, "--port", "team", "--run-id", "name")
    by_name.assert_outcomes(passed=1)
    (row,) = records(suites, "name")
    assert row["port"] == "team" and row["case"].endswith("-team")


@pytest.mark.parametrize("spec, expected", [
    ("nonsense", "--port nonsense: unknown port 'nonsense'; expected one of engine, hf, "
                 "openai, llama-cpp"),
    ("no_such_module:make", "--port no_such_module:make: cannot load no_such_module:make "
                            "(ModuleNotFoundError"),
    ("openai", "--port openai: an openai port needs --endpoint URL (or openai:URL)"),
    ("hf:/x", "--port hf:/x: hf takes no argument"),
    ("llama-cpp:/no/such.gguf", "--port llama-cpp:/no/such.gguf: GGUF file /no/such.gguf "
                                "not found"),
    ("nosuch=hf", "--port nosuch=hf: model 'nosuch' is unknown"),
])
def test_a_wrong_port_is_a_one_line_start_up_error(suites, spec, expected):
    result = suites.runpytest(*NUMERICS, "--port", spec)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert any(expected in line for line in result.errlines), result.errlines


def test_a_served_port_at_tp_2_is_a_start_up_error(suites):
    result = suites.runpytest(*NUMERICS, "--port", f"{MODEL}=llama-cpp", "--tp", "2")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert any(f"--port {MODEL}=llama-cpp: --tp 2 runs the engine or an hf port's "
               "part_model/{rank} directories" in line for line in result.errlines), \
        result.errlines
