"""Bits per token of held-out text: `python -m diffusionlm.perplexity --workdir=RUN --data=FILE_OR_DATASET`.

  python -m diffusionlm.perplexity --workdir=runs/shakespeare --data=held_out.txt \
      [--num_mc=8] [--repeats=4] [--batch_size=32] [--max_tokens=0] [--seed=0]

--data is a text file (.txt: one document; .jsonl: one document per line, its --text_key
field) or a dataset as config.data.dataset names it (a task, text_files, tfds:NAME) read from
--split (default validation) of the run's data_dir. Every document is scored on its own,
conditioned on BOS (EOS if the tokenizer has none), in rolling windows of the run's
seq_len (`likelihood.rolling_windows`: each token scored once, with the most context that
fits).

An autoregressive run gives the exact NLL. A masked-diffusion run gives the Monte-Carlo
ELBO bound (`losses.mdm_nll` per window: --num_mc stratified draws), computed --repeats
times with independent keys; the result is their mean and its standard error
std / sqrt(repeats). Prints a table and writes WORKDIR/perplexity_<data>.json.
"""
import json
import math
import os
import re
import time

from absl import app
from absl import flags
import jax
import numpy as np

from diffusionlm import cli, likelihood
from diffusionlm.data import pipeline
from diffusionlm.train import load

FLAGS = flags.FLAGS
FILE_SUFFIXES = (".txt", ".jsonl", ".json", ".text", ".md")


def _define_cli_flags():
  flags.DEFINE_string("workdir", None, "A trained run's directory.")
  flags.DEFINE_string("data", None, "A text file (.txt, or .jsonl with --text_key) or a "
                      "dataset name as config.data.dataset takes it (e.g. tfds:NAME).")
  flags.DEFINE_string("split", "validation", "Split of a dataset --data.")
  flags.DEFINE_string("text_key", "text", "The text field of a .jsonl --data.")
  flags.DEFINE_string("data_dir", None, "Where a dataset --data is prepared; default: the "
                      "run's config.data.data_dir.")
  flags.DEFINE_integer("num_mc", 8, "Masked-diffusion runs: stratified Monte-Carlo draws "
                       "per window and repeat.")
  flags.DEFINE_integer("repeats", 4, "Masked-diffusion runs: independent estimates (>= 2 "
                       "for a standard error).")
  flags.DEFINE_integer("batch_size", 32, "Windows per batch.")
  flags.DEFINE_integer("max_tokens", 0, "Score only the first N tokens of each document's "
                       "text in reading order, summed over documents; 0 = all.")
  flags.DEFINE_integer("seed", 0, "Seeds the Monte-Carlo draws.")
  flags.mark_flags_as_required(["workdir", "data"])


def is_file(data: str) -> bool:
  """A path (it exists, or looks like one) rather than a dataset name."""
  return os.path.exists(data) or data.endswith(FILE_SUFFIXES) or os.sep in data


def read_documents(data: str, *, text_key: str) -> list[str]:
  """The documents of a .txt (one) or .jsonl (one per line) file; ValueError naming the
  problem."""
  if not os.path.isfile(data):
    raise ValueError(f"--data={data!r}: no such file.")
  with open(data) as f:
    if not data.endswith((".jsonl", ".json")):
      return [f.read()]
    documents = []
    for n, line in enumerate(f, 1):
      if line.strip():
        record = json.loads(line)
        if text_key not in record:
          raise ValueError(f"{data}:{n}: no field --text_key={text_key!r} (it has "
                           f"{sorted(record)}).")
        documents.append(record[text_key])
    return documents


def dataset_documents(config, data: str, *, split: str, data_dir: str | None) -> list[str]:
  """The documents of a dataset's split, as the run's pipeline reads them."""
  data_config = config.data.copy_and_resolve_references()
  data_config.dataset = data
  if data_dir is not None:
    data_config.data_dir = data_dir
  return [text for text, _ in pipeline.Dataset(data_config).documents(split)]


def encode_documents(tokenizer, documents, *, max_tokens: int = 0) -> list[list[int]]:
  """Token ids of each non-empty document, cut to max_tokens in all (0 = no limit)."""
  ids, left = [], max_tokens or None
  for ids_T in tokenizer.encode_batch(documents):
    ids_T = ids_T[:left].tolist()
    if ids_T:
      ids.append(ids_T)
    if left is not None:
      left -= len(ids_T)
      if left == 0:
        break
  if not ids:
    raise ValueError("--data holds no text (every document is empty).")
  return ids


def bits_per_token(run, documents_ids, *, num_mc: int, repeats: int, batch_size: int,
                   key: jax.Array) -> dict:
  """Bits per token over the documents' tokens (module docstring): mean over `repeats`
  independent estimates (1 for a causal run: exact) and the standard error of that mean."""
  tokenizer, model_config = run.tokenizer, run.model_config
  prefix_id = tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id
  max_len = int(run.config.data.seq_len)
  pairs = [pair for ids in documents_ids
           for pair in likelihood.rolling_windows(ids, max_len=max_len, prefix_id=prefix_id)]
  scorer = likelihood.Scorer(run.apply_fn, causal=model_config.causal,
                             mask_id=model_config.mask_id, max_len=max_len, num_mc=num_mc,
                             batch_size=batch_size, pad_id=tokenizer.pad_id,
                             mesh=run.setup.mesh)
  repeats = 1 if model_config.causal else repeats
  num_tokens = sum(len(ids) for ids in documents_ids)
  start = time.perf_counter()
  bits_R = np.array([scorer(run.params, pairs, key=jax.random.fold_in(key, r))["nll"].sum()
                     for r in range(repeats)]) / (num_tokens * math.log(2))
  return {"bits_per_token": float(bits_R.mean()),
          "standard_error": float(bits_R.std(ddof=1) / math.sqrt(repeats))
                            if repeats > 1 else 0.0,
          "estimates": bits_R.tolist(), "exact": bool(model_config.causal),
          "num_mc": 0 if model_config.causal else num_mc, "repeats": repeats,
          "num_tokens": num_tokens, "num_documents": len(documents_ids),
          "num_windows": len(pairs), "seq_len": max_len,
          "seconds": time.perf_counter() - start}


def check_flags() -> None:
  if FLAGS.num_mc < 1 or FLAGS.repeats < 1 or FLAGS.batch_size < 1 or FLAGS.max_tokens < 0:
    raise ValueError(f"--num_mc, --repeats and --batch_size must be >= 1 and --max_tokens >= "
                     f"0, got {FLAGS.num_mc}, {FLAGS.repeats}, {FLAGS.batch_size}, "
                     f"{FLAGS.max_tokens}.")


def main(argv):
  cli.start(argv)
  try:
    check_flags()
    config = load.read_run_config(FLAGS.workdir)
    if is_file(FLAGS.data):
      documents = read_documents(FLAGS.data, text_key=FLAGS.text_key)
    else:
      documents = dataset_documents(config, FLAGS.data, split=FLAGS.split,
                                    data_dir=FLAGS.data_dir)
    run = load.load_run(FLAGS.workdir)
    ids = encode_documents(run.tokenizer, documents, max_tokens=FLAGS.max_tokens)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  result = bits_per_token(run, ids, num_mc=FLAGS.num_mc, repeats=FLAGS.repeats,
                          batch_size=FLAGS.batch_size, key=jax.random.key(FLAGS.seed))
  kind = ("exact NLL (autoregressive)" if result["exact"] else
          f"Monte-Carlo ELBO bound, {result['num_mc']} draws x {result['repeats']} repeats")
  print(f"{FLAGS.data}: {result['num_tokens']:,} tokens in {result['num_documents']} "
        f"document(s), {result['num_windows']} windows of <= {result['seq_len']}; {kind}")
  print("| bits / token | standard error | perplexity (per token) | seconds |")
  print("|---|---|---|---|")
  print(f"| {result['bits_per_token']:.4f} | {result['standard_error']:.4f} | "
        f"{2 ** result['bits_per_token']:.3f} | {result['seconds']:.1f} |")
  if jax.process_index() == 0:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.basename(FLAGS.data.rstrip("/")))
    path = os.path.join(FLAGS.workdir, f"perplexity_{name}.json")
    with open(path, "w") as f:
      json.dump({"data": FLAGS.data, "split": None if is_file(FLAGS.data) else FLAGS.split,
                 "seed": FLAGS.seed, **result}, f, indent=1)
    print(f"Wrote {path}")


if __name__ == "__main__":
  _define_cli_flags()
  app.run(main)
