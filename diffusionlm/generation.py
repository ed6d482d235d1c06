"""Generation as a library: text prompts in, completions (and task scores) out.

What the evaluate and sample CLIs, the RL rollout and the quickstart share:

  resolve_sampler_settings(gen_length=, causal=, mask_id=, **given) -> the sampler's kwargs
  encode_prompts(tokenizer, prompts) -> (prompt_NxP, valid_NxP), left-padded
  fit_prompts(prompt_NxP, valid_NxP, ...) -> refuse (or left-truncate) what exceeds max_length
  cut_at_eos(generated_NxG, eos_id) -> each row's ids before its first EOS
  to_host(x) -> a global array's full value on every process
  complete(params, apply_fn, tokenizer, prompts, ...) -> completions and speed statistics
  evaluate_task(params, apply_fn, tokenizer, examples, *, task, ...) -> accuracy, reward, ...
  write_result(workdir, result, examples, ...) -> WORKDIR/eval_<task>_<split>.json

Prompts are tokenised and left-padded to one length (padding marked invalid), split into
batches of a static size (the last one filled up with copies of its last prompt, whose
outputs are dropped), so every batch runs the same compiled program. A completion is the
generated text up to its first EOS. Every process passes the same prompts; results are
all-gathered, so every process gets them all.

Sampler defaults: block_length is the largest divisor of gen_length up to 32 (LLaDA's usual
block), steps = gen_length (one token per step, LLaDA's reference setting), greedy decoding.
"""
from collections.abc import Sequence
import inspect
import json
import os
import time

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np

from diffusionlm import tasks
from diffusionlm.diffusion import sampling
from diffusionlm.train import sharding

MAX_DEFAULT_BLOCK_LENGTH = 32
# Settings that only the masked-diffusion sampler reads; the AR sampler takes temperature.
DIFFUSION_ONLY = ("block_length", "steps", "remasking", "cfg_scale", "decoding", "threshold",
                  "cache", "suppress_eos_id")
SAMPLER_SETTINGS = ("temperature",) + DIFFUSION_ONLY


# ---- Sampler settings --------------------------------------------------------------------


def default_block_length(gen_length: int) -> int:
  """The largest divisor of gen_length that is at most MAX_DEFAULT_BLOCK_LENGTH."""
  return max(d for d in range(1, min(gen_length, MAX_DEFAULT_BLOCK_LENGTH) + 1)
             if gen_length % d == 0)


def _generate_defaults() -> dict:
  """The keyword defaults of `sampling.generate` for SAMPLER_SETTINGS (one source of truth)."""
  parameters = inspect.signature(sampling.generate).parameters
  return {name: parameters[name].default for name in SAMPLER_SETTINGS
          if parameters[name].default is not inspect.Parameter.empty}


def resolve_sampler_settings(*, gen_length: int, causal: bool, mask_id: int, **given) -> dict:
  """The keyword arguments of `generate` (causal=False) or `generate_ar` (causal=True),
  without gen_length: `given` (None = unset) completed with the defaults and checked.

  Raises ValueError naming the setting: unknown names, diffusion-only settings given for a
  causal model, and everything `sampling.check_settings` rejects.
  """
  unknown = sorted(set(given) - set(SAMPLER_SETTINGS))
  if unknown:
    raise ValueError(f"unknown sampler setting(s) {unknown}; known: {list(SAMPLER_SETTINGS)}")
  if gen_length is None or gen_length < 1:
    raise ValueError(f"gen_length must be >= 1, got {gen_length}.")
  given = {k: v for k, v in given.items() if v is not None}
  if causal:
    diffusion_only = sorted(set(given) & set(DIFFUSION_ONLY))
    if diffusion_only:
      raise ValueError(f"sampler setting(s) {diffusion_only} apply to masked-diffusion "
                       "models only; this model is autoregressive (causal), whose sampler "
                       "takes gen_length and temperature.")
    kwargs = {"temperature": float(given.get("temperature", 0.0))}
    sampling.check_ar_settings(gen_length=gen_length, **kwargs)
    return kwargs
  kwargs = _generate_defaults() | {"block_length": default_block_length(gen_length),
                                   "steps": gen_length} | given
  sampling.check_settings(gen_length=gen_length, mask_id=mask_id, **kwargs)
  return kwargs


# ---- Tokens in, tokens out ---------------------------------------------------------------


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


def fit_prompts(prompt_NxP: np.ndarray, valid_NxP: np.ndarray, *, gen_length: int,
                max_length: int | None, truncate: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """Prompts that leave room for gen_length tokens within the model's trained length.

  A model trained on sequences of `max_length` tokens has never seen a position beyond it;
  sampling there gives garbage without a word. Prompt + gen_length > max_length is a
  ValueError naming both numbers, or, with `truncate`, each prompt keeps its last
  max_length - gen_length tokens (a warning says how many were cut). None: no limit.
  """
  longest = int(valid_NxP.sum(1).max())
  if max_length is None or longest + gen_length <= max_length:
    return prompt_NxP, valid_NxP
  room = max_length - gen_length
  if not truncate or room < 1:
    raise ValueError(
        f"The longest prompt has {longest} tokens; with gen_length={gen_length} that is "
        f"{longest + gen_length} positions, more than the {max_length} the model was trained "
        f"on (its config.data.seq_len). Shorten the prompts or gen_length"
        + (", or pass --truncate_prompts to keep the last "
           f"{room} tokens of each prompt." if room >= 1 else "."))
  cut = int((valid_NxP.sum(1) > room).sum())
  logging.warning("%d of %d prompts are longer than %d tokens (trained length %d - "
                  "gen_length %d); keeping their last %d tokens.", cut, len(valid_NxP), room,
                  max_length, gen_length, room)
  return prompt_NxP[:, -room:], valid_NxP[:, -room:]


def cut_at_eos(generated_NxG: np.ndarray, eos_id: int) -> list[np.ndarray]:
  """Each row's ids before its first EOS (the whole row if it has none)."""
  is_eos_NxG = np.asarray(generated_NxG) == eos_id
  length_N = np.where(is_eos_NxG.any(1), is_eos_NxG.argmax(1), is_eos_NxG.shape[1])
  return [row[:n] for row, n in zip(np.asarray(generated_NxG), length_N)]


def to_host(x) -> np.ndarray:
  """A global array's full value on every process."""
  if jax.process_count() > 1:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


# ---- Completions and task scores ---------------------------------------------------------


def complete(params, apply_fn, tokenizer, prompts: Sequence[str], *, mask_id: int,
             causal: bool, batch_size: int, gen_length: int, key: jax.Array,
             sampler_kwargs: dict | None = None, mesh: jax.sharding.Mesh | None = None,
             max_length: int | None = None, truncate_prompts: bool = False) -> dict:
  """Generates a completion for every prompt with `generate` (or `generate_ar` if causal).

  sampler_kwargs: settings of the sampler (SAMPLER_SETTINGS; the rest default as in
    `resolve_sampler_settings`). Batch i uses the key fold_in(key, i).
  max_length, truncate_prompts: the model's trained sequence length, and what to do with
    prompts that leave no room for gen_length tokens within it (`fit_prompts`).
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
  kwargs = resolve_sampler_settings(gen_length=gen_length, causal=causal, mask_id=mask_id,
                                    **(sampler_kwargs or {}))
  if mesh is not None and batch_size % sharding.data_parallel_size(mesh):
    raise ValueError(f"batch_size={batch_size} is not a multiple of the mesh's data-parallel "
                     f"size {sharding.data_parallel_size(mesh)}.")
  prompt_NxP, valid_NxP = fit_prompts(*encode_prompts(tokenizer, prompts),
                                      gen_length=gen_length, max_length=max_length,
                                      truncate=truncate_prompts)
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
    tokens_BxL = to_host(jax.block_until_ready(tokens_BxL))
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


def evaluate_task(params, apply_fn, tokenizer, examples: Sequence[dict], *, task: str,
                  mask_id: int, causal: bool, batch_size: int, gen_length: int,
                  key: jax.Array, sampler_kwargs: dict | None = None,
                  mesh: jax.sharding.Mesh | None = None, max_length: int | None = None,
                  truncate_prompts: bool = False) -> dict:
  """Completes the task's prompt of every example and scores the results.

  Returns {"accuracy": share of examples the task's `is_correct` accepts, "mean_reward":
  mean of the task's `reward`, "mean_completion_length": ids before EOS, "passes_per_token",
  "tokens_per_sec", "seconds", "num_examples", "completions", "correct" and "rewards" (per
  example)}; see `complete` for the arguments and the speed statistics.
  """
  task_def = tasks.get(task)
  if not examples:
    raise ValueError("examples is empty: nothing to evaluate.")
  examples = [{**ex, "task": ex.get("task", task)} for ex in examples]
  for i, ex in enumerate(examples):
    if ex["task"] != task:
      raise ValueError(f"examples[{i}] is a {ex['task']!r} example, not {task!r}.")
  out = complete(params, apply_fn, tokenizer, [task_def.prompt(ex) for ex in examples],
                 mask_id=mask_id, causal=causal, batch_size=batch_size, gen_length=gen_length,
                 key=key, sampler_kwargs=sampler_kwargs, mesh=mesh, max_length=max_length,
                 truncate_prompts=truncate_prompts)
  completions = out["completions"]
  correct = [task_def.is_correct(c, ex) for c, ex in zip(completions, examples)]
  rewards_N = [task_def.reward(c, ex) for c, ex in zip(completions, examples)]
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
  task_def = tasks.get(task)
  per_example = [
      {"prompt": task_def.prompt(ex), "completion": completion,
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
