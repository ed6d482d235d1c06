"""Likelihood estimators for diffu-GRPO (rl/estimators.py), proven on tiny enumerable models.

trajectory: equals the sampler's own probability of its choices, replayed from the logits of
every forward pass it made; a distribution over completions for a fixed commit order; one
pass (or one group of all passes) is mean_field. elbo: unbiased for the enumerated ELBO,
which bounds the enumerated exact log-likelihood (tightly for context-free predictions);
complementary pairs. spg: elbo for positive advantages; its upper bound holds for the
conditionals of one joint (not for every network) and the estimate converges to it.
All: sharded == single device, grpo_loss's policy gradient, errors.
"""
import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P_
from scipy import special

from diffusionlm.diffusion import sampling
from diffusionlm.rl import estimators, grpo, logprobs
import toy_models

V = 4  # Real vocabulary; the mask id is V.
MASK = V
NO_EOS = -1  # An eos_id no token equals: every completion token is scored.
P, C = 3, 4  # Prompt and completion length.


@pytest.fixture(scope="module")
def params():
  """Scaled so that predictions are far from certain (every completion has a real share)."""
  params = toy_models.mixing_params(V, P + C, seed=3)
  return {**params, "out": 0.3 * params["out"]}


def _prompts(rows, seed=0):
  """Prompts, some left-padded (padding marked invalid)."""
  rng = np.random.default_rng(seed)
  prompt_BxP = rng.integers(0, V, (rows, P)).astype(np.int32)
  valid_BxP = np.arange(P)[None] >= rng.integers(0, 2, rows)[:, None]
  return jnp.asarray(np.where(valid_BxP, prompt_BxP, 0)), jnp.asarray(valid_BxP)


def _assert_close(actual, expected, rel=1e-5):
  """Tolerance scaled to the magnitude compared: atol = rel * max|expected|."""
  expected = np.asarray(expected, np.float64)
  atol = rel * max(float(np.abs(expected).max()), 1e-30)
  np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=0, atol=atol)


def _estimate(params, batch, key, estimator, apply_fn=toy_models.mixing_apply_fn, **kw):
  kw = {"p_mask_prompt": 0.0, "mask_id": MASK, "eos_id": NO_EOS} | kw
  return jax.jit(lambda p, b, k: estimator(p, apply_fn, b, k, **kw))(params, batch, key)


# ---- trajectory ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rollout(params):
  """rollout(rows, steps=, block_length=, decoding=) -> _rollout's result, each run once."""
  cache = {}

  def run(rows, **settings):
    key = (rows, tuple(sorted(settings.items())))
    if key not in cache:
      cache[key] = _rollout(params, rows, **settings)
    return cache[key]

  return run


def _rollout(params, rows, *, steps, block_length, decoding="plain", seed=0):
  """A temperature-1 rollout with random remasking, and the logits of every pass it made.
  (Threshold decoding then commits each token whose uniform score exceeds 0.5.)"""
  apply_fn, calls = toy_models.recording(toy_models.mixing_apply_fn)
  prompt_BxP, valid_BxP = _prompts(rows, seed)
  tokens_BxL, stats = sampling.generate(
      params, apply_fn, prompt_BxP, jax.random.key(seed), gen_length=C,
      block_length=block_length, steps=steps, mask_id=MASK, temperature=1.0,
      remasking="random", decoding=decoding, threshold=0.5, prompt_valid_BxP=valid_BxP,
      return_stats=True)
  jax.effects_barrier()
  batch = {"prompt": prompt_BxP, "prompt_valid": valid_BxP, "completion": tokens_BxL[:, P:],
           "commit_step": stats["commit_step_BxG"]}
  logits_TxBxLxV = np.stack([logits for _, logits in calls])
  assert len(calls) == int(stats["forward_passes"])
  return batch, logits_TxBxLxV


def _replayed_logp(batch, logits_TxBxLxV, group):
  """sum_k log softmax(logits of pass s floor(c_k / s))[P + k, o_k]: the sampler's own
  probability of its choices (s = 1), or TraceRL's shrunk one, from the recorded passes."""
  logp_TxBxLxV = special.log_softmax(np.asarray(logits_TxBxLxV, np.float64), axis=-1)
  commit_BxC, completion_BxC = np.asarray(batch["commit_step"]), np.asarray(batch["completion"])
  B = commit_BxC.shape[0]
  total_B = np.zeros(B)
  for b, k in itertools.product(range(B), range(C)):
    t = group * (commit_BxC[b, k] // group)
    total_B[b] += logp_TxBxLxV[t, b, P + k, completion_BxC[b, k]]
  return total_B


@pytest.mark.parametrize("decoding", ["plain", "threshold"])
def test_trajectory_is_the_samplers_probability_of_its_choices(params, rollout, decoding):
  """s = 1: the exact log-probability that the sampler (temperature 1, random remasking)
  commits these tokens given the order, replayed from the logits of its own passes; groups
  of s passes score each token at the state before its group (TraceRL), s = all passes is
  the fully masked mean field. Two blocks of 2 tokens; threshold decoding takes 2-4 passes."""
  steps = 4
  batch, logits_TxBxLxV = rollout(16, steps=steps, block_length=2, decoding=decoding)
  num_passes = estimators.sampler_passes(
      {"decoding": decoding, "steps": steps, "gen_length": C})
  exact_B = _replayed_logp(batch, logits_TxBxLxV, 1)
  key = jax.random.key(1)
  logp = {}
  for group in (1, 2, 4):
    logp_BxC, weight_BxC = _estimate(params, batch, key, functools.partial(
        estimators.trajectory, num_passes=num_passes, group=group))
    assert np.asarray(weight_BxC).all()
    logp[group] = np.asarray(logp_BxC).sum(1)
    _assert_close(logp[group], _replayed_logp(batch, logits_TxBxLxV, group))
  _assert_close(logp[1], exact_B)
  assert np.abs(logp[2] - logp[1]).max() > 0.05  # Grouping really changes the states.
  mean_field_BxC, _ = _estimate(params, batch, key, estimators.mean_field)
  _assert_close(logp[4], np.asarray(mean_field_BxC).sum(1))
  if decoding == "threshold":  # Rows took different numbers of passes.
    assert len(set(np.asarray(batch["commit_step"]).max(1))) > 1


def test_trajectory_is_a_distribution_over_completions_for_a_fixed_order(params):
  """For each commit order, sum over all V^C completions of exp(trajectory logp) = 1."""
  orders = np.array([[0, 1, 2, 3], [3, 2, 1, 0], [1, 0, 3, 2], [0, 0, 1, 1], [2, 0, 2, 0]])
  completions = np.array(list(itertools.product(range(V), repeat=C)), np.int32)
  prompt_BxP, valid_BxP = _prompts(len(orders), seed=4)
  rep = lambda x: jnp.repeat(jnp.asarray(x), len(completions), axis=0)
  batch = {"prompt": rep(prompt_BxP), "prompt_valid": rep(valid_BxP),
           "completion": jnp.tile(completions, (len(orders), 1)),
           "commit_step": rep(orders.astype(np.int32))}
  logp_BxC, _ = _estimate(params, batch, jax.random.key(0), functools.partial(
      estimators.trajectory, num_passes=4))  # Clean prompts: one prompt per order.
  prob_O = np.exp(np.asarray(logp_BxC, np.float64).sum(1)).reshape(len(orders), -1).sum(1)
  np.testing.assert_allclose(prob_O, 1.0, rtol=1e-5)


@pytest.mark.parametrize("p_mask_prompt", [0.0, 0.5])
def test_one_step_rollouts_trajectory_equals_mean_field(params, rollout, p_mask_prompt):
  """steps = 1: every token is committed at the first pass, from the fully masked state."""
  batch, logits_TxBxLxV = rollout(8, steps=1, block_length=C)
  np.testing.assert_array_equal(batch["commit_step"], 0)
  key = jax.random.key(2)
  traj_BxC, traj_weight = _estimate(params, batch, key, functools.partial(
      estimators.trajectory, num_passes=1), p_mask_prompt=p_mask_prompt)
  mf_BxC, mf_weight = _estimate(params, batch, key, estimators.mean_field,
                                p_mask_prompt=p_mask_prompt)
  np.testing.assert_array_equal(traj_weight, mf_weight)
  _assert_close(traj_BxC, mf_BxC)
  if p_mask_prompt == 0:
    _assert_close(np.asarray(traj_BxC).sum(1), _replayed_logp(batch, logits_TxBxLxV, 1))


def test_trajectory_scores_post_eos_tokens_as_context_only(params, rollout):
  """Tokens after the first EOS carry no weight but were part of the sampler's state."""
  batch, _ = rollout(16, steps=4, block_length=2, decoding="plain")
  completion = np.asarray(batch["completion"]).copy()
  eos = int(completion[0, 1])
  estimator = functools.partial(estimators.trajectory, num_passes=4)
  logp_BxC, weight_BxC = _estimate(params, batch, jax.random.key(0), estimator, eos_id=eos)
  np.testing.assert_array_equal(weight_BxC, logprobs.completion_mask(completion, eos_id=eos))
  no_eos_BxC, _ = _estimate(params, batch, jax.random.key(0), estimator)
  weight = np.asarray(weight_BxC)
  _assert_close(np.asarray(logp_BxC)[weight], np.asarray(no_eos_BxC)[weight])
  assert np.all(np.asarray(logp_BxC)[~weight] == 0) and not weight.all()


# ---- elbo ---------------------------------------------------------------------------------

E_P, E_C, E_V = 2, 3, 3  # ELBO enumeration: 2-token prompts, 3-token completions, 3 ids.
E_COMPLETIONS = np.array(list(itertools.product(range(E_V), repeat=E_C)), np.int32)
E_SUBSETS = [s for l in range(E_C + 1) for s in itertools.combinations(range(E_C), l)]
E_PROMPTS = np.array([[0, 2], [1, 1]], np.int32)


def context_free_apply(logits_LxV, tokens_BxL, **unused):
  return jnp.broadcast_to(logits_LxV, tokens_BxL.shape + logits_LxV.shape[-1:])


def _enumerate(params, apply_fn):
  """Exact quantities for every (prompt, completion) pair, as in test_losses.py:
  log p(o | q) = log mean over the C! unmasking orders of prod_k p(o_k | q, revealed, masks),
  elbo = sum_{l=1..C} (1/l) E_{|M| = l}[sum_{k in M} log p(o_k | q, o with M masked)]."""
  pairs = [(q, o) for q in E_PROMPTS for o in E_COMPLETIONS]
  noisy = np.array([np.concatenate([q, np.where(np.isin(np.arange(E_C), s), E_V, o)])
                    for q, o in pairs for s in E_SUBSETS], np.int32)
  logits = jax.jit(apply_fn)(params, jnp.asarray(noisy))
  logp_all = np.asarray(jax.nn.log_softmax(logits), np.float64).reshape(
      len(pairs), len(E_SUBSETS), E_P + E_C, E_V)[:, :, E_P:]
  targets = np.array([o for _, o in pairs])
  logp_NxSxC = np.take_along_axis(logp_all, targets[:, None, :, None], axis=-1)[..., 0]
  index = {frozenset(s): j for j, s in enumerate(E_SUBSETS)}
  orders = list(itertools.permutations(range(E_C)))
  order_logp_NxO = np.array([[sum(logp_NxSxC[n, index[frozenset(o[k:])], o[k]]
                                  for k in range(E_C)) for o in orders]
                             for n in range(len(pairs))])
  exact_N = special.logsumexp(order_logp_NxO, axis=1) - math.log(len(orders))
  elbo_N = sum(logp_NxSxC[:, j, list(s)].sum(1) / (len(s) * special.comb(E_C, len(s)))
               for j, s in enumerate(E_SUBSETS) if s)
  return exact_N, elbo_N


def _elbo_draws(params, apply_fn, copies, num_samples):
  """The elbo estimator's sequence estimate for `copies` independent draws of every pair."""
  N = len(E_PROMPTS) * len(E_COMPLETIONS)
  batch = {"prompt": jnp.asarray(np.tile(np.repeat(E_PROMPTS, len(E_COMPLETIONS), 0),
                                         (copies, 1))),
           "completion": jnp.asarray(np.tile(E_COMPLETIONS, (copies * len(E_PROMPTS), 1)))}
  logp_BxC, _ = _estimate(params, batch, jax.random.key(5), functools.partial(
      estimators.elbo, num_samples=num_samples), apply_fn=apply_fn, mask_id=E_V)
  return np.asarray(logp_BxC, np.float64).sum(1).reshape(copies, N)


def _assert_unbiased(samples_KxN, expected_N):
  """|mean - expected| < 4 standard errors of the Monte-Carlo mean, and the SE is small."""
  mean_N = samples_KxN.mean(0)
  se_N = samples_KxN.std(0, ddof=1) / math.sqrt(len(samples_KxN))
  assert np.all(np.abs(mean_N - expected_N) < 4 * se_N + 1e-6), (mean_N - expected_N, se_N)
  assert np.all(se_N < 0.02 * np.abs(expected_N).max()), se_N  # Enough draws to matter.
  return se_N


def test_elbo_is_unbiased_for_a_lower_bound_of_the_exact_log_likelihood():
  """E[elbo] = the enumerated ELBO <= the enumerated log p(o | q), with a real gap for a
  network whose predictions depend on the context."""
  params = toy_models.mixing_params(E_V, E_P + E_C, seed=6)
  exact_N, elbo_N = _enumerate(params, toy_models.mixing_apply_fn)
  prob_Q = np.exp(exact_N).reshape(len(E_PROMPTS), -1).sum(1)
  np.testing.assert_allclose(prob_Q, 1.0, rtol=1e-5)  # p(. | q) is a distribution.
  assert np.all(elbo_N <= exact_N + 1e-9)
  assert np.max(exact_N - elbo_N) > 0.05  # The bound is strict somewhere.
  draws_KxN = _elbo_draws(params, toy_models.mixing_apply_fn, 256, num_samples=4)
  se_N = _assert_unbiased(draws_KxN, elbo_N)
  gap_N = exact_N - draws_KxN.mean(0)
  assert np.all(gap_N > -4 * se_N) and np.any(gap_N > 8 * se_N)


def test_elbo_is_unbiased_for_the_exact_log_likelihood_of_context_free_predictions():
  logits_LxV = jnp.asarray(2.0 * np.random.default_rng(7).normal(size=(E_P + E_C, E_V)),
                           jnp.float32)
  exact_N, elbo_N = _enumerate(logits_LxV, context_free_apply)
  np.testing.assert_allclose(elbo_N, exact_N, rtol=1e-9)
  _assert_unbiased(_elbo_draws(logits_LxV, context_free_apply, 256, num_samples=2), exact_N)


def test_elbo_masks_come_in_complementary_pairs():
  """Each scored token is masked in exactly one mask of a pair (both when m = n); sizes are
  uniform on 1..n; the weight is n / |M|; unscored tokens are never masked."""
  rows, num_samples = 4000, 6
  n_B = np.arange(rows) % C + 1
  weight_BxC = np.arange(C)[None] < n_B[:, None]
  masked_SxBxC, coeff_SxB = jax.jit(functools.partial(
      estimators.elbo_masks, num_samples=num_samples))(jax.random.key(8), weight_BxC)
  masked_SxBxC, coeff_SxB = np.asarray(masked_SxBxC), np.asarray(coeff_SxB)
  size_SxB = masked_SxBxC.sum(-1)
  assert not (masked_SxBxC & ~weight_BxC).any()
  assert (size_SxB >= 1).all()
  np.testing.assert_allclose(coeff_SxB, n_B / size_SxB, rtol=1e-6)
  first, second = masked_SxBxC[0::2], masked_SxBxC[1::2]
  full_KxB = size_SxB[0::2] == n_B
  np.testing.assert_array_equal((first ^ second)[~full_KxB], np.broadcast_to(
      weight_BxC, first.shape)[~full_KxB])
  np.testing.assert_array_equal(second[full_KxB], np.broadcast_to(weight_BxC,
                                                                   first.shape)[full_KxB])
  for n in range(1, C + 1):  # Each mask's size is uniform on 1..n (4 standard errors).
    sizes = size_SxB[:, n_B == n].ravel()
    freq = np.bincount(sizes, minlength=n + 1)[1:] / len(sizes)
    assert np.all(np.abs(freq - 1 / n) < 4 * np.sqrt((1 / n) * (1 - 1 / n) / len(sizes)) + 1e-9)
  position_rate = masked_SxBxC[:, n_B == C].mean((0, 1))  # Positions uniform: (n+1)/2n.
  np.testing.assert_allclose(position_rate, (C + 1) / (2 * C), atol=0.02)


def test_elbo_views_hide_the_mask_and_the_tail_and_ignore_the_tail(params):
  """What the network sees: the prompt view, the completion with the pair's mask and
  everything after the first EOS masked; so changing post-EOS tokens changes nothing."""
  seen = []

  def spy(p, tokens_BxL, **kw):
    jax.debug.callback(lambda t: seen.append(np.asarray(t)), tokens_BxL, ordered=True)
    return toy_models.mixing_apply_fn(p, tokens_BxL, **kw)

  eos = 1
  completion = np.array([[0, 1, 2, 3], [2, 3, 0, 1], [2, 2, 3, 0], [1, 0, 0, 0]], np.int32)
  prompt_BxP, valid_BxP = _prompts(4, seed=9)
  batch = {"prompt": prompt_BxP, "prompt_valid": valid_BxP, "completion": completion}
  estimator = functools.partial(estimators.elbo, num_samples=2)
  key = jax.random.key(10)
  logp_BxC, weight_BxC = _estimate(params, batch, key, estimator, apply_fn=spy, eos_id=eos)
  jax.effects_barrier()
  weight = np.asarray(logprobs.completion_mask(completion, eos_id=eos))
  np.testing.assert_array_equal(weight_BxC, weight)
  masked_SxBxC, coeff_SxB = estimators.elbo_masks(jax.random.fold_in(key, 1), weight,
                                                  num_samples=2)
  assert len(seen) == 2
  for view, masked_BxC in zip(seen, np.asarray(masked_SxBxC)):
    np.testing.assert_array_equal(view[:, :P], prompt_BxP)  # p_mask_prompt = 0.
    np.testing.assert_array_equal(view[:, P:] == MASK, masked_BxC | ~weight)
  # The per-token value is ELBO / n on scored tokens, 0 elsewhere.
  logp = np.asarray(logp_BxC)
  assert np.all(logp[~weight] == 0)
  for b in range(4):
    np.testing.assert_allclose(logp[b][weight[b]], logp[b][weight[b]][0])
  changed = {**batch, "completion": np.where(weight, completion, (completion + 1) % V)}
  other_BxC, _ = _estimate(params, changed, key, estimator, eos_id=eos)
  np.testing.assert_array_equal(other_BxC, logp_BxC)


# ---- spg ----------------------------------------------------------------------------------


def _spg_exact(params, apply_fn, beta):
  """(log p(o | q), EUBO_beta) for every enumerated pair: EUBO_beta = (1 / beta) sum_k log
  sum_{S contains k} (|S| - 1)! (n - |S|)! / n! p(o_k | q, o with S masked)^beta, the
  expectation over t ~ U(0, 1) and M ~ Bernoulli(t)^n of (1 / t) 1[k in M] p^beta."""
  exact_N, _ = _enumerate(params, apply_fn)
  pairs = [(q, o) for q in E_PROMPTS for o in E_COMPLETIONS]
  noisy = np.array([np.concatenate([q, np.where(np.isin(np.arange(E_C), s), E_V, o)])
                    for q, o in pairs for s in E_SUBSETS], np.int32)
  logp = np.asarray(jax.nn.log_softmax(jax.jit(apply_fn)(params, jnp.asarray(noisy))),
                    np.float64).reshape(len(pairs), len(E_SUBSETS), E_P + E_C, E_V)[:, :, E_P:]
  targets = np.array([o for _, o in pairs])
  logp_NxSxC = np.take_along_axis(logp, targets[:, None, :, None], axis=-1)[..., 0]
  eubo_N = np.zeros(len(pairs))
  for k in range(E_C):
    inner_N = sum(math.factorial(len(s) - 1) * math.factorial(E_C - len(s)) / math.factorial(E_C)
                  * np.exp(beta * logp_NxSxC[:, j, k])
                  for j, s in enumerate(E_SUBSETS) if k in s)
    eubo_N += np.log(inner_N) / beta
  return exact_N, eubo_N


def joint_apply(joint_QxX, tokens_BxL, **unused):
  """Conditionals of one joint distribution per prompt (its first token picks the row of
  joint_QxX over E_COMPLETIONS): logit of v at completion position k = log of the mass of
  the completions that agree with every unmasked completion token and have v at k."""
  completion_BxC = tokens_BxL[:, E_P:]
  agree_BxX = jnp.all((completion_BxC[:, None, :] == E_V)
                      | (completion_BxC[:, None, :] == E_COMPLETIONS[None]), axis=-1)
  mass_BxX = agree_BxX * joint_QxX[tokens_BxL[:, 0]]
  onehot_XxCxV = jax.nn.one_hot(E_COMPLETIONS, E_V)
  completion_logits = jnp.log(jnp.einsum("bx,xcv->bcv", mass_BxX, onehot_XxCxV))
  prompt_logits = jnp.zeros(tokens_BxL.shape[:1] + (E_P, E_V))
  return jnp.concatenate([prompt_logits, completion_logits], axis=1)


def _spg_draws(params, apply_fn, copies, *, num_samples, beta, mix, advantage=-1.0):
  N = len(E_PROMPTS) * len(E_COMPLETIONS)
  batch = {"prompt": jnp.asarray(np.tile(np.repeat(E_PROMPTS, len(E_COMPLETIONS), 0),
                                         (copies, 1))),
           "completion": jnp.asarray(np.tile(E_COMPLETIONS, (copies * len(E_PROMPTS), 1))),
           "advantages": jnp.full((copies * N,), advantage, jnp.float32)}
  estimator = functools.partial(estimators.spg, num_samples=num_samples, beta=beta, mix=mix)
  logp_BxC, _ = _estimate(params, batch, jax.random.key(15), estimator, apply_fn=apply_fn,
                          mask_id=E_V)
  return np.asarray(logp_BxC, np.float64).sum(1).reshape(copies, N)


def test_spg_upper_bound_holds_for_one_joint_and_the_estimate_converges_to_it():
  """For a network whose conditionals are one joint distribution's: log p(o | q) <=
  EUBO_1 <= EUBO_2 (enumerated), strictly somewhere; the estimate (log of a Monte-Carlo
  mean) is biased low and approaches EUBO_beta as the masks grow from 2 to 32."""
  joint_QxX = jnp.asarray(np.random.default_rng(16).dirichlet(
      np.full(len(E_COMPLETIONS), 0.3), size=2), jnp.float32)
  exact_N, eubo1_N = _spg_exact(joint_QxX, joint_apply, beta=1.0)
  _, eubo2_N = _spg_exact(joint_QxX, joint_apply, beta=2.0)
  # The any-order likelihood is the joint (prompt rows 0, 1 are E_PROMPTS' first tokens).
  np.testing.assert_allclose(np.exp(exact_N), np.asarray(joint_QxX).reshape(-1), rtol=1e-4)
  assert np.all(exact_N <= eubo1_N + 1e-6) and np.all(eubo1_N <= eubo2_N + 1e-6)
  assert np.max(eubo1_N - exact_N) > 0.05
  errors = []
  for num_samples in (2, 32):
    draws_KxN = _spg_draws(joint_QxX, joint_apply, 64, num_samples=num_samples, beta=2.0,
                           mix=1.0)
    se_N = draws_KxN.std(0, ddof=1) / math.sqrt(len(draws_KxN))
    assert np.all(draws_KxN.mean(0) <= eubo2_N + 4 * se_N + 1e-6)  # Jensen: biased low.
    errors.append(np.abs(draws_KxN.mean(0) - eubo2_N).mean())
  assert errors[1] < 0.25 * errors[0], errors


def test_spg_bound_is_tight_for_context_free_predictions_and_not_a_bound_in_general():
  """Context-free predictions: EUBO_beta = log p(o | q) for every beta. A network whose
  conditionals are no joint's (the mixing network): EUBO_1 falls below log p(o | q)
  somewhere, which is why the docs say "upper" only for consistent conditionals."""
  logits_LxV = jnp.asarray(2.0 * np.random.default_rng(7).normal(size=(E_P + E_C, E_V)),
                           jnp.float32)
  for beta in (1.0, 1.5, 3.0):
    exact_N, eubo_N = _spg_exact(logits_LxV, context_free_apply, beta)
    np.testing.assert_allclose(eubo_N, exact_N, rtol=1e-6)
  params = toy_models.mixing_params(E_V, E_P + E_C, seed=6)
  exact_N, eubo_N = _spg_exact(params, toy_models.mixing_apply_fn, beta=1.0)
  assert np.min(eubo_N - exact_N) < -0.01


def test_spg_is_elbo_for_positive_advantages_and_mixes_the_upper_bound_for_the_others(params):
  """Same key: rows with A > 0 (and every row with mix 0) get elbo's value; rows with
  A <= 0 get mix * EUBO + (1 - mix) * ELBO, linear in mix; spread evenly over the scored
  tokens, 0 after the first EOS."""
  batch = _grpo_batch(8)
  batch["advantages"] = jnp.asarray([1.0, -1.0, 0.0, 2.0, -0.5, 0.3, -2.0, 0.0])
  key, kw = jax.random.key(17), dict(eos_id=2, p_mask_prompt=0.3)
  elbo_BxC, weight_BxC = _estimate(params, batch, key, functools.partial(
      estimators.elbo, num_samples=4), **kw)
  spg = lambda mix: _estimate(params, batch, key, functools.partial(
      estimators.spg, num_samples=4, beta=1.5, mix=mix), **kw)
  positive = np.asarray(batch["advantages"]) > 0
  half_BxC, spg_weight_BxC = spg(0.5)
  np.testing.assert_array_equal(spg_weight_BxC, weight_BxC)
  _assert_close(np.asarray(half_BxC)[positive], np.asarray(elbo_BxC)[positive], rel=1e-6)
  _assert_close(spg(0.0)[0], elbo_BxC, rel=1e-6)
  upper_BxC = np.asarray(spg(1.0)[0])
  _assert_close(half_BxC, 0.5 * upper_BxC + 0.5 * np.where(positive[:, None], upper_BxC,
                                                             elbo_BxC), rel=1e-5)
  # The bound differs from the ELBO (not for a one-token completion: both are log p there).
  assert np.sum(np.abs(upper_BxC - elbo_BxC)[~positive].max(1) > 0.1) >= 2
  weight = np.asarray(weight_BxC)
  assert np.all(upper_BxC[~weight] == 0) and not weight.all()


# ---- All estimators: grpo_loss, sharding, configuration ----------------------------------

ESTIMATORS = {
    "mean_field": estimators.mean_field,
    "trajectory": functools.partial(estimators.trajectory, num_passes=4, group=1),
    "trajectory_s2": functools.partial(estimators.trajectory, num_passes=4, group=2),
    "elbo": functools.partial(estimators.elbo, num_samples=4),
    "spg": functools.partial(estimators.spg, num_samples=4, beta=1.5, mix=0.5),
}
LOSS_KW = dict(beta=0.04, clip_eps=0.2, p_mask_prompt=0.3, mask_id=MASK, eos_id=2)


def _grpo_batch(rows, seed=11):
  rng = np.random.default_rng(seed)
  prompt_BxP, valid_BxP = _prompts(rows, seed)
  completion_BxC = rng.integers(0, V, (rows, C)).astype(np.int32)
  commit_BxC = np.stack([rng.permutation(C) for _ in range(rows)]).astype(np.int32)
  return {"prompt": prompt_BxP, "prompt_valid": valid_BxP, "completion": jnp.asarray(completion_BxC),
          "commit_step": jnp.asarray(commit_BxC),
          "advantages": jnp.asarray(rng.normal(size=rows), jnp.float32)}


def _loss_and_grads(params, batch, key, estimator):
  """(logp, weight, loss metrics, grads) of grpo_loss at pi_old = pi_ref = the estimate under
  slightly moved parameters, so that ratio, clip and KL are all active."""
  moved = jax.tree.map(lambda x: 1.05 * x, params)
  old_BxC, _ = estimator(moved, toy_models.mixing_apply_fn, batch, key,
                         **{k: LOSS_KW[k] for k in ("p_mask_prompt", "mask_id", "eos_id")})
  batch = {**batch, "old_logps": old_BxC, "ref_logps": old_BxC + 0.05}
  logp_BxC, weight_BxC = estimator(params, toy_models.mixing_apply_fn, batch, key,
                                   **{k: LOSS_KW[k] for k in ("p_mask_prompt", "mask_id", "eos_id")})
  loss_fn = lambda p: grpo.grpo_loss(p, toy_models.mixing_apply_fn, batch, key,
                                     estimator=estimator, **LOSS_KW)
  (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  return logp_BxC, weight_BxC, metrics, grads


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_sharded_over_8_devices_equals_one_device(params, name):
  estimator = ESTIMATORS[name]
  batch, key = _grpo_batch(16), jax.random.key(12)
  fn = functools.partial(_loss_and_grads, estimator=estimator)
  single = jax.jit(fn)(params, batch, key)
  mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
  rows, replicated = NamedSharding(mesh, P_("data")), NamedSharding(mesh, P_())
  batch_shardings = jax.tree.map(lambda _: rows, batch)
  sharded = jax.jit(fn, in_shardings=(replicated, batch_shardings, replicated))(
      *jax.device_put((params, batch, key), (replicated, batch_shardings, replicated)))
  jax.tree.map(_assert_close, sharded, single)
  _, _, metrics, grads = single
  assert 0 < float(metrics["clip_fraction"]) < 1 and float(metrics["kl"]) > 0
  assert all(np.isfinite(g).all() and np.abs(g).max() > 0 for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_grpo_loss_gradient_at_ratio_one_is_the_estimators_policy_gradient(params, name):
  """pi = pi_old = pi_ref: grad L = -1/T sum_b A_b sum_k grad logp_bk, the estimator's own
  sequence log-prob (for elbo: -1/T sum_b A_b grad ELBO_b, sequence-level)."""
  estimator, batch, key = ESTIMATORS[name], _grpo_batch(8), jax.random.key(13)
  kw = {k: LOSS_KW[k] for k in ("p_mask_prompt", "mask_id", "eos_id")}

  @jax.jit
  def both(p):
    logp_BxC, weight_BxC = estimator(p, toy_models.mixing_apply_fn, batch, key, **kw)
    at_one = {**batch, "old_logps": logp_BxC, "ref_logps": logp_BxC}
    loss_fn = lambda q: grpo.grpo_loss(q, toy_models.mixing_apply_fn, at_one, key,
                                       estimator=estimator, **LOSS_KW)[0]
    T = weight_BxC.sum()
    direct_fn = lambda q: -jnp.sum(batch["advantages"][:, None] * estimator(
        q, toy_models.mixing_apply_fn, batch, key, **kw)[0]) / T
    return jax.grad(loss_fn)(p), jax.grad(direct_fn)(p)

  grads, direct = both(params)
  jax.tree.map(lambda a, b: _assert_close(a, b, rel=1e-4), grads, direct)


@pytest.mark.parametrize("fields, message", [
    ({"estimator": "exact"}, r"config.rl.estimator='exact' is not one of \('mean_field', "
                             r"'trajectory', 'elbo', 'spg'\)"),
    ({"trajectory_group": 0}, r"config.rl.trajectory_group=0 .*allowed: \[1, 2, 4, 8\]"),
    ({"trajectory_group": 3}, r"config.rl.trajectory_group=3 .* passes, 8 "),
    ({"trajectory_group": 3, "decoding": "threshold"}, r"trajectory_group=3 .* passes, 16 "),
    ({"elbo_samples": 0}, r"config.rl.elbo_samples=0 must be a positive even int"),
    ({"elbo_samples": 3}, r"config.rl.elbo_samples=3"),
    ({"elbo_samples": 2.0}, r"config.rl.elbo_samples=2.0"),
    ({"spg_beta": 0.5}, r"config.rl.spg_beta=0.5 must be a number >= 1"),
    ({"spg_mix": 1.5}, r"config.rl.spg_mix=1.5 must be in \[0, 1\]"),
])
def test_config_errors_name_the_field(fields, message):
  rl = {"decoding": "plain", "steps": 8, "gen_length": 16} | fields
  with pytest.raises(ValueError, match=message):
    estimators.validate_config(rl)


def test_from_config_builds_the_estimator_and_trajectory_needs_commit_steps(params):
  rl = {"decoding": "plain", "steps": 8, "gen_length": 16}
  assert estimators.from_config(rl) is estimators.mean_field  # DEFAULTS.
  built = estimators.from_config(rl | {"estimator": "trajectory", "trajectory_group": 4})
  assert built.func is estimators.trajectory and built.keywords == {"num_passes": 8, "group": 4}
  built = estimators.from_config(rl | {"estimator": "elbo", "elbo_samples": 6,
                                       "decoding": "threshold"})
  assert built.func is estimators.elbo and built.keywords == {"num_samples": 6}
  built = estimators.from_config(rl | {"estimator": "spg", "spg_mix": 1.0})
  assert built.func is estimators.spg and built.keywords == {"num_samples": 2, "beta": 1.5,
                                                             "mix": 1.0}
  with pytest.raises(ValueError, match=r"'spg' needs batch\['advantages'\]"):
    built(params, toy_models.mixing_apply_fn, {k: v for k, v in _grpo_batch(2).items()
                                               if k != "advantages"}, jax.random.key(0),
          p_mask_prompt=0.0, mask_id=MASK, eos_id=2)
  batch = {k: v for k, v in _grpo_batch(2).items() if k != "commit_step"}
  with pytest.raises(ValueError, match=r"'trajectory' needs batch\['commit_step'\]"):
    ESTIMATORS["trajectory"](params, toy_models.mixing_apply_fn, batch, jax.random.key(0),
                             p_mask_prompt=0.0, mask_id=MASK, eos_id=2)
  with pytest.raises(ValueError, match="trajectory_group=3"):
    estimators.trajectory(params, toy_models.mixing_apply_fn, _grpo_batch(2), jax.random.key(0),
                          p_mask_prompt=0.0, mask_id=MASK, eos_id=2, num_passes=4, group=3)


def test_logps_and_update_steps_carry_the_estimator_through_micro_batches_and_masks():
  """make_logps_step / make_update_step on an 8-device mesh (M = 2 micro-batches, mu = 2):
  the precomputed log-probs of view (i, m) are the estimator's under mask_key(step_key, i, m)
  (commit_step split into micro-batches like the completion), and the first update starts
  at ratio 1 and moves the parameters."""
  from configs import base  # pylint: disable=g-import-not-at-top
  from diffusionlm.train import train_state  # pylint: disable=g-import-not-at-top
  c = base.get_config()
  c.model.update(d_model=8, num_layers=1, num_heads=2, mlp_dim=16)
  c.data.seq_len, c.global_batch_size = P + C, 16
  c.optimizer.warmup_steps = 0  # A nonzero first learning rate.
  setup = train_state.build(c, jax.devices()[:8], vocab_size=V)
  state = train_state.make_init_fn(setup)(jax.random.key(0))

  def apply_fn(p, tokens_BxL, **kw):  # The toy network on the Transformer's own tables.
    toy = {"embed": p["embedding"], "out": p["head"],
           "pos": jnp.sin(jnp.arange(P + C)[:, None] * jnp.linspace(0.1, 1.0, 8))}
    return toy_models.mixing_apply_fn(toy, tokens_BxL, **kw)

  estimator = ESTIMATORS["trajectory_s2"]
  kw = dict(p_mask_prompt=0.3, eos_id=2, estimator=estimator)
  M, mu = 2, 2
  flat = _grpo_batch(16)
  flat["completion_mask"] = logprobs.completion_mask(flat["completion"], eos_id=2)
  batch = {k: v.reshape((M, -1) + v.shape[1:]) for k, v in flat.items()}
  np.testing.assert_array_equal(logprobs.completion_mask(batch["completion"], eos_id=2),
                                batch["completion_mask"])  # Rows along the last axis.
  batch = jax.device_put(batch, grpo.micro_batch_sharding(setup.mesh))
  step_key = jax.random.key(14)
  logps_step = grpo.make_logps_step(setup, apply_fn, num_iterations=mu, with_ref=True, **kw)
  views = logps_step(state.params, state.params, batch, step_key)
  for i, m in itertools.product(range(mu), range(M)):
    micro = jax.tree.map(lambda x: x[m], batch)
    direct_BxC, _ = _estimate(state.params, micro, grpo.mask_key(step_key, i, m), estimator,
                              apply_fn=apply_fn, p_mask_prompt=0.3, eos_id=2)
    _assert_close(views["old_logps"][i, m], direct_BxC)
    _assert_close(views["ref_logps"][i, m], direct_BxC)
  assert np.abs(np.asarray(views["old_logps"][0]) - np.asarray(views["old_logps"][1])).max() > 0
  update_step = grpo.make_update_step(setup, apply_fn, beta=0.04, clip_eps=0.2, **kw)
  before = jax.device_get(state.params)
  new_state, metrics = update_step(state, {**batch, "old_logps": views["old_logps"][0],
                                           "ref_logps": views["ref_logps"][0]},
                                   step_key, jnp.int32(0))
  assert float(metrics["ratio"]) == pytest.approx(1.0, abs=1e-6)
  assert float(metrics["grad_norm"]) > 0 and int(new_state.first_nonfinite_step) == -1
  moved = jax.tree.map(lambda a, b: np.abs(np.asarray(a) - b).max(), new_state.params, before)
  assert moved["embedding"] > 0 and moved["head"] > 0
