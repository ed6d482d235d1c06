"""Likelihood estimators for diffu-GRPO: which log pi(o | q) the ratio and the KL are built on.

Every estimator is a pure, jit-able function

    estimator(params, apply_fn, batch, key, *, p_mask_prompt, mask_id, eos_id, **settings)
        -> (logp_BxC, weight_BxC)

batch: "prompt" int [B, P], "completion" int [B, C], optionally "prompt_valid" bool [B, P]
(False on left padding), for `trajectory` "commit_step" int [B, C] and for `spg`
"advantages" float [B]. weight_BxC (bool)
marks the scored tokens, those up to and including the first EOS (logprobs.completion_mask);
logp_BxC is 0 elsewhere and logp_BxC.sum(1) is the estimate of the sequence log-probability.
Every estimator masks the prompt as d1 does, with logprobs.mask_prompt(key, ...) (each valid
prompt token w.p. p_mask_prompt), so for one key all of them see the same prompt view q'.
`grpo.grpo_loss`, `grpo.make_logps_step` and `grpo.make_update_step` take one as
`estimator=` (default `mean_field`), its own settings bound with functools.partial:
`from_config(config.rl)` builds it, `validate_config(config.rl)` checks the fields

    config.rl.estimator         "mean_field" | "trajectory" | "elbo" | "spg"  (DEFAULTS below)
    config.rl.trajectory_group  s >= 1, dividing the sampler's number of passes
    config.rl.elbo_samples      a positive even number of masks per completion (elbo, spg)
    config.rl.spg_beta          spg: the upper bound's Renyi order, >= 1
    config.rl.spg_mix           spg: the upper bound's weight in [0, 1] for rows with A <= 0

mean_field: d1 eq. 4, one forward pass, completion fully masked (logprobs.completion_logps).

trajectory: every completion token scored at the state the sampler was in when it committed
  it (TraceRL, Wang et al. 2025). With c_k the pass that committed token k and groups of s
  passes,

      log pi(o | q') = sum_k log p_theta(o_k | q', {o_j : c_j < s floor(c_k / s)}, masks)

  one forward pass per group g (tokens with c_k in [g s, (g+1) s) scored at the state before
  pass g s). For s = 1 it is the exact log-probability of the rollout's token choices given
  its commit order, for `sampling.generate` with cache="none", cfg_scale=0, no
  suppress_eos_id, at temperature 1, when q' = q (p_mask_prompt = 0); the sampler's state at
  pass t is exactly the prompt, the tokens committed at passes < t and mask tokens elsewhere
  (later blocks are still all masks), whichever remasking or decoding rule picked the order
  (the order's own probability is not included). s = number of passes is `mean_field`.
  With cache="block" the sampler's first pass of each block sees that state, its later
  passes stale keys/values of the other positions: the estimate scores the uncached model
  (exact only for a 1-layer model or one step per block).
  Cost: number of passes / s forward passes, a lax.scan whose per-group forward is
  rematerialised, so the backward pass keeps the activations of one group at a time.

elbo: a Monte-Carlo ELBO of the scored completion given q' (LLaDA eq. 6 / Algorithm 3, as
  in VRPO, LLaDA 1.5; sequence-level as in ESPO). With n the scored tokens of a row,

      log pi(o | q') >= ELBO = E_{m ~ U{1..n}} E_{M ⊂ scored, |M| = m}
                                 [ (n / m) sum_{k in M} log p_theta(o_k | q', o with M masked) ],

  positions after the first EOS masked in every view (the bound is on the scored tokens,
  whatever follows them). `elbo_samples` = 2K masks as K complementary pairs: m ~ U{1..n}
  and M uniform of size m; its partner masks the other n - m scored tokens with weight
  n / (n - m), or, when m = n (nothing left), all n again with weight 1. Each mask of a pair
  thus has LLaDA's distribution (size uniform on 1..n, positions uniform given the size), so
  the mean of the 2K weighted sums is unbiased for the ELBO, and for m < n every scored token
  is masked in exactly one mask of the pair (antithetic sizes m and n - m). The estimate is
  spread evenly over the scored tokens, logp_BxC = ELBO_b / n_b, so grpo_loss's per-token
  ratio is the sequence-level exp((ELBO_theta - ELBO_old) / n)
  (ESPO / VRPO), its clip and k3 KL unchanged. The same key gives the same masks, so old,
  reference and current policies are compared under one draw. Cost: 2K forward passes (a
  rematerialised lax.scan, as above).

spg: SPG's sandwich (Wang et al. 2025, "Sandwiched Policy Gradient"): the `elbo` estimate
  for rows with A > 0, whose likelihood the update raises, and for the others, whose
  likelihood it lowers, a Renyi-type upper bound (SPG's EUBO, beta >= 1) mixed with the
  ELBO as in SPG's "mix" variant:

      EUBO_beta = (1 / beta) sum_k log E_{t, M}[ (1 / t) 1[k in M] p_theta(o_k | q', o with M
                                                                            masked)^beta ],
      estimate  = mix * EUBO_beta + (1 - mix) * ELBO            (A <= 0; mix = 1: EUBO).

  Each inner expectation is estimated by the `elbo_samples` masks of `elbo` (t = |M| / n,
  whose 1 / t is `elbo`'s weight n / |M|; every scored token lies in some mask of a pair), as
  the log of the Monte-Carlo mean: unbiased inside the log, so the estimate of EUBO_beta is
  biased low by Jensen, as SPG's own. SPG masks by blocks; here the masks are `elbo`'s.
  What the tests check (tests/test_estimators.py, enumerated): the estimate approaches
  EUBO_beta from below as the masks grow; EUBO_beta >= log pi(o | q) when the network's
  conditionals are those of one joint distribution, with equality for context-free
  predictions, and EUBO_beta grows with beta.
  It is not a bound for an arbitrary network: with conditionals that no joint distribution
  has, EUBO_beta can fall below the exact log pi(o | q) (by up to 1.7 nats at beta = 1 and
  0.2 at beta = 2 on 3-token, 2-symbol enumerations: benchmarks/spg_bound.py), so "upper"
  holds only as far as the network's conditionals are consistent.
"""
from collections.abc import Callable
import functools
import math
import numbers

import jax
import jax.numpy as jnp

from diffusionlm.rl import logprobs

ESTIMATORS = ("mean_field", "trajectory", "elbo", "spg")
# The config.rl fields read here and their defaults (mean_field: d1, unchanged; spg: the
# "mix" setting of SPG's scripts, beta 1.5 and weight 0.5).
DEFAULTS = {"estimator": "mean_field", "trajectory_group": 1, "elbo_samples": 2,
            "spg_beta": 1.5, "spg_mix": 0.5}


def mean_field(params, apply_fn, batch, key, *, p_mask_prompt: float, mask_id: int,
               eos_id: int):
  """d1 eq. 4: one forward pass, the completion fully masked (logprobs.completion_logps)."""
  return logprobs.completion_logps(
      params, apply_fn, batch["prompt"], batch["completion"], key, p_mask_prompt=p_mask_prompt,
      mask_id=mask_id, eos_id=eos_id, prompt_valid_BxP=batch.get("prompt_valid"))


def _fold_views(params, apply_fn, batch, key, view_fn, num_views: int, init, fold, *,
                p_mask_prompt: float, mask_id: int):
  """fold(... fold(init, aux_0, logp_0) ..., aux_{n-1}, logp_{n-1}) over the views v <
  num_views, logp_v,BxC = log p(o | q', o with hidden_v,BxC masked).

  view_fn(v) -> (hidden_BxC bool, aux) for a traced int v; fold(carry, aux, logp_BxC) ->
  carry. One forward pass per view (logprobs.view_logps), in a lax.scan whose forward is
  rematerialised (jax.checkpoint): the backward pass recomputes each view's activations
  instead of storing all of them.
  """
  prompt_BxP, completion_BxC = batch["prompt"], batch["completion"]
  logprobs.check_rows(prompt_BxP, completion_BxC, p_mask_prompt=p_mask_prompt)
  prompt_valid_BxP = batch.get("prompt_valid")
  noisy_prompt_BxP, _ = logprobs.mask_prompt(key, prompt_BxP, p_mask_prompt=p_mask_prompt,
                                             mask_id=mask_id, prompt_valid_BxP=prompt_valid_BxP)

  def view_logp(hidden_BxC):
    return logprobs.view_logps(params, apply_fn, noisy_prompt_BxP, completion_BxC, hidden_BxC,
                               mask_id=mask_id, prompt_valid_BxP=prompt_valid_BxP)

  if num_views == 1:
    hidden_BxC, aux = view_fn(jnp.int32(0))
    return fold(init, aux, view_logp(hidden_BxC))
  remat_view_logp = jax.checkpoint(view_logp)

  def add_view(carry, v):
    hidden_BxC, aux = view_fn(v)
    return fold(carry, aux, remat_view_logp(hidden_BxC)), None

  carry, _ = jax.lax.scan(add_view, init, jnp.arange(num_views, dtype=jnp.int32))
  return carry


def _sum_over_views(params, apply_fn, batch, key, view_fn, num_views: int, **kw):
  """sum_v coeff_v,BxC * log p(o | q', o with hidden_v,BxC masked), v < num_views, for
  view_fn(v) -> (hidden_BxC, coeff_BxC) (`_fold_views`)."""
  add = lambda total_BxC, coeff_BxC, logp_BxC: total_BxC + coeff_BxC * logp_BxC
  return _fold_views(params, apply_fn, batch, key, view_fn, num_views,
                     jnp.zeros(batch["completion"].shape, jnp.float32), add, **kw)


def trajectory(params, apply_fn, batch, key, *, p_mask_prompt: float, mask_id: int,
               eos_id: int, num_passes: int, group: int = 1):
  """TraceRL's trajectory log-probability (module docstring), groups of `group` passes.

  batch["commit_step"] int [B, C]: the sampler pass that committed each completion token
  (`sampling.generate(..., return_stats=True)[1]["commit_step_BxG"]`), in [0, num_passes).
  num_passes: the sampler's passes, `steps` (decoding="plain") or at most gen_length
  (decoding="threshold"); `group` must divide it. Tokens whose commit step lies outside
  [0, num_passes) are never scored (weight 0) and stay masked.
  """
  if "commit_step" not in batch:
    raise ValueError("estimator 'trajectory' needs batch['commit_step'], int [B, C]: the "
                     "forward pass that committed each completion token (the rollout keeps "
                     "sampling.generate(..., return_stats=True)[1]['commit_step_BxG']).")
  if batch["commit_step"].shape != batch["completion"].shape:
    raise ValueError(f"batch['commit_step'] has shape {tuple(batch['commit_step'].shape)}, "
                     f"batch['completion'] {tuple(batch['completion'].shape)}.")
  _check_group(group, num_passes)
  commit_BxC = batch["commit_step"].astype(jnp.int32)
  committed_BxC = (commit_BxC >= 0) & (commit_BxC < num_passes)

  def view(g):  # The state before pass g * s; score the tokens of passes [g s, (g + 1) s).
    start = g * group
    hidden_BxC = ~committed_BxC | (commit_BxC >= start)
    scored_BxC = committed_BxC & (commit_BxC >= start) & (commit_BxC < start + group)
    return hidden_BxC, scored_BxC.astype(jnp.float32)

  logp_BxC = _sum_over_views(params, apply_fn, batch, key, view, num_passes // group,
                             p_mask_prompt=p_mask_prompt, mask_id=mask_id)
  weight_BxC = logprobs.completion_mask(batch["completion"], eos_id=eos_id) & committed_BxC
  return jnp.where(weight_BxC, logp_BxC, 0.0), weight_BxC


def elbo_masks(key, weight_BxC, *, num_samples: int):
  """(masked_SxBxC, coeff_SxB): the `num_samples` masks of `elbo` and their weights n / |M|.

  Masks 2j and 2j + 1 form pair j (module docstring): m ~ U{1..n_b}, M uniform of size m
  among the scored tokens (weight_BxC), its partner the other n - m (all n when m = n).
  """
  _check_samples(num_samples)
  pairs = num_samples // 2
  B, C = weight_BxC.shape
  n_B = jnp.maximum(weight_BxC.sum(1), 1)
  # One flat draw (XLA compiles 1-D draws faster on CPU): a size and a position order each.
  u_KxBx1C = jax.random.uniform(key, (pairs * B * (C + 1),)).reshape(pairs, B, C + 1)
  m_KxB = jnp.minimum(jnp.floor(u_KxBx1C[..., 0] * n_B).astype(jnp.int32) + 1, n_B)
  # Rank the scored positions in a random order (unscored last); M = the first m.
  order_KxBxC = jnp.where(weight_BxC, u_KxBx1C[..., 1:], 2.0)
  rank_KxBxC = jnp.argsort(jnp.argsort(order_KxBxC, axis=-1), axis=-1)
  first_KxBxC = rank_KxBxC < m_KxB[..., None]
  everything_KxB = m_KxB == n_B
  second_KxBxC = weight_BxC & (~first_KxBxC | everything_KxB[..., None])
  masked_SxBxC = jnp.stack([first_KxBxC, second_KxBxC], axis=1).reshape(num_samples, B, C)
  size_SxB = jnp.maximum(masked_SxBxC.sum(-1), 1)
  return masked_SxBxC, n_B / size_SxB


def elbo(params, apply_fn, batch, key, *, p_mask_prompt: float, mask_id: int, eos_id: int,
         num_samples: int = 2):
  """The complementary-pair Monte-Carlo ELBO of the scored completion (module docstring),
  spread evenly over its tokens: logp_BxC = ELBO_b / n_b where scored.

  The prompt mask comes from `key` (as in every estimator), the completion masks from
  fold_in(key, 1) (`elbo_masks`).
  """
  weight_BxC = logprobs.completion_mask(batch["completion"], eos_id=eos_id)
  masked_SxBxC, coeff_SxB = elbo_masks(jax.random.fold_in(key, 1), weight_BxC,
                                       num_samples=num_samples)

  def view(v):  # Hide the view's mask and the unscored tail; average the weighted sums.
    masked_BxC = masked_SxBxC[v]
    coeff_BxC = jnp.where(masked_BxC, coeff_SxB[v][:, None] / num_samples, 0.0)
    return masked_BxC | ~weight_BxC, coeff_BxC

  total_BxC = _sum_over_views(params, apply_fn, batch, key, view, num_samples,
                              p_mask_prompt=p_mask_prompt, mask_id=mask_id)
  n_Bx1 = jnp.maximum(weight_BxC.sum(1, keepdims=True), 1)
  elbo_Bx1 = total_BxC.sum(1, keepdims=True)
  return jnp.where(weight_BxC, elbo_Bx1 / n_Bx1, 0.0), weight_BxC


def spg(params, apply_fn, batch, key, *, p_mask_prompt: float, mask_id: int, eos_id: int,
        num_samples: int = 2, beta: float = 1.5, mix: float = 0.5):
  """SPG (Wang et al. 2025): `elbo` for rows with advantage > 0; for the others (whose
  likelihood the update pushes down) an upper-bound estimate, mixed with the ELBO:
  mix * EUBO_beta + (1 - mix) * ELBO (module docstring), spread evenly over the scored tokens
  like `elbo`. batch["advantages"] [B] picks the side. The masks are `elbo`'s (same key), so
  rows with A > 0 get `elbo`'s value exactly.
  """
  if "advantages" not in batch:
    raise ValueError("estimator 'spg' needs batch['advantages'], float [B]: rows with A > 0 "
                     "are scored by the ELBO, the others by the upper bound.")
  _check_spg(beta, mix)
  weight_BxC = logprobs.completion_mask(batch["completion"], eos_id=eos_id)
  masked_SxBxC, coeff_SxB = elbo_masks(jax.random.fold_in(key, 1), weight_BxC,
                                       num_samples=num_samples)

  def view(v):  # As in `elbo`; the fold also needs the mask and its weight n / |M| = 1 / t.
    masked_BxC = masked_SxBxC[v]
    return masked_BxC | ~weight_BxC, (masked_BxC, coeff_SxB[v][:, None])

  def fold(carry, aux, logp_BxC):
    total_BxC, log_sum_BxC = carry
    masked_BxC, coeff_Bx1 = aux
    total_BxC += jnp.where(masked_BxC, coeff_Bx1 / num_samples, 0.0) * logp_BxC
    # log sum_v (1 / t_v) 1[k in M_v] p_v,k^beta, in log space (never masked: _NEVER).
    term_BxC = jnp.where(masked_BxC, jnp.log(coeff_Bx1) + beta * logp_BxC, _NEVER)
    return total_BxC, jnp.logaddexp(log_sum_BxC, term_BxC)

  shape = batch["completion"].shape
  init = (jnp.zeros(shape, jnp.float32), jnp.full(shape, _NEVER, jnp.float32))
  total_BxC, log_sum_BxC = _fold_views(params, apply_fn, batch, key, view, num_samples, init,
                                       fold, p_mask_prompt=p_mask_prompt, mask_id=mask_id)
  elbo_B = total_BxC.sum(1)
  eubo_B = jnp.where(weight_BxC, log_sum_BxC - math.log(num_samples), 0.0).sum(1) / beta
  estimate_B = jnp.where(batch["advantages"] > 0, elbo_B, mix * eubo_B + (1.0 - mix) * elbo_B)
  n_B = jnp.maximum(weight_BxC.sum(1), 1)
  return jnp.where(weight_BxC, (estimate_B / n_B)[:, None], 0.0), weight_BxC


_NEVER = -1e30  # log 0 for a token no mask hid (logaddexp keeps finite gradients with it).


# ---- Configuration ------------------------------------------------------------------------


def _check_group(group, num_passes) -> None:
  if not isinstance(group, numbers.Integral) or group < 1 or num_passes % group:
    raise ValueError(f"config.rl.trajectory_group={group!r} must be an int >= 1 that divides "
                     f"the sampler's number of forward passes, {num_passes} (allowed: "
                     f"{[s for s in range(1, num_passes + 1) if num_passes % s == 0]}).")


def _check_samples(num_samples) -> None:
  if not isinstance(num_samples, numbers.Integral) or num_samples < 2 or num_samples % 2:
    raise ValueError(f"config.rl.elbo_samples={num_samples!r} must be a positive even int "
                     "(2, 4, 6, ...): the masks come in complementary pairs.")


def _check_spg(beta, mix) -> None:
  if not isinstance(beta, numbers.Real) or not beta >= 1:
    raise ValueError(f"config.rl.spg_beta={beta!r} must be a number >= 1 (the Renyi order of "
                     "SPG's upper bound).")
  if not isinstance(mix, numbers.Real) or not 0 <= mix <= 1:
    raise ValueError(f"config.rl.spg_mix={mix!r} must be in [0, 1] (the upper bound's share "
                     "for rows with advantage <= 0; 0 is `elbo`).")


def _setting(rl_config, name):
  return rl_config.get(name, DEFAULTS[name])


def sampler_passes(rl_config) -> int:
  """The most forward passes of the rollout sampler: `steps` for decoding="plain", else
  gen_length (threshold decoding commits at least one token per pass)."""
  if rl_config["decoding"] == "plain":
    return int(rl_config["steps"])
  return int(rl_config["gen_length"])


def validate_config(rl_config) -> None:
  """Raises ValueError naming the config.rl field (estimator, trajectory_group,
  elbo_samples, spg_beta, spg_mix) and its allowed values. Missing fields take DEFAULTS."""
  name = _setting(rl_config, "estimator")
  if name not in ESTIMATORS:
    raise ValueError(f"config.rl.estimator={name!r} is not one of {ESTIMATORS}.")
  _check_group(_setting(rl_config, "trajectory_group"), sampler_passes(rl_config))
  _check_samples(_setting(rl_config, "elbo_samples"))
  _check_spg(_setting(rl_config, "spg_beta"), _setting(rl_config, "spg_mix"))


def from_config(rl_config) -> Callable:
  """The estimator config.rl selects, its settings bound (validated first)."""
  validate_config(rl_config)
  name = _setting(rl_config, "estimator")
  if name == "trajectory":
    return functools.partial(trajectory, num_passes=sampler_passes(rl_config),
                             group=_setting(rl_config, "trajectory_group"))
  if name == "elbo":
    return functools.partial(elbo, num_samples=_setting(rl_config, "elbo_samples"))
  if name == "spg":
    return functools.partial(spg, num_samples=_setting(rl_config, "elbo_samples"),
                             beta=_setting(rl_config, "spg_beta"),
                             mix=_setting(rl_config, "spg_mix"))
  return mean_field
