"""The accuracy tasks, declared: prompt formats, answer tokens, stop sequences, versions.

MMLU is lm-evaluation-harness's default `mmlu` task (which follows Hendrycks' original script):
a description line, then `shots` examples from the dev split (the first n), then the question,
each as "question\\nA. ..\\nB. ..\\nC. ..\\nD. ..\\nAnswer:" with " X" as the answer, joined by
blank lines. C-Eval is its official script (`code/evaluator_series`): "以下是中国关于{科目}考试的
单项选择题，请选出其中的正确答案。" then examples ending "\\n答案：X\\n\\n" and the question ending
"\\n答案：". A question is scored by the next-token log-probabilities of the four answer
tokens at the last position.

The cloze forms (`mmlu-cloze`, `ceval-cloze`) score each choice's own text as a continuation
instead: lm-evaluation-harness's `mmlu_continuation` task ("The following are questions (with
answers) about {subject}." then "Question: ...\\nAnswer:" with " choice" as the continuation;
its examples end in their right choice's text). A choice's score is the sum of its tokens'
log-probabilities; `acc` picks the highest, `acc_norm` the highest per character of the
choice. C-Eval's cloze form follows the same shape in C-Eval's own words ("问题：...\\n答案："),
no delimiter before the choice. Small models are measured in cloze form because in letter
form they sit at chance. HumanEval's prompt is the problem's own; the Codex paper's stop
sequences end a completion, which then runs as a program in the sandbox (`humaneval.py`).
`humaneval-instruct` asks an instruct model for the function in its chat template, as
evalplus does, and runs the code it writes in the code block its answer opens.

Changing anything that shapes a prompt must bump the task's `version`; every result carries the
version and a hash of the templates (of HumanEval's: with the generation settings), so runs are
only compared when they asked the same thing.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass

from harness.accuracy.datasets import Question

LETTERS = ("A", "B", "C", "D")


@dataclass(frozen=True)
class MultipleChoiceTask:
    name: str
    version: int
    header: str  # formatted with {subject}
    choice_line: str  # formatted with {letter}, {text}
    answer_cue: str  # ends the question; the answer token follows it
    answer_prefix: str  # what precedes the letter in the answer token (" " for MMLU)
    example_end: str  # after an example's answer
    form = "letter"

    @property
    def dataset(self) -> str:
        return self.name

    @property
    def prompt_hash(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]

    def question_text(self, q: Question) -> str:
        lines = [q.question.strip() if self.name == "mmlu" else q.question]
        lines += [self.choice_line.format(letter=letter, text=text)
                  for letter, text in zip(LETTERS, q.choices)]
        return "\n".join(lines) + self.answer_cue

    def prefix(self, subject_title: str, examples: list[Question]) -> str:
        """What every question of a subject shares: the header and the few-shot examples."""
        text = self.header.format(subject=subject_title)
        for q in examples:
            text += self.question_text(q) + self.answer_prefix + q.answer + self.example_end
        return text

    def answer_tokens(self, tokenizer) -> list[int]:
        """The token of each answer letter as it follows the cue; each must be one token."""
        ids = []
        for letter in LETTERS:
            tokens = tokenizer(self.answer_prefix + letter, add_special_tokens=False).input_ids
            if len(tokens) != 1:
                raise ValueError(f"task {self.name}: answer {self.answer_prefix + letter!r} is "
                                 f"{len(tokens)} tokens for this tokenizer, expected 1")
            ids.append(tokens[0])
        return ids


MMLU = MultipleChoiceTask(
    "mmlu", 1,
    header="The following are multiple choice questions (with answers) about {subject}.\n\n",
    choice_line="{letter}. {text}", answer_cue="\nAnswer:", answer_prefix=" ",
    example_end="\n\n")
CEVAL = MultipleChoiceTask(
    "ceval", 1,
    header="以下是中国关于{subject}考试的单项选择题，请选出其中的正确答案。\n\n",
    choice_line="{letter}. {text}", answer_cue="\n答案：", answer_prefix="", example_end="\n\n")


@dataclass(frozen=True)
class ClozeTask:
    """A multiple-choice dataset scored in cloze form: each choice's text is a continuation."""

    name: str
    dataset: str  # whose questions: mmlu or ceval
    version: int
    header: str  # formatted with {subject}
    question: str  # formatted with {question}; the choice's text follows it
    delimiter: str  # between the question and a choice's text
    example_end: str  # after an example's right choice
    form = "cloze"

    @property
    def prompt_hash(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]

    def context(self, q: Question) -> str:
        return self.question.format(question=q.question.strip())

    def continuations(self, q: Question) -> list[str]:
        return [self.delimiter + text for text in q.choices]

    def prefix(self, subject_title: str, examples: list[Question]) -> str:
        text = self.header.format(subject=subject_title)
        for q in examples:
            text += (self.context(q) + self.continuations(q)[LETTERS.index(q.answer)]
                     + self.example_end)
        return text


MMLU_CLOZE = ClozeTask(
    "mmlu-cloze", "mmlu", 1,
    header="The following are questions (with answers) about {subject}.\n\n",
    question="Question: {question}\nAnswer:", delimiter=" ", example_end="\n\n")
CEVAL_CLOZE = ClozeTask(
    "ceval-cloze", "ceval", 1,
    header="以下是中国关于{subject}考试的问题（附答案）。\n\n",
    question="问题：{question}\n答案：", delimiter="", example_end="\n\n")


# Splits a rendered chat at the point the model's answer continues (evalplus's way of
# applying a chat template to a conversation whose last turn the model completes).
SPLITTER = "-[[]]-the-answer-continues-here-[[]]-"


@dataclass(frozen=True)
class CodeTask:
    """HumanEval in one form. completion: the model continues the problem's own prompt (base
    models; the Codex paper). instruct: the problem is asked for in the model's chat template
    (evalplus's instruction and response prefix, which opens a Python code block), and the
    code is what the model writes before the block closes (instruct models)."""

    name: str
    version: int  # also bump when the program layout or its scoring change
    stop_sequences: tuple[str, ...]  # generation stops at one; the completion is cut there
    program: str  # formatted with {prompt}, {completion}, {test}, {entry_point}
    form: str = "completion"
    instruction: str = ""  # instruct: before the problem, which follows in a code block
    response_prefix: str = ""  # instruct: how the answer starts; it opens the code block
    dataset = "humaneval"  # whose problems

    def prompt_hash(self, max_new_tokens: int, temperature: float, samples: int,
                    chat_template: str | None = None) -> str:
        """Of what shapes the samples: the stops and the generation settings (and, in
        instruct form, the instruction, the response prefix and the chat template)."""
        shaping = [self.version, self.stop_sequences, max_new_tokens, temperature, samples]
        if self.form == "instruct":
            shaping += [self.instruction, self.response_prefix, chat_template]
        return hashlib.sha256(json.dumps(shaping).encode()).hexdigest()[:12]

    def prompt(self, problem_prompt: str, tokenizer) -> str:
        """What the model is given: the problem's prompt itself, or the chat (the model's
        template where its tokenizer has one, else instruction and prefix on their own)."""
        if self.form == "completion":
            return problem_prompt
        question = f"{self.instruction}\n```\n{problem_prompt.strip()}\n```\n"
        if getattr(tokenizer, "chat_template", None) is None:
            return f"{question}\n{self.response_prefix}"
        chat = tokenizer.apply_chat_template(
            [{"role": "user", "content": question},
             {"role": "assistant", "content": self.response_prefix + SPLITTER}],
            tokenize=False)
        return chat.split(SPLITTER)[0]

    def program_for(self, problem_prompt: str, completion: str, test: str,
                    entry_point: str) -> str:
        """The program that is run. An instruct answer that defines the function runs after
        the whole prompt (its imports and helper functions, which answers often leave out;
        the prompt's docstring-only stub is redefined by the answer); one that does not is
        taken as the function's body, after the prompt."""
        prompt = problem_prompt
        if self.form == "instruct" and re.search(rf"^def {re.escape(entry_point)}\(",
                                                 completion, re.MULTILINE):
            prompt = problem_prompt.rstrip() + "\n\n\n"
        return self.program.format(prompt=prompt, completion=completion, test=test,
                                   entry_point=entry_point)


HUMANEVAL = CodeTask(
    "humaneval", 2, stop_sequences=("\ndef", "\nclass", "\nif", "\nprint", "\n#"),
    program="{prompt}{completion}\n\n{test}\n\ncheck({entry_point})\n")
HUMANEVAL_INSTRUCT = CodeTask(
    "humaneval-instruct", 1, stop_sequences=("```",),
    program="{prompt}{completion}\n\n{test}\n\ncheck({entry_point})\n", form="instruct",
    instruction="Please provide a self-contained Python script that solves the following "
                "problem in a markdown code block:",
    response_prefix="Below is a Python script with a self-contained function that solves the "
                    "problem and passes corresponding tests:\n```python\n")
TASKS = {task.name: task for task in (MMLU, CEVAL, MMLU_CLOZE, CEVAL_CLOZE, HUMANEVAL,
                                      HUMANEVAL_INSTRUCT)}


def is_code(task: str) -> bool:
    """Whether the task named `task` runs code (HumanEval) rather than asking multiple choice."""
    return isinstance(TASKS[task], CodeTask)
