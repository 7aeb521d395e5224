"""The numerics suite itself, run through pytester on copies of the suite files."""

import csv
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from harness.prompts import prompt_ids, prompt_string
from tests.conftest import tiny_checkpoint

ROOT = Path(__file__).resolve().parent.parent

pytest_plugins = ["pytester"]


def records(pytester, run_id, suite="numerics"):
    return list(csv.DictReader(open(pytester.path / "reports" / run_id / f"{suite}.csv")))


def test_a_checkpoint_with_a_nan_weight_fails_with_records_that_say_so(suites, tmp_path):
    broken = tmp_path / "falcon-nan"
    shutil.copytree(tiny_checkpoint("falcon-tiny"), broken)
    state = load_file(broken / "model.safetensors")
    state["transformer.ln_f.weight"][3] = float("nan")
    save_file(state, broken / "model.safetensors", metadata={"format": "pt"})
    result = suites.runpytest("copied_suites/numerics", "--model-path", f"falcon-tiny={broken}",
                              "--dtype", "fp32", "--batch", "2", "--seqlen", "16",
                              "--run-id", "nan")
    result.assert_outcomes(failed=3)
    found = {r["test"]: r for r in records(suites, "nan")}
    assert found["test_teacher_forced"]["reason"].startswith(
        "step 0 row 0: 49152 non-finite logits")
    assert found["test_teacher_forced"]["max_abs_diff"] == "nan"
    assert "batch vs alone max |dlogit| nan" in found["test_padding_invariance"]["reason"]
    assert found["test_greedy_generation"]["reason"].startswith("step 0 row 0: non-finite logits")
    assert all(r["outcome"] == "failed" for r in found.values())


def test_a_tiny_model_given_by_path_is_judged_by_the_tiny_limits(suites, tmp_path):
    shutil.copytree(tiny_checkpoint("falcon-tiny"), tmp_path / "falcon")
    result = suites.runpytest("copied_suites/numerics", "--model-path",
                              f"falcon-tiny={tmp_path / 'falcon'}", "--dtype", "fp32",
                              "--batch", "2", "--seqlen", "16", "--run-id", "bypath",
                              "-k", "teacher or padding")
    result.assert_outcomes(passed=2)
    found = {r["test"]: r for r in records(suites, "bypath")}
    assert {t: float(r["limit"]) for t, r in found.items()} == {
        "test_teacher_forced": 1e-4, "test_padding_invariance": 1e-4}


def test_smollm2_greedy_generation_from_a_2048_token_prompt(suites):
    result = suites.runpytest("copied_suites/numerics", "--model", "smollm2-135m",
                              "--dtype", "fp32", "--batch", "1", "--seqlen", "2048",
                              "-k", "greedy", "--run-id", "long")
    result.assert_outcomes(passed=1)
    found = records(suites, "long")
    assert [(r["case"], r["tokens_equal"]) for r in found] == [
        ("smollm2-135m-cpu-fp32-bs2-in2048-out32", "64")]


def test_no_empty_parameter_sets(suites):
    result = suites.runpytest("copied_suites/numerics", "--collect-only", "-q", "--batch", "1",
                              "--dtype", "bf16", "--model", "qwen-tiny")
    assert "empty parameter set" not in result.stdout.str()
    result.stdout.fnmatch_lines(["*test_teacher_forced?qwen-tiny-cpu-bf16-bs1-in32-out8?",
                                 "2/4 tests collected (2 deselected)*"])


def readme_selections() -> list[tuple[str, str]]:
    """(suite, -k expression) of every `pytest suites/... -k "..."` line of the README and
    the docs pages."""
    text = "".join(p.read_text() for p in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
    return sorted(set(re.findall(r'pytest (suites/\w+) -k "([^"]+)"', text)))


# What each README example promises; the test fails on an example it does not know.
PROMISES = {
    "cpu and fp32": lambda case: "-cpu-" in case and "-fp32-" in case,
    "qwen and bf16": lambda case: case.startswith("qwen-") and "-bf16-" in case,
    "qwen and bs8": lambda case: case.startswith("qwen-") and "-bs8-" in case,
    "bs1-": lambda case: "-bs1-" in case,
    "in32-": lambda case: "-in32-" in case,
}


def selected(pytester, *args) -> list[str]:
    """Test ids a pytest run with `args` would run (after -k and deselection)."""
    class Selection:
        ids: list[str] = []

        def pytest_collection_finish(self, session):
            Selection.ids = [item.callspec.id for item in session.items]

    pytester.inline_run("--collect-only", *args, plugins=[Selection()])
    return Selection.ids


@pytest.mark.parametrize("suite, expression", readme_selections())
def test_the_readme_selection_examples_select_what_they_say(suites, suite, expression):
    assert expression in PROMISES, f"README example -k {expression!r} has no promise here"
    grid = ("--batch", "1,8,16", "--seqlen", "32,320", "--dtype", "fp32,bf16")
    path = suite.replace("suites/", "copied_suites/")
    cases = selected(suites, path, "-k", expression, *grid)
    assert cases and sorted(cases) == sorted(c for c in selected(suites, path, *grid)
                                             if PROMISES[expression](c))


@pytest.mark.parametrize("length", [1, 7, 128, 2048, 5000])
def test_prompts_of_real_text_reach_any_length(length):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint("smollm2-135m"))
    ids = prompt_ids(tokenizer, length)
    start = tokenizer("The history of computing").input_ids
    assert len(ids) == length and ids[:len(start)] == start[:length]
    text = prompt_string(tokenizer, length)
    assert len(tokenizer(text, truncation=True, max_length=length).input_ids) == length
    assert torch.tensor(ids).max() < tokenizer.vocab_size + len(tokenizer.added_tokens_decoder)
