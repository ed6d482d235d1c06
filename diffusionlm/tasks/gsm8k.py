"""GSM8K (Cobbe et al. 2021): grade-school word problems with a numeric answer.

Data: a local folder holding the official train.jsonl (and test.jsonl). Each line is
{"question": ..., "answer": ...}; the answer is a worked solution ending in "#### N". We keep
the question, the worked solution (calculator annotations <<...>> removed) as `reasoning`,
and N with thousands separators removed as `answer` (the rewards accept the bare number).
The last `validation_fraction` of train.jsonl is held out as the validation split;
test.jsonl, when present, is the test split.

Prompt: the question. Response: the worked solution and N in d1's layout.

Rewards (d1's five GSM8K terms): the format terms of `layout` (xml_count, soft_format,
strict_format, 0.5 each), integer_answer 0.5 (the last <answer> block holds an integer,
"-?[0-9]+") and correctness 2.0 (`gsm8k_correct`). Correct: `gsm8k_correct`.
"""
from __future__ import annotations

from fractions import Fraction
import functools
import numbers as numbers_lib
import os
import re

import tensorflow_datasets as tfds

from diffusionlm.data import builders
from diffusionlm.tasks import answers, layout, task

INTEGER_ANSWER_REWARD = 0.5

# ---- Data ----------------------------------------------------------------------------------

_NUMBER = re.compile(r"^-?\d+(\.\d+)?$")
_CALCULATOR = re.compile(r"<<[^>]*>>")


def parse_answer(answer: str) -> tuple[str, str]:
  """"... #### 1,234" -> (worked solution, "1234"); ValueError if there is no number."""
  if "####" not in answer:
    raise ValueError("answer has no '#### N' final line")
  reasoning, final = answer.rsplit("####", 1)
  final = final.strip().replace(",", "")
  if not _NUMBER.match(final):
    raise ValueError(f"final answer {final!r} is not a number")
  return _CALCULATOR.sub("", reasoning).strip(), final


def parse_record(record: dict) -> dict[str, str]:
  """One GSM8K line's object -> {"question", "reasoning", "answer"}; ValueError if malformed."""
  question, answer = record.get("question"), record.get("answer")
  if not isinstance(question, str) or not isinstance(answer, str):
    raise ValueError("needs string fields 'question' and 'answer'")
  reasoning, final = parse_answer(answer)
  return {"question": question.strip(), "reasoning": reasoning, "answer": final}


def parse_file(path: str) -> list[dict[str, str]]:
  """Reads one GSM8K jsonl file; a malformed line raises ValueError naming file:line."""
  return builders.read_jsonl(path, parse_record, what="GSM8K")


def make_config(source_dir: str, *,
                validation_fraction: float = 0.05) -> builders.JsonlFolderConfig:
  """The builder config of the folder `source_dir` (needs train.jsonl, may hold test.jsonl)."""
  return builders.jsonl_folder_config(source_dir, required="train.jsonl", optional="test.jsonl",
                                      what="gsm8k", validation_fraction=validation_fraction)


class DlmGsm8k(builders.LocalBuilder):
  """{"question", "reasoning", "answer"} from local GSM8K jsonl files."""
  FEATURES = {"question": tfds.features.Text(), "reasoning": tfds.features.Text(),
              "answer": tfds.features.Text()}

  def _split_generators(self, dl_manager):
    del dl_manager
    c = self.builder_config
    train, validation = builders.hold_out_validation(
        parse_file(os.path.join(c.source_dir, "train.jsonl")), c.validation_fraction,
        what=f"gsm8k: {c.source_dir}/train.jsonl")
    splits = {"train": self._generate_examples(train),
              "validation": self._generate_examples(validation)}
    test_path = os.path.join(c.source_dir, "test.jsonl")
    if os.path.isfile(test_path):
      splits["test"] = self._generate_examples(parse_file(test_path))
    return splits


# ---- Rewards -------------------------------------------------------------------------------

_NUMBER_AFTER_CUE = (rf"[\s:*]*(?P<sign>-?)\s?\$?(?P<num>{answers.UNSIGNED_NUMBER})"
                     r"(?:/(?P<den>[0-9]+))?")
_ANSWER_CUES = tuple(re.compile(cue + _NUMBER_AFTER_CUE) for cue in (
    r"####",
    r"(?i:the\s+(?:final\s+)?answer\s+is)",
    r"(?m:^[ \t]*A[ \t]*:)",
))


def _gsm8k_number_in(text: str) -> Fraction | None:
  """Rules 2-6 of `extract_gsm8k_answer`, applied to `text`."""
  whole = answers.parse_number(text)
  if whole is not None:
    return whole
  boxed = answers.last_boxed(text)
  if boxed is not None:
    whole = answers.parse_number(boxed)
    return whole if whole is not None else answers.last_number(boxed)
  for cue in _ANSWER_CUES:
    matches = list(cue.finditer(text))
    if matches:
      return answers.fraction_from_match(matches[-1])
  return answers.last_number(text)


def extract_gsm8k_answer(completion: str) -> Fraction | None:
  """The completion's final numeric answer, or None if it gives no number.

  Priority: (1) the last <answer>...</answer> block (its content is then read by the rules
  below; a block without a number means no answer); (2) the last complete \\boxed{...};
  (3) the last "#### N"; (4) the last "The answer is N"; (5) the last line "A: N";
  (6) the last number anywhere. A number spans the forms of `parse_number`; a text that is
  one number as a whole ("\\frac{3}{4}", "- $ 18") is read as that number first.
  """
  block = layout.answer_block(completion)
  return _gsm8k_number_in(block if block is not None else completion)


def gsm8k_gold(answer: str) -> Fraction:
  """The reference number: the raw GSM8K answer field ("... #### N") or the bare number
  (a string, or an int / Fraction)."""
  if isinstance(answer, numbers_lib.Rational):
    return Fraction(answer)
  text = answers.field_text(answer, "answer")
  tail = text.rsplit("####", 1)[-1]
  value = answers.parse_number(tail)
  if value is None:
    raise ValueError(f"gsm8k answer field holds no number after '####': {answer!r}")
  return value


def gsm8k_correct(completion: str, answer: str) -> bool:
  """True when the completion's final answer equals the reference number exactly."""
  gold = gsm8k_gold(answer)
  predicted = extract_gsm8k_answer(completion)
  return predicted is not None and predicted == gold


def gsm8k_reward(completion: str, answer: str) -> float:
  """CORRECT_REWARD (2.0, as in d1) when `gsm8k_correct`, else 0.0."""
  return answers.CORRECT_REWARD if gsm8k_correct(completion, answer) else 0.0


def integer_answer_reward(completion: str) -> float:
  """INTEGER_ANSWER_REWARD when the last <answer> block is an integer (d1's int reward)."""
  block = layout.answer_block(completion)
  return INTEGER_ANSWER_REWARD if block and re.fullmatch(r"-?[0-9]+", block) else 0.0


# ---- The task ------------------------------------------------------------------------------


def make_builder(data_config):
  """The DlmGsm8k builder of the folder data.source_path."""
  return functools.partial(DlmGsm8k, config=make_config(data_config.source_path))


TASK = task.Task(
    name="gsm8k",
    question=lambda ex: ex["question"],
    reasoning=lambda ex: ex["reasoning"],
    answer=lambda ex: ex["answer"],
    reward_terms=(
        task.RewardTerm("xml_count", layout.xml_count_reward, (), 4 * layout.XML_TAG_REWARD),
        task.RewardTerm("soft_format", layout.soft_format_reward, (),
                        layout.SOFT_FORMAT_REWARD),
        task.RewardTerm("strict_format", layout.strict_format_reward, (),
                        layout.STRICT_FORMAT_REWARD),
        task.RewardTerm("integer_answer", integer_answer_reward, (), INTEGER_ANSWER_REWARD),
        task.RewardTerm("correctness", gsm8k_reward, ("answer",), answers.CORRECT_REWARD),
    ),
    is_correct=lambda completion, ex: gsm8k_correct(completion, ex["answer"]),
    builder=make_builder,
    reads_source_path=True,
)
