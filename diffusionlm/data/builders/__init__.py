"""TFDS builders (array_record, no TensorFlow) and what they share.

The builders live in `text_files.py` and in the task modules (diffusionlm/tasks/: sudoku,
countdown, gsm8k, math_problems); each is a `tfds.core.GeneratorBasedBuilder` read back with
`builder.as_data_source(split)`. This module holds what they share: the base class
`LocalBuilder`, and

- `identity_config(config_cls, **fields)`: a builder config whose name carries a hash of
  every field, so different settings (seed, sizes, source files) never reuse a stale
  prepared copy.
- `prepare(make_builder)`: `download_and_prepare` under an fcntl file lock, safe when
  several processes start at once on one filesystem.
- `read_jsonl(path, parse_record, what=...)` and `hold_out_validation(...)`: the local
  jsonl datasets' (GSM8K, MATH) reading, with errors naming file:line, and their
  validation split.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import tensorflow_datasets as tfds

VERSION = "1.0.0"
T = TypeVar("T")


def default_data_dir(data_dir: str = "") -> str:
  """`data.data_dir`, or TFDS's default (~/tensorflow_datasets) when empty."""
  return os.path.expanduser(data_dir or os.environ.get("TFDS_DATA_DIR", "")
                            or "~/tensorflow_datasets")


def identity_config(config_cls, *, prefix: str, **fields):
  """Builds `config_cls(name=f"{prefix}-{hash(fields)}", **fields)`."""
  blob = json.dumps({"class": config_cls.__name__, **fields}, sort_keys=True, default=list)
  digest = hashlib.sha256(blob.encode()).hexdigest()[:12]
  return config_cls(name=f"{prefix}-{digest}", version=VERSION, **fields)


def files_fingerprint(paths: Sequence[str]) -> str:
  """Hash of (path, size, mtime) of each file: changes whenever a source file does."""
  h = hashlib.sha256()
  for path in paths:
    stat = os.stat(path)
    h.update(f"{os.path.abspath(path)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
  return h.hexdigest()[:16]


@contextlib.contextmanager
def file_lock(path: str) -> Iterator[None]:
  """An exclusive fcntl lock on `path` (created if missing) for the `with` body."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path, "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def prepare(make_builder: Callable[[], tfds.core.DatasetBuilder]) -> tfds.core.DatasetBuilder:
  """A prepared builder from `make_builder()`; prepares it once, under a file lock.

  Processes that start together wait on the lock; the first prepares, the others then
  find the dataset prepared (TFDS writes to a temporary folder and renames it at the end).
  """
  builder = make_builder()
  if builder.is_prepared():
    return builder
  with file_lock(os.fspath(builder.data_dir) + ".lock"):
    builder = make_builder()  # Another process may have prepared it while we waited.
    if not builder.is_prepared():
      builder.download_and_prepare(file_format="array_record")
  return make_builder()


def deal_splits(examples: Sequence, *, num_test: int, num_validation: int,
                num_train: int) -> dict[str, Sequence]:
  """Deals generated examples out: the first to test, then validation, then train."""
  if min(num_test, num_validation, num_train) < 1:
    raise ValueError("every split needs at least one example, got "
                     f"test={num_test}, validation={num_validation}, train={num_train}")
  a, b = num_test, num_test + num_validation
  return {"test": examples[:a], "validation": examples[a:b],
          "train": examples[b:b + num_train]}


def read_jsonl(path: str, parse_record: Callable[[dict], T], *, what: str) -> list[T]:
  """`parse_record(obj)` of every non-blank line of a jsonl file, in file order.

  A line that is not a JSON object, or whose object `parse_record` rejects with a
  ValueError, raises ValueError "PATH, line N: malformed WHAT record: REASON"; a file
  without records raises "PATH: no WHAT records".
  """
  records = []
  with open(path, encoding="utf-8") as f:
    for line_no, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        obj = json.loads(line)
        if not isinstance(obj, dict):
          raise ValueError("line is not a JSON object")
        records.append(parse_record(obj))
      except ValueError as e:  # json.JSONDecodeError is a ValueError too.
        raise ValueError(f"{path}, line {line_no}: malformed {what} record: {e}") from None
  if not records:
    raise ValueError(f"{path}: no {what} records")
  return records


def hold_out_validation(examples: Sequence, fraction: float, *,
                        what: str) -> tuple[Sequence, Sequence]:
  """(train, validation): the last max(1, round(fraction * n)) examples are held out."""
  num_validation = max(1, round(fraction * len(examples)))
  if num_validation >= len(examples):
    raise ValueError(f"{what} has {len(examples)} records, too few to hold out a "
                     "validation split")
  return examples[:-num_validation], examples[-num_validation:]


@dataclasses.dataclass
class JsonlFolderConfig(tfds.core.BuilderConfig):
  """A local folder of jsonl files (GSM8K, MATH): its path, a fingerprint of its files, and
  the share of the train file held out for validation."""
  source_dir: str = ""
  files_fingerprint: str = ""
  validation_fraction: float = 0.05


def jsonl_folder_config(source_dir: str, *, required: str, optional: str, what: str,
                        validation_fraction: float) -> JsonlFolderConfig:
  """A config named by the folder's files (path, size, mtime), so edits re-prepare;
  ValueError if the `required` file is missing."""
  source_dir = os.path.abspath(os.path.expanduser(source_dir))
  required_path = os.path.join(source_dir, required)
  if not os.path.isfile(required_path):
    raise ValueError(f"{what}: {required_path} does not exist (data.source_path must be a "
                     f"folder with {required} and optionally {optional})")
  files = [p for p in (required_path, os.path.join(source_dir, optional)) if os.path.isfile(p)]
  return identity_config(JsonlFolderConfig, prefix=f"local-{what}", source_dir=source_dir,
                         files_fingerprint=files_fingerprint(files),
                         validation_fraction=validation_fraction)


class LocalBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of our builders: made locally (nothing downloaded), kept in generation order.

  Subclasses set FEATURES (name -> tfds feature) and write `_split_generators`.
  """
  VERSION = tfds.core.Version(VERSION)
  FEATURES: dict = {}

  # TFDS looks for a download-checksums file beside a builder's code, through a lookup
  # that needs the `importlib_resources` backport; our builders download nothing.
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    return None

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self,
                                 features=tfds.features.FeaturesDict(self.FEATURES),
                                 disable_shuffling=True)

  def _generate_examples(self, examples):
    yield from enumerate(examples)
