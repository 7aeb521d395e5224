"""Multiple-choice scoring: one forward per question, batched, the few-shot prefix computed once.

Each question's answer is the letter whose token has the highest next-token log-probability at
the end of its prompt. The prompt of every question of a subject starts with the same prefix
(header + few-shot examples); runners that can (our engine) compute it once and copy its KV
cache into each row, then run the right-padded question suffixes. A question whose tokens do
not extend the prefix's tokens exactly is run whole, so reuse never changes what is scored.

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
from harness.accuracy.prompts import LETTERS, MultipleChoiceTask
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


def read_answers(path: Path) -> dict[str, dict]:
    """Answers (or samples) already recorded for a case, by id (the last one per id)."""
    return {row["id"]: row for row in jsonl.read(path)} if path.exists() else {}


def _fitting_prefix(task: MultipleChoiceTask, tokenizer, title: str, examples: list[Question],
                    longest_question: str, limit: int) -> tuple[list[int], int]:
    """Prefix tokens with as many examples as let the longest question fit in `limit`."""
    for shots in range(len(examples), -1, -1):
        ids = tokenizer(task.prefix(title, examples[:shots])).input_ids
        if len(tokenizer(task.prefix(title, examples[:shots]) + longest_question).input_ids) \
                <= limit:
            return ids, shots
    return ids, 0


def score_subject(runner, tokenizer, task: MultipleChoiceTask, title: str,
                  questions: list[Question], examples: list[Question], batch: int,
                  max_positions: int, results: Path, done: dict[str, dict],
                  progress: Callable[[int], None] | None = None) -> list[dict]:
    """Score one subject's questions (skipping those in `done`); returns every answer."""
    todo = [q for q in questions if q.id not in done]
    answer_ids = task.answer_tokens(tokenizer)
    if todo:
        texts = {q.id: task.question_text(q) for q in todo}
        longest = max(texts.values(), key=len)
        prefix_ids, shots = _fitting_prefix(task, tokenizer, title, examples, longest,
                                            max_positions)
        prefix_text = task.prefix(title, examples[:shots])
        todo.sort(key=lambda q: len(texts[q.id]))  # similar lengths batch with little padding
        for start in range(0, len(todo), batch):
            chunk = todo[start:start + batch]
            logits = _logits(runner, tokenizer, prefix_text, prefix_ids,
                             [texts[q.id] for q in chunk], max_positions)
            answers = []
            for q, (row_logits, truncated) in zip(chunk, logits):
                logprobs = torch.log_softmax(row_logits.float(), -1)[answer_ids].tolist()
                predicted = LETTERS[max(range(4), key=lambda i: logprobs[i])]
                answers.append(Answer(q.id, q.subject, q.category, q.answer, predicted, logprobs,
                                      predicted == q.answer, shots, truncated, q.question))
            jsonl.append(results, [asdict(a) for a in answers])
            done.update({a.id: asdict(a) for a in answers})
            if progress:
                progress(len(chunk))
    return [done[q.id] for q in questions]


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
    return {"correct": correct, "total": n, "accuracy": score,
            "stderr": standard_error(score, n) if n else math.nan}


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
