"""HumanEval for instruct models: the chat template, the code block, the program that runs."""

import hashlib
import json
from functools import cache

import pytest

from harness.accuracy import humaneval
from harness.accuracy.files import load_humaneval
from harness.accuracy.prompts import HUMANEVAL, HUMANEVAL_INSTRUCT
from harness.sandbox import Limits, Sandbox, bwrap_status
from tests.conftest import tiny_checkpoint

pytest_plugins = ["pytester"]


@cache
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_checkpoint("smollm2-135m"))


PROBLEM = 'from typing import List\n\n\ndef total(xs: List[int]) -> int:\n    """Sum."""\n'


def test_the_problem_is_asked_in_the_models_chat_template():
    prompt = HUMANEVAL_INSTRUCT.prompt(PROBLEM, tokenizer())
    assert prompt.startswith("<|im_start|>system\n")  # SmolLM2's own template
    assert ("<|im_start|>user\nPlease provide a self-contained Python script that solves the "
            "following problem in a markdown code block:\n```\n" + PROBLEM.strip() + "\n```\n"
            "<|im_end|>\n<|im_start|>assistant\n") in prompt
    assert prompt.endswith("passes corresponding tests:\n```python\n")


def test_without_a_chat_template_the_instruction_stands_alone():
    class Plain:
        chat_template = None

    prompt = HUMANEVAL_INSTRUCT.prompt(PROBLEM, Plain())
    assert prompt.startswith("Please provide") and prompt.endswith("```python\n")
    assert HUMANEVAL.prompt(PROBLEM, Plain()) == PROBLEM


def test_the_forms_hash_apart_and_the_completion_forms_hash_is_unchanged():
    old = hashlib.sha256(json.dumps([2, list(HUMANEVAL.stop_sequences), 256, 0.0, 1])
                         .encode()).hexdigest()[:12]
    assert HUMANEVAL.prompt_hash(256, 0.0, 1) == old
    one = HUMANEVAL_INSTRUCT.prompt_hash(256, 0.0, 1, "template A")
    assert one != old and one != HUMANEVAL_INSTRUCT.prompt_hash(256, 0.0, 1, "template B")


def test_the_code_ends_where_its_block_closes():
    text = "def total(xs):\n    return sum(xs)\n```\n\nThis sums the list."
    assert humaneval.truncate(text, HUMANEVAL_INSTRUCT) == "def total(xs):\n    return sum(xs)\n"


def test_an_answer_defining_the_function_runs_after_the_whole_prompt():
    """Its imports and helpers (HumanEval/38's encode_cyclic) stay; the stub is redefined."""
    program = HUMANEVAL_INSTRUCT.program_for(PROBLEM, "def total(xs):\n    return sum(xs)\n",
                                             "def check(f): assert f([1]) == 1", "total")
    assert program.startswith(PROBLEM.rstrip() + "\n\n\ndef total(xs):\n    return sum(xs)\n")
    assert program.endswith("check(total)\n")
    body = HUMANEVAL_INSTRUCT.program_for(PROBLEM, "    return sum(xs)\n", "", "total")
    assert body.startswith(PROBLEM + "    return sum(xs)\n")  # a body continues the prompt


@pytest.mark.skipif(not bwrap_status()[0], reason=f"bwrap cannot run here: {bwrap_status()[1]}")
def test_a_right_answer_passes_and_a_wrong_one_fails_in_the_sandbox(tmp_path):
    problems = [load_humaneval()[i] for i in (0, 38, 1)]

    def whole_function(problem):
        """The canonical solution written as a whole function, as an instruct answer is;
        HumanEval/38's calls the prompt's own helper, encode_cyclic."""
        signature = problem.prompt[problem.prompt.index(f"def {problem.entry_point}("):]
        return signature.split("\n")[0] + "\n" + problem.canonical_solution

    class Answers:
        """A port that completes text: right answers for the first two, a wrong third."""

        def complete_text(self, prompts, max_new_tokens, stop, temperature, seed):
            assert stop == ["```"] and all(p.endswith("```python\n") for p in prompts)
            return [(whole_function(problems[0]) + "```\nDone.", "stop"),
                    (whole_function(problems[1]), "stop"),
                    (f"def {problems[2].entry_point}(*args):\n    return None\n", "stop")]

    rows = humaneval.evaluate(Answers(), tokenizer(), problems, Sandbox(Limits(timeout_s=5)),
                              tmp_path / "s.jsonl", 3, 64, 1, 0.0, task=HUMANEVAL_INSTRUCT)
    assert [r["status"] for r in rows] == ["passed", "passed", "failed"]


def test_the_suite_runs_the_instruct_form(suites):
    result = suites.runpytest("copied_suites/accuracy", "--model", "smollm2-135m", "--task",
                              "humaneval-instruct", "--humaneval-problems", "2",
                              "--max-new-tokens", "8", "--allow-unsandboxed",
                              "--run-id", "instruct")
    result.assert_outcomes(passed=1)
    (row,) = [json.loads(line) for line in
              (suites.path / "reports" / "instruct" / "records-main.jsonl").read_text()
              .splitlines()]
    assert row["case"].startswith("humaneval-instruct-smollm2-135m-cpu-fp32")
    assert row["form"] == "instruct" and row["chat_template"] is True
    assert row["problems"] == 2 and 0 <= row["pass@1"] <= 1
