"""llmgate zoo with atb_speed_sdk's config.ini: precision, inference and performance tasks, remote
code, batches."""
# ruff: noqa: F811  (the fixtures imported above are taken as test arguments)

import csv
import json
import shutil
from pathlib import Path

import pytest

from harness.accuracy.datasets import SMOKE_ROOT
from harness.cli import zoo
from tests.conftest import remote_code_checkpoint
from tests.test_zoo import (
    SMALL_PERF,
    perf_rows,
    run,
    workspace,  # noqa: F401  (fixtures)
)

pytest_plugins = ["pytester"]


def config_ini(directory: Path, model: Path, model_name: str) -> Path:
    directory.mkdir(exist_ok=True)
    for name in ("ceval-exam", "subject_mapping.json"):
        source = SMOKE_ROOT / name
        if not (directory / name).exists():
            (shutil.copytree if source.is_dir() else shutil.copyfile)(source, directory / name)
    (directory / "config.ini").write_text(
        "[model]\n;模型路径\nmodel_path=" + str(model) + "\ndevice_ids=0\n\n"
        "[precision]\nmode=ceval\nwork_dir=./\nbatch=1\nshot=5\n\n"
        "[performance]\nmodel_name=" + model_name + "\nbatch_size=1\n"
        "case_pair=[[32,32]]\nperf_mode=detail\n")
    return directory


@pytest.mark.parametrize("doc, model, model_name", [
    ("alpaca", "alpaca2", "alpaca2_7b"), ("qwen", "qwen", "qwen_7b")])
def test_config_ini_precision(workspace, tmp_path, doc, model, model_name):
    """002 L353 / 003 L314: `python main.py --task precision`, its files in
    {ceval_work_dir}/test_result."""
    cwd = config_ini(tmp_path / doc, workspace / model, model_name)
    run(workspace, "python main.py --task precision", "--questions-per-subject", "1", cwd=cwd)
    assert {p.name for p in (cwd / "test_result").iterdir()} == {
        "device0.log", "cache0.csv", "result_0_classes_acc.json", "result_0_subject_acc.json"}
    with open(cwd / "test_result" / "cache0.csv", newline="") as f:
        header = next(csv.reader(f))
    assert header[2:4] == ["answer", "test_result"]  # column C expected, column D the answer


@pytest.mark.parametrize("doc, line", [
    ("alpaca", "python main.py --task inference"),  # 002 L314
    ("qwen", "python main.py --task inference"),  # 003 L168 with task_name=inference
])
def test_config_ini_inference(workspace, tmp_path, doc, line):
    model = {"alpaca": "alpaca2", "qwen": "qwen"}[doc]
    cwd = config_ini(tmp_path / doc, workspace / model, f"{model}_7b")
    records, _ = run(workspace, line, "-k", "greedy", cwd=cwd)
    assert {r["suite"] for r in records} == {"numerics"}


def test_a_remote_code_directory_runs_as_the_hf_port_with_its_own_code(workspace, tmp_path,
                                                                      capsys):
    """Qwen-7B's directory ships its modeling code (config.json's auto_map): the plan runs it
    through transformers with --trust-remote-code, and the numerics suite passes it."""
    model = remote_code_checkpoint(tmp_path / "qwen-remote")
    cwd = config_ini(tmp_path / "qwen", model, "qwen_7b")
    records, _ = run(workspace, "python main.py --task inference", "-k", "greedy", cwd=cwd)
    out = capsys.readouterr().out
    assert "--port alpaca2-tiny=hf --trust-remote-code" in out
    assert {(r["suite"], r["port"]) for r in records} == {("numerics", "hf")}


@pytest.mark.parametrize("doc, line, model_name", [
    ("alpaca", "RETURN_PERF_DETAIL=1 python main.py --task performance", "alpaca2_7b"),  # L388
    ("qwen", "TIMEIT=1 python main.py --task performance", "qwen_7b"),  # 003 L358
    ("qwen", "MAX_SEQ_LEN=2048 python main.py --task performance", "qwen_7b"),  # 003 L185
    ("qwen", "LD_PRELOAD=/root/miniconda3/envs/wqh39/bin/../lib/libgomp.so.1 MAX_SEQ_LEN=2048 "
             "python main.py --task performance --is_quant 1", "qwen_7b"),  # 003 L211
])
def test_config_ini_performance_writes_performance_test_npu(workspace, tmp_path, doc, line,
                                                            model_name):
    model = {"alpaca": "alpaca2", "qwen": "qwen"}[doc]
    cwd = config_ini(tmp_path / doc, workspace / model, model_name)
    records, run_dir = run(workspace, line, *SMALL_PERF, cwd=cwd)
    (row,) = records
    assert (row["batch"], row["seqlen"], row["out"]) == (1, 32, 32)  # config.ini case_pair
    assert row["dtype"] == ("w8a8" if "--is_quant 1" in line else "fp32")
    (path,) = cwd.glob(f"performance_test_npu_{model_name}_zoo-*.csv")
    assert len(perf_rows(path)) == 1
    env = json.loads((run_dir / "run.json").read_text())
    for assignment in line.split(" python ")[0].split():  # the line's VAR=value prefixes
        name, value = assignment.split("=", 1)
        assert env["tuning_env"][name] == value
    assert env["zoo_command"].startswith(line)


def test_a_run_over_several_batches_writes_multibatch_performance(workspace, tmp_path):
    """003's grid (batches 1, 2, 4, 8) when config.ini names no case: StarCoder's
    multibatch_performance_<model_name>_<device>.csv beside the perf CSV."""
    cwd = config_ini(tmp_path / "qwen", workspace / "qwen", "qwen_7b")
    ini = (cwd / "config.ini").read_text()
    (cwd / "config.ini").write_text(ini.replace("batch_size=1\n", "").replace(
        "case_pair=[[32,32]]\n", ""))
    records, _ = run(workspace, "python main.py --task performance", *SMALL_PERF, cwd=cwd)
    assert sorted(r["batch"] for r in records) == [1, 2, 4, 8]  # in = out = 256 alone fits
    rows = perf_rows(cwd / "multibatch_performance_qwen_7b_0.csv")
    assert sorted(int(r["batch_size"]) for r in rows) == [1, 2, 4, 8]


def test_config_ini_batch_size_holds_under_the_documents_grid(workspace, tmp_path, capsys):
    """qwen-7b's positions hold the whole Qwen grid: --grid qwen-seed, at config.ini's
    batch_size only."""
    cwd = config_ini(tmp_path / "qwen", workspace / "qwen", "qwen_7b")
    (cwd / "config.ini").write_text((cwd / "config.ini").read_text().replace(
        "case_pair=[[32,32]]\n", ""))
    assert zoo.main("python main.py --task performance --model qwen-7b --print-only".split(),
                    cwd=cwd) == 0
    assert " --grid qwen-seed --batch 1 " in capsys.readouterr().out


def test_a_relative_results_dir_is_the_callers(workspace):
    line = ("python3 main.py --model_path falcon7b --device 0 --seqlen_in_pair 32 "
            "--seqlen_out_pair 32 --performance_output_file mine.csv")
    assert zoo.main([*line.split(), "--", "--results-dir=rel", *SMALL_PERF],
                    cwd=workspace) == 0
    assert (workspace / "mine.csv").is_file() and list((workspace / "rel").glob("zoo-*"))


# -- what llmgate zoo refuses ----------------------------------------------------------------

@pytest.mark.parametrize("line, message", [
    ("python3 main.py --device 0", "no --model_path, and no [model] model_path in"),
    ("python3 main.py --model_path nowhere", "--model_path nowhere: directory not found"),
    ("python3 main.py --model_path falcon7b --mode fast", "main.py: argument --mode: invalid "
                                                          "choice: 'fast'"),
    ("torchrun --nproc_per_node 2 main.py --model_path falcon7b --device 0",
     "torchrun --nproc_per_node 2 with --device 0: expected one process per device"),
    ("python3 run.py --model_path falcon7b", "run.py: expected main.py or handle_weights.py"),
    ("MAX_SEQ_LEN=16 python3 main.py --model_path falcon7b",
     "no length pair fits in 16 positions"),
    ("bash cut_model_and_run.sh precision", "cut_model_and_run.sh: a shell wrapper llmgate "
                                            "zoo does not read; paste the main.py line"),
    ("python3 main.py --model_path falcon7b --devices 0",
     "main.py: unrecognized arguments: --devices 0"),
    ("torchrun --standalone --nproc_per_node 3 main.py --model_path falcon7b --device 0 1",
     "torchrun --nproc_per_node 3 with --device 0 1: expected one process per device"),
])
def test_mistakes_are_one_line_errors(workspace, capsys, line, message):
    assert zoo.main([*line.split(), "--print-only"], cwd=workspace) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("llmgate zoo: ") and message in err and "\n" not in err


def test_torchrun_processes_alone_name_the_ranks(workspace, capsys):
    assert zoo.main("torchrun --nproc_per_node 2 --master_port 39682 main.py --model_path "
                    "bloom_cut --data_dtype fp16 --print-only".split(), cwd=workspace) == 0
    assert " --tp 2 " in capsys.readouterr().out


pytest_plugins = ["pytester"]


def test_the_documents_grids_are_perf_presets(suites):
    """--grid qwen-seed: the Qwen tables' 4 batches x 4 lengths, each a stored row."""
    result = suites.runpytest("copied_suites/perf", "--model", "qwen-7b", "--grid", "qwen-seed",
                              "--collect-only", "-q")
    cases = [line for line in result.outlines if "test_perf[" in line]
    assert len(cases) == 16 and any("qwen-7b-cpu-fp32-bs8-in2048-out2048" in c for c in cases)
    bad = suites.runpytest("copied_suites/perf", "--grid", "qwen-seed", "--seqlen_in_pair", "32",
                           "--seqlen_out_pair", "32", "--collect-only")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    bad.stderr.fnmatch_lines(["*--grid qwen-seed gives the lengths; leave out the "
                              "--seqlen-*-pair and --seqlen-*-range flags*"])
    unknown = suites.runpytest("copied_suites/perf", "--grid", "alpaca2-seed", "--collect-only")
    unknown.stderr.fnmatch_lines(["*--grid 'alpaca2-seed' is unknown; valid: falcon-seed, "
                                  "bloom-seed, qwen-seed, starcoder-seed*"])


@pytest.mark.parametrize("ini, message", [
    ("[model]\nmodel_path=falcon7b\ndevice_ids=0,x\n", "[model] device_ids '0,x': expected "
                                                       "device numbers"),
    ("[model]\nmodel_path=falcon7b\n[performance]\nbatch_size=eight\n",
     "[performance] batch_size 'eight': expected a whole number"),
    ("[model]\nmodel_path=falcon7b\n[performance]\ncase_pair=[[1,2,3]]\n",
     "[performance] case_pair '[[1,2,3]]': expected [[in, out], ...]"),
])
def test_a_bad_config_ini_is_a_one_line_error(workspace, tmp_path, capsys, ini, message):
    (tmp_path / "config.ini").write_text(ini)
    (tmp_path / "falcon7b").symlink_to(workspace / "falcon7b")
    assert zoo.main("python main.py --task performance --print-only".split(),
                    cwd=tmp_path) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_a_bad_handle_weights_line_is_an_error_not_a_traceback(workspace, capsys):
    assert zoo.main("python3 handle_weights.py --input-path bloom --handle-type "
                    "slice".split(), cwd=workspace) == 2
