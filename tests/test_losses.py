"""Objectives: unbiasedness, the ELBO bound by exact enumeration, SFT invariances, sharding."""
import dataclasses
import functools
import itertools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from scipy import special

import numerics
from diffusionlm.diffusion import losses
from diffusionlm.models import transformer


def _assert_unbiased(samples, expected, axis=0):
  """|mean - expected| < 4 standard errors of the Monte-Carlo mean (and the SE is sane)."""
  samples = np.asarray(samples, np.float64)
  mean = samples.mean(axis)
  se = samples.std(axis, ddof=1) / math.sqrt(samples.shape[axis])
  assert np.all(np.abs(mean - expected) < 4 * se + 1e-6), (mean, expected, se)
  assert np.all(se < 0.1 * np.abs(expected) + 1e-6), se  # Enough draws to mean something.


# ---- A network that ignores the context: the ELBO is then the exact NLL -------------------
CF_V, CF_L = 5, 8
CF_LENGTHS = np.array([8, 5, 8, 3])  # Valid prefix length of each row.


def context_free_apply(logits_LxV, tokens_BxL, **kw):
  del kw
  return jnp.broadcast_to(logits_LxV, tokens_BxL.shape + logits_LxV.shape[-1:])


@pytest.fixture(scope="module")
def context_free():
  """(logits_LxV, tokens_BxL, valid_BxL, exact per-row NLL_B) for the context-free model."""
  rng = np.random.default_rng(0)
  logits_LxV = jnp.asarray(2.0 * rng.normal(size=(CF_L, CF_V)), jnp.float32)
  tokens_BxL = jnp.asarray(rng.integers(0, CF_V, size=(len(CF_LENGTHS), CF_L)), jnp.int32)
  valid_BxL = jnp.arange(CF_L)[None, :] < CF_LENGTHS[:, None]
  nll_BxL = -jnp.take_along_axis(jax.nn.log_softmax(logits_LxV)[None], tokens_BxL[..., None],
                                 axis=-1)[..., 0]
  return logits_LxV, tokens_BxL, valid_BxL, np.asarray((nll_BxL * valid_BxL).sum(1))


def _keys(n, seed=0):
  return jax.random.split(jax.random.key(seed), n)


def _draws(fn, n, seed=0):
  """fn(key) for n independent keys, run in one compiled loop (vmap compiles slower)."""
  return jax.jit(lambda keys: jax.lax.map(fn, keys))(_keys(n, seed))


def test_mdm_loss_and_mdm_nll_are_unbiased_for_the_exact_nll(context_free):
  """E[mdm_loss] * #tokens = E[sum mdm_nll] = exact NLL when predictions ignore the context.

  True for any eps: a weight p'/p without the 1/(1 - eps) normalisation would give 0.8 NLL
  at eps = 0.2 (test_schedules.py checks the identity behind this for every schedule).
  """
  logits_LxV, tokens_BxL, valid_BxL, nll_B = context_free
  loss_fn = functools.partial(losses.mdm_loss, logits_LxV, context_free_apply, tokens_BxL,
                              mask_id=CF_V, schedule="polynomial", eps=0.2, power=2.0,
                              antithetic=False, valid_BxL=valid_BxL)
  nll_fn = functools.partial(losses.mdm_nll, logits_LxV, context_free_apply, tokens_BxL,
                             mask_id=CF_V, num_mc=4, valid_BxL=valid_BxL)
  loss_K, nll_KxB = _draws(lambda key: (loss_fn(key)[0], nll_fn(key)), 512)
  _assert_unbiased(loss_K * CF_LENGTHS.sum(), nll_B.sum())
  _assert_unbiased(nll_KxB, nll_B)


def test_sft_loss_is_the_mean_per_response_token_nll(context_free):
  """E[sft_loss] = mean over rows of (response NLL / response length) (context-free model)."""
  logits_LxV, tokens_BxL, valid_BxL, _ = context_free
  prompt_len_B = jnp.array([3, 0, 6, 1])
  response_BxL = valid_BxL & (jnp.arange(CF_L)[None] >= prompt_len_B[:, None])
  cf_nll_BxL = -jnp.take_along_axis(jax.nn.log_softmax(logits_LxV)[None],
                                    tokens_BxL[..., None], axis=-1)[..., 0]
  expected = np.mean((cf_nll_BxL * response_BxL).sum(1) / response_BxL.sum(1))
  loss_fn = functools.partial(losses.sft_loss, logits_LxV, context_free_apply, tokens_BxL,
                              prompt_len_B, mask_id=CF_V, valid_BxL=valid_BxL)
  _assert_unbiased(_draws(lambda key: loss_fn(key)[0], 512), expected)


# ---- A tiny random bidirectional network: exact likelihood by enumeration -----------------
V, L = 3, 3
MODEL = transformer.TransformerConfig(
    vocab_size=V, d_model=16, num_layers=1, num_heads=2, num_kv_heads=1, mlp_dim=32,
    rope_theta=10000.0, norm_eps=1e-5, tie_embeddings=False, causal=False)


@pytest.fixture(scope="module")
def net_params():
  """Random parameters (numpy; large enough that the conditionals are far from uniform)."""
  rng = np.random.default_rng(1)
  shapes = nn.unbox(jax.eval_shape(transformer.Transformer(MODEL).init, jax.random.key(0),
                                   jnp.zeros((1, L), jnp.int32))["params"])
  return jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), shapes)


def net_apply(params, tokens_BxL, **kw):
  return transformer.Transformer(MODEL).apply({"params": params}, tokens_BxL, **kw)


def causal_apply(params, tokens_BxL, **kw):
  causal = transformer.Transformer(dataclasses.replace(MODEL, causal=True))
  return causal.apply({"params": params}, tokens_BxL, **kw)


SEQS_NxL = np.array(list(itertools.product(range(V), repeat=L)))  # All V^L sequences.
SUBSETS = [frozenset(s) for l in range(L + 1) for s in itertools.combinations(range(L), l)]


@pytest.fixture(scope="module")
def enumerated(net_params):
  """Exact quantities of the MDM's generative model for every sequence x.

  logp[x][M][i] = log p(x_i | x with positions M masked), for i in M.
  nll[x] = -log p(x), p(x) = mean over the L! unmasking orders of the product of
  conditionals; elbo[x] = E_{l~U{1..L}} E_{|M|=l} [(L/l) sum_{i in M} -logp[x][M][i]].
  """
  noisy = np.repeat(SEQS_NxL[:, None], len(SUBSETS), axis=1)
  for j, subset in enumerate(SUBSETS):
    noisy[:, j, sorted(subset)] = MODEL.mask_id
  logits = jax.jit(net_apply)(net_params, jnp.asarray(noisy.reshape(-1, L)))
  logp_all = np.asarray(jax.nn.log_softmax(logits), np.float64).reshape(
      len(SEQS_NxL), len(SUBSETS), L, V)
  logp = np.take_along_axis(logp_all, SEQS_NxL[:, None, :, None], axis=-1)[..., 0]
  index = {subset: j for j, subset in enumerate(SUBSETS)}

  def order_nll(x, order):  # -log prod_k p(x_{order_k} | positions order_{>=k} masked)
    return -sum(logp[x, index[frozenset(order[k:])], order[k]] for k in range(L))

  orders = list(itertools.permutations(range(L)))
  order_nll_xo = np.array([[order_nll(x, o) for o in orders] for x in range(len(SEQS_NxL))])
  nll = -special.logsumexp(-order_nll_xo, axis=1) + math.log(len(orders))
  masked_sum_xs = -np.array([[sum(logp[x, j, i] for i in subset)
                              for j, subset in enumerate(SUBSETS)]
                             for x in range(len(SEQS_NxL))])
  sizes = np.array([len(subset) for subset in SUBSETS])
  # P(l) P(M | l) (L / l) = (1 / L) (1 / C(L, l)) (L / l); the empty subset never occurs.
  per_subset = np.where(sizes > 0, 1.0 / (np.maximum(sizes, 1) * special.comb(L, sizes)), 0.0)
  elbo = masked_sum_xs @ per_subset
  return dict(nll=nll, elbo=elbo, order_nll=order_nll_xo, masked_sum=masked_sum_xs,
              sizes=sizes)


def test_enumerated_model_is_a_distribution_and_elbo_bounds_it(enumerated):
  nll, elbo = enumerated["nll"], enumerated["elbo"]
  np.testing.assert_allclose(np.exp(-nll).sum(), 1.0, rtol=1e-6)
  assert np.ptp(nll) > 1.0  # Far from uniform: the bound below is not trivially tight.
  assert np.all(elbo >= nll - 1e-9)
  assert np.max(elbo - nll) > 0.05  # The bound is strict somewhere.
  # The ELBO is the any-order autoregressive loss: the mean over orders of -log prod.
  np.testing.assert_allclose(elbo, enumerated["order_nll"].mean(axis=1), rtol=1e-9)


def test_continuous_time_elbo_equals_the_discrete_elbo(enumerated):
  """int_0^1 (1/s) E_{M~Bern(s)^L}[sum_{i in M} CE] ds = elbo: Beta(l, L-l+1) = 1/(l C(L,l))."""
  sizes = enumerated["sizes"]
  beta = np.where(sizes > 0, special.beta(np.maximum(sizes, 1), L - sizes + 1), 0.0)
  np.testing.assert_allclose(enumerated["masked_sum"] @ beta, enumerated["elbo"], rtol=1e-9)


def test_mdm_nll_estimates_the_enumerated_elbo(net_params, enumerated):
  """Rows carry an invalid 4th slot: L is the valid length, and padding is never seen."""
  copies = 128
  tokens = np.tile(np.pad(SEQS_NxL, ((0, 0), (0, 1))), (copies, 1))
  tokens[:, -1] = np.arange(len(tokens)) % V  # Any id: it is invalid.
  valid = jnp.broadcast_to(jnp.arange(L + 1) < L, tokens.shape)
  nll_fn = functools.partial(losses.mdm_nll, net_params, net_apply, mask_id=MODEL.mask_id,
                             num_mc=3, valid_BxL=valid)
  nll_CxN = jax.jit(nll_fn)(jnp.asarray(tokens), jax.random.key(3))
  _assert_unbiased(nll_CxN.reshape(copies, len(SEQS_NxL)), enumerated["elbo"])


def test_mdm_loss_estimates_the_enumerated_objective(net_params, enumerated):
  """E[mdm_loss] * L = mean_x E_{s~U(eps,1)}[(1/s) E_{M~Bern(s)}[sum_{i in M} CE]]."""
  eps = 0.01
  sizes = enumerated["sizes"]
  a, b = np.maximum(sizes, 1), L - sizes + 1
  beta_eps = np.where(sizes > 0, special.beta(a, b) * (1 - special.betainc(a, b, eps)), 0.0)
  expected = np.mean(enumerated["masked_sum"] @ beta_eps) / (1 - eps)
  loss_fn = functools.partial(losses.mdm_loss, net_params, net_apply, jnp.asarray(SEQS_NxL),
                              mask_id=MODEL.mask_id, eps=eps)
  loss_K = _draws(lambda key: loss_fn(key)[0], 256)
  _assert_unbiased(loss_K * L, expected)


def test_ar_nll_is_normalised_and_ignores_padding(net_params):
  """sum over continuations of exp(-ar_nll) = 1; padding (left or right) changes nothing."""
  length, width = 4, 6
  seqs = np.array(list(itertools.product(range(V), repeat=length)))
  tokens = np.zeros((len(seqs) + 2, width), np.int32)
  valid = np.zeros(tokens.shape, bool)
  tokens[:len(seqs), :length], valid[:len(seqs), :length] = seqs, True
  x = seqs[17]
  tokens[-2], valid[-2, 2:] = [2, 1, *x], True  # Left-padded x.
  tokens[-1], valid[-1, :length] = [*x, 1, 2], True  # x with a different invalid tail.
  fn = jax.jit(lambda t, v: (losses.ar_nll(net_params, causal_apply, t, valid_BxL=v),
                             losses.ar_loss(net_params, causal_apply, t, valid_BxL=v)[0]))
  nll, loss = fn(jnp.asarray(tokens), jnp.asarray(valid))
  nll = np.asarray(nll, np.float64)
  prob_sums = np.exp(-nll[:len(seqs)]).reshape(V, -1).sum(1)  # Grouped by the first token.
  np.testing.assert_allclose(prob_sums, 1.0, rtol=1e-5)
  np.testing.assert_allclose(nll[-2:], nll[17], rtol=1e-5)
  np.testing.assert_allclose(loss, nll.sum() / ((length - 1) * len(tokens)), rtol=1e-5)


def test_conditional_mdm_nll_estimates_the_enumerated_conditional_elbo(net_params, enumerated):
  """scored_BxL = positions 1.. (position 0 is visible context): the mean of mdm_nll is
  E_{l~U{1..L-1}} E_{M subset of the continuation, |M|=l} [((L-1)/l) sum_{i in M} CE], which
  bounds -log p(continuation | context); scored = all valid tokens is the plain ELBO."""
  sizes = enumerated["sizes"]
  free = np.array([0 not in subset for subset in SUBSETS]) & (sizes > 0)
  per_subset = np.where(free, 1.0 / (np.maximum(sizes, 1) * special.comb(L - 1, sizes)), 0.0)
  expected = enumerated["masked_sum"] @ per_subset
  copies = 128
  tokens = jnp.asarray(np.tile(SEQS_NxL, (copies, 1)))
  scored = jnp.broadcast_to(jnp.arange(L) > 0, tokens.shape)
  nll_fn = jax.jit(functools.partial(losses.mdm_nll, net_params, net_apply,
                                     mask_id=MODEL.mask_id, num_mc=2))
  nll_CxN = nll_fn(tokens, jax.random.key(4), scored_BxL=scored)
  _assert_unbiased(nll_CxN.reshape(copies, len(SEQS_NxL)), expected)
  # Each context's continuations: sum of exp(-bound) <= 1 (a bound on a distribution).
  assert np.all(np.exp(-expected).reshape(V, -1).sum(1) <= 1 + 1e-6)
  np.testing.assert_array_equal(nll_fn(tokens, jax.random.key(4)),
                                nll_fn(tokens, jax.random.key(4), scored_BxL=tokens >= 0))


def test_ar_nll_of_a_continuation_is_the_chain_rule(net_params):
  """-log p(x) = -log p(x_{<k}) + -log p(x_{>=k} | x_{<k}): scored_BxL splits the sum."""
  tokens = jnp.asarray(SEQS_NxL)
  fn = jax.jit(lambda scored: losses.ar_nll(net_params, causal_apply, tokens,
                                            scored_BxL=scored))
  head = jnp.broadcast_to(jnp.arange(L) < 2, tokens.shape)
  np.testing.assert_allclose(fn(head) + fn(~head), fn(None), rtol=1e-6)
  assert np.all(np.asarray(fn(~head)) > 0) and np.all(np.asarray(fn(head)) > 0)


def test_ar_input_masking_masks_inputs_never_targets(net_params):
  """input_mask_rate: the network sees valid inputs masked at the rate, padding never, and
  scores the clean next tokens; the loss is -log p(clean target | masked inputs). Rate 0 is
  plain ar_loss, bitwise."""
  rng = np.random.default_rng(3)
  tokens = jnp.asarray(rng.integers(0, V, (8, 256)), jnp.int32)
  valid = jnp.arange(256)[None, :] < jnp.asarray(rng.integers(128, 257, (8,)))[:, None]
  seen = {}

  def recording_apply(p, inputs_BxL, **kw):
    seen["inputs"], seen["targets"] = inputs_BxL, kw["targets_BxT"]
    return causal_apply(p, inputs_BxL, **kw)

  @jax.jit
  def masked_loss(key):
    loss, metrics = losses.ar_loss(net_params, recording_apply, tokens, valid_BxL=valid,
                                   input_mask_rate=0.3, key=key, mask_id=MODEL.mask_id)
    return loss, metrics, seen["inputs"], seen["targets"]

  loss, metrics, inputs, targets = masked_loss(jax.random.key(0))
  masked = np.asarray(inputs == MODEL.mask_id)
  np.testing.assert_array_equal(targets, jnp.roll(tokens, -1, axis=1))  # Clean targets.
  np.testing.assert_array_equal(np.where(masked, tokens, inputs), tokens)
  assert not np.any(masked & ~np.asarray(valid))
  rate = masked.sum() / valid.sum()
  assert abs(rate - 0.3) < 4 * math.sqrt(0.21 / valid.sum()) and metrics["input_mask_rate"] == rate
  # The loss is the clean-target NLL under the masked inputs.
  logp = jax.nn.log_softmax(causal_apply(net_params, inputs, valid_BxL=valid), axis=-1)
  nll = -jnp.take_along_axis(logp[:, :-1], tokens[:, 1:, None], axis=-1)[..., 0]
  pairs = valid[:, 1:] & valid[:, :-1]
  np.testing.assert_allclose(loss, (nll * pairs).sum() / pairs.sum(), rtol=1e-5)
  plain = jax.jit(lambda: losses.ar_loss(net_params, causal_apply, tokens, valid_BxL=valid))()
  off = jax.jit(lambda k: losses.ar_loss(net_params, causal_apply, tokens, valid_BxL=valid,
                                         input_mask_rate=0.0, key=k, mask_id=MODEL.mask_id))(
                                             jax.random.key(0))
  assert float(off[0]) == float(plain[0]) and float(loss) > float(plain[0])


# ---- SFT: the prompt is never masked or scored; prompt padding changes nothing --------------
SFT_L = 10
PROMPT_B = np.array([2, 3, 1, 4])
RESPONSE_B = np.array([5, 4, 6, 3])
PAD_B = np.array([2, 0, 3, 1])


def _sft_batch(pad_B):
  """Rows: pad_B invalid pads, the prompt, the response (EOS padding included), invalid tail."""
  rng = np.random.default_rng(2)
  tokens = rng.integers(0, V, size=(len(PROMPT_B), SFT_L))
  content = [rng.integers(0, V, size=p + r) for p, r in zip(PROMPT_B, RESPONSE_B)]
  valid = np.zeros(tokens.shape, bool)
  for b, row in enumerate(content):
    tokens[b, pad_B[b]:pad_B[b] + len(row)] = row
    valid[b, pad_B[b]:pad_B[b] + len(row)] = True
  return jnp.asarray(tokens), jnp.asarray(valid), jnp.asarray(pad_B + PROMPT_B)


@jax.jit
def _sft_loss_and_input(params, offset_BxLxV, tokens, valid, prompt_len, key):
  """sft_loss with the real network plus logit offsets, and the noisy input it was given."""
  seen = {}

  def apply_fn(p, noisy_BxL, **kw):
    seen["noisy"] = noisy_BxL
    # Logits (targets_BxT not passed on): the loss reduces them itself.
    return net_apply(p, noisy_BxL, valid_BxL=kw["valid_BxL"]) + offset_BxLxV

  loss, _ = losses.sft_loss(params, apply_fn, tokens, prompt_len, key, mask_id=MODEL.mask_id,
                            valid_BxL=valid)
  return loss, seen["noisy"]


def test_sft_never_scores_the_prompt_and_ignores_prompt_padding(net_params):
  unpadded = _sft_batch(np.zeros_like(PAD_B))
  padded = _sft_batch(PAD_B)
  response = np.asarray(unpadded[1]) & (np.arange(SFT_L) >= PROMPT_B[:, None])
  # Whatever the logits outside the response, the loss must not change.
  offset = np.where(response[..., None], 0.0, 10 * np.random.default_rng(3).normal(
      size=(len(PAD_B), SFT_L, V))).astype(np.float32)
  no_offset = np.zeros_like(offset)
  ever_masked = np.zeros_like(response)
  for key in _keys(4):
    loss, noisy = _sft_loss_and_input(net_params, no_offset, *unpadded, key)
    offset_loss, _ = _sft_loss_and_input(net_params, offset, *unpadded, key)
    padded_loss, padded_noisy = _sft_loss_and_input(net_params, no_offset, *padded, key)
    np.testing.assert_allclose(offset_loss, loss, rtol=1e-6)
    np.testing.assert_allclose(padded_loss, loss, rtol=1e-5)
    masked = np.asarray(noisy) == MODEL.mask_id
    padded_masked = np.asarray(padded_noisy) == MODEL.mask_id
    assert not np.any(masked & ~response)  # Never the prompt, never padding.
    for b in range(len(PAD_B)):  # The same response tokens are masked after padding.
      np.testing.assert_array_equal(np.roll(padded_masked[b], -PAD_B[b]), masked[b])
    ever_masked |= masked
  assert ever_masked.any(axis=1).all()


# ---- Sharding: one device = the batch split over an 8-device mesh -------------------------
def test_losses_and_gradients_are_identical_when_the_batch_is_sharded(net_params, context_free):
  """mdm_loss with the network; the other objectives with a context-free model (cheaper)."""
  tokens, valid, prompt_len = _sft_batch(PAD_B)
  tokens, valid, prompt_len = (jnp.tile(x, (2,) + (1,) * (x.ndim - 1))
                               for x in (tokens, valid, prompt_len))  # 8 rows.
  cf_logits_LxV = jnp.tile(context_free[0][:, :V], (2, 1))[:SFT_L]

  def all_objectives(params, tokens, valid, prompt_len, key):
    mdm = functools.partial(losses.mdm_loss, tokens_BxL=tokens, key=key, mask_id=MODEL.mask_id,
                            random_length_prob=0.5, valid_BxL=valid)
    sft = functools.partial(losses.sft_loss, tokens_BxL=tokens, prompt_len_B=prompt_len,
                            key=key, mask_id=MODEL.mask_id, valid_BxL=valid)
    ar = functools.partial(losses.ar_loss, tokens_BxL=tokens, valid_BxL=valid)
    ar_masked = functools.partial(losses.ar_loss, tokens_BxL=tokens, valid_BxL=valid,
                                  input_mask_rate=0.3, key=key, mask_id=MODEL.mask_id)
    nll = lambda p, apply_fn: (losses.mdm_nll(p, apply_fn, tokens, key, mask_id=MODEL.mask_id,
                                              num_mc=2, valid_BxL=valid).mean(), {})
    runs = {"mdm": (mdm, "net", net_apply), "sft": (sft, "cf", context_free_apply),
            "ar": (ar, "cf", context_free_apply), "mdm_nll": (nll, "cf", context_free_apply),
            "ar_masked": (ar_masked, "net", causal_apply)}
    return {name: jax.value_and_grad(functools.partial(fn, apply_fn=apply_fn), has_aux=True)(
        params[which]) for name, (fn, which, apply_fn) in runs.items()}

  args = ({"net": net_params, "cf": cf_logits_LxV}, tokens, valid, prompt_len,
          jax.random.key(5))
  single = jax.jit(all_objectives)(*args)
  mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
  rows, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
  shardings = (replicated, rows, rows, rows, replicated)
  sharded = jax.jit(all_objectives, in_shardings=shardings)(*jax.device_put(args, shardings))
  numerics.assert_close_at_scale(sharded, single, rel=1e-4)


# ---- Forward process, time sampling and LLaDA's random-length cut ------------------------
def test_forward_mask_masks_at_rate_p_and_only_maskable_tokens():
  p_B = jnp.array([0.0, 0.1, 0.5, 1.0])
  tokens = jnp.broadcast_to(jnp.arange(4000) % 7, (4, 4000))
  maskable = jnp.broadcast_to(jnp.arange(4000) % 2 == 0, (4, 4000))
  noisy, masked = jax.jit(functools.partial(losses.forward_mask, mask_id=7))(
      jax.random.key(0), tokens, p_B, maskable_BxL=maskable)
  np.testing.assert_array_equal(noisy, jnp.where(masked, 7, tokens))
  assert not np.any(masked & ~maskable)
  rate = masked.sum(1) / maskable.sum(1)
  np.testing.assert_allclose(rate, p_B, atol=4 * math.sqrt(0.25 / 2000))


def test_antithetic_times_are_stratified_and_uniform():
  t_KxB = jax.vmap(lambda k: losses.sample_times(k, 8, antithetic=True))(_keys(1000))
  assert np.all((t_KxB > 0) & (t_KxB <= 1))
  np.testing.assert_allclose(np.diff(np.sort(t_KxB, axis=1), axis=1), 1 / 8, atol=1e-6)
  _assert_unbiased(t_KxB, 0.5)  # Each t_b is marginally U(0, 1].


def test_random_length_cut_shortens_rows_for_attention_and_loss(context_free):
  """What the network sees: w.p. 0.3 a row is cut to a valid prefix of U{1..L} tokens."""
  prob = 0.3

  @jax.jit
  def metrics_and_inputs(key):
    seen = {}

    def spy_apply(params, noisy_BxL, *, valid_BxL, **unused):
      seen.update(noisy=noisy_BxL, valid=valid_BxL)
      return context_free_apply(params, noisy_BxL)

    _, metrics = losses.mdm_loss(context_free[0], spy_apply, jnp.zeros((4096, CF_L), jnp.int32),
                                 key, mask_id=CF_V, random_length_prob=prob)
    return metrics, seen["noisy"], seen["valid"]

  metrics, noisy, valid = jax.tree.map(np.asarray, metrics_and_inputs(jax.random.key(1)))
  length_B = valid.sum(1)
  np.testing.assert_array_equal(valid, np.arange(CF_L) < length_B[:, None])  # Prefixes.
  assert not np.any((noisy == CF_V) & ~valid)  # Only kept tokens are masked and scored.
  np.testing.assert_allclose(metrics["mask_rate"], (noisy == CF_V).sum() / valid.sum(),
                             rtol=1e-6)
  shortened = length_B < CF_L  # A cut to length L keeps the row whole.
  _assert_unbiased(shortened, prob * (CF_L - 1) / CF_L)
  assert set(length_B) == set(range(1, CF_L + 1))
  _assert_unbiased(length_B[shortened], CF_L / 2)  # Uniform on {1..L-1} given shortened.


# ---- Bad arguments -----------------------------------------------------------------------
def test_bad_arguments_raise(context_free):
  logits_LxV, tokens, valid, _ = context_free
  trace = lambda fn, **kw: jax.eval_shape(
      lambda: fn(logits_LxV, context_free_apply, **kw))
  key = jax.random.key(0)
  with pytest.raises(ValueError, match=f"mask_id={CF_V - 1} lies inside the vocabulary"):
    trace(losses.mdm_loss, tokens_BxL=tokens, key=key, mask_id=CF_V - 1)
  with pytest.raises(ValueError, match="mask_id=0 lies inside the vocabulary"):
    trace(losses.mdm_nll, tokens_BxL=tokens, key=key, mask_id=0, num_mc=2)
  with pytest.raises(ValueError, match="mask_id=2 lies inside the vocabulary"):
    trace(losses.sft_loss, tokens_BxL=tokens, prompt_len_B=jnp.zeros(4, jnp.int32), key=key,
          mask_id=2)
  with pytest.raises(ValueError, match=r"valid_BxL has shape \(4, 7\), tokens_BxL has \(4, 8\)"):
    trace(losses.mdm_loss, tokens_BxL=tokens, key=key, mask_id=CF_V, valid_BxL=valid[:, 1:])
  with pytest.raises(ValueError, match=r"valid_BxL has shape \(3, 8\)"):
    trace(losses.ar_loss, tokens_BxL=tokens, valid_BxL=valid[1:])
  with pytest.raises(ValueError, match=r"prompt_len_B has shape \(3,\), expected \(4,\)"):
    trace(losses.sft_loss, tokens_BxL=tokens, prompt_len_B=jnp.zeros(3, jnp.int32), key=key,
          mask_id=CF_V)
  with pytest.raises(ValueError, match="num_mc must be an int >= 1, got 0"):
    trace(losses.mdm_nll, tokens_BxL=tokens, key=key, mask_id=CF_V, num_mc=0)
  with pytest.raises(ValueError, match="random_length_prob=1.5"):
    trace(losses.mdm_loss, tokens_BxL=tokens, key=key, mask_id=CF_V, random_length_prob=1.5)
  with pytest.raises(ValueError, match=r"p_mask_B has shape \(3,\), expected \(4,\)"):
    losses.forward_mask(key, tokens, jnp.ones(3), mask_id=CF_V)
  with pytest.raises(ValueError, match="tokens_BxL must be 2-D"):
    trace(losses.ar_nll, tokens_BxL=tokens[0])
