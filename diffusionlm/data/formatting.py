"""Prompt / response templates of the task datasets, shared by SFT, sampling and RL.

The response follows the d1 paper's layout (Zhao et al., 2025), the one the strict-format
reward of `diffusionlm/rl/rewards.py` checks:
    <reasoning>
    ...
    </reasoning>
    <answer>
    X
    </answer>
A task without reference reasoning (Sudoku) keeps only the <answer> block. The prompt is
only the question and a newline, no system prompt, so a character-level model holds a
whole example in a short sequence: Sudoku is 61 characters with EOS, Countdown about 110.
Pretraining objectives (mdm, ar) see `task_text(example) = prompt + response`.

An example is the dict the pipeline reads from a task builder, plus "task"; the field
names are the ones the RL rewards read:
  sudoku:    {"task", "puzzle", "solution"}                16 digits, 0 = blank
  countdown: {"task", "numbers", "target", "expression", "steps"}
  gsm8k:     {"task", "question", "reasoning", "answer"}   answer: the bare number
  math:      {"task", "problem", "solution", "answer"}     answer: LaTeX, e.g. "\\frac{1}{2}"
A MATH response gives its answer as \\boxed{answer} inside the <answer> block, the form d1's
MATH rewards score (correctness of the last \\boxed{}, and a \\boxed{} in the answer block).
"""
from __future__ import annotations

import re
from collections.abc import Callable
from typing import NamedTuple

REASONING_START, REASONING_END = "<reasoning>", "</reasoning>"
ANSWER_START, ANSWER_END = "<answer>", "</answer>"

_ANSWER = re.compile(re.escape(ANSWER_START) + r"(.*?)" + re.escape(ANSWER_END), re.DOTALL)


class _Template(NamedTuple):
  question: Callable[[dict], str]
  reasoning: Callable[[dict], str]
  answer: Callable[[dict], str]


_TEMPLATES = {
    "sudoku": _Template(question=lambda ex: f"Sudoku: {ex['puzzle']}",
                        reasoning=lambda ex: "",
                        answer=lambda ex: ex["solution"]),
    "countdown": _Template(
        question=lambda ex: f"Use {' '.join(map(str, ex['numbers']))} to make {ex['target']}",
        reasoning=lambda ex: ex["steps"],
        answer=lambda ex: ex["expression"]),
    "gsm8k": _Template(question=lambda ex: ex["question"],
                       reasoning=lambda ex: ex["reasoning"],
                       answer=lambda ex: ex["answer"]),
    "math": _Template(question=lambda ex: ex["problem"],
                      reasoning=lambda ex: ex["solution"],
                      answer=lambda ex: f"\\boxed{{{ex['answer']}}}"),
}
TASKS = tuple(_TEMPLATES)


def _template(example: dict) -> _Template:
  task = example.get("task")
  if task not in _TEMPLATES:
    raise ValueError(f"example has unknown task {task!r}; expected one of {TASKS}")
  return _TEMPLATES[task]


def reference_answer(example: dict) -> str:
  """What goes between <answer> tags in a correct response."""
  return _template(example).answer(example)


def format_response(reasoning: str, answer: str) -> str:
  """d1 response layout: reasoning and answer in tags; no reasoning block if it is empty."""
  answer_block = f"{ANSWER_START}\n{answer}\n{ANSWER_END}"
  if not reasoning:
    return answer_block
  return f"{REASONING_START}\n{reasoning}\n{REASONING_END}\n{answer_block}"


def task_prompt(example: dict) -> str:
  """The prompt the model is conditioned on: the question and a newline."""
  return _template(example).question(example) + "\n"


def task_response(example: dict) -> str:
  """The target completion: reference reasoning and answer in d1 tags."""
  template = _template(example)
  return format_response(template.reasoning(example), template.answer(example))


def task_text(example: dict) -> str:
  """prompt + response: what the pretraining objectives see."""
  return task_prompt(example) + task_response(example)


def extract_answer(completion: str) -> str | None:
  """The stripped text of the last <answer>...</answer> in `completion`, else None."""
  answers = _ANSWER.findall(completion)
  return answers[-1].strip() if answers else None
