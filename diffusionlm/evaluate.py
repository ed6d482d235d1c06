"""Task evaluation: generate completions for task prompts and score them with the RL rewards.

  python -m diffusionlm.evaluate --workdir=DIR [--task=sudoku|countdown|gsm8k|math]
      [--split=test] [--source_path=FOLDER] [--num_examples=200] [--batch_size=32]
      [sampler flags, see diffusion/sampler_flags.py]

prints a table and writes DIR/eval_<task>_<split>.json (`write_result`): accuracy, mean
reward, speed, the sampler settings and every prompt's completion with its score. gsm8k
and math read their jsonl folder: --source_path, default the run's data.source_path.

Library use (the sampler benchmark and the RL stage):
  complete(params, apply_fn, tokenizer, prompts, ...) -> completions and speed statistics
  evaluate_task(params, apply_fn, tokenizer, examples, *, task, ...) -> accuracy, reward, ...

Prompts are tokenised and left-padded to one length (padding marked invalid), split into
batches of a static size (the last one filled up with copies of its last prompt, whose
outputs are dropped), so every batch runs the same compiled program. A completion is the
generated text up to its first EOS.
"""
from collections.abc import Sequence
import json
import os
import time

from absl import app
from absl import flags
from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np

from diffusionlm.data import formatting, pipeline
from diffusionlm.diffusion import sampler_flags, sampling
from diffusionlm.rl import rewards
from diffusionlm.train import load, sharding

FLAGS = flags.FLAGS


def encode_prompts(tokenizer, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
  """The prompts' ids left-padded with pad_id to the longest: (prompt_NxP, valid_NxP)."""
  ids = tokenizer.encode_batch(list(prompts))
  for i, ids_T in enumerate(ids):
    if len(ids_T) == 0:
      raise ValueError(f"prompt {i} ({prompts[i]!r}) is empty after tokenisation.")
  P = max(len(ids_T) for ids_T in ids)
  prompt_NxP = np.full((len(ids), P), tokenizer.pad_id, np.int32)
  valid_NxP = np.zeros((len(ids), P), bool)
  for i, ids_T in enumerate(ids):
    prompt_NxP[i, P - len(ids_T):] = ids_T
    valid_NxP[i, P - len(ids_T):] = True
  return prompt_NxP, valid_NxP


def cut_at_eos(generated_NxG: np.ndarray, eos_id: int) -> list[np.ndarray]:
  """Each row's ids before its first EOS (the whole row if it has none)."""
  is_eos_NxG = np.asarray(generated_NxG) == eos_id
  length_N = np.where(is_eos_NxG.any(1), is_eos_NxG.argmax(1), is_eos_NxG.shape[1])
  return [row[:n] for row, n in zip(np.asarray(generated_NxG), length_N)]


def _to_host(x) -> np.ndarray:
  if jax.process_count() > 1:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def complete(params, apply_fn, tokenizer, prompts: Sequence[str], *, mask_id: int,
             causal: bool, batch_size: int, gen_length: int, key: jax.Array,
             sampler_kwargs: dict | None = None, mesh: jax.sharding.Mesh | None = None) -> dict:
  """Generates a completion for every prompt with `generate` (or `generate_ar` if causal).

  sampler_kwargs: settings of the sampler (sampler_flags.SETTINGS; the rest default as in
    `sampler_flags.resolve`). Batch i uses the key fold_in(key, i).
  mesh: if given, each batch is sharded over its data-parallel axes (batch_size must be a
    multiple of their size); every process passes the same prompts.
  Returns {"completions": texts, "completion_lengths": ids before EOS, "forward_passes":
  model calls summed over batches, "passes_per_token": forward passes per generated
  position (each pass covers a whole batch), "generated_tokens": len(prompts) * gen_length,
  "seconds": generation wall time, "tokens_per_sec": generated positions per second,
  measured after the first batch (which may include compilation) when there are several}.
  """
  if not prompts:
    raise ValueError("prompts is empty: nothing to generate.")
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
  kwargs = sampler_flags.resolve(gen_length=gen_length, causal=causal, mask_id=mask_id,
                                 **(sampler_kwargs or {}))
  if mesh is not None and batch_size % sharding.data_parallel_size(mesh):
    raise ValueError(f"batch_size={batch_size} is not a multiple of the mesh's data-parallel "
                     f"size {sharding.data_parallel_size(mesh)}.")
  prompt_NxP, valid_NxP = encode_prompts(tokenizer, prompts)
  N = len(prompts)
  num_batches = -(-N // batch_size)
  fill = np.minimum(np.arange(num_batches * batch_size), N - 1)  # Pad with the last prompt.
  prompt_NxP, valid_NxP = prompt_NxP[fill], valid_NxP[fill]
  P = prompt_NxP.shape[1]

  generated, passes, seconds_T = [], 0, []
  for b in range(num_batches):
    rows = slice(b * batch_size, (b + 1) * batch_size)
    batch = {"prompt": prompt_NxP[rows], "valid": valid_NxP[rows]}
    if mesh is not None:
      batch = {k: jax.device_put(v, sharding.batch_sharding(mesh)) for k, v in batch.items()}
    batch_key = jax.random.fold_in(key, b)
    start = time.perf_counter()
    if causal:
      tokens_BxL, stats = sampling.generate_ar(
          params, apply_fn, batch["prompt"], batch_key, gen_length=gen_length,
          eos_id=tokenizer.eos_id, prompt_valid_BxP=batch["valid"], return_stats=True, **kwargs)
    else:
      tokens_BxL, stats = sampling.generate(
          params, apply_fn, batch["prompt"], batch_key, gen_length=gen_length, mask_id=mask_id,
          prompt_valid_BxP=batch["valid"], return_stats=True, **kwargs)
    tokens_BxL = _to_host(jax.block_until_ready(tokens_BxL))
    seconds_T.append(time.perf_counter() - start)
    generated.append(tokens_BxL[:, P:])
    passes += int(stats["forward_passes"])
  generated_NxG = np.concatenate(generated)[:N]

  ids = cut_at_eos(generated_NxG, tokenizer.eos_id)
  timed = seconds_T[1:] if num_batches > 1 else seconds_T
  timed_rows = N - batch_size if num_batches > 1 else N  # Rows of real prompts in `timed`.
  return {"completions": [tokenizer.decode(ids_T) for ids_T in ids],
          "completion_lengths": [len(ids_T) for ids_T in ids],
          "forward_passes": passes,
          "passes_per_token": passes / (num_batches * gen_length),
          "generated_tokens": N * gen_length,
          "seconds": float(sum(seconds_T)),
          "tokens_per_sec": timed_rows * gen_length / sum(timed)}


def is_correct(task: str, completion: str, example: dict) -> bool:
  """Full correctness: sudoku every empty cell right, countdown reward 1.0 (a valid
  expression reaching the target with the given numbers), gsm8k `gsm8k_correct`, math
  `math_correct` (the last \\boxed{} equals the reference answer)."""
  if task == "sudoku":
    return rewards.sudoku_reward(completion, example["puzzle"], example["solution"]) == 1.0
  if task == "countdown":
    return rewards.countdown_reward(completion, example["numbers"], example["target"]) == 1.0
  if task == "gsm8k":
    return rewards.gsm8k_correct(completion, example["answer"])
  if task == "math":
    return rewards.math_correct(completion, example["answer"])
  raise ValueError(f"unknown task {task!r}; expected one of {formatting.TASKS}")


def evaluate_task(params, apply_fn, tokenizer, examples: Sequence[dict], *, task: str,
                  mask_id: int, causal: bool, batch_size: int, gen_length: int,
                  key: jax.Array, sampler_kwargs: dict | None = None,
                  mesh: jax.sharding.Mesh | None = None) -> dict:
  """Completes formatting.task_prompt(example) for every example and scores the results.

  Returns {"accuracy": share of examples `is_correct`, "mean_reward": mean of
  rewards.total_reward, "mean_completion_length": ids before EOS, "passes_per_token",
  "tokens_per_sec", "seconds", "num_examples", "completions", "correct" and "rewards" (per
  example)}; see `complete` for the arguments and the speed statistics.
  """
  if task not in formatting.TASKS:
    raise ValueError(f"unknown task {task!r}; expected one of {formatting.TASKS}")
  if not examples:
    raise ValueError("examples is empty: nothing to evaluate.")
  examples = [{**ex, "task": ex.get("task", task)} for ex in examples]
  for i, ex in enumerate(examples):
    if ex["task"] != task:
      raise ValueError(f"examples[{i}] is a {ex['task']!r} example, not {task!r}.")
  out = complete(params, apply_fn, tokenizer, [formatting.task_prompt(ex) for ex in examples],
                 mask_id=mask_id, causal=causal, batch_size=batch_size, gen_length=gen_length,
                 key=key, sampler_kwargs=sampler_kwargs, mesh=mesh)
  completions = out["completions"]
  correct = [is_correct(task, c, ex) for c, ex in zip(completions, examples)]
  rewards_N = [rewards.total_reward(task, c, ex) for c, ex in zip(completions, examples)]
  return {
      "accuracy": float(np.mean(correct)),
      "mean_reward": float(np.mean(rewards_N)),
      "mean_completion_length": float(np.mean(out["completion_lengths"])),
      **{k: out[k] for k in ("passes_per_token", "tokens_per_sec", "seconds")},
      "num_examples": len(examples),
      "completions": completions,
      "correct": correct,
      "rewards": rewards_N,
  }


def write_result(workdir: str, result: dict, examples: Sequence[dict], *, task: str,
                 split: str, settings: dict) -> str:
  """Writes WORKDIR/eval_<task>_<split>.json (atomically) and returns its path.

  It holds the summary numbers of `evaluate_task`'s `result`, `settings` (the sampler's and
  the evaluation's), and per example its prompt, completion, `correct` and `reward`.
  """
  per_example = [
      {"prompt": formatting.task_prompt({**ex, "task": task}), "completion": completion,
       "correct": bool(ok), "reward": float(reward)}
      for ex, completion, ok, reward in zip(examples, result["completions"],
                                            result["correct"], result["rewards"],
                                            strict=True)]
  record = {"task": task, "split": split,
            **{k: result[k] for k in ("accuracy", "mean_reward", "num_examples",
                                      "mean_completion_length", "passes_per_token",
                                      "tokens_per_sec", "seconds")},
            "settings": settings, "examples": per_example}
  path = os.path.join(workdir, f"eval_{task}_{split}.json")
  tmp = f"{path}.{os.getpid()}.tmp"
  with open(tmp, "w") as f:
    json.dump(record, f, indent=1)
  os.replace(tmp, path)
  return path


# ---- Command line ------------------------------------------------------------------------


def _define_cli_flags():
  flags.DEFINE_string("workdir", None, "A trained run's directory.")
  flags.DEFINE_string("task", None, "sudoku | countdown | gsm8k | math; default: the run's "
                      "dataset.")
  flags.DEFINE_string("split", "test", "Dataset split to evaluate.")
  flags.DEFINE_integer("num_examples", 200, "First N examples of the split; 0 = all.")
  flags.DEFINE_integer("batch_size", 32, "Prompts per generation batch.")
  flags.DEFINE_string("data_dir", None, "Where the task data is prepared; default: the run's "
                      "config.data.data_dir.")
  flags.DEFINE_string("source_path", None, "gsm8k / math: the folder of jsonl files (e.g. "
                      "MATH500's test.jsonl); default: the run's config.data.source_path.")
  flags.DEFINE_integer("show", 3, "Completions to print.")
  flags.mark_flags_as_required(["workdir"])
  sampler_flags.define_flags()


def check_flags():
  """(config, causal, task, settings) of the flags; ValueError naming a bad flag."""
  settings = sampler_flags.flag_settings()
  config, causal = sampler_flags.settings_for_run(FLAGS.workdir, gen_length=FLAGS.gen_length,
                                                  settings=settings)
  run_task = config.data.dataset.split(":")[0]
  task = FLAGS.task or run_task
  if task not in formatting.TASKS:
    raise ValueError(f"--task={task!r} is not a task dataset; expected one of "
                     f"{formatting.TASKS} (the run was trained on {config.data.dataset!r}).")
  if task in pipeline.SOURCE_TASKS and task != run_task and FLAGS.source_path is None:
    raise ValueError(f"--task={task} reads its examples from a folder: pass "
                     f"--source_path=DIR (the run was trained on {config.data.dataset!r}, "
                     f"so its data.source_path={config.data.source_path!r} is not {task}'s).")
  if FLAGS.batch_size < 1 or FLAGS.num_examples < 0:
    raise ValueError(f"--batch_size must be >= 1 and --num_examples >= 0, got "
                     f"{FLAGS.batch_size} and {FLAGS.num_examples}.")
  return config, causal, task, settings


def evaluate_from_flags(config, causal, task, settings) -> dict:
  """Loads the run and its examples, evaluates, prints a table."""
  data_config = config.data.copy_and_resolve_references()
  if FLAGS.data_dir is not None:
    data_config.data_dir = FLAGS.data_dir
  if FLAGS.source_path is not None:
    data_config.source_path = FLAGS.source_path
  if task != config.data.dataset.split(":")[0]:
    data_config.dataset = task
  examples = pipeline.load_task_examples(data_config, FLAGS.split)
  if FLAGS.num_examples:
    examples = examples[:FLAGS.num_examples]
  run = load.load_run(FLAGS.workdir)
  mesh = run.setup.mesh
  batch_size = -(-FLAGS.batch_size // sharding.data_parallel_size(mesh)) * \
      sharding.data_parallel_size(mesh)
  result = evaluate_task(run.params, run.apply_fn, run.tokenizer, examples, task=task,
                         mask_id=run.model_config.mask_id, causal=run.model_config.causal,
                         batch_size=batch_size, gen_length=FLAGS.gen_length,
                         key=jax.random.key(FLAGS.seed), sampler_kwargs=settings, mesh=mesh)
  for ex, completion in list(zip(examples, result["completions"]))[:FLAGS.show]:
    print(f"--- {formatting.task_prompt(ex)!r} -> {completion!r}")
  print(f"\n{task} / {FLAGS.split}: {result['num_examples']} examples, "
        f"{'AR' if causal else 'diffusion'} sampler, gen_length={FLAGS.gen_length}, "
        f"settings { {k: v for k, v in settings.items() if v is not None} }")
  print("| accuracy | mean reward | mean length | passes / token | tokens/s |")
  print("|---|---|---|---|---|")
  print(f"| {100 * result['accuracy']:.1f}% | {result['mean_reward']:.3f} | "
        f"{result['mean_completion_length']:.1f} | {result['passes_per_token']:.3f} | "
        f"{result['tokens_per_sec']:,.0f} |")
  if jax.process_index() == 0:
    path = write_result(
        FLAGS.workdir, result, examples, task=task, split=FLAGS.split,
        settings={"gen_length": FLAGS.gen_length, "seed": FLAGS.seed,
                  "sampler": "ar" if causal else "diffusion", "batch_size": batch_size,
                  **sampler_flags.resolve(gen_length=FLAGS.gen_length, causal=causal,
                                          mask_id=run.model_config.mask_id, **settings)})
    print(f"Wrote {path}")
  return result


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not FLAGS["verbosity"].present:  # Library INFO logs (orbax) drown the output.
    logging.set_verbosity(logging.WARNING)
  try:
    checked = check_flags()
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  evaluate_from_flags(*checked)


if __name__ == "__main__":
  _define_cli_flags()
  app.run(main)
