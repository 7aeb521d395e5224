"""How many MMLU questions each accuracy gate needs to fail a planted degradation, beside runs
that must pass: McNemar, the 99% rule and the paired likelihood gate, against the transformers
reference on the same questions.

    .venv/bin/python benchmarks/planted_degradations.py [--task mmlu-cloze] [--per-subject 5]
        [--out DIR]

Runs, on smollm2-135m, MMLU in letter form (--task mmlu, the default) or cloze form (--task
mmlu-cloze), 0-shot, the first --per-subject questions of each of the 57 subjects:
  - the reference (transformers, CPU fp32), saved as baseline `reference`;
  - runs that must pass: our engine in fp32, bf16 and w8a16;
  - planted degradations (benchmarks/planted.py): weight noise at 5/10/20%, a mis-scaled int8
    layer, a dropped layer; and llama.cpp's Q4_1 port where it is built (letter form only: a
    served port gives no continuation log-probabilities);
each through the numerics suite (teacher forcing, 128-token prompts) and the accuracy suite.
Then, from the answer files, for n = 10, 20, ... questions (one fixed shuffle, the same for
every run), the smallest n at which each gate fails the run ("-": not within the questions
run), and the largest n at which the likelihood gate's bounds alone fail it (for a run that
must pass, the questions its minimum has to exceed). The unit is the question: independent
prompts. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

from harness.accuracy.gate import paired_gate
from harness.accuracy.likelihood import likelihood_gate
from harness.baselines import read_answers_file, save_ours
from harness.ports.llama_server import availability

ROOT = Path(__file__).resolve().parent.parent
MODEL = "smollm2-135m"
MUST_PASS = {"engine fp32": ("engine", "fp32"), "engine bf16": ("engine", "bf16"),
             "engine w8a16": ("engine", "w8a16")}
PLANTED = {"noise 5%": "benchmarks.planted:noise05", "noise 10%": "benchmarks.planted:noise10",
           "noise 20%": "benchmarks.planted:noise20",
           "mis-scaled int8 layer": "benchmarks.planted:misscaled",
           "dropped layer": "benchmarks.planted:dropped"}


REUSE = False  # --reuse: keep the runs already in --out, only recompute the gates


def pytest(*args: str) -> int:
    run = Path(args[args.index("--results-dir") + 1]) / args[args.index("--run-id") + 1]
    if REUSE and (run / "records-main.jsonl").exists():
        return 0
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           *args], cwd=ROOT, stdout=subprocess.DEVNULL).returncode


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "records-main.jsonl").read_text().splitlines()]


def accuracy_row(run: Path) -> dict:
    return next(r for r in records(run) if r.get("test") == "test_multiple_choice")


def numerics_verdict(run: Path) -> str:
    rows = [r for r in records(run) if r.get("test") == "test_teacher_forced"]
    return ", ".join(r["outcome"] for r in rows) or "not run"


def pairs(candidate: list[dict], baseline: list[dict]) -> list[tuple[dict, dict]]:
    by_id = {a["id"]: a for a in candidate}
    return [(by_id[b["id"]], b) for b in baseline if b["id"] in by_id]


def questions_to_fail(candidate: list[dict], baseline: list[dict], step: int,
                      task: str = "mmlu") -> dict:
    """Per gate, the numbers of questions (in steps of `step`, one fixed shuffle) at which it
    fails the candidate. The likelihood gate runs here without its minimum number of
    questions, so that the table shows where its bounds alone separate the runs."""
    order = sorted(a["id"] for a in baseline)
    random.Random(0).shuffle(order)
    by_id = {a["id"]: a for a in candidate}
    found = {"McNemar": [], "99% rule": [], "likelihood": []}
    for n in [*range(step, len(order), step), len(order)]:
        ids = set(order[:n])
        base = [a for a in baseline if a["id"] in ids]
        cand = [by_id[a["id"]] for a in base]
        _, results = paired_gate(task, cand, base, "reference", 0.99)
        overall = results[0]
        failed = {"McNemar": overall["rule"].startswith("McNemar"),
                  "99% rule": overall["candidate"] < 0.99 * overall["reference"],
                  "likelihood": bool(likelihood_gate(task, list(zip(cand, base)),
                                                     "reference", min_questions=0)[0])}
        for gate, now in failed.items():
            if now:
                found[gate].append(n)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=("mmlu", "mmlu-cloze"), default="mmlu")
    parser.add_argument("--per-subject", type=int, default=5)
    parser.add_argument("--step", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None, help="runs' directory (default: temp)")
    parser.add_argument("--reuse", action="store_true",
                        help="keep the runs already in --out; recompute the gates from them")
    args = parser.parse_args()
    global REUSE
    REUSE = args.reuse
    out = args.out or Path(tempfile.mkdtemp(prefix="planted-"))
    baselines = out / "baselines"
    (baselines / "accuracy").mkdir(parents=True, exist_ok=True)
    common = ("--model", MODEL, "--results-dir", str(out), "--baselines-dir", str(baselines))
    accuracy = ("suites/accuracy", "--task", args.task, "--questions-per-subject",
                str(args.per_subject), "--shots", "0", *common)
    pytest(*accuracy, "--accuracy-runner", "reference", "--accuracy-baseline", "none",
           "--run-id", "reference")
    if not (REUSE and (baselines / "accuracy" / "ours" / "reference.json").exists()):
        save_ours(out / "reference", "reference", "accuracy", baselines, force=True)
    baseline = read_answers_file(out / "reference" / accuracy_row(out / "reference")[
        "answers_file"])

    candidates = {name: ("--port", f"{MODEL}={port}", "--dtype", dtype)
                  for name, (port, dtype) in MUST_PASS.items()}
    candidates |= {name: ("--port", f"{MODEL}={factory}", "--dtype", "fp32")
                   for name, factory in PLANTED.items()}
    if availability()[0] and args.task == "mmlu":
        candidates["llama.cpp Q4_1"] = ("--port", f"{MODEL}=llama-cpp", "--fix-echo-shift")
    lines = ["| run | must | numerics | accuracy | McNemar p | gold log-prob change (95% "
             "low) | choice KL (95% high) | questions to fail: McNemar | 99% rule | "
             "likelihood | likelihood fails up to |", "|---" * 11 + "|"]
    for name, port in candidates.items():
        slug = name.replace(" ", "-").replace("%", "").replace(".", "")
        pytest("suites/numerics", *common, *port, "-k", "teacher", "--seqlen", "128",
               "--run-id", f"{slug}-numerics")
        pytest(*accuracy, *port, "--accuracy-baseline", "reference", "--run-id", slug)
        row = accuracy_row(out / slug)
        overall = next(c for c in row["comparisons"] if c["category"] == "overall")
        candidate = read_answers_file(out / slug / row["answers_file"])
        like = likelihood_gate(args.task, pairs(candidate, baseline), "reference")[1]
        need = questions_to_fail(candidate, baseline, args.step, args.task)
        must = "pass" if name in MUST_PASS else "port" if name.startswith("llama") else "fail"
        lines.append(
            f"| {name} | {must} | {numerics_verdict(out / f'{slug}-numerics')} | "
            f"{row['accuracy']:.4f}"
            + (f" / {row['accuracy_norm']:.4f}" if "accuracy_norm" in row else "")
            + f" | {overall['p_value']:.3g} | "
            f"{like['gold_logprob_diff']:+.4f} ({like['gold_logprob_diff_low']:+.4f}) | "
            f"{like['choice_kl']:.4f} ({like['choice_kl_high']:.4f}) | "
            + " | ".join(str(min(need[g])) if need[g] else "-" for g in need)
            + f" | {max(need['likelihood']) if need['likelihood'] else '-'} |")
        print(lines[-1], flush=True)
    reference = accuracy_row(out / "reference")
    norm = (f", acc_norm {reference['accuracy_norm']:.4f}" if "accuracy_norm" in reference
            else "")
    print(f"\n{args.task}: reference accuracy {reference['accuracy']:.4f}{norm} on "
          f"{len(baseline)} questions; runs in {out}\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
