"""grain input pipeline: tokenize, pack, data-constrained repeat, noise, host shard.

Rows. For `mdm` / `ar` every document is tokenized and followed by EOS, and the token
stream is cut into rows of `seq_len` (the last row padded, `valid` False on the padding),
so no token is lost or duplicated. For `sft` each task example is one row: prompt ids +
response ids + EOS, padded to `seq_len` with EOS, which belongs to the response as in
LLaDA SFT; `prompt_len` is the prompt length and rows too long are dropped.

Order. Training reads the first U rows (U = data.unique_tokens // seq_len, or all rows
when unique_tokens = 0) for as many epochs as the run needs, each epoch in a fresh
seeded permutation (Muennighoff et al., 2023, "Scaling Data-Constrained Language
Models"). Global row g is row perm_e[g mod U] of epoch e = g // U; global batch s holds
rows g in [s*B, (s+1)*B) and process p keeps [s*B + p*b, s*B + (p+1)*b) with b = B / P,
so the global batch does not depend on the number of processes.

Noise. data.noise_rate = r replaces round(r*U) of the U rows, chosen by the seed, with
tokens drawn uniformly from the vocabulary, the same in every epoch ("Do we really have to
filter out random noise in pre-training data?", 2025).

The loader is a `grain.DataLoader` whose record i is this process's share of global
batch i, so its iterator state (a step counter) resumes exactly and is saved by
`grain.checkpoint.CheckpointSave`.
"""
from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Iterable, Iterator

import grain
import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from diffusionlm import config_defaults
from diffusionlm import tasks
from diffusionlm.data import builders
from diffusionlm.data.builders import text_files

_NUM_STEPS = 2**62  # The training stream never runs out.
_ENCODE_CHUNK = 4096  # Documents tokenized per call.
# Domain tags keeping the seeded random streams apart.
_EPOCH_TAG, _NOISE_ROWS_TAG, _NOISE_TOKENS_TAG = 0, 1, 2


# ---- Datasets ---------------------------------------------------------------------


class Dataset:
  """A prepared TFDS dataset named by `data.dataset`, and how to read its text.

  `task` is the registered task (diffusionlm.tasks) whose examples it holds, or None.
  """

  def __init__(self, data_config):
    spec = data_config.dataset
    self.spec = spec
    self.task = tasks.for_dataset(spec)
    data_dir = builders.default_data_dir(data_config.data_dir)
    if self.task:
      make = self.task.builder(data_config)
    elif spec == "text_files":
      make = functools.partial(text_files.DlmTextFiles, config=text_files.make_config(
          data_config.source_path))
    elif spec.startswith("tfds:") and len(spec) > 5:
      make = functools.partial(tfds.builder, spec[5:])
    else:
      raise ValueError(f"unknown data.dataset {spec!r}: expected a task "
                       f"({', '.join(tasks.dataset_names())}), text_files or tfds:<name>")
    self.text_key = data_config.text_key
    try:
      self.builder = builders.prepare(
          functools.partial(make, data_dir=data_dir, file_format="array_record"))
    except tfds.core.registered.DatasetNotFoundError:
      raise ValueError(f"data.dataset={spec!r}: no TFDS dataset of that name is "
                       "registered") from None
    config = self.builder.builder_config
    self.identity = f"{self.builder.name}/{config.name if config else ''}"

  def split_name(self, split: str) -> str:
    """`split`, or "test" for "validation" when the dataset has no validation split."""
    splits = self.builder.info.splits
    if split == "validation" and "validation" not in splits and "test" in splits:
      return "test"
    if split not in splits:
      raise ValueError(f"{self.spec}: no {split!r} split (has {sorted(splits)})")
    return split

  def records(self, split: str) -> Iterator[dict]:
    """Records of `split`, in stored order, as Python values (str, int, list)."""
    source = self.builder.as_data_source(self.split_name(split))
    for start in range(0, len(source), _ENCODE_CHUNK):
      for record in source.__getitems__(range(start, min(start + _ENCODE_CHUNK, len(source)))):
        yield {key: _to_python(value) for key, value in record.items()}

  def examples(self, split: str) -> list[dict]:
    """The task examples of `split`: its records, each with "task" (a task dataset only)."""
    return [{**record, "task": self.task.name} for record in self.records(split)]

  def documents(self, split: str) -> Iterator[tuple[str, bool]]:
    """(text, followed_by_eos) pairs of `split`, for the pretraining objectives."""
    for record in self.records(split):
      if self.task:
        yield self.task.text({**record, "task": self.task.name}), True
      elif self.spec == "text_files":
        yield record["text"], record["document_end"]
      else:
        if self.text_key not in record:
          raise ValueError(f"{self.spec}: records have no feature data.text_key="
                           f"{self.text_key!r} (they have {sorted(record)})")
        yield record[self.text_key], True


def _to_python(value):
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if isinstance(value, np.ndarray):
    return value.tolist() if value.ndim else value.item()
  if isinstance(value, np.generic):
    return value.item()
  return value


def load_task_examples(data_config, split: str) -> list[dict]:
  """Examples of a task dataset (see diffusionlm.tasks), each with its "task" key: what SFT,
  the RL stage and evaluation format with the task's `prompt` and `response`."""
  dataset = Dataset(data_config)
  if not dataset.task:
    raise ValueError(f"data.dataset={data_config.dataset!r} is not a task dataset "
                     f"({', '.join(tasks.dataset_names())})")
  return dataset.examples(split)


# ---- Rows -------------------------------------------------------------------------


def _token_dtype(vocab_size: int):
  return np.uint16 if vocab_size <= 2**16 else np.int32


def tokenize_documents(tokenizer, documents: Iterable[tuple[str, bool]]) -> np.ndarray:
  """Concatenated token ids of the documents, EOS after each flagged one."""
  dtype = _token_dtype(tokenizer.vocab_size)
  eos = np.array([tokenizer.eos_id], dtype)
  pieces, batch = [], []

  def flush():
    ids = tokenizer.encode_batch([text for text, _ in batch])
    for ids_T, (_, with_eos) in zip(ids, batch):
      pieces.append(ids_T.astype(dtype))
      if with_eos:
        pieces.append(eos)
    batch.clear()

  for document in documents:
    batch.append(document)
    if len(batch) == _ENCODE_CHUNK:
      flush()
  flush()
  return np.concatenate(pieces) if pieces else np.zeros(0, dtype)


def token_stream(dataset: Dataset, tokenizer, split: str) -> np.ndarray:
  """The split's tokens (`tokenize_documents`), cached beside the prepared data.

  Text datasets keep a `.npy` keyed by split and tokenizer fingerprint in the prepared
  dataset's folder (written once, under a lock) and read it memory-mapped; the small
  synthetic task datasets are tokenized on the fly.
  """
  split = dataset.split_name(split)
  if dataset.task:
    return tokenize_documents(tokenizer, dataset.documents(split))
  key = f"{split}-{dataset.text_key}-{tokenizer.fingerprint}"
  path = os.path.join(os.fspath(dataset.builder.data_dir),
                      f"tokens-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npy")
  if not os.path.exists(path):
    try:
      with builders.file_lock(path + ".lock"):
        if not os.path.exists(path):
          stream_T = tokenize_documents(tokenizer, dataset.documents(split))
          tmp = f"{path}.{os.getpid()}.tmp.npy"
          np.save(tmp, stream_T)
          os.replace(tmp, path)
          logging.info("Cached %d tokens of %s/%s at %s", stream_T.size, dataset.spec,
                       split, path)
    except OSError as e:
      logging.warning("Cannot cache tokens at %s (%s); tokenizing in memory.", path, e)
      return tokenize_documents(tokenizer, dataset.documents(split))
  return np.load(path, mmap_mode="r")


class PackedRows:
  """A token stream cut into rows of `seq_len`; the last row is padded (valid False)."""

  def __init__(self, stream_T: np.ndarray, *, seq_len: int, pad_id: int, what: str):
    if stream_T.size < seq_len:
      raise ValueError(f"data.seq_len={seq_len} is longer than all {stream_T.size} tokens "
                       f"of {what}: the data cannot fill one sequence")
    self.stream_T, self.seq_len, self.pad_id = stream_T, seq_len, pad_id
    self.num_rows = -(-stream_T.size // seq_len)
    self.num_full_rows = stream_T.size // seq_len

  def __getstate__(self):  # Worker processes re-open a memory-mapped stream by path.
    state = dict(self.__dict__)
    if isinstance(self.stream_T, np.memmap) and self.stream_T.filename:
      state["stream_T"] = self.stream_T.filename
    return state

  def __setstate__(self, state):
    if isinstance(state["stream_T"], str):
      state["stream_T"] = np.load(state["stream_T"], mmap_mode="r")
    self.__dict__.update(state)

  def gather(self, rows_B: np.ndarray) -> dict[str, np.ndarray]:
    index_BxL = rows_B[:, None] * self.seq_len + np.arange(self.seq_len)
    valid_BxL = index_BxL < self.stream_T.size
    tokens_BxL = np.asarray(self.stream_T[np.minimum(index_BxL, self.stream_T.size - 1)],
                            np.int32)
    return {"tokens": np.where(valid_BxL, tokens_BxL, self.pad_id).astype(np.int32),
            "valid": valid_BxL}


class SftRows:
  """One task example per row: prompt + response + EOS, EOS-padded to seq_len."""

  def __init__(self, task: tasks.Task, examples: list[dict], tokenizer, *, seq_len: int,
               what: str):
    prompts = tokenizer.encode_batch([task.prompt(ex) for ex in examples])
    responses = tokenizer.encode_batch([task.response(ex) for ex in examples])
    lengths = np.array([p.size + r.size + 1 for p, r in zip(prompts, responses)])
    keep = np.flatnonzero(lengths <= seq_len)
    if keep.size == 0:
      raise ValueError(f"data.seq_len={seq_len} is shorter than every example of {what} "
                       f"(prompt + response + EOS is at least {lengths.min()} tokens)")
    if keep.size < len(examples):
      logging.warning("SFT: dropped %d of %d examples of %s longer than seq_len=%d",
                      len(examples) - keep.size, len(examples), what, seq_len)
    self.num_dropped = len(examples) - keep.size
    self.tokens_NxL = np.full((keep.size, seq_len), tokenizer.eos_id, np.int32)
    self.prompt_len_N = np.zeros(keep.size, np.int32)
    for row, i in enumerate(keep):
      ids = np.concatenate([prompts[i], responses[i]])
      self.tokens_NxL[row, :ids.size] = ids
      self.prompt_len_N[row] = prompts[i].size
    self.num_rows = self.num_full_rows = keep.size
    self.seq_len = seq_len

  def gather(self, rows_B: np.ndarray) -> dict[str, np.ndarray]:
    return {"tokens": self.tokens_NxL[rows_B],
            "valid": np.ones((rows_B.size, self.seq_len), bool),
            "prompt_len": self.prompt_len_N[rows_B]}


def make_rows(dataset: Dataset, tokenizer, *, objective: str, split: str, seq_len: int):
  """The rows of `split` for `objective`: PackedRows (mdm, ar) or SftRows (sft)."""
  what = f"the {split} split of {dataset.spec}"
  if objective in ("mdm", "ar"):
    return PackedRows(token_stream(dataset, tokenizer, split), seq_len=seq_len,
                      pad_id=tokenizer.pad_id, what=what)
  if objective == "sft":
    if not dataset.task:
      raise ValueError(f"objective 'sft' needs a task dataset "
                       f"({', '.join(tasks.dataset_names())}), got data.dataset={dataset.spec!r}")
    return SftRows(dataset.task, dataset.examples(split), tokenizer, seq_len=seq_len,
                   what=what)
  raise ValueError(f"unknown objective {objective!r}; expected one of "
                   f"{config_defaults.OBJECTIVES}")


# ---- Training stream --------------------------------------------------------------


def _rows_per_process(global_batch_size: int, process_index: int, process_count: int) -> int:
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"bad process_index={process_index} / process_count={process_count}")
  if global_batch_size < 1 or global_batch_size % process_count:
    raise ValueError(f"global_batch_size={global_batch_size} must be a positive multiple "
                     f"of process_count={process_count}")
  return global_batch_size // process_count


def num_unique_rows(rows, *, unique_tokens: int, seq_len: int, global_batch_size: int) -> int:
  """U: rows of the data-constrained budget (all rows when unique_tokens = 0)."""
  if unique_tokens < 0:
    raise ValueError(f"data.unique_tokens={unique_tokens} must be >= 0")
  if unique_tokens == 0:
    return rows.num_rows
  num = unique_tokens // seq_len
  if num < global_batch_size:
    raise ValueError(f"data.unique_tokens={unique_tokens} holds {num} sequences of "
                     f"seq_len={seq_len}, fewer than global_batch_size={global_batch_size}; "
                     f"use at least {seq_len * global_batch_size}")
  if num > rows.num_full_rows:
    raise ValueError(f"data.unique_tokens={unique_tokens} is more than the training split "
                     f"holds ({rows.num_full_rows} full sequences of seq_len={seq_len})")
  return num


def epoch_permutation(seed: int, epoch: int, num_rows: int) -> np.ndarray:
  """The order of the unique rows in `epoch`: a seeded permutation, fresh each epoch."""
  return np.random.default_rng([seed, _EPOCH_TAG, epoch]).permutation(num_rows)


def noise_rows(seed: int, num_rows: int, noise_rate: float) -> np.ndarray:
  """Bool [num_rows]: exactly round(noise_rate * num_rows) rows chosen by the seed."""
  if not 0.0 <= noise_rate <= 1.0:
    raise ValueError(f"data.noise_rate={noise_rate} must be in [0, 1]")
  noisy_U = np.zeros(num_rows, bool)
  count = round(noise_rate * num_rows)
  if count:
    rng = np.random.default_rng([seed, _NOISE_ROWS_TAG])
    noisy_U[rng.choice(num_rows, size=count, replace=False)] = True
  return noisy_U


class TrainSource:
  """grain data source whose record `step` is this process's rows of global batch `step`."""

  def __init__(self, rows, *, num_unique: int, global_batch_size: int, process_index: int,
               process_count: int, seed: int, noise_rate: float, vocab_size: int,
               identity: str):
    if seed < 0:
      raise ValueError(f"seed={seed} must be >= 0")
    self.rows, self.num_unique, self.seed = rows, num_unique, seed
    self.global_batch_size, self.process_index = global_batch_size, process_index
    self.batch_rows = _rows_per_process(global_batch_size, process_index, process_count)
    self.vocab_size = vocab_size
    self.noisy_U = noise_rows(seed, num_unique, noise_rate)
    self._repr = (f"TrainSource({identity}, unique_rows={num_unique}, "
                  f"global_batch_size={global_batch_size}, seed={seed}, "
                  f"noise_rate={noise_rate}, process={process_index}/{process_count})")
    self._permutations = {}

  def __repr__(self) -> str:
    return self._repr

  def __len__(self) -> int:
    return _NUM_STEPS

  def _permutation(self, epoch: int) -> np.ndarray:
    if epoch not in self._permutations:
      if len(self._permutations) >= 2:  # A batch spans at most a few epochs.
        self._permutations.pop(min(self._permutations))
      self._permutations[epoch] = epoch_permutation(self.seed, epoch, self.num_unique)
    return self._permutations[epoch]

  def global_rows(self, step: int) -> np.ndarray:
    """Global row indices g of this process's share of global batch `step`."""
    first = step * self.global_batch_size + self.process_index * self.batch_rows
    return first + np.arange(self.batch_rows, dtype=np.int64)

  def __getitem__(self, step: int) -> dict[str, np.ndarray]:
    g_b = self.global_rows(int(step))
    epoch_b, position_b = np.divmod(g_b, self.num_unique)
    rows_b = np.array([self._permutation(int(e))[p] for e, p in zip(epoch_b, position_b)],
                      np.int64)
    batch = self.rows.gather(rows_b)
    for i in np.flatnonzero(self.noisy_U[rows_b]):
      rng = np.random.default_rng([self.seed, _NOISE_TOKENS_TAG, int(rows_b[i])])
      batch["tokens"][i] = rng.integers(0, self.vocab_size, batch["tokens"].shape[1])
      batch["valid"][i] = True
    batch["epoch"] = epoch_b.astype(np.int32)
    return batch


def _check_objective(objective: str, data_config) -> None:
  if objective not in config_defaults.OBJECTIVES:
    raise ValueError(f"unknown objective {objective!r}; expected one of "
                   f"{config_defaults.OBJECTIVES}")
  if objective == "sft" and data_config.noise_rate:
    raise ValueError("data.noise_rate applies to pretraining (mdm, ar), not to 'sft'")


def make_train_loader(data_config, tokenizer, *, objective: str, global_batch_size: int,
                      seed: int, process_index: int, process_count: int) -> grain.DataLoader:
  """A grain DataLoader of training batches; `iter()` gives a resumable iterator.

  Each batch is this process's `global_batch_size // process_count` rows: `tokens` int32
  [b, seq_len], `valid` bool [b, seq_len], `epoch` int32 [b], and for sft `prompt_len`.
  """
  _check_objective(objective, data_config)
  dataset = Dataset(data_config)
  seq_len = int(data_config.seq_len)
  rows = make_rows(dataset, tokenizer, objective=objective, split="train", seq_len=seq_len)
  num_unique = num_unique_rows(rows, unique_tokens=int(data_config.unique_tokens),
                               seq_len=seq_len, global_batch_size=global_batch_size)
  if num_unique < global_batch_size:
    logging.warning("The training split holds %d sequences, fewer than one global batch "
                    "of %d: batches repeat rows.", num_unique, global_batch_size)
  logging.info("Training on %d unique sequences of %d tokens from %s.", num_unique, seq_len,
               dataset.spec)
  source = TrainSource(
      rows, num_unique=num_unique, global_batch_size=global_batch_size,
      process_index=process_index, process_count=process_count, seed=seed,
      noise_rate=float(data_config.noise_rate), vocab_size=tokenizer.vocab_size,
      identity=f"{dataset.identity}, {tokenizer.fingerprint}, {objective}, seq_len={seq_len}")
  return grain.DataLoader(
      data_source=source,
      sampler=grain.samplers.SequentialSampler(len(source), grain.sharding.NoSharding()),
      worker_count=int(data_config.worker_count),
      shard_options=grain.sharding.NoSharding(),
      read_options=grain.ReadOptions(num_threads=1, prefetch_buffer_size=4))


def make_eval_batches(data_config, tokenizer, *, objective: str, global_batch_size: int,
                      num_batches: int, process_index: int,
                      process_count: int) -> list[dict[str, np.ndarray]]:
  """`num_batches` fixed validation batches (this process's rows), in split order.

  Global batch k holds validation rows [k*B, (k+1)*B); a split shorter than
  num_batches * B wraps around (logged).
  """
  _check_objective(objective, data_config)
  batch_rows = _rows_per_process(global_batch_size, process_index, process_count)
  dataset = Dataset(data_config)
  rows = make_rows(dataset, tokenizer, objective=objective, split="validation",
                   seq_len=int(data_config.seq_len))
  needed = num_batches * global_batch_size
  if needed > rows.num_rows:
    logging.warning("Validation: %d rows requested, the split has %d; wrapping around.",
                    needed, rows.num_rows)
  batches = []
  for k in range(num_batches):
    g_b = k * global_batch_size + process_index * batch_rows + np.arange(batch_rows)
    batch = rows.gather(g_b % rows.num_rows)
    batch["epoch"] = np.zeros(batch_rows, np.int32)
    batches.append(batch)
  return batches
