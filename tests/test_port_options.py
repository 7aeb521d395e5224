"""What `--port` is given is checked at start-up, and what a port runs is said: int8 dtypes on a
plug-in port, a port for a model the run does not select, openai URLs, hf directories that
transformers cannot load."""

import json
import shutil
import textwrap

import pytest

from tests.conftest import tiny_checkpoint

pytest_plugins = ["pytester"]

MODEL = "alpaca2-tiny"
NUMERICS = ("copied_suites/numerics", "--model", MODEL, "--seqlen", "16", "--batch", "1",
            "-k", "teacher")

# A team's W8A8 port in miniature: transformers fake-quantized to the scheme the factory is
# given (a float precision leaves it as it is).
W8A8_PLUGIN = textwrap.dedent('''
    from harness.reference_runner import ReferenceRunner


    class TeamW8A8(ReferenceRunner):
        """transformers with int8 linear layers simulated, as our NPU kernels compute."""


    def make(path, *, model, precision, hardware):
        return TeamW8A8(path, precision)
''')


def records(pytester, run_id: str) -> list[dict]:
    path = pytester.path / "reports" / run_id / "records-main.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def usage_error(result, expected: str) -> None:
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.errlines
    assert any(expected in line for line in result.errlines), result.errlines
    assert not any("INTERNALERROR" in line for line in result.errlines)


@pytest.fixture
def team_runner(suites, monkeypatch):
    (suites.path / "team_w8a8.py").write_text(W8A8_PLUGIN)
    monkeypatch.syspath_prepend(str(suites.path))
    return "team_w8a8:make"


# --- 8: int8 dtypes on plug-in ports; never dropped without a word

def test_a_plug_in_port_runs_an_int8_dtype_and_is_judged(suites, team_runner):
    result = suites.runpytest(*NUMERICS, "--dtype", "w8a8", "--port", f"{MODEL}={team_runner}",
                              "--run-id", "w8a8")
    result.assert_outcomes(passed=1)
    (row,) = records(suites, "w8a8")
    assert row["case"] == f"{MODEL}-cpu-w8a8-bs1-in16-out8-{team_runner}"
    assert (row["dtype"], row["port_kind"], row["outcome"]) == ("w8a8", "plugin", "passed")
    # Judged by the int8 rule against the fake-quant reference; the factory was given the
    # scheme (a float port would have no int8 error: a mean KL of 0, not the reference's).
    assert row["rule"].startswith("w8a8: mean KL <=") and row["mean_kl"] <= row["limit"]
    assert row["mean_kl"] == pytest.approx(row["fake_quant_mean_kl"], rel=1e-3)
    assert row["fake_quant_mean_kl"] > 1e-4


def test_default_dtypes_keep_int8_on_a_plug_in_and_say_why_an_hf_port_skips_them(
        suites, team_runner):
    result = suites.runpytest(*NUMERICS, "--port", f"{MODEL}={team_runner}",
                              "--port", f"{MODEL}=hf", "--run-id", "defaults")
    rows = {(r["port"], r["dtype"]): r for r in records(suites, "defaults")}
    dtypes = ("fp32", "bf16", "w8a16", "w8a8")
    assert {d for p, d in rows if p == team_runner} == set(dtypes)
    assert {d for p, d in rows if p == "hf"} == set(dtypes)
    for dtype in ("w8a16", "w8a8"):
        assert rows[(team_runner, dtype)]["outcome"] == "passed"
        skipped = rows[("hf", dtype)]
        assert skipped["outcome"] == "skipped"
        assert skipped["reason"] == (f"an hf port runs fp32, bf16 or fp16, not {dtype} "
                                     "(int8 runs on the engine or a plug-in port)")
    result.assert_outcomes(passed=6, skipped=2)


# --- 9: a port for a model the run does not select

@pytest.mark.parametrize("args, expected", [
    (("--model", "qwen-tiny", "--port", "falcon-tiny=hf"),
     "--port falcon-tiny=hf is given but --model does not select falcon-tiny; add --model "
     "falcon-tiny"),
    (("--port", "qwen-7b=hf"),
     "--port qwen-7b=hf is given but --model does not select qwen-7b (default: the embedded "
     "models); add --model qwen-7b"),
])
def test_a_port_for_a_model_the_run_does_not_select_is_a_usage_error(suites, args, expected):
    usage_error(suites.runpytest("copied_suites/numerics", *args), expected)


# --- 10: openai URLs

@pytest.mark.parametrize("option, expected", [
    (("--port", "openai:localhost"),
     "--port openai:localhost: expected an http:// or https:// URL such as "
     "http://127.0.0.1:8080/v1, not 'localhost'"),
    (("--port", "openai:http://[::1/v1"),
     "--port openai:http://[::1/v1: malformed URL 'http://[::1/v1' (Invalid IPv6 URL)"),
    (("--port", "openai:http://127.0.0.1:99999/v1"),
     "--port openai:http://127.0.0.1:99999/v1: port 99999 is outside 1-65535"),
    (("--port", "openai:http://127.0.0.1:0/v1"),
     "--port openai:http://127.0.0.1:0/v1: port 0 is outside 1-65535"),
    (("--port", "openai:http:///v1"), "--port openai:http:///v1: no host in 'http:///v1'"),
    (("--port", "openai", "--endpoint", "127.0.0.1:8080/v1"),
     "--endpoint 127.0.0.1:8080/v1: expected an http:// or https:// URL such as"),
])
def test_a_malformed_openai_url_is_a_one_line_start_up_error(suites, option, expected):
    usage_error(suites.runpytest(*NUMERICS, *option), expected)


@pytest.mark.parametrize("prefix", ["", f"{MODEL}="])
def test_an_equals_sign_in_a_url_query_does_not_split_the_port(suites, prefix):
    from harness.net import free_port

    url = f"http://127.0.0.1:{free_port()}/v1?api-version=2024-02-01"
    result = suites.runpytest(*NUMERICS, "--port", f"{prefix}openai:{url}")
    usage_error(result, f"--port openai:{url}: server not listening at {url} (GET /v1/models)")


def test_requests_keep_the_base_urls_query():
    from harness.ports.openai import OpenAIClient

    client = OpenAIClient("https://h.example:8443/openai/v1?api-version=2024-02-01")
    assert client._url("/v1/completions") == ("https://h.example:8443/openai/v1/completions"
                                              "?api-version=2024-02-01")
    assert client._url("/health") == "https://h.example:8443/openai/health?api-version=2024-02-01"


# --- 11: an hf port's directory is checked at start-up

def test_an_hf_port_of_a_directory_transformers_cannot_load_is_a_start_up_error(suites):
    result = suites.runpytest("copied_suites/numerics", "--model", "qwen-tiny", "--port", "hf")
    config = tiny_checkpoint("qwen-tiny") / "config.json"
    usage_error(result, f"--port hf (qwen-tiny's embedded checkpoint): {config}: model_type "
                        "'qwen' is not one transformers knows and auto_map names no remote "
                        "code: a Qwen v1 directory needs its remote code")


@pytest.mark.parametrize("port", ["hf", "tests.team_ports:honest"])
def test_an_hf_or_plug_in_port_of_a_truncated_weight_file_is_a_start_up_error(
        suites, tmp_path, port):
    """A plug-in loads the directory its own way, but the reference reads it too."""
    directory = tmp_path / "starcoder"
    shutil.copytree(tiny_checkpoint("starcoder-tiny"), directory)
    shard = sorted(directory.glob("model-*.safetensors"))[-1]
    shard.write_bytes(shard.read_bytes()[:-1000])
    result = suites.runpytest("copied_suites/numerics", "--port", f"starcoder-tiny={port}",
                              "--model-path", f"starcoder-tiny={directory}")
    usage_error(result, f"--model-path starcoder-tiny: {shard}: truncated or corrupt "
                        "safetensors file")
