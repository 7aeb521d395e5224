"""`llmgate zoo`: every main.py and handle_weights.py command line of the five source documents,
as written, on the CPU with the tiny models standing in for their directories.

Each runs for real (a pytest run of the matching suite in a subprocess) and must write the
files its document names. After `--` come only what keeps them small here: one perf case,
one repeat, a question or two per subject, and a results directory in the test's workspace.
"""

import csv
import json
import shutil
from pathlib import Path

import pytest

from harness.accuracy.datasets import SMOKE_ROOT
from harness.cli import zoo
from tests.conftest import tiny_checkpoint

SMALL_PERF = ["--repeats", "1", "--warmup", "0"]
SEED_COLUMNS = ["batch_size", "input_seq_len(Encoding)", "output_seq_len(Decoding)",
                "ResponseTime(s)", "forward_first_token_time(ms)", "forward_next_token_time(ms)",
                "pre_next_token_time(ms)", "post_next_token_time_post(ms)"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """The documents' {WORKSPACE}: the models' directories (tiny stand-ins), the datasets
    their precision runs read from `./` (MMLU's data/, C-Eval's ceval-exam/ and
    subject_mapping.json), and the Bloom weights made by its handle_weights.py lines."""
    root = tmp_path_factory.mktemp("workspace")
    for name in ("data", "ceval-exam", "subject_mapping.json"):
        source = SMOKE_ROOT / name
        (shutil.copytree if source.is_dir() else shutil.copyfile)(source, root / name)
    for name, model in (("falcon7b", "falcon-tiny"), ("bloom", "bloom-tiny"),
                        ("alpaca2", "alpaca2-tiny"), ("qwen", "qwen-tiny")):
        (root / name).symlink_to(tiny_checkpoint(model))
    handle = [  # 001 L143, L152, L129
        "python3 handle_weights.py --input-path bloom --output-path bloom_quant --handle-type "
        "quant",
        "python3 handle_weights.py --input-path bloom_quant --output-path bloom_quant_cut "
        "--handle-type cut_quant",
        "python3 handle_weights.py --input-path bloom --output-path bloom_cut --handle-type "
        "cut_float"]
    for line in handle:
        assert zoo.main(line.split(), cwd=root) == 0, line
    return root


def run(workspace, line, *extra, cwd=None):
    """A document's command line through `llmgate zoo`, small; returns its run's records."""
    results = workspace / "reports"
    before = set(results.glob("zoo-*")) if results.is_dir() else set()
    code = zoo.main([*line.split(), "--", f"--results-dir={results}", *extra],
                    cwd=cwd or workspace)
    assert code == 0, line
    (run_dir,) = set(results.glob("zoo-*")) - before
    records = [json.loads(row) for path in run_dir.glob("records-*.jsonl")
               for row in path.read_text().splitlines()]
    assert records and all(r["outcome"] == "passed" for r in records), records
    return records, run_dir


def perf_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames[:8] == SEED_COLUMNS  # the documents' columns, first
        return list(reader)


# -- 000 Falcon-7B ---------------------------------------------------------------------------

def test_falcon_single_batch_performance_runs_its_documents_grid(workspace, capsys):
    """L121; "device_number" is 0 here. No lengths: the document's 2^5~2^10 grid, less
    what falcon-tiny's 512 positions cannot hold."""
    records, _ = run(workspace, "python3 main.py --model_path /weight/to/falcon7b --device 0"
                     .replace("/weight/to/", ""), *SMALL_PERF, "-k", "in32-out32")
    out = capsys.readouterr().out
    assert "the document's grid (--grid falcon-seed)" in out
    assert "20 of 36 length pairs do not fit in 512 positions" in out
    assert "equivalent, from" in out and "pytest suites/perf --model falcon-tiny" in out
    (row,) = records
    assert (row["model"], row["port"], row["batch"], row["seqlen"], row["out"]) == (
        "falcon-tiny", "hf", 1, 32, 32)
    assert list(workspace.glob("performance_test_npu_falcon-tiny_zoo-*.csv"))


def test_falcon_mmlu_precision_writes_test_result(workspace):
    """L128: MMLU from ./data (the document's data.tar), --dataset-path with a hyphen."""
    records, _ = run(workspace, "python3 main.py --model_path falcon7b --device 0 --mode "
                                "precision --dataset-path ./", "--questions-per-subject", "1")
    (row,) = records
    assert row["task"] == "mmlu" and row["source"].startswith(f"mmlu test from {workspace}")
    result = workspace / "test_result"
    assert (result / "cache0.csv").is_file() and (result / "device0.log").is_file()
    assert json.loads((result / "result_0_classes_acc.json").read_text())["Avg acc"] == \
        row["accuracy"]


def test_falcon_case_pairs_write_the_performance_output_file(workspace):
    """L133: pairs zipped, batch 1, the CSV named by --performance_output_file."""
    records, _ = run(workspace, "python3 main.py --model_path falcon7b --device 0 "
                                "--set_case_pair --seqlen_in_pair 256 512 1024 "
                                "--seqlen_out_pair 64 128 256 --batch 1 "
                                "--performance_output_file performance_bs1.csv", *SMALL_PERF)
    assert [(r["seqlen"], r["out"]) for r in records] == [(256, 64)]  # the rest do not fit
    (row,) = perf_rows(workspace / "performance_bs1.csv")
    assert (row["batch_size"], row["input_seq_len(Encoding)"],
            row["output_seq_len(Decoding)"]) == ("1", "256", "64")


# -- 001 Bloom-7B1 ---------------------------------------------------------------------------

def test_bloom_handle_weights_lines_made_its_directories(workspace):
    """L129, L143, L152 (run by the workspace): W8A8 and the two-rank cuts."""
    quant = json.loads((workspace / "bloom_quant" / "config.json").read_text())
    assert quant["quantization_config"]["scheme"] == "w8a8"
    for cut in ("bloom_cut", "bloom_quant_cut"):
        assert sorted(p.name for p in (workspace / cut / "part_model").iterdir()) == ["0", "1"]


@pytest.mark.parametrize("line, dtype, tp", [
    ("torchrun --nproc_per_node 2 --master_port 39682 main.py --model_path bloom_cut "
     "--device 0 1 --data_dtype fp16 --hardware 310", "fp32", 2),  # L194
    ("torchrun --nproc_per_node 2 --master_port 39682 main.py --model_path bloom_quant_cut "
     "--device 0 1 --data_dtype int8 --hardware 310", "w8a8", 2),  # L196
    ("python3 main.py --model_path bloom --device 0 --data_dtype fp16 --hardware 310",
     "fp32", 1),  # L198
    ("python3 main.py --model_path bloom_quant --device 0 --data_dtype int8 --hardware 310",
     "w8a8", 1),  # L200
])
def test_bloom_performance_lines(workspace, line, dtype, tp):
    records, _ = run(workspace, line, *SMALL_PERF, "-k", "in32-out32")
    (row,) = records
    assert (row["model"], row["dtype"], row["batch"]) == ("bloom-tiny", dtype, 1)
    assert ("-tp2" in row["case"]) == (tp == 2), row["case"]


@pytest.mark.parametrize("suffix, pairs", [
    ("--set_case_pair --seqlen_in_pair 256 512 1024 --seqlen_out_pair 64 128 256 --batch 1 "
     "--performance_output_file performance_bs1.csv", [(256, 64)]),  # L204
    ("--seqlen_in_range 5 6 --seqlen_out_range 5 6 --batch 1 --performance_output_file "
     "performance_bs1.csv", [(32, 32), (32, 64), (64, 32), (64, 64)]),  # L207: closed
])
def test_bloom_grid_suffixes(workspace, tmp_path, suffix, pairs):
    run(workspace, f"python3 main.py --model_path {workspace / 'bloom'} --device 0 "
                   f"--data_dtype fp16 --hardware 310 {suffix}", *SMALL_PERF, cwd=tmp_path)
    rows = perf_rows(tmp_path / "performance_bs1.csv")
    assert sorted((int(r["input_seq_len(Encoding)"]), int(r["output_seq_len(Decoding)"]))
                  for r in rows) == pairs


@pytest.mark.parametrize("cut, dtype", [("bloom_cut", "fp16"), ("bloom_quant_cut", "int8")])
def test_bloom_dual_chip_precision_writes_both_ranks_files(workspace, tmp_path, cut, dtype):
    """L227, L229: C-Eval from ./ceval-exam and ./subject_mapping.json; its results in
    {dataset_path}/test_result, result_classes_acc.json among them, every file per rank."""
    data = tmp_path / "data_root"
    shutil.copytree(SMOKE_ROOT / "ceval-exam", data / "ceval-exam")
    shutil.copyfile(SMOKE_ROOT / "subject_mapping.json", data / "subject_mapping.json")
    records, _ = run(workspace, f"torchrun --nproc_per_node 2 --master_port 39682 main.py "
                                f"--model_path {workspace / cut} --device 0 1 --data_dtype "
                                f"{dtype} --hardware 310 --mode precision --dataset_path ./",
                     "--questions-per-subject", "1", cwd=data)
    (row,) = records
    assert row["task"] == "ceval" and row["case"].endswith("tp2")
    names = {p.name for p in (data / "test_result").iterdir()}
    assert names >= {"cache0.csv", "cache1.csv", "result_0_classes_acc.json",
                     "result_1_classes_acc.json", "result_0_subject_acc.json",
                     "result_1_subject_acc.json", "device0.log", "device1.log",
                     "result_classes_acc.json"}


# -- 002 Chinese-Alpaca-2-7B and 003 Qwen-7B: config.ini -------------------------------------
