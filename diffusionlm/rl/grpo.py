"""diffu-GRPO (Zhao et al. 2025, "d1", Sec. 3.2): group advantages, the clipped surrogate
with a k3 KL penalty, and the sharded optax update.

For a prompt q with G sampled completions o_1..o_G and rewards r_1..r_G, the advantage of
every token of o_i is A_i = r_i - mean(r) (optionally / (std(r) + eps)). With mean-field
per-token log-probabilities (logprobs.py) under a random prompt mask q', the loss of one
policy-gradient iteration is (d1 eq. 5, GRPO of Shao et al. 2024)

  L = 1/T sum_{i,k} [ -min(rho_ik A_i, clip(rho_ik, 1 - eps, 1 + eps) A_i) + beta KL_ik ],
  rho_ik = pi_theta(o_ik | q') / pi_old(o_ik | q'),
  KL_ik  = exp(l_ref - l_theta) - (l_ref - l_theta) - 1      (k3 estimator, >= 0),

summed over completion tokens up to each completion's first EOS, T their number (token-mean
normalisation over the whole rollout batch, so micro-batching does not change the loss).
pi_old are the rollout's parameters, pi_ref the frozen initial ones. One rollout serves mu
(`num_iterations`) updates; update i uses prompt mask i, whose old and reference log-probs
were computed once, before the first update (`make_logps_step`).

Keys: mask_key(step_key, i, m) is the prompt mask of iteration i on micro-batch m. The same
function picks the mask for the precomputed log-probs and for the update, so every mask is
used exactly once per rollout for every micro-batch (d1's code reseeds global RNGs and, under
gradient accumulation, skips half of its masks; neither happens here).
"""
import time

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from diffusionlm.rl import estimators
from diffusionlm.train import sharding, train_state


def group_advantages(rewards_B, *, num_generations: int, scale_rewards: bool,
                     eps: float = 1e-4) -> jax.Array:
  """A_B = r - mean of its group, / (group std + eps) if `scale_rewards` (d1 / GRPO).

  Rows [g*G, (g+1)*G) form group g. The std is the sample std (ddof=1), as in d1's trainer.
  """
  rewards_B = jnp.asarray(rewards_B, jnp.float32)
  if rewards_B.ndim != 1 or rewards_B.shape[0] % num_generations:
    raise ValueError(f"rewards_B has shape {tuple(rewards_B.shape)}: expected one reward per "
                     f"row, a multiple of num_generations={num_generations} rows.")
  if num_generations < 2:
    raise ValueError(f"num_generations={num_generations}: a group needs at least 2 samples.")
  rewards_NxG = rewards_B.reshape(-1, num_generations)
  advantages_NxG = rewards_NxG - rewards_NxG.mean(axis=1, keepdims=True)
  if scale_rewards:
    advantages_NxG /= rewards_NxG.std(axis=1, ddof=1, keepdims=True) + eps
  return advantages_NxG.reshape(-1)


def grpo_loss(params, apply_fn, batch, key, *, beta: float, clip_eps: float,
              p_mask_prompt: float, mask_id: int, eos_id: int, num_tokens=None,
              estimator=estimators.mean_field):
  """The diffu-GRPO loss (module docstring) of one micro-batch under the mask of `key`.

  batch: "prompt" int [B, P], "prompt_valid" bool [B, P] (optional), "completion" int [B, C],
    "advantages" [B], "old_logps" [B, C] (log-probs of the rollout policy under the same
    key; without it pi_old = pi_theta, rho = 1 with the gradient of log pi_theta, which is
    what one update per rollout (mu = 1) computes), and "ref_logps" [B, C] (reference
    policy, same key; needed when beta > 0), plus what the estimator reads (`trajectory`:
    "commit_step" [B, C]).
  estimator: the log-prob estimate, estimator(params, apply_fn, batch, key, p_mask_prompt=,
    mask_id=, eos_id=) -> (logp_BxC, weight_BxC) (estimators.py; default d1's mean field).
  num_tokens: the normaliser T; default this batch's completion tokens. Passing the rollout
    batch's total makes the losses and metrics of its micro-batches add up.
  Returns (loss, {"loss", "kl", "clip_fraction", "ratio"}), all token means (sums / T):
  clip_fraction counts tokens whose gradient the clip removes (rho > 1 + eps with A > 0, or
  rho < 1 - eps with A < 0); ratio is the mean of rho.
  """
  logp_BxC, weight_BxC = estimator(params, apply_fn, batch, key, p_mask_prompt=p_mask_prompt,
                                   mask_id=mask_id, eos_id=eos_id)
  advantage_Bx1 = batch["advantages"].astype(jnp.float32)[:, None]
  old_logp_BxC = batch.get("old_logps", jax.lax.stop_gradient(logp_BxC))
  ratio_BxC = jnp.exp(logp_BxC - old_logp_BxC)
  clipped_BxC = jnp.clip(ratio_BxC, 1.0 - clip_eps, 1.0 + clip_eps)
  surrogate_BxC = jnp.minimum(ratio_BxC * advantage_Bx1, clipped_BxC * advantage_Bx1)
  if "ref_logps" in batch:
    log_ref_ratio_BxC = batch["ref_logps"] - logp_BxC
    kl_BxC = jnp.exp(log_ref_ratio_BxC) - log_ref_ratio_BxC - 1.0
  elif beta:
    raise ValueError(f"beta={beta} > 0 needs batch['ref_logps'].")
  else:
    kl_BxC = jnp.zeros_like(logp_BxC)
  is_clipped_BxC = clipped_BxC * advantage_Bx1 < ratio_BxC * advantage_Bx1

  weight_BxC = weight_BxC.astype(jnp.float32)
  if num_tokens is None:
    num_tokens = weight_BxC.sum()
  token_mean = lambda x_BxC: jnp.sum(x_BxC * weight_BxC) / jnp.maximum(num_tokens, 1)
  loss = token_mean(-surrogate_BxC + beta * kl_BxC)
  return loss, {"loss": loss, "kl": token_mean(kl_BxC),
                "clip_fraction": token_mean(is_clipped_BxC.astype(jnp.float32)),
                "ratio": token_mean(ratio_BxC)}


def mask_key(step_key, iteration, micro_batch):
  """The prompt-mask key of iteration `iteration` on micro-batch `micro_batch`."""
  return jax.random.fold_in(jax.random.fold_in(step_key, iteration), micro_batch)


def micro_batch_sharding(mesh) -> NamedSharding:
  """[micro_batch, rows, ...] arrays: rows split over the data-parallel axes."""
  return NamedSharding(mesh, P(None, sharding.BATCH_AXES))


def make_logps_step(setup: train_state.Setup, apply_fn, *, num_iterations: int,
                    p_mask_prompt: float, eos_id: int, with_ref: bool,
                    estimator=estimators.mean_field):
  """Jitted (params, ref_params, batch, step_key) -> {"old_logps", "ref_logps"}, each
  [mu, M, b, C]: the rollout policy's and the reference's per-token log-probs under every
  mask_key(step_key, i, m), for the mu iterations i and the M micro-batches m of `batch`
  (arrays [M, b, ...], see `make_update_step`). Computed once per rollout. Without
  `with_ref` (beta = 0) there is no "ref_logps"; with mu = 1 no "old_logps" (the only update
  runs at the rollout's parameters, so pi_old = pi_theta: `grpo_loss`), and with neither the
  step computes nothing. `estimator`: as in `grpo_loss`.
  """
  mask_id = setup.model_config.mask_id
  with_old = num_iterations > 1
  if not (with_old or with_ref):
    return lambda params, ref_params, batch, step_key: {}

  def logps(params, ref_params, batch, step_key):
    def one_view(args):
      i, m = args
      micro = jax.tree.map(lambda x: x[m], batch)
      key = mask_key(step_key, i, m)
      score = lambda p: estimator(p, apply_fn, micro, key, p_mask_prompt=p_mask_prompt,
                                  mask_id=mask_id, eos_id=eos_id)[0]
      out = {"old_logps": score(params)} if with_old else {}
      if with_ref:
        out["ref_logps"] = score(ref_params)
      return out

    M = batch["completion"].shape[0]
    i_K, m_K = (a.reshape(-1) for a in jnp.meshgrid(jnp.arange(num_iterations), jnp.arange(M),
                                                     indexing="ij"))
    out = jax.lax.map(one_view, (i_K, m_K))
    return jax.tree.map(lambda x: x.reshape((num_iterations, M) + x.shape[1:]), out)

  mesh = setup.mesh
  views = NamedSharding(mesh, P(None, None, sharding.BATCH_AXES))
  return jax.jit(logps, in_shardings=(setup.model_sharding, setup.model_sharding,
                                      micro_batch_sharding(mesh), sharding.replicated(mesh)),
                 out_shardings=views)


def make_update_step(setup: train_state.Setup, apply_fn, *, beta: float, clip_eps: float,
                     p_mask_prompt: float, eos_id: int, estimator=estimators.mean_field):
  """Jitted (state, batch, step_key, iteration) -> (state, metrics): ONE optax update.

  batch holds the rollout as M micro-batches of b rows: "prompt" [M, b, P], "prompt_valid"
  [M, b, P], "completion" [M, b, C], "completion_mask" [M, b, C], "advantages" [M, b], and
  this iteration's "old_logps" / "ref_logps" [M, b, C] (slice `iteration` of
  `make_logps_step`'s output). Gradients are accumulated over the micro-batches (a scan,
  micro-batch m under mask_key(step_key, iteration, m)) and applied once with
  `train_state.apply_gradients` (setup.tx, non-finite guard). Sharded like the train step:
  state in setup.state_sharding (donated), rows over the data-parallel axes. `estimator`:
  as in `grpo_loss` (the same one as `make_logps_step`'s); with `trajectory` the batch also
  holds "commit_step" [M, b, C]. Gradients are those of the trainable parameters (under
  LoRA the adapters, merged into the frozen base: setup.model_params).
  """
  mask_id = setup.model_config.mask_id

  def update(state: train_state.TrainState, batch, step_key, iteration):
    num_tokens = jnp.maximum(batch["completion_mask"].sum(), 1)

    def micro_step(grads, args):
      m, micro = args
      loss_fn = lambda p: grpo_loss(
          setup.model_params(state, p), apply_fn, micro, mask_key(step_key, iteration, m),
          beta=beta, clip_eps=clip_eps, p_mask_prompt=p_mask_prompt, mask_id=mask_id,
          eos_id=eos_id, num_tokens=num_tokens, estimator=estimator)
      (_, metrics), grads_m = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
      return jax.tree.map(jnp.add, grads, grads_m), metrics

    M = batch["completion"].shape[0]
    zeros = jax.tree.map(jnp.zeros_like, state.params)
    grads, metrics_M = jax.lax.scan(micro_step, zeros, (jnp.arange(M), batch))
    metrics = jax.tree.map(lambda x: x.sum(0), metrics_M)  # Token sums / T add up.
    new_state, grad_norm = train_state.apply_gradients(setup.tx, state, metrics["loss"], grads)
    return new_state, {**metrics, "grad_norm": grad_norm, "lr": setup.lr_schedule(state.step)}

  mesh = setup.mesh
  rep = sharding.replicated(mesh)
  return jax.jit(update, in_shardings=(setup.state_sharding, micro_batch_sharding(mesh), rep, rep),
                 out_shardings=(setup.state_sharding, rep), donate_argnums=(0,))


def run_iterations(state: train_state.TrainState, ref_params, batch, step_key, *, logps_step,
                   update_step, num_iterations: int, old_params=None):
  """The mu updates of one rollout: log-probs of every mask once, then update i under mask i.

  old_params: the parameters the rollout's policy runs on (default state.params; under LoRA
  the merged model, setup.model_params(state)).
  Returns (state, metrics per iteration as a list of dicts of device scalars, seconds
  {"logps", "updates"}: wall time of the two phases, each waited for).
  """
  tick = time.perf_counter()
  old_params = state.params if old_params is None else old_params
  views = jax.block_until_ready(logps_step(old_params, ref_params, batch, step_key))
  seconds = {"logps": time.perf_counter() - tick}
  tick = time.perf_counter()
  history = []
  for i in range(num_iterations):
    batch_i = {**batch, **{name: views_i[i] for name, views_i in views.items()}}
    state, metrics = update_step(state, batch_i, step_key, jnp.int32(i))
    history.append(metrics)
  jax.block_until_ready(state)
  seconds["updates"] = time.perf_counter() - tick
  return state, history, seconds
