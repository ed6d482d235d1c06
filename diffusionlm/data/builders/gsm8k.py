"""GSM8K from a local folder holding the official train.jsonl (and test.jsonl).

Each line is {"question": ..., "answer": ...}; the answer is a worked solution ending in
"#### N". We keep the question, the worked solution (calculator annotations <<...>>
removed) as `reasoning`, and N with thousands separators removed as `answer` (the
field name the RL rewards read; they accept the bare number).
The last `validation_fraction` of train.jsonl is held out as the validation split;
test.jsonl, when present, is the test split.
"""
from __future__ import annotations

import os
import re

import tensorflow_datasets as tfds

from diffusionlm.data import builders

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
