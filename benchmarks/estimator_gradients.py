"""Gradient quality of the diffu-GRPO likelihood estimators for multi-step rollouts.

  python benchmarks/estimator_gradients.py --init_from=runs/qs0/sft   # the quickstart's SFT

The policy is the quickstart's multi-step sampler (configs/rl_sudoku.py: 20 passes over the
40-token answer, temperature 1) with *random* remasking: then the order in which tokens are
committed does not depend on the parameters or the tokens, and the score-function identity

    grad J = E_{order} E_{o ~ pi(. | q, order)} [ (R(o) - b(q)) grad log pi(o | q, order) ]

holds with log pi(o | q, order) the `trajectory` estimate with s = 1 (exact for this sampler,
estimators.py). With low-confidence remasking (the quickstart's rollouts) the order depends
on the tokens and no estimator here is exact, so this benchmark measures the random-order
twin of the sampler.

Reference gradient: half A of the rollouts (N per prompt), trajectory s = 1, with the
leave-one-out baseline b_i = mean of the other N - 1 rewards of the prompt: an unbiased
estimate of grad J. Each estimator: half B in groups of G (GRPO advantages, scaled by the
group std as config.rl.scale_rewards), the gradient of grpo.grpo_loss at the rollout policy
(mu = 1: ratio 1, so neither the clip nor the KL, whose gradient vanishes at the reference,
acts), i.e. what the first update of an RL step follows. Printed per estimator:
- `batch cos`: mean ± std over batches of the cosine between one batch's gradient
  (P prompts x G rollouts, as one RL step) and the reference: noise and bias together;
- `expected cos`: the cosine between the mean of the batch gradients (the estimator's
  expected direction, up to the noise of N/G batches) and the reference. Trajectory s = 1
  measures the ceiling set by the reference's own noise; lower values are bias.
"""
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from configs import rl_sudoku
from diffusionlm.data import pipeline
from diffusionlm.rl import estimators, grpo, rollout
from diffusionlm.rl import setup as rl_setup
from diffusionlm.train import checkpoint

_INIT_FROM = flags.DEFINE_string("init_from", "runs/d1_quickstart/sft", "The policy: a "
                                 "masked-diffusion run directory (the quickstart's SFT stage).")
_PROMPTS = flags.DEFINE_integer("prompts", 16, "Training puzzles (prompts) per batch.")
_ROLLOUTS = flags.DEFINE_integer("rollouts", 64, "Rollouts per prompt in each half (N).")
_GROUP = flags.DEFINE_integer("group", 8, "GRPO group size G of an estimator's batch.")
_REMASKING = flags.DEFINE_enum("remasking", "random", ["random", "low_confidence"],
                               "The rollouts' remasking (the reference is exact for random).")
_SEED = flags.DEFINE_integer("seed", 0, "Prompt choice, rollouts and estimator keys.")

# (row name, config.rl fields, p_mask_prompt).
ESTIMATORS = (
    ("mean_field (d1 eq. 4)", {"estimator": "mean_field"}, 0.0),
    ("mean_field, prompt masked 0.15 (d1)", {"estimator": "mean_field"}, 0.15),
    ("trajectory s=1 (exact)", {"estimator": "trajectory", "trajectory_group": 1}, 0.0),
    ("trajectory s=4 (quickstart)", {"estimator": "trajectory", "trajectory_group": 4}, 0.0),
    ("elbo 2 masks", {"estimator": "elbo", "elbo_samples": 2}, 0.0),
    ("elbo 8 masks", {"estimator": "elbo", "elbo_samples": 8}, 0.0),
)


def _flat(tree) -> np.ndarray:
  return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
  return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def leave_one_out_advantages(rewards_NxR: np.ndarray) -> np.ndarray:
  """A = r_i - mean of the prompt's other rewards: an unbiased policy-gradient baseline."""
  num = rewards_NxR.shape[1]
  return num / (num - 1) * (rewards_NxR - rewards_NxR.mean(axis=1, keepdims=True))


def main(argv):
  del argv
  P, N, G = _PROMPTS.value, _ROLLOUTS.value, _GROUP.value
  if N % G:
    raise ValueError(f"--rollouts={N} must be a multiple of --group={G}.")
  config = rl_sudoku.get_config()
  config.init_from = _INIT_FROM.value
  config.rl.remasking = _REMASKING.value
  rs = rl_setup.build(config)
  c, setup = rs.config, rs.setup
  params = checkpoint.restore_params(c.init_from, setup.abstract_state.params,
                                     source="--init_from")
  tokenizer, mask_id = setup.tokenizer, setup.model_config.mask_id
  prompts = rollout.PromptSet(pipeline.load_task_examples(c.data, "train"), tokenizer)
  rng = np.random.default_rng(_SEED.value)
  indices_P = rng.choice(len(prompts), P, replace=False)
  key = jax.random.key(_SEED.value)

  start = time.perf_counter()
  halves = []  # Two independent rollouts of N per prompt, rows prompt-major.
  for half in range(2):
    batch, metrics, _ = rollout.rollout(
        params, rs.apply_fn, prompts, indices_P, jax.random.fold_in(key, half),
        tokenizer=tokenizer, mesh=setup.mesh, num_generations=N,
        gen_length=c.rl.gen_length, mask_id=mask_id, scale_rewards=False,
        score=rollout.score_with_rewards(c.rl.task), sampler_settings=rs.sampler_settings)
    halves.append(batch)
    print(f"rollout half {half}: {P} prompts x {N}, reward {metrics['reward_mean']:.3f}, "
          f"zero-std prompts {np.mean(batch['rewards'].reshape(P, N).std(1) == 0):.2f}",
          flush=True)
  print(f"rollouts: {time.perf_counter() - start:.0f} s", flush=True)

  def gradient_fn(fields, p_mask_prompt):
    estimator = estimators.from_config({**c.rl.to_dict(), **fields})

    @jax.jit
    def grad(params, batch, key):
      def loss(p):
        return grpo.grpo_loss(p, rs.apply_fn, batch, key, beta=0.0, clip_eps=c.rl.clip_eps,
                              p_mask_prompt=p_mask_prompt, mask_id=mask_id,
                              eos_id=tokenizer.eos_id, num_tokens=batch["num_tokens"],
                              estimator=estimator)[0]
      return jax.grad(loss)(params)

    return grad

  def rows(batch, idx, advantages):
    out = {k: batch[k][idx] for k in ("prompt", "prompt_valid", "completion", "commit_step")}
    return {**out, "advantages": advantages.astype(np.float32)}

  # Reference: half A, exact trajectory log-probs, leave-one-out baseline, summed over
  # micro-batches of G rows per prompt (a constant normaliser, so the sum is one gradient).
  exact = gradient_fn({"estimator": "trajectory", "trajectory_group": 1}, 0.0)
  half_a = halves[0]
  advantages_B = leave_one_out_advantages(half_a["rewards"].reshape(P, N)).reshape(-1)
  reference = 0.0
  start = time.perf_counter()
  for j in range(N // G):
    idx = (np.arange(P)[:, None] * N + j * G + np.arange(G)).reshape(-1)
    batch = {**rows(half_a, idx, advantages_B[idx]), "num_tokens": jnp.float32(1.0)}
    reference = reference + _flat(exact(params, batch, jax.random.key(0)))
  print(f"reference gradient: {time.perf_counter() - start:.0f} s; |g| {np.linalg.norm(reference):.3g}",
        flush=True)

  half_b = halves[1]
  groups_B = grpo.group_advantages(half_b["rewards"], num_generations=G,
                                   scale_rewards=c.rl.scale_rewards)
  print(f"\nsudoku, {P} prompts x G = {G} per batch, {N // G} batches; rollouts: "
        f"{c.rl.steps} passes, {_REMASKING.value} remasking, temperature {c.rl.temperature}; "
        f"reference: {P} x {N} rollouts, exact trajectory, leave-one-out baseline\n")
  print("| estimator | batch cos (mean ± std) | expected cos | seconds |")
  print("|---|---|---|---|")
  for name, fields, p_mask_prompt in ESTIMATORS:
    grad = gradient_fn(fields, p_mask_prompt)
    start = time.perf_counter()
    batch_grads = []
    for j in range(N // G):
      idx = (np.arange(P)[:, None] * N + j * G + np.arange(G)).reshape(-1)
      completion_mask = half_b["completion_mask"][idx]
      batch = {**rows(half_b, idx, np.asarray(groups_B)[idx]),
               "num_tokens": jnp.float32(completion_mask.sum())}
      batch_grads.append(_flat(grad(params, batch, jax.random.key(1000 + j))))
    cosines = [_cosine(g, reference) for g in batch_grads]
    expected = _cosine(np.mean(batch_grads, axis=0), reference)
    print(f"| {name} | {np.mean(cosines):.3f} ± {np.std(cosines):.3f} | {expected:.3f} | "
          f"{time.perf_counter() - start:.0f} |", flush=True)


if __name__ == "__main__":
  app.run(main)
