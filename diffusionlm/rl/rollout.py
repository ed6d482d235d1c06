"""Rollouts: prompts -> G completions each (the LLaDA sampler) -> rewards -> update batch.

A rollout of N prompts is one `sampling.generate` call on N * G rows (each prompt repeated G
times, rows [g*G, (g+1)*G) are prompt g's group), sharded over the data-parallel mesh axes
with static shapes: every prompt of the task is tokenised once and left-padded to the
longest (padding marked invalid), and completions have the fixed length gen_length.
Completions are decoded up to their first EOS and scored by the task's rule-based rewards
(diffusionlm/tasks/; strings only, nothing is executed). The update batch holds numpy arrays of the
whole rollout (every process holds all of it, see `to_global`).
"""
from collections.abc import Callable, Sequence

import grain
import jax
import numpy as np

from diffusionlm import generation, tasks
from diffusionlm.diffusion import sampling
from diffusionlm.rl import grpo, logprobs
from diffusionlm.train import sharding

# Sampler settings read from config.rl (see configs/rl_sudoku.py), passed on to `generate`.
SAMPLER_FIELDS = ("block_length", "steps", "temperature", "remasking", "decoding",
                  "threshold", "cache")


def sampler_kwargs(rl_config, *, mask_id: int) -> dict:
  """`generate`'s settings from config.rl, checked; ValueError names the config.rl field."""
  try:
    return generation.resolve_sampler_settings(
        gen_length=rl_config.gen_length, causal=False, mask_id=mask_id,
        **{f: rl_config[f] for f in SAMPLER_FIELDS})
  except ValueError as e:
    raise ValueError(f"config.rl sampler settings: {e} (fields config.rl.gen_length, "
                     f"config.rl.{', config.rl.'.join(SAMPLER_FIELDS)})") from e


class PromptSet:
  """Task examples with their prompts tokenised once: prompt_NxP, valid_NxP (left-padded)."""

  def __init__(self, examples: Sequence[dict], tokenizer):
    if not examples:
      raise ValueError("PromptSet: no examples.")
    self.examples = list(examples)
    self.prompt_NxP, self.valid_NxP = generation.encode_prompts(
        tokenizer, [tasks.get(ex["task"]).prompt(ex) for ex in self.examples])

  def __len__(self) -> int:
    return len(self.examples)


def prompt_iterator(num_examples: int, *, batch_size: int, seed: int):
  """A grain iterator of example-index batches [batch_size]: a fresh seeded shuffle each
  epoch, repeated forever. Its state (get_state / set_state) is checkpointed."""
  if num_examples < batch_size:
    raise ValueError(f"{num_examples} prompts are fewer than config.rl.num_prompts_per_step="
                     f"{batch_size}.")
  dataset = (grain.MapDataset.range(num_examples).shuffle(seed=seed).repeat()
             .batch(batch_size, drop_remainder=True))
  return iter(dataset.to_iter_dataset())


def score_with_rewards(task: str) -> Callable:
  """score(completions, examples) -> (rewards_B, {term: values_B}) with the task's reward
  terms (Task.score_terms); the reward is their sum (Task.reward)."""
  task_def = tasks.get(task)
  names = [term.name for term in task_def.reward_terms]

  def score(completions: Sequence[str], examples: Sequence[dict]):
    terms = [task_def.score_terms(c, ex) for c, ex in zip(completions, examples)]
    terms_B = {name: np.array([t[name] for t in terms], np.float32) for name in names}
    return np.sum(list(terms_B.values()), axis=0), terms_B

  return score


def to_global(x: np.ndarray, sharding_: jax.sharding.Sharding) -> jax.Array:
  """A global array from a value that every process holds in full."""
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding_, lambda index: x[index])


def rollout(params, apply_fn, prompts: PromptSet, indices_N, key, *, tokenizer, mesh,
            num_generations: int, gen_length: int, mask_id: int, scale_rewards: bool,
            score: Callable, sampler_settings: dict):
  """Samples G completions for each prompt prompts.examples[indices_N], scores them and
  builds the update batch.

  Returns (batch, metrics, completions): batch holds numpy arrays over B = N * G rows,
  "prompt" [B, P], "prompt_valid" [B, P], "completion" [B, C], "completion_mask" [B, C]
  (logprobs.completion_mask), "commit_step" [B, C] (the sampler pass that committed each
  token, which the `trajectory` estimator replays), "advantages" [B]
  (grpo.group_advantages) and "rewards" [B];
  metrics are host floats: reward_mean, reward_std (over all rows), reward/<term> means,
  completion_length (tokens up to and including the first EOS), zero_std_groups (share of
  groups whose rewards are all equal, which carry no policy gradient).
  """
  rows_B = np.repeat(np.asarray(indices_N), num_generations)
  prompt_BxP, valid_BxP = prompts.prompt_NxP[rows_B], prompts.valid_NxP[rows_B]
  batch_sharding = sharding.batch_sharding(mesh)
  tokens_BxL, stats = sampling.generate(
      params, apply_fn, to_global(prompt_BxP, batch_sharding), key, gen_length=gen_length,
      mask_id=mask_id, prompt_valid_BxP=to_global(valid_BxP, batch_sharding),
      return_stats=True, **sampler_settings)
  completion_BxC = generation.to_host(tokens_BxL)[:, prompt_BxP.shape[1]:]
  commit_step_BxC = generation.to_host(stats["commit_step_BxG"]).astype(np.int32)
  completions = [tokenizer.decode(ids) for ids in generation.cut_at_eos(completion_BxC,
                                                                        tokenizer.eos_id)]
  rewards_B, terms_B = score(completions, [prompts.examples[r] for r in rows_B])
  advantages_B = np.asarray(grpo.group_advantages(
      rewards_B, num_generations=num_generations, scale_rewards=scale_rewards))
  completion_mask_BxC = np.asarray(logprobs.completion_mask(completion_BxC,
                                                            eos_id=tokenizer.eos_id))
  batch = {"prompt": prompt_BxP, "prompt_valid": valid_BxP, "completion": completion_BxC,
           "completion_mask": completion_mask_BxC, "commit_step": commit_step_BxC,
           "advantages": advantages_B,
           "rewards": np.asarray(rewards_B, np.float32)}
  group_std_N = rewards_B.reshape(-1, num_generations).std(axis=1)
  metrics = {"reward_mean": float(np.mean(rewards_B)), "reward_std": float(np.std(rewards_B)),
             **{f"reward/{name}": float(np.mean(v)) for name, v in terms_B.items()},
             "completion_length": float(completion_mask_BxC.sum(1).mean()),
             "zero_std_groups": float(np.mean(group_std_N == 0))}
  return batch, metrics, completions
