"""MATH (Hendrycks et al. 2021) from a local folder in the MATH500 layout.

The folder holds test.jsonl (required; e.g. the 500 problems of MATH500, Lightman et al.
2023) and optionally train.jsonl (e.g. the rest of MATH, as d1 trains on). Each line is
{"problem": ..., "solution": ..., "answer": ...} (string fields; "subject", "level" and
"unique_id" may be present and are ignored). A line without "answer" takes it from the
last \\boxed{...} of its solution. We keep problem, solution and answer, the answer checked
with the RL rewards' `math_gold` so that every reference can be scored.
Splits: test from test.jsonl; with train.jsonl, its last `validation_fraction` is held out
as validation and the rest is train.
"""
from __future__ import annotations

import os

import tensorflow_datasets as tfds

from diffusionlm.data import builders
from diffusionlm.rl import rewards


def parse_record(record: dict) -> dict[str, str]:
  """One MATH line's object -> {"problem", "solution", "answer"}; ValueError if malformed."""
  problem, solution = record.get("problem"), record.get("solution")
  if not isinstance(problem, str) or not isinstance(solution, str):
    raise ValueError("needs string fields 'problem' and 'solution'")
  answer = record.get("answer")
  if answer is None:
    answer = rewards.last_boxed(solution)
    if answer is None:
      raise ValueError("has no 'answer' field and its solution has no \\boxed{...}")
  elif not isinstance(answer, str):
    raise ValueError(f"field 'answer' must be a string, got {type(answer).__name__}")
  return {"problem": problem.strip(), "solution": solution.strip(),
          "answer": rewards.math_gold(answer)}


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
