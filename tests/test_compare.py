"""harness.numerics.logits' logit metrics; `llmgate compare` and the perf figures every command
prints."""

import argparse
import csv
import json
import math
import re

import torch

from harness.baselines import OursBaseline, save_ours
from harness.cases import Case
from harness.cli import baseline as baseline_commands
from harness.cli.runs import cmd_compare, cmd_history, compare_runs
from harness.numerics.logits import position_metrics, summarize
from harness.perf.gate import gate
from harness.perf.timing import Samples, summary
from harness.results import ResultsStore, merge, summary_table


def test_identical_logits_are_perfect():
    logits = torch.randn(3, 50)
    stats = summarize([(logits, logits.clone())])
    assert stats.max_abs_diff == 0 and stats.top1_agreement == 1 and stats.max_kl == 0
    assert math.isclose(stats.min_cosine, 1, abs_tol=1e-6) and stats.positions == 3


def test_metrics_on_known_values():
    reference = torch.tensor([[2.0, 0.0, 0.0]])
    ported = torch.tensor([[0.0, 2.0, 0.0]])
    m = position_metrics(reference, ported)
    assert m["max_abs"].item() == 2.0
    assert m["top1"].item() == 0.0
    assert math.isclose(m["cosine"].item(), 0.0, abs_tol=1e-7)
    p = torch.softmax(reference, -1)
    q = torch.softmax(ported, -1)
    expected_kl = (p * (p.log() - q.log())).sum().item()
    assert math.isclose(m["kl"].item(), expected_kl, rel_tol=1e-5)


def test_kl_share_counts_positions_over_threshold():
    reference = torch.zeros(4, 10)
    ported = reference.clone()
    ported[0, 0] = 1.0  # only position 0 differs
    stats = summarize([(reference, ported)])
    assert stats.kl_share == 0.25 and stats.max_kl > 1e-4
    assert summarize([(reference, ported)], kl_threshold=10.0).kl_share == 0


# --- `llmgate compare` and the perf figures every command shows

CASE = Case("qwen-tiny", "cpu", "fp32", 1, 8, 31)


def skewed(scale: float) -> Samples:
    """4 requests whose decode steps are skewed (a third of them 3x slower), so that the
    median of all steps, the median of the per-request means, the median throughput and the
    throughput of the median response differ: each definition gives another number."""
    levels = [20 * scale, 22 * scale, 24 * scale, 26 * scale]
    decode = [[level] * 20 + [3 * level] * 10 for level in levels]
    return Samples([r * scale for r in (1.0, 1.1, 1.4, 1.45)], [0.1] * 4,
                   [50 * scale, 51 * scale, 55 * scale, 70 * scale], decode,
                   [[0.01] * 30] * 4, [[0.01] * 31] * 4)


def write_run(root, name, samples, started, outcome="passed", **fields):
    run = root / name
    ResultsStore(run).record({
        "suite": "perf", "test": "test_perf", "case": CASE.id, "model": CASE.model,
        "hardware": CASE.hardware, "dtype": CASE.dtype, "batch": CASE.batch,
        "seqlen": CASE.seqlen, "out": CASE.out, "outcome": outcome,
        "passed": outcome == "passed", "device": "this cpu", "session": 1,
        **summary(samples, CASE.batch, CASE.seqlen, CASE.out), "samples": samples.as_dict(),
        **fields})
    (run / "run.json").write_text(json.dumps({"run_id": name, "started": started}))
    merge(run)
    return run


def two_runs(tmp_path):
    """Run B, then run A slower by half, gated against B: A fails."""
    root = tmp_path / "results"
    b = write_run(root, "b", skewed(1.0), started=1)
    theirs = OursBaseline("b", b, "", {}, {CASE.id: json.loads(
        (b / "records-main.jsonl").read_text())})
    verdict, comparisons = gate(CASE, skewed(1.5), "this cpu", [], {"b": theirs}, 0.10, None,
                                None)
    assert not verdict.passed
    a = write_run(root, "a", skewed(1.5), started=2, outcome="failed",
                  reason=verdict.message(), comparisons=comparisons)
    return root, a, b, verdict


def table_row(text: str, first: str) -> dict[str, str]:
    """The row starting with `first` of a tabulate 'simple' table, by header."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if re.match(r"-+( +-+)+$", line):
            header = re.split(r"\s{2,}", lines[i - 1].strip())
            for row in lines[i + 1:]:
                if row.startswith(first):
                    return dict(zip(header, re.split(r"\s{2,}", row.strip())))
    raise AssertionError(f"no row {first!r} in\n{text}")


def agree(printed: str, value: float) -> bool:
    """`printed` (history marks a failed case's value "(failed)") equals `value` as shown."""
    number = float(str(printed).removesuffix(" (failed)"))
    return math.isclose(number, value, rel_tol=1e-3, abs_tol=1e-3)


def test_every_command_shows_the_same_figure_for_the_same_case(tmp_path, capsys):
    root, a, b, verdict = two_runs(tmp_path)
    figures = {}
    for name, run in (("a", a), ("b", b)):
        [row] = csv.DictReader(open(run / "perf.csv"))
        figures[name] = {"next": float(row["forward_next_token_time(ms)"]),
                         "first": float(row["forward_first_token_time(ms)"]),
                         "e2e": float(row["e2e_throughput_tokens_per_s"])}
        console = table_row(summary_table(run), CASE.id)
        assert agree(console["next ms"], figures[name]["next"])
        assert agree(console["first ms"], figures[name]["first"])
        assert agree(console["E2E tok/s"], figures[name]["e2e"])
    for label, key, unit in (("next-token latency", "next", "ms"),
                             ("first-token latency", "first", "ms"),
                             ("E2E throughput", "e2e", "tokens/s")):
        [line] = [f for f in verdict.failures if f.startswith(label)]
        ours, theirs = re.match(rf"{label} ([\d.]+) {unit} vs ([\d.]+) {unit}", line).groups()
        assert agree(ours, figures["a"][key]) and agree(theirs, figures["b"][key]), line

    baselines = tmp_path / "baselines"
    save_ours(b, "b-saved", "perf", baselines)
    baseline_commands.show(argparse.Namespace(name="b-saved", baselines_dir=baselines))
    shown = table_row(capsys.readouterr().out, CASE.id)
    assert agree(shown["next ms"], figures["b"]["next"])
    assert agree(shown["first ms"], figures["b"]["first"])
    assert agree(shown["E2E tok/s"], figures["b"]["e2e"])

    assert cmd_compare(argparse.Namespace(run_a=a, run_b=b, tolerance=0.10)) == 1
    out = capsys.readouterr().out
    for metric, key in (("next_token", "next"), ("first_token", "first"),
                        ("e2e_throughput", "e2e")):
        row = table_row(out, f"{CASE.id}  {metric}")
        assert agree(row["a"], figures["a"][key]) and agree(row["b"], figures["b"][key])

    cmd_history(argparse.Namespace(results_dir=root, case=CASE.id, last=8))
    history = capsys.readouterr().out
    for metric, key in (("next-token ms", "next"), ("E2E tokens/s", "e2e")):
        [values] = [v for k, v in table_row(
            history, f"perf     {CASE.id}  test_perf  {metric}").items() if k.startswith("last")]
        printed = values.split(" -> ")
        assert agree(printed[0], figures["b"][key])  # the first run's
        assert all(agree(p, figures["a"][key]) or agree(p, figures["b"][key]) for p in printed)


def test_compare_shows_a_failing_perf_case_marked_with_its_outcome(tmp_path):
    _, a, b, _ = two_runs(tmp_path)
    perf = compare_runs(a, b)["perf"]
    assert {r["metric"] for r in perf} == {"first_token", "next_token", "e2e_throughput"}
    assert all(r["change"] == "slower" and r["outcome"] == "failed (B passed)" for r in perf)
