"""MATH (Hendrycks et al. 2021): competition problems with a LaTeX answer.

Data: a local folder in the MATH500 layout, holding test.jsonl (required; e.g. the 500
problems of MATH500, Lightman et al. 2023) and optionally train.jsonl (e.g. the rest of
MATH, as d1 trains on). Each line is {"problem": ..., "solution": ..., "answer": ...}
(string fields; "subject", "level" and "unique_id" may be present and are ignored). A line
without "answer" takes it from the last \\boxed{...} of its solution. We keep problem,
solution and answer, the answer checked with `math_gold` so that every reference can be
scored. Splits: test from test.jsonl; with train.jsonl, its last `validation_fraction` is
held out as validation and the rest is train.

Prompt: the problem. Response: the solution, and \\boxed{answer} in the <answer> block.

Rewards (d1's MATH terms): correctness 2.0 (`math_correct`: the last \\boxed{} equals the
reference) and boxed_in_answer 0.5 (the last <answer> block contains a complete
\\boxed{...}). Correct: `math_correct`.
"""
from __future__ import annotations

import functools
import os
import re

import tensorflow_datasets as tfds

from diffusionlm.data import builders
from diffusionlm.tasks import answers, layout, task

BOXED_IN_ANSWER_REWARD = 0.5

# ---- Data ----------------------------------------------------------------------------------


def parse_record(record: dict) -> dict[str, str]:
  """One MATH line's object -> {"problem", "solution", "answer"}; ValueError if malformed."""
  problem, solution = record.get("problem"), record.get("solution")
  if not isinstance(problem, str) or not isinstance(solution, str):
    raise ValueError("needs string fields 'problem' and 'solution'")
  answer = record.get("answer")
  if answer is None:
    answer = answers.last_boxed(solution)
    if answer is None:
      raise ValueError("has no 'answer' field and its solution has no \\boxed{...}")
  elif not isinstance(answer, str):
    raise ValueError(f"field 'answer' must be a string, got {type(answer).__name__}")
  return {"problem": problem.strip(), "solution": solution.strip(),
          "answer": math_gold(answer)}


def parse_file(path: str) -> list[dict[str, str]]:
  """Reads one MATH jsonl file; a malformed line raises ValueError naming file:line."""
  return builders.read_jsonl(path, parse_record, what="MATH")


def make_config(source_dir: str, *,
                validation_fraction: float = 0.05) -> builders.JsonlFolderConfig:
  """The builder config of the folder `source_dir` (needs test.jsonl, may hold train.jsonl)."""
  return builders.jsonl_folder_config(source_dir, required="test.jsonl", optional="train.jsonl",
                                      what="math", validation_fraction=validation_fraction)


class DlmMath(builders.LocalBuilder):
  """{"problem", "solution", "answer"} from local MATH jsonl files."""
  FEATURES = {"problem": tfds.features.Text(), "solution": tfds.features.Text(),
              "answer": tfds.features.Text()}

  def _split_generators(self, dl_manager):
    del dl_manager
    c = self.builder_config
    splits = {"test": self._generate_examples(
        parse_file(os.path.join(c.source_dir, "test.jsonl")))}
    train_path = os.path.join(c.source_dir, "train.jsonl")
    if os.path.isfile(train_path):
      train, validation = builders.hold_out_validation(
          parse_file(train_path), c.validation_fraction, what=f"math: {train_path}")
      splits.update(train=self._generate_examples(train),
                    validation=self._generate_examples(validation))
    return splits


# ---- Rewards -------------------------------------------------------------------------------

_TEXT_GROUP_RE = re.compile(r"\\(?:text|textbf|textit|textrm|mathrm|mbox)\s*\{([^{}]*)\}")
_SPACING_RE = re.compile(r"\\(?:[!,;: ]|q?quad(?![a-zA-Z]))")


def normalize_math_answer(answer: str) -> str:
  """Canonical string form of a MATH answer for exact comparison.

  Drops \\left/\\right, spacing commands (\\! \\, \\; \\: \\quad), degree signs, "$", "%",
  all whitespace and trailing "."; \\dfrac/\\tfrac -> \\frac, \\frac12 -> \\frac{1}{2},
  \\sqrt2 -> \\sqrt{2}; a lone "\\text{X}" becomes "X", while \\text{...} groups next to
  other content are units and are removed ("10\\text{ cm}" -> "10"); a short "x = " prefix
  (one "=" with at most two characters before it) is removed.
  """
  s = re.sub(r"\\(?:left|right)(?![a-zA-Z])", "", answer)
  s = _SPACING_RE.sub("", s)
  s = re.sub(r"\\[dt]frac(?![a-zA-Z])", r"\\frac", s)
  s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|\u00b0", "", s)
  s = s.replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "")
  s = s.strip()
  lone_text = _TEXT_GROUP_RE.fullmatch(s)
  s = lone_text[1] if lone_text else _TEXT_GROUP_RE.sub("", s)
  s = re.sub(r"\s+", "", s).rstrip(".")
  s = re.sub(r"\\frac([0-9])([0-9])", r"\\frac{\1}{\2}", s)
  s = re.sub(r"\\sqrt([0-9])", r"\\sqrt{\1}", s)
  if s.count("=") == 1 and len(s.split("=")[0]) <= 2:
    s = s.split("=")[1]
  return s


def math_answers_equal(predicted: str, reference: str) -> bool:
  """Equal after `normalize_math_answer`, or both simple numbers with the same value."""
  a, b = normalize_math_answer(predicted), normalize_math_answer(reference)
  if a == b:
    return True
  value_a, value_b = answers.parse_number(a), answers.parse_number(b)
  return value_a is not None and value_a == value_b


def math_gold(answer: str) -> str:
  """The reference answer: the last \\boxed{} of a full solution, else the field itself."""
  text = answers.field_text(answer, "answer")
  boxed = answers.last_boxed(text)
  gold = boxed if boxed is not None else text.strip()
  if not normalize_math_answer(gold):
    raise ValueError(f"math answer field is empty after normalisation: {answer!r}")
  return gold


def math_correct(completion: str, answer: str) -> bool:
  """The completion's last \\boxed{} (else its last <answer> block) equals the reference."""
  gold = math_gold(answer)
  predicted = answers.last_boxed(completion)
  if predicted is None:
    predicted = layout.answer_block(completion)
  return predicted is not None and math_answers_equal(predicted, gold)


def math_reward(completion: str, answer: str) -> float:
  """CORRECT_REWARD (2.0, as in d1) when `math_correct`, else 0.0."""
  return answers.CORRECT_REWARD if math_correct(completion, answer) else 0.0


def boxed_in_answer_reward(completion: str) -> float:
  """BOXED_IN_ANSWER_REWARD when the last <answer> block contains a complete \\boxed{}."""
  block = layout.answer_block(completion)
  return BOXED_IN_ANSWER_REWARD if block and answers.last_boxed(block) is not None else 0.0


# ---- The task ------------------------------------------------------------------------------


def make_builder(data_config):
  """The DlmMath builder of the folder data.source_path."""
  return functools.partial(DlmMath, config=make_config(data_config.source_path))


TASK = task.Task(
    name="math",
    question=lambda ex: ex["problem"],
    reasoning=lambda ex: ex["solution"],
    answer=lambda ex: f"\\boxed{{{ex['answer']}}}",
    reward_terms=(
        task.RewardTerm("correctness", math_reward, ("answer",), answers.CORRECT_REWARD),
        task.RewardTerm("boxed_in_answer", boxed_in_answer_reward, (), BOXED_IN_ANSWER_REWARD),
    ),
    is_correct=lambda completion, ex: math_correct(completion, ex["answer"]),
    builder=make_builder,
    reads_source_path=True,
)
