"""GSM8K from a local folder holding the official train.jsonl (and test.jsonl).

Each line is {"question": ..., "answer": ...}; the answer is a worked solution ending in
"#### N". We keep the question, the worked solution (calculator annotations <<...>>
removed) as `reasoning`, and N with thousands separators removed as `answer` (the
field name the RL rewards read; they accept the bare number).
The last `validation_fraction` of train.jsonl is held out as the validation split;
test.jsonl, when present, is the test split.
"""
from __future__ import annotations

import dataclasses
import json
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


def parse_file(path: str) -> list[dict[str, str]]:
  """Reads one GSM8K jsonl file; a malformed line raises ValueError naming file:line."""
  examples = []
  with open(path, encoding="utf-8") as f:
    for line_no, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
        if not isinstance(record, dict):
          raise ValueError("line is not a JSON object")
        question, answer = record.get("question"), record.get("answer")
        if not isinstance(question, str) or not isinstance(answer, str):
          raise ValueError("needs string fields 'question' and 'answer'")
        reasoning, final = parse_answer(answer)
      except ValueError as e:  # json.JSONDecodeError is a ValueError too.
        raise ValueError(f"{path}, line {line_no}: malformed GSM8K record: {e}") from None
      examples.append({"question": question.strip(), "reasoning": reasoning,
                       "answer": final})
  if not examples:
    raise ValueError(f"{path}: no GSM8K records")
  return examples


@dataclasses.dataclass
class Gsm8kConfig(tfds.core.BuilderConfig):
  source_dir: str = ""
  files_fingerprint: str = ""
  validation_fraction: float = 0.05


def make_config(source_dir: str, *, validation_fraction: float = 0.05) -> Gsm8kConfig:
  """A config named by the folder's files (path, size, mtime), so edits re-prepare."""
  source_dir = os.path.abspath(os.path.expanduser(source_dir))
  train = os.path.join(source_dir, "train.jsonl")
  if not os.path.isfile(train):
    raise ValueError(f"gsm8k: {train} does not exist (data.source_path must be a folder "
                     "with train.jsonl and optionally test.jsonl)")
  files = [p for p in (train, os.path.join(source_dir, "test.jsonl")) if os.path.isfile(p)]
  return builders.identity_config(
      Gsm8kConfig, prefix="local", source_dir=source_dir,
      files_fingerprint=builders.files_fingerprint(files),
      validation_fraction=validation_fraction)


class DlmGsm8k(builders.LocalBuilder):
  """{"question", "reasoning", "answer"} from local GSM8K jsonl files."""
  FEATURES = {"question": tfds.features.Text(), "reasoning": tfds.features.Text(),
              "answer": tfds.features.Text()}

  def _split_generators(self, dl_manager):
    del dl_manager
    c = self.builder_config
    train = parse_file(os.path.join(c.source_dir, "train.jsonl"))
    num_val = max(1, round(c.validation_fraction * len(train)))
    if num_val >= len(train):
      raise ValueError(f"gsm8k: {c.source_dir}/train.jsonl has {len(train)} records, too "
                       "few to hold out a validation split")
    splits = {"train": self._generate_examples(train[:-num_val]),
              "validation": self._generate_examples(train[-num_val:])}
    test_path = os.path.join(c.source_dir, "test.jsonl")
    if os.path.isfile(test_path):
      splits["test"] = self._generate_examples(parse_file(test_path))
    return splits
