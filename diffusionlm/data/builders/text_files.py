"""Local text files (paths or globs) as a TFDS dataset with a validation split.

Each file is one document. Its last `validation_fraction` of lines (at least one, for
files of two lines or more) go to the validation split, the rest to train. Both parts are
cut at line boundaries into records of about `chunk_chars` characters, in file order;
`document_end` marks the last record of a part, where the pipeline puts an EOS token.
"""
from __future__ import annotations

import collections
import dataclasses
import glob
import itertools
import os
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

from diffusionlm.data import builders


def expand_paths(source_path: str) -> list[str]:
  """Comma-separated paths / globs -> files, sorted within each pattern, deduplicated."""
  patterns = [p.strip() for p in source_path.split(",") if p.strip()]
  if not patterns:
    raise ValueError("text_files: data.source_path is empty; give file paths or globs")
  files = []
  for pattern in patterns:
    matches = sorted(p for p in glob.glob(os.path.expanduser(pattern), recursive=True)
                     if os.path.isfile(p))
    if not matches:
      raise ValueError(f"text_files: no file matches {pattern!r}")
    files.extend(os.path.abspath(p) for p in matches if os.path.abspath(p) not in files)
  return files


def _count_lines(path: str) -> int:
  with open(path, "rb") as f:
    return sum(1 for _ in f)


def _lines(path: str) -> Iterator[str]:
  with open(path, "rb") as f:
    for line_no, raw in enumerate(f, start=1):
      try:
        yield raw.decode("utf-8")
      except UnicodeDecodeError as e:
        raise ValueError(f"{path}, line {line_no}: not valid UTF-8 ({e.reason})") from None


def _chunk_texts(lines: Iterator[str], chunk_chars: int) -> Iterator[str]:
  buffer, size = [], 0
  for line in lines:
    buffer.append(line)
    size += len(line)
    if size >= chunk_chars:
      yield "".join(buffer)
      buffer, size = [], 0
  if buffer:
    yield "".join(buffer)


def _chunks(lines: Iterator[str], chunk_chars: int) -> Iterator[dict]:
  """Consecutive lines joined into ~chunk_chars records; the last has document_end."""
  previous = None
  for text in _chunk_texts(lines, chunk_chars):
    if previous is not None:
      yield {"text": previous, "document_end": False}
    previous = text
  if previous is not None:
    yield {"text": previous, "document_end": True}


def split_line_counts(num_lines: int, validation_fraction: float) -> tuple[int, int]:
  """(train lines, validation lines) of one file."""
  num_val = max(1, round(validation_fraction * num_lines)) if num_lines >= 2 else 0
  return num_lines - num_val, num_val


@dataclasses.dataclass
class TextFilesConfig(tfds.core.BuilderConfig):
  paths: tuple[str, ...] = ()
  files_fingerprint: str = ""
  validation_fraction: float = 0.1
  chunk_chars: int = 16384


def make_config(source_path: str, *, validation_fraction: float = 0.1,
                chunk_chars: int = 16384) -> TextFilesConfig:
  """A config named by the files (path, size, mtime), so any change re-prepares."""
  paths = expand_paths(source_path)
  if all(os.path.getsize(p) == 0 for p in paths):
    raise ValueError(f"text_files: empty corpus, every file of {source_path!r} is empty")
  return builders.identity_config(
      TextFilesConfig, prefix=f"{len(paths)}files", paths=tuple(paths),
      files_fingerprint=builders.files_fingerprint(paths),
      validation_fraction=validation_fraction, chunk_chars=chunk_chars)


class DlmTextFiles(builders.LocalBuilder):
  """{"text": a chunk of lines, "document_end": whether an EOS follows it}."""
  FEATURES = {"text": tfds.features.Text(),
              "document_end": tfds.features.Scalar(dtype=np.bool_)}

  def _split_generators(self, dl_manager):
    del dl_manager
    c = self.builder_config
    counts = [split_line_counts(_count_lines(p), c.validation_fraction) for p in c.paths]
    if not any(val for _, val in counts):
      raise ValueError("text_files: too little text for a validation split (every file "
                       f"has fewer than 2 lines): {', '.join(c.paths)}")
    return {"train": self._generate_examples(counts, validation=False),
            "validation": self._generate_examples(counts, validation=True)}

  def _generate_examples(self, counts, *, validation: bool):
    key = 0
    for path, (num_train, num_val) in zip(self.builder_config.paths, counts):
      lines = _lines(path)
      train_lines = itertools.islice(lines, num_train)
      if validation:
        collections.deque(train_lines, maxlen=0)  # Skip the training lines.
      part = itertools.islice(lines, num_val) if validation else train_lines
      for record in _chunks(part, self.builder_config.chunk_chars):
        yield key, record
        key += 1
