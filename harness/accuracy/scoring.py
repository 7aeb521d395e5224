"""Multiple-choice scoring: one forward per question, batched, the few-shot prefix computed once.

Letter form: each question's answer is the letter whose token has the highest next-token
log-probability at the end of its prompt. The prompt of every question of a subject starts
with the same prefix (header + few-shot examples); runners that can (our engine) compute it
once and copy its KV cache into each row, then run the right-padded question suffixes. A
question whose tokens do not extend the prefix's tokens exactly is run whole, so reuse never
changes what is scored.

Cloze form: each choice's text is scored as a continuation of the question (the sum of its
tokens' log-probabilities), tokenised as lm-evaluation-harness does (`continuation_logprobs`).
One question runs at a time: its context once, then its four continuations as four rows
that share the context's KV cache. `acc` takes the highest sum, `acc_norm` the highest sum per
character of the choice's text.

Per-question results are appended to a JSON-lines file as each batch finishes; a rerun of the
same case reads it and skips what is done, so a killed run loses at most one batch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from harness import jsonl
from harness.accuracy.datasets import Question
from harness.accuracy.prompts import LETTERS, ClozeTask, MultipleChoiceTask
from harness.stats import standard_error


@dataclass
class Answer:
    id: str
    subject: str
    category: str
    expected: str
    predicted: str
    logprobs: list[float]  # of A, B, C, D
    correct: bool
    shots: int
    truncated: bool = False
    question: str = ""  # the text, so that a report can show a flipped question


@dataclass
class ClozeAnswer(Answer):
    """logprobs: each choice's continuation log-likelihood; `*_norm` per character."""

    predicted_norm: str = ""
    correct_norm: bool = False


def read_answers(path: Path) -> dict[str, dict]:
    """Answers (or samples) already recorded for a case, by id (the last one per id)."""
    return {row["id"]: row for row in jsonl.read(path)} if path.exists() else {}


def _fitting_prefix(task: MultipleChoiceTask | ClozeTask, tokenizer, title: str,
                    examples: list[Question],
                    longest_question: str, limit: int) -> tuple[list[int], int]:
    """Prefix tokens with as many examples as let the longest question fit in `limit`."""
    for shots in range(len(examples), -1, -1):
        ids = tokenizer(task.prefix(title, examples[:shots])).input_ids
        if len(tokenizer(task.prefix(title, examples[:shots]) + longest_question).input_ids) \
                <= limit:
            return ids, shots
    return ids, 0


def _best(scores: list[float]) -> str:
    return LETTERS[max(range(len(scores)), key=lambda i: scores[i])]


def score_subject(runner, tokenizer, task: MultipleChoiceTask | ClozeTask, title: str,
                  questions: list[Question], examples: list[Question], batch: int,
                  max_positions: int, results: Path, done: dict[str, dict],
                  progress: Callable[[int], None] | None = None) -> list[dict]:
    """Score one subject's questions (skipping those in `done`); returns every answer."""
    todo = [q for q in questions if q.id not in done]
    if todo:
        cloze = task.form == "cloze"
        answer_ids = None if cloze else task.answer_tokens(tokenizer)
        texts = {q.id: task.context(q) + max(task.continuations(q), key=len) if cloze
                 else task.question_text(q) for q in todo}
        longest = max(texts.values(), key=len)
        prefix_ids, shots = _fitting_prefix(task, tokenizer, title, examples, longest,
                                            max_positions)
        prefix_text = task.prefix(title, examples[:shots])
        todo.sort(key=lambda q: len(texts[q.id]))  # similar lengths batch with little padding
        for start in range(0, len(todo), 1 if cloze else batch):
            chunk = todo[start:start + (1 if cloze else batch)]
            if cloze:
                answers = [_cloze_answer(runner, tokenizer, task, prefix_text, q, shots,
                                         max_positions) for q in chunk]
            else:
                answers = _letter_answers(runner, tokenizer, answer_ids, prefix_text,
                                          prefix_ids, chunk, texts, shots, max_positions)
            jsonl.append(results, [asdict(a) for a in answers])
            done.update({a.id: asdict(a) for a in answers})
            if progress:
                progress(len(chunk))
    return [done[q.id] for q in questions]


def _letter_answers(runner, tokenizer, answer_ids: list[int], prefix_text: str,
                    prefix_ids: list[int], chunk: list[Question], texts: dict[str, str],
                    shots: int, max_positions: int) -> list[Answer]:
    logits = _logits(runner, tokenizer, prefix_text, prefix_ids, [texts[q.id] for q in chunk],
                     max_positions)
    answers = []
    for q, (row_logits, truncated) in zip(chunk, logits):
        logprobs = torch.log_softmax(row_logits.float(), -1)[answer_ids].tolist()
        predicted = _best(logprobs)
        answers.append(Answer(q.id, q.subject, q.category, q.answer, predicted, logprobs,
                              predicted == q.answer, shots, truncated, q.question))
    return answers


def _cloze_answer(runner, tokenizer, task: ClozeTask, prefix_text: str, q: Question,
                  shots: int, max_positions: int) -> ClozeAnswer:
    continuations = task.continuations(q)
    logprobs, truncated = continuation_logprobs(runner, tokenizer, prefix_text + task.context(q),
                                                continuations, max_positions)
    per_char = [lp / max(len(c), 1) for lp, c in zip(logprobs, q.choices)]
    predicted, predicted_norm = _best(logprobs), _best(per_char)
    return ClozeAnswer(q.id, q.subject, q.category, q.answer, predicted, logprobs,
                       predicted == q.answer, shots, truncated, q.question, predicted_norm,
                       predicted_norm == q.answer)


def continuation_logprobs(runner, tokenizer, context: str, continuations: list[str],
                          max_positions: int) -> tuple[list[float], bool]:
    """Each continuation's log-likelihood after `context`, and whether the context was cut.

    Tokenised as lm-evaluation-harness's `_encode_pair` for a causal model (no special
    tokens): trailing spaces of the context move into the continuations, the context is
    tokenised alone and each continuation's tokens are what tokenising context +
    continuation adds after it. Every row is the context's tokens then its continuation's;
    where the longest does not fit in `max_positions`, every row loses the same tokens from
    the context's start (lm-evaluation-harness cuts each row on its own; the rows share the
    context's cache here).
    """
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuations = context[:-spaces], [context[-spaces:] + c
                                                     for c in continuations]
    ctx = tokenizer(context, add_special_tokens=False).input_ids
    conts = [tokenizer(context + c, add_special_tokens=False).input_ids[len(ctx):]
             for c in continuations]
    cut = max(0, len(ctx) + max(len(c) for c in conts) - max_positions)
    if cut > len(ctx) - 2:
        raise ValueError(f"a continuation of {max(len(c) for c in conts)} tokens leaves no "
                         f"room for its context in {max_positions} positions")
    ctx = ctx[cut:]
    # The context's last token starts every row: its logits predict a continuation's first.
    logits = runner.prefill_shared(torch.tensor(ctx[:-1]),
                                   [torch.tensor(ctx[-1:] + c) for c in conts], all_logits=True)
    runner.reset()
    out = []
    for row, cont in enumerate(conts):
        logprobs = torch.log_softmax(logits[row, : len(cont)].float(), -1)
        out.append(logprobs[torch.arange(len(cont)), torch.tensor(cont, dtype=torch.long)]
                   .sum().item())
    return out, cut > 0


def _common_length(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _logits(runner, tokenizer, prefix_text: str, prefix_ids: list[int], suffix_texts: list[str],
            max_positions: int) -> list[tuple[torch.Tensor, bool]]:
    """(logits at the prompt's end, truncated?) per question, the prefix shared where exact.

    Each question's whole prompt is tokenised; the shared part is the prefix's tokens up to
    where any prompt's tokens differ (text ending in a blank line tokenises differently on
    its own than before more text), so every row runs exactly the tokens of its prompt.
    """
    fulls = [tokenizer(prefix_text + text).input_ids for text in suffix_texts]
    fitting = [i for i, full in enumerate(fulls) if len(full) <= max_positions]
    shared_len = min((_common_length(prefix_ids, fulls[i]) for i in fitting), default=0)
    shared_len = min([shared_len] + [len(fulls[i]) - 1 for i in fitting])
    out: dict[int, tuple[torch.Tensor, bool]] = {}
    if fitting and shared_len > 0:
        rows = runner.prefill_shared(torch.tensor(fulls[fitting[0]][:shared_len]),
                                     [torch.tensor(fulls[i][shared_len:]) for i in fitting])
        out.update({i: (row, False) for i, row in zip(fitting, rows)})
    for i, full in enumerate(fulls):
        if i not in out:  # too long (kept: the end, with the answer cue), or nothing shared
            truncated = len(full) > max_positions
            out[i] = (runner.prefill(torch.tensor([full[-max_positions:]]))[0], truncated)
    runner.reset()
    return [out[i] for i in range(len(suffix_texts))]


def accuracy(answers: list[dict]) -> dict:
    n = len(answers)
    correct = sum(a["correct"] for a in answers)
    score = correct / n if n else math.nan
    out = {"correct": correct, "total": n, "accuracy": score,
           "stderr": standard_error(score, n) if n else math.nan}
    if answers and "correct_norm" in answers[0]:  # cloze form: acc_norm too
        correct = sum(a["correct_norm"] for a in answers)
        out |= {"correct_norm": correct, "accuracy_norm": correct / n,
                "stderr_norm": standard_error(correct / n, n)}
    return out


def summarize(answers: list[dict]) -> dict:
    """Per subject, per category and overall (micro average: every question counts once)."""
    def by(key: str) -> dict:
        groups: dict[str, list] = {}
        for a in answers:
            groups.setdefault(a[key], []).append(a)
        return {name: accuracy(group) for name, group in sorted(groups.items())}

    return {"overall": accuracy(answers), "categories": by("category"), "subjects": by("subject")}


def write_seed_files(directory: Path, answers: list[dict], summary: dict,
                     questions: dict[str, Question]) -> None:
    """The source documents' result files: cache0.csv (column C the expected answer, D the
    predicted one), result_0_classes_acc.json and result_0_subject_acc.json."""
    import csv

    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "cache0.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["subject", "id", "answer", "test_result", "correct", "question"])
        for a in answers:
            writer.writerow([a["subject"], a["id"], a["expected"], a["predicted"],
                             int(a["correct"]), questions[a["id"]].question])
    classes = {name: s["accuracy"] for name, s in summary["categories"].items()}
    classes["Avg acc"] = summary["overall"]["accuracy"]
    (directory / "result_0_classes_acc.json").write_text(
        json.dumps(classes, indent=2, ensure_ascii=False))
    (directory / "result_0_subject_acc.json").write_text(json.dumps(
        {name: s["accuracy"] for name, s in summary["subjects"].items()}, indent=2,
        ensure_ascii=False))
