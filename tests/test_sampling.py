"""Samplers: LLaDA's schedule and remasking rules step by step, faster modes, cache exactness.

Toy apply_fns (pure functions of the tokens) pin down the algorithm; the real random-init
Transformer checks the KV-cache paths. Greedy decoding keeps most programs free of random
number generation, which dominates CPU compile time.
"""
import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from diffusionlm.diffusion import sampling
from diffusionlm.models import transformer
import toy_models

V = 16  # Real vocabulary; the mask id is V.
MASK = V
P, G, N, STEPS = 4, 8, 4, 8  # Prompt, generated length, block length, total steps.
S = STEPS // (G // N)  # Steps per block.
B = 4


def _prompt(batch=B, length=P, seed=1):
  return jnp.asarray(np.random.default_rng(seed).integers(0, V, (batch, length)), jnp.int32)


# ---- Toy models ----------------------------------------------------------------------------


def target_apply_fn(params, tokens_BxT, *, positions_BxL=None, return_kv=False, **unused):
  """Puts almost all mass on target[position] (margin 30); dummy kv of the right structure."""
  del unused
  B_, T = tokens_BxT.shape
  if positions_BxL is None:
    positions_BxL = jnp.broadcast_to(jnp.arange(T), (B_, T))
  logits_BxTxV = 30.0 * jax.nn.one_hot(params["target"][positions_BxL], V)
  if return_kv:
    zeros_BxTx1x2 = jnp.zeros((B_, T, 1, 2))
    return logits_BxTxV, ((zeros_BxTx1x2, zeros_BxTx1x2),)
  return logits_BxTxV


mixing_apply_fn = toy_models.mixing_apply_fn


@pytest.fixture(scope="module")
def mixing_params():
  return toy_models.mixing_params(V, P + G)


recording = toy_models.recording


# ---- Pieces --------------------------------------------------------------------------------


def test_num_transfer_tokens_is_lls_linear_schedule():
  num_masked_B = np.arange(0, 40)
  for steps in (1, 3, 8):
    k_BxS = np.asarray(sampling.num_transfer_tokens(num_masked_B, steps))
    assert k_BxS.shape == (40, steps)
    np.testing.assert_array_equal(k_BxS.sum(1), num_masked_B)  # Every token committed.
    assert (k_BxS.max(1) - k_BxS.min(1) <= 1).all()  # Split evenly...
    assert (np.diff(k_BxS, axis=1) <= 0).all()  # ...remainder to the first steps.


def test_gumbel_max_samples_softmax_at_temperature():
  logits_V = jnp.array([0.0, 1.0, 2.0, 3.0])
  temperature, n = 0.5, 40_000
  logits_1xNxV = jnp.broadcast_to(logits_V, (1, n, 4))
  tokens = np.asarray(sampling.sample_tokens(jax.random.key(3), logits_1xNxV, temperature))
  expected = np.asarray(jax.nn.softmax(logits_V / temperature))
  freq = np.bincount(tokens.ravel(), minlength=4) / n
  np.testing.assert_allclose(freq, expected, atol=5 * np.sqrt(0.25 / n))
  greedy = sampling.sample_tokens(jax.random.key(3), logits_1xNxV[:, :3], 0.0)
  np.testing.assert_array_equal(greedy, 3)


def test_confidence_scores():
  logits_1x1xV = jnp.log(jnp.array([[[0.5, 0.3, 0.2]]]))
  tokens_1x1 = jnp.array([[1]])
  score = lambda r: float(sampling.token_confidence(jax.random.key(0), logits_1x1xV, tokens_1x1,
                                                    remasking=r)[0, 0])
  assert score("low_confidence") == pytest.approx(0.3)
  assert score("margin") == pytest.approx(0.5 - 0.3)
  assert 0.0 <= score("random") < 1.0


BAD_SETTINGS = [
    (dict(gen_length=6, block_length=4), "gen_length"),
    (dict(block_length=0), "block_length"),
    (dict(steps=5), "steps"),  # Not divisible by the 2 blocks.
    (dict(steps=1), "steps"),  # Fewer steps than blocks.
    (dict(remasking="lowest"), "remasking"),
    (dict(decoding="fast"), "decoding"),
    (dict(cache="dual"), "cache"),
    (dict(decoding="threshold", threshold=0.0), "threshold"),
    (dict(threshold=1.5), "threshold"),
    (dict(temperature=-1.0), "temperature"),
    (dict(cfg_scale=-0.5), "cfg_scale"),
    (dict(suppress_eos_id=MASK), "suppress_eos_id"),
]


@pytest.mark.parametrize("overrides,name", BAD_SETTINGS)
def test_invalid_settings_raise_before_compiling(overrides, name):
  def never_called(*args, **kwargs):
    raise AssertionError("the model was traced before the settings were checked")

  kwargs = dict(gen_length=G, block_length=N, steps=STEPS, mask_id=MASK) | overrides
  with pytest.raises(ValueError, match=name):
    sampling.generate({}, never_called, _prompt(), jax.random.key(0), **kwargs)


@pytest.mark.parametrize("overrides,name", [(dict(gen_length=0), "gen_length"),
                                            (dict(temperature=-0.1), "temperature")])
def test_invalid_ar_settings_raise(overrides, name):
  with pytest.raises(ValueError, match=name):
    sampling.generate_ar({}, None, _prompt(), jax.random.key(0),
                         **(dict(gen_length=G) | overrides))


# ---- The algorithm, step by step ----------------------------------------------------------


def _check_transitions(calls, final_BxL, prompt_BxP, commit_step_BxG, *, chosen_fn):
  """Replays the recorded forward passes: only masked positions of the current block change,
  they take the model's argmax, and exactly chosen_fn(t, block_masked, conf) of them."""
  inputs = [tokens for tokens, _ in calls] + [np.asarray(final_BxL)]
  block_of_pass = []
  for t, (x_BxL, logits_BxLxV) in enumerate(calls):
    np.testing.assert_array_equal(x_BxL[:, :P], prompt_BxP)  # The prompt never changes.
    nxt_BxL = inputs[t + 1]
    changed_BxL = x_BxL != nxt_BxL
    masked_BxL = x_BxL == MASK
    # The current block: the first block that still holds a mask.
    b = min(int(np.argmax(masked_BxL[r, P:])) // N for r in range(B) if masked_BxL[r, P:].any())
    block_of_pass.append(b)
    in_block_L = np.zeros(P + G, bool)
    in_block_L[P + b * N:P + (b + 1) * N] = True
    assert not (changed_BxL & ~(in_block_L & masked_BxL)).any()  # Nothing outside the block.
    pred_BxL = logits_BxLxV.argmax(-1)
    np.testing.assert_array_equal(nxt_BxL[changed_BxL], pred_BxL[changed_BxL])
    probs_BxLxV = np.asarray(jax.nn.softmax(logits_BxLxV, axis=-1))
    expected_BxL = chosen_fn(t, in_block_L & masked_BxL, probs_BxLxV)
    if expected_BxL is not None:
      np.testing.assert_array_equal(changed_BxL, expected_BxL)
    np.testing.assert_array_equal(commit_step_BxG == t, changed_BxL[:, P:])
  assert not (np.asarray(final_BxL) == MASK).any()  # Every mask was filled.
  return block_of_pass


def _top_k(k_B, eligible_BxL, score_BxL):
  """The k_B highest-scoring eligible positions of each row."""
  score_BxL = np.where(eligible_BxL, score_BxL, -np.inf)
  rank_BxL = np.argsort(np.argsort(-score_BxL, axis=1, kind="stable"), axis=1)
  return eligible_BxL & (rank_BxL < np.asarray(k_B)[:, None])


SCORES = {
    "low_confidence": lambda probs: probs.max(-1),  # p(argmax) under greedy decoding.
    "margin": lambda probs: np.diff(np.sort(probs, -1)[..., -2:], axis=-1)[..., 0],  # p1 - p2.
    "random": None,
}


@pytest.mark.parametrize("remasking", list(SCORES))
def test_plain_decoding_follows_schedule_and_remasking_rule(mixing_params, remasking):
  apply_fn, calls = recording(mixing_apply_fn)
  prompt = _prompt()
  run = functools.partial(sampling.generate, mixing_params, apply_fn, prompt,
                          gen_length=G, block_length=N, steps=STEPS, mask_id=MASK,
                          remasking=remasking, return_stats=True)
  tokens, stats = run(jax.random.key(5))
  k_S = np.asarray(sampling.num_transfer_tokens(np.array([N]), S))[0]

  def chosen_fn(t, eligible_BxL, probs_BxLxV):
    k_B = np.full(B, k_S[t % S])
    if SCORES[remasking] is None:  # Random order: only the count is fixed.
      return None
    return _top_k(k_B, eligible_BxL, SCORES[remasking](probs_BxLxV))

  commit_step_BxG = np.asarray(stats["commit_step_BxG"])
  blocks = _check_transitions(calls, tokens, prompt, commit_step_BxG, chosen_fn=chosen_fn)
  assert int(stats["forward_passes"]) == len(calls) == STEPS
  assert blocks == [t // S for t in range(STEPS)]  # Blocks strictly left to right.
  for t in range(STEPS):  # The schedule, exactly, in every row.
    np.testing.assert_array_equal((commit_step_BxG == t).sum(1), k_S[t % S])

  calls.clear()
  again, stats_again = run(jax.random.key(5))
  np.testing.assert_array_equal(again, tokens)  # Deterministic for a fixed key.
  np.testing.assert_array_equal(stats_again["commit_step_BxG"], commit_step_BxG)
  if remasking == "random":  # The key decides the commit order.
    _, other = run(jax.random.key(6))
    assert (np.asarray(other["commit_step_BxG"]) != commit_step_BxG).any()


def test_threshold_decoding_commits_every_confident_token(mixing_params):
  apply_fn, calls = recording(mixing_apply_fn)
  prompt = _prompt()
  threshold = 0.9
  tokens, stats = sampling.generate(
      mixing_params, apply_fn, prompt, jax.random.key(0), gen_length=G, block_length=N,
      steps=STEPS, mask_id=MASK, decoding="threshold", threshold=threshold, return_stats=True)
  counts = []

  def chosen_fn(t, eligible_BxL, probs_BxLxV):
    conf_BxL = np.where(eligible_BxL, probs_BxLxV.max(-1), -np.inf)
    expected_BxL = (conf_BxL > threshold) | _top_k(np.ones(B, int), eligible_BxL, conf_BxL)
    counts.append(expected_BxL.sum(1))
    return expected_BxL & eligible_BxL

  blocks = _check_transitions(calls, tokens, prompt, np.asarray(stats["commit_step_BxG"]),
                              chosen_fn=chosen_fn)
  assert int(stats["forward_passes"]) == len(calls)
  assert blocks == sorted(blocks) and set(blocks) == set(range(G // N))
  # The test is not vacuous: some steps commit several tokens, some only the fallback one.
  counts_T = np.max(counts, axis=1)
  assert counts_T.max() > 1 and len(calls) > G // N


# ---- Faster modes, guidance, EOS ----------------------------------------------------------

TARGET = np.arange(P + G) * 5 % V


@pytest.mark.parametrize("remasking,decoding,cache", [
    ("low_confidence", "plain", "none"),
    ("random", "plain", "none"),
    ("margin", "plain", "none"),
    ("low_confidence", "threshold", "none"),
    ("margin", "plain", "block"),
    ("low_confidence", "threshold", "block"),
])
def test_confident_model_target_is_reproduced(remasking, decoding, cache):
  prompt = _prompt()
  tokens, stats = sampling.generate(
      {"target": jnp.asarray(TARGET)}, target_apply_fn, prompt, jax.random.key(0),
      gen_length=G, block_length=N, steps=STEPS, mask_id=MASK, remasking=remasking,
      decoding=decoding, cache=cache, return_stats=True)
  np.testing.assert_array_equal(tokens[:, :P], prompt)
  np.testing.assert_array_equal(tokens[:, P:], np.broadcast_to(TARGET[P:], (B, G)))
  # Plain decoding takes `steps` passes; every confidence is ~1 > threshold, so threshold
  # decoding fills each block in one pass.
  want = STEPS if decoding == "plain" else G // N
  assert int(stats["forward_passes"]) == want


def test_threshold_with_flat_model_takes_one_pass_per_token():
  flat_apply_fn = lambda params, tokens_BxT, **kw: jnp.zeros(tokens_BxT.shape + (V,))
  _, stats = sampling.generate(
      {}, flat_apply_fn, _prompt(), jax.random.key(0), gen_length=G, block_length=N,
      steps=STEPS, mask_id=MASK, decoding="threshold", threshold=0.5, return_stats=True)
  assert int(stats["forward_passes"]) == G  # p = 1/V < threshold: only the fallback commits.
  np.testing.assert_array_equal(np.sort(stats["commit_step_BxG"], axis=1),
                                np.broadcast_to(np.arange(G), (B, G)))


def test_suppressed_eos_never_generated():
  eos = int(TARGET[P + 1])
  target = {"target": jnp.asarray(TARGET)}
  prompt = jnp.full((B, P), eos)  # EOS in the prompt stays.
  tokens = sampling.generate(target, target_apply_fn, prompt, jax.random.key(0), gen_length=G,
                             block_length=N, steps=STEPS, mask_id=MASK, suppress_eos_id=eos)
  np.testing.assert_array_equal(tokens[:, :P], prompt)
  generated = np.asarray(tokens[:, P:])
  wants_eos_G = TARGET[P:] == eos
  assert wants_eos_G.any() and not (generated == eos).any()
  np.testing.assert_array_equal(generated[:, ~wants_eos_G],  # Elsewhere the target.
                                np.tile(TARGET[P:][~wants_eos_G], (B, 1)))


def test_classifier_free_guidance_extrapolates_from_unconditional():
  # Conditional logits (prompt visible) prefer token 0 slightly, unconditional ones (prompt
  # masked) strongly: l_u + (w + 1)(l_c - l_u) = [1, 0] + 2 [0, 0.9] picks token 1 at w = 1.
  def apply_fn(params, tokens_BxT, **kw):
    prompt_seen_B = (tokens_BxT[:, :P] != MASK).all(1)
    cond_V = jnp.zeros(V).at[0].set(1.0).at[1].set(0.9)
    uncond_V = jnp.zeros(V).at[0].set(1.0)
    logits_BxV = jnp.where(prompt_seen_B[:, None], cond_V, uncond_V)
    return jnp.broadcast_to(logits_BxV[:, None], tokens_BxT.shape + (V,))

  run = functools.partial(sampling.generate, {}, apply_fn, _prompt(), jax.random.key(0),
                          gen_length=G, block_length=N, steps=STEPS, mask_id=MASK)
  np.testing.assert_array_equal(run()[:, P:], 0)
  np.testing.assert_array_equal(run(cfg_scale=1.0)[:, P:], 1)


# ---- The real Transformer: KV caches, padding ---------------------------------------------


CONFIG = transformer.TransformerConfig(
    vocab_size=V, d_model=32, num_layers=2, num_heads=2, num_kv_heads=1, mlp_dim=64,
    rope_theta=10000.0, norm_eps=1e-5, tie_embeddings=False, causal=False)


@pytest.fixture(scope="module")
def two_layer_params():
  """One initialisation serves every real model: the 1-layer one uses block_0 only."""
  init = jax.jit(transformer.Transformer(CONFIG).init)
  return nn.unbox(init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32)))["params"]


def _model(params, *, num_layers, causal):
  """(params, apply_fn) of the real Transformer with the first num_layers blocks."""
  model = transformer.Transformer(dataclasses.replace(CONFIG, num_layers=num_layers,
                                                      causal=causal))
  params = {k: v for k, v in params.items()
            if not k.startswith("block_") or int(k.split("_")[1]) < num_layers}
  return params, lambda p, tokens_BxT, **kw: model.apply({"params": p}, tokens_BxT, **kw)


@pytest.fixture(scope="module")
def one_layer(two_layer_params):
  return _model(two_layer_params, num_layers=1, causal=False)


@pytest.fixture(scope="module")
def two_layers(two_layer_params):
  return _model(two_layer_params, num_layers=2, causal=False)


@pytest.fixture(scope="module")
def causal(two_layer_params):
  return _model(two_layer_params, num_layers=2, causal=True)


def _left_pad(prompt_BxP, pad):
  """The prompt behind `pad` junk tokens marked invalid: (padded_Bx(pad+P), valid)."""
  junk_BxK = jnp.full((prompt_BxP.shape[0], pad), 3, jnp.int32)
  valid_BxK = jnp.arange(pad + prompt_BxP.shape[1]) >= pad
  return (jnp.concatenate([junk_BxK, prompt_BxP], axis=1),
          jnp.broadcast_to(valid_BxK, (prompt_BxP.shape[0], pad + prompt_BxP.shape[1])))


def test_block_cache_is_exact_for_one_layer(one_layer):
  """With one layer, the keys/values of positions outside the block depend only on their own
  tokens, which do not change during the block: the cache is exact, not approximate.
  Left padding marked invalid changes nothing either (RoPE sees only relative positions)."""
  params, apply_fn = one_layer
  prompt = _prompt()
  run = functools.partial(sampling.generate, params, apply_fn, key=jax.random.key(0),
                          gen_length=G, block_length=N, steps=STEPS, mask_id=MASK,
                          cfg_scale=1.0, return_stats=True)
  plain, plain_stats = run(prompt_BxP=prompt, cache="none")
  cached, cached_stats = run(prompt_BxP=prompt, cache="block")
  np.testing.assert_array_equal(cached, plain)
  np.testing.assert_array_equal(cached_stats["commit_step_BxG"], plain_stats["commit_step_BxG"])
  padded, valid = _left_pad(prompt, 2)
  padded_out, padded_stats = run(prompt_BxP=padded, prompt_valid_BxP=valid, cache="block")
  np.testing.assert_array_equal(padded_out[:, 2:], plain)
  np.testing.assert_array_equal(padded_stats["commit_step_BxG"], plain_stats["commit_step_BxG"])


def test_block_cache_first_step_of_each_block_matches(two_layers):
  """With two layers the cache is stale after a block's first step (the other positions'
  deeper keys depend on the block's tokens); only the first step sees exactly the plain inputs.
  (With one step per block the cached forward never runs, so equality there is trivial.)"""
  params, apply_fn = two_layers
  prompt = _prompt()
  run = functools.partial(sampling.generate, params, apply_fn, prompt, jax.random.key(0),
                          gen_length=G, block_length=G, steps=4, mask_id=MASK,
                          return_stats=True)
  plain, plain_stats = run(cache="none")
  cached, cached_stats = run(cache="block")
  first_BxG = np.asarray(plain_stats["commit_step_BxG"]) == 0
  np.testing.assert_array_equal(np.asarray(cached_stats["commit_step_BxG"]) == 0, first_BxG)
  np.testing.assert_array_equal(np.asarray(cached)[:, P:][first_BxG],
                                np.asarray(plain)[:, P:][first_BxG])


def test_sharded_and_unsharded_generation_agree(mixing_params):
  # Sampling noise, guidance's doubled batch and the threshold loop's any() over the batch
  # all cross the sharded batch axis.
  prompt = _prompt(batch=8)
  run = functools.partial(sampling.generate, gen_length=G, block_length=N, steps=STEPS,
                          mask_id=MASK, temperature=0.8, cfg_scale=0.5, decoding="threshold",
                          return_stats=True)
  unsharded, unsharded_stats = run(mixing_params, mixing_apply_fn, prompt, jax.random.key(7))
  mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
  sharded_prompt = jax.device_put(prompt, NamedSharding(mesh, PartitionSpec("data")))
  replicated = NamedSharding(mesh, PartitionSpec())
  sharded, sharded_stats = run(jax.device_put(mixing_params, replicated), mixing_apply_fn,
                               sharded_prompt, jax.device_put(jax.random.key(7), replicated))
  np.testing.assert_array_equal(sharded, unsharded)
  np.testing.assert_array_equal(sharded_stats["commit_step_BxG"],
                                unsharded_stats["commit_step_BxG"])


def test_ar_cache_matches_recomputing_every_step(causal):
  params, apply_fn = causal
  prompt = _prompt()
  cached = sampling.generate_ar(params, apply_fn, prompt, jax.random.key(0), gen_length=G)
  # Reference: a full forward over the whole buffer each step; causality makes the unwritten
  # positions after t irrelevant to the prediction at t.
  forward = jax.jit(apply_fn)
  tokens = np.concatenate([np.asarray(prompt), np.zeros((B, G), np.int32)], axis=1)
  for i in range(G):
    tokens[:, P + i] = np.asarray(forward(params, jnp.asarray(tokens)))[:, P + i - 1].argmax(-1)
  np.testing.assert_array_equal(cached, tokens)
  padded, valid = _left_pad(prompt, 2)
  padded_out = sampling.generate_ar(params, apply_fn, padded, jax.random.key(0), gen_length=G,
                                    prompt_valid_BxP=valid)
  np.testing.assert_array_equal(padded_out[:, 2:], tokens)


def test_ar_stops_at_eos():
  # Next-token toy: the logits at position p point at TARGET[p + 1].
  def next_token_apply_fn(params, tokens_BxT, *, positions_BxL=None, **kw):
    T = tokens_BxT.shape[1]
    positions_BxT = jnp.broadcast_to(jnp.arange(T), tokens_BxT.shape)
    if positions_BxL is not None:
      positions_BxT = positions_BxL
    return target_apply_fn(params, tokens_BxT, positions_BxL=positions_BxT + 1, **kw)

  eos = int(TARGET[P + 2])
  prompt = jnp.asarray(np.broadcast_to(TARGET[:P], (B, P)))
  tokens, stats = sampling.generate_ar(
      {"target": jnp.asarray(np.append(TARGET, 0))}, next_token_apply_fn, prompt,
      jax.random.key(0), gen_length=G, eos_id=eos, temperature=1.0, return_stats=True)
  first_eos = int(np.argmax(TARGET[P:] == eos))
  assert first_eos < G - 1  # The loop really stops early.
  expected = np.concatenate([TARGET[:P + first_eos + 1], np.full(G - first_eos - 1, eos)])
  np.testing.assert_array_equal(tokens, np.broadcast_to(expected, (B, P + G)))
  # The prefill, then one pass per token fed back: every token before the EOS.
  assert int(stats["forward_passes"]) == 1 + first_eos
