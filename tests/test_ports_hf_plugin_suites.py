"""The suites on an hf directory (plain, remote code, tensor parallel) and on a plug-in runner."""

import textwrap

import pytest

from tests.conftest import REMOTE_CLASS, remote_code_checkpoint, tiny_checkpoint
from tests.test_ports_suites import MODEL, NUMERICS, by_test, records

pytest_plugins = ["pytester"]


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
