"""A fixed, fully synthetic run with every suite, a failure and a skip, for report tests."""

from __future__ import annotations

import json
import random
from pathlib import Path

from harness.perf.timing import Samples
from harness.results import ResultsStore

PERF_CASES = [(b, i) for b in (1, 4, 8) for i in (32, 128)]


def samples(batch: int, in_len: int, slow: float = 1.0, seed: int = 0) -> Samples:
    rng = random.Random(seed)
    first = [slow * (2 + in_len * batch / 100) * rng.uniform(0.97, 1.03) for _ in range(5)]
    steps = [[slow * (1 + batch / 8) * rng.uniform(0.97, 1.03) for _ in range(15)]
             for _ in range(5)]
    return Samples([(f + sum(s)) / 1e3 for f, s in zip(first, steps)], [0.5] * 5, first, steps,
                   [[0.01] * 15] * 5, [[0.05] * 16] * 5)


def perf_row(model: str, batch: int, in_len: int, slow: float = 1.0, seed: int = 0) -> dict:
    s = samples(batch, in_len, slow, seed)
    next_ms = sorted(s.per_repeat_mean("decode_ms"))[2]
    response = sorted(s.response_s)[2]
    return {"suite": "perf", "test": "test_perf", "case": f"{model}-cpu-fp32-bs{batch}-in{in_len}"
            f"-out16", "model": model, "hardware": "cpu", "dtype": "fp32", "batch": batch,
            "seqlen": in_len, "out": 16, "outcome": "passed", "passed": True, "reason": "",
            "ResponseTime(s)": response, "forward_first_token_time(ms)": sorted(
                s.first_token_ms)[2], "forward_next_token_time(ms)": next_ms,
            "pre_next_token_time(ms)": 0.01, "post_next_token_time_post(ms)": 0.05,
            "e2e_throughput_tokens_per_s": batch * 16 / response, "pct_of_floor": 42.0,
            "device": "Example CPU", "samples": s.as_dict(), "comparisons": [],
            "baselines_compared": 0}


def answers(n: int, flips: int = 0) -> list[dict]:
    rows = []
    for i in range(n):
        correct = i % 3 != 0
        if i < flips * 3 and i % 3 == 1:
            correct = False  # right -> wrong
        rows.append({"id": f"abstract_algebra/test/{i}", "subject": "abstract_algebra",
                     "category": "STEM" if i % 2 else "humanities", "expected": "A",
                     "predicted": "A" if correct else "B", "correct": correct,
                     "question": f"Question number {i}?", "logprobs": [-1.0] * 4})
    return rows


def write_run(run_dir: Path, *, session: int = 1, slow: float = 1.0, flips: int = 0,
              started: float = 1.0, models=("qwen-tiny",)) -> Path:
    """Records of numerics (one failure), perf, max batch, accuracy and HumanEval, a skip."""
    run_dir = Path(run_dir)
    store = ResultsStore(run_dir, "example")
    base = {"session": session, "worker": "example", "hardware": "cpu", "dtype": "fp32"}
    for model in models:
        for batch, in_len in PERF_CASES:
            store.record({**base, **perf_row(model, batch, in_len, slow, seed=batch + in_len)})
        store.record({**base, "suite": "numerics", "test": "test_teacher_forced",
                      "case": f"{model}-cpu-fp32-bs1-in32-out8", "model": model, "batch": 1,
                      "seqlen": 32, "out": 8, "outcome": "passed", "passed": True, "reason": "",
                      "max_abs_diff": 3.4e-6, "min_cosine": 0.9999999, "top1_agreement": 1.0,
                      "max_kl": 2e-7, "rule": "max |dlogit| <= 0.0001",
                      "thresholds_version": 1})
        store.record({**base, "suite": "numerics", "test": "test_teacher_forced",
                      "case": f"{model}-cpu-bf16-bs4-in32-out8", "model": model, "batch": 4,
                      "seqlen": 32, "out": 8, "dtype": "bf16", "outcome": "failed",
                      "passed": False, "reason": "step 0 row 2: 49152 non-finite logits",
                      "max_abs_diff": float("nan"), "min_cosine": float("nan"),
                      "top1_agreement": float("nan"), "max_kl": float("nan"),
                      "rule": "KL rule", "thresholds_version": 1})
        store.record({**base, "suite": "perf", "test": "test_max_batch",
                      "case": f"{model}-cpu-fp32-bsmax-in32-out16", "model": model,
                      "batch": "max", "seqlen": 32, "out": 16, "outcome": "passed",
                      "passed": True, "reason": "", "max_batch": 96, "predicted_batch": 70,
                      "bound_by": "memory", "memory_limit_bytes": 2**28,
                      "forward_first_token_time(ms)": 40.0, "forward_next_token_time(ms)": 9.0,
                      "e2e_throughput_tokens_per_s": 900.0})
        case = f"mmlu-{model}-cpu-fp32-bs8-0shot"
        rows = answers(60, flips)
        (run_dir / "accuracy" / case).mkdir(parents=True, exist_ok=True)
        (run_dir / "accuracy" / case / "answers.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in rows))
        correct = sum(r["correct"] for r in rows)
        store.record({**base, "suite": "accuracy", "test": "test_multiple_choice",
                      "case": case, "model": model, "batch": 8, "task": "mmlu",
                      "outcome": "passed", "passed": True, "reason": "", "task_version": 1,
                      "prompt_hash": "abc123", "shots": 0, "runner": "ported",
                      "accuracy": correct / 60, "stderr": 0.06, "questions": 60,
                      "correct": correct, "answers_file": f"accuracy/{case}/answers.jsonl",
                      "categories": {"STEM": {"accuracy": 0.6, "total": 30, "correct": 18,
                                              "stderr": 0.09},
                                     "humanities": {"accuracy": 0.7, "total": 30,
                                                    "correct": 21, "stderr": 0.08}},
                      "comparisons": [{"baseline": "ref", "category": "overall",
                                       "candidate": correct / 60, "reference": 40 / 60,
                                       "low": -0.1, "high": 0.05, "p_value": 0.4,
                                       "questions": 60, "passed": True, "rule": "",
                                       "flipped": [{"id": "abstract_algebra/test/1",
                                                    "direction": "right->wrong",
                                                    "expected": "A", "candidate": "B",
                                                    "baseline": "A",
                                                    "question": "Question number 1?"}]}],
                      "likelihood": [{"baseline": "ref", "category": "likelihood",
                                      "gated": True, "questions": 60, "unmeasured": 0,
                                      "gold_logprob_diff": -0.0123, "gold_logprob_diff_low":
                                      -0.0456, "choice_kl": 0.0012, "choice_kl_high": 0.0021,
                                      "wilcoxon_p": 0.2, "gold_margin": 0.1, "kl_limit": 0.01,
                                      "passed": True, "rule": ""}],
                      "baselines_compared": 1})
        he = f"humaneval-{model}-cpu-fp32-bs8-n1"
        (run_dir / "accuracy" / he).mkdir(parents=True, exist_ok=True)
        (run_dir / "accuracy" / he / "samples.jsonl").write_text("".join(
            json.dumps({"id": f"HumanEval/{i}#0", "task_id": f"HumanEval/{i}", "sample": 0,
                        "status": "passed" if i < 2 else "failed", "correct": i < 2,
                        "detail": "" if i < 2 else "AssertionError", "subject": "humaneval",
                        "category": "humaneval"}) + "\n" for i in range(4)))
        store.record({**base, "suite": "accuracy", "test": "test_humaneval", "case": he,
                      "model": model, "batch": 8, "task": "humaneval", "outcome": "passed",
                      "passed": True, "reason": "", "pass@1": 0.5, "accuracy": 0.5,
                      "problems": 4, "samples": 1, "samples_passed": 2, "samples_failed": 2,
                      "samples_timed_out": 0, "isolation": "bwrap", "task_version": 1,
                      "prompt_hash": "def456", "answers_file": f"accuracy/{he}/samples.jsonl",
                      "comparisons": [], "baselines_compared": 0})
        real = model.split("-")[0] + "-7b"
        store.record({**base, "suite": "perf", "test": "test_perf",
                      "case": f"{real}-cpu-fp32-bs8-in32-out16", "model": real,
                      "batch": 8, "seqlen": 32, "out": 16, "outcome": "skipped", "passed": False,
                      "reason": f"{real}: no weights; pass --model-path {real}=DIR"})
    (run_dir / "run.json").write_text(json.dumps({
        "format": 1, "run_id": run_dir.name, "started": started, "started_at": "2026-11-22",
        "duration_s": 12.5, "commit": "0123456789abcdef", "host": "example-host",
        "torch": "2.13.0", "transformers": "5.23.0", "python": "3.11.7",
        "devices": {"cpu": "Example CPU"}, "command": "pytest suites"}))
    return run_dir
