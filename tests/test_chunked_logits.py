"""Streaming the LM head over sequence chunks: same losses and gradients, less memory."""
import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusionlm.diffusion import losses
from diffusionlm.models import transformer

V, L, B = 11, 12, 4
MODEL = transformer.TransformerConfig(
    vocab_size=V, d_model=32, num_layers=2, num_heads=2, num_kv_heads=1, mlp_dim=64,
    rope_theta=10000.0, norm_eps=1e-5, tie_embeddings=False, causal=False)
CHUNKS = (4, 5)  # Divides L = 12; does not (the last chunk is padded).


def _apply_fn(config):
  model = transformer.Transformer(config)
  return lambda p, tokens_BxL, **kw: model.apply({"params": p}, tokens_BxL, **kw)


@pytest.fixture(scope="module")
def data():
  """(params, tokens_BxL, valid_BxL, prompt_len_B); rows 2 and 3 end in padding."""
  rng = np.random.default_rng(0)
  shapes = jax.eval_shape(transformer.Transformer(MODEL).init, jax.random.key(0),
                          jnp.zeros((1, L), jnp.int32))["params"]
  params = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32),
                        nn.unbox(shapes))  # Large: the predictions are far from uniform.
  tokens_BxL = jnp.asarray(rng.integers(0, V, (B, L)), jnp.int32)
  valid_BxL = jnp.arange(L)[None, :] < jnp.array([L, L, 9, 5])[:, None]
  return params, tokens_BxL, valid_BxL, jnp.array([3, 0, 4, 2])


def _grads_close(actual, desired):
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=2e-4, atol=1e-5), actual,
               desired)
  assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(desired)) > 1e-2  # Not trivial.


@pytest.mark.parametrize("chunk_size, num_targets", [(4, L), (5, 7)])
def test_target_logprobs_and_their_gradients_equal_the_full_logits_path(
    chunk_size, num_targets, data):
  """The model's target path (any chunking, the last T <= L positions, out-of-range targets
  clipped) equals log_softmax of the full logits, values and vector-Jacobian products."""
  params, tokens, valid, _ = data
  targets_BxT = jnp.roll(tokens, 1, axis=1)[:, :num_targets].at[0, 0].set(V + 3)
  cotangent_BxT = jnp.asarray(np.random.default_rng(1).normal(size=targets_BxT.shape))
  apply_fn = _apply_fn(dataclasses.replace(MODEL, logits_chunk_size=chunk_size))
  logits_only = lambda p, t, *, targets_BxT, **kw: apply_fn(p, t, **kw)  # A plain network.

  def value_and_vjp(fn):
    logp_BxT, vjp = jax.vjp(
        lambda p: losses.target_logprobs(p, fn, tokens, targets_BxT, valid_BxL=valid), params)
    return logp_BxT, vjp(cotangent_BxT)[0]

  logp_BxT, grads = value_and_vjp(apply_fn)
  expected_BxT, expected_grads = value_and_vjp(logits_only)
  logits_BxLxV = apply_fn(params, tokens, valid_BxL=valid)
  np.testing.assert_allclose(expected_BxT, jnp.take_along_axis(
      jax.nn.log_softmax(logits_BxLxV[:, L - num_targets:]),
      jnp.minimum(targets_BxT, V - 1)[..., None], axis=-1)[..., 0], rtol=1e-6)
  np.testing.assert_allclose(logp_BxT, expected_BxT, rtol=2e-5, atol=2e-5)
  _grads_close(grads, expected_grads)


@pytest.fixture(scope="module")
def unchunked(data):
  return _objectives(0, data)


def _objectives(chunk_size, data):
  """{name: (value, gradient)} of every objective of losses.py, logits in chunks (eager:
  compiling four gradients costs more than running them)."""
  params, tokens, valid, prompt_len = data
  config = dataclasses.replace(MODEL, logits_chunk_size=chunk_size)
  apply_fn, causal_apply_fn = _apply_fn(config), _apply_fn(dataclasses.replace(config, causal=True))
  key, mask_id = jax.random.key(1), config.mask_id
  runs = {
      "mdm_loss": lambda p: losses.mdm_loss(p, apply_fn, tokens, key, mask_id=mask_id,
                                            random_length_prob=0.5, valid_BxL=valid)[0],
      "sft_loss": lambda p: losses.sft_loss(p, apply_fn, tokens, prompt_len, key,
                                            mask_id=mask_id, valid_BxL=valid)[0],
      "ar_loss": lambda p: losses.ar_loss(p, causal_apply_fn, tokens, valid_BxL=valid)[0],
  }
  out = {name: jax.value_and_grad(fn)(params) for name, fn in runs.items()}
  # An evaluation measure: its value only (a gradient would cost a second compiled map).
  out["mdm_nll"] = (losses.mdm_nll(params, apply_fn, tokens, key, mask_id=mask_id, num_mc=2,
                                   valid_BxL=valid), None)
  return out


def test_chunked_losses_and_gradients_equal_unchunked(data, unchunked):
  """Chunk 5 does not divide L = 12: the padded last chunk must not change anything."""
  chunked = _objectives(5, data)
  for name, (value, grads) in unchunked.items():
    assert np.all(np.isfinite(value) & (value > 0)), name
    np.testing.assert_allclose(chunked[name][0], value, rtol=2e-5, err_msg=name)
    if grads is not None:
      _grads_close(chunked[name][1], grads)


def test_chunking_keeps_no_full_logits_array_in_the_step():
  """Compiled temporary memory of d/d(x, W) sum log p(targets) (LM head, V = 8192): the
  unchunked step holds >= one B x L x V float32 array, the chunked one less than half one."""
  b, l, d, v = 2, 256, 64, 8192
  logits_bytes = b * l * v * 4

  def temp_bytes(chunk_size):
    step = jax.grad(lambda x, w, t: transformer.streamed_target_logprobs(
        x, w, t, chunk_size=chunk_size).sum(), argnums=(0, 1))
    shapes = (jax.ShapeDtypeStruct((b, l, d), jnp.float32),
              jax.ShapeDtypeStruct((d, v), jnp.float32), jax.ShapeDtypeStruct((b, l), jnp.int32))
    return jax.jit(step).lower(*shapes).compile().memory_analysis().temp_size_in_bytes

  assert temp_bytes(0) >= logits_bytes
  assert temp_bytes(32) < logits_bytes / 2


def test_bad_arguments_raise(data):
  params, tokens, _, _ = data
  with pytest.raises(ValueError, match="logits_chunk_size must be an int >= 0"):
    dataclasses.replace(MODEL, logits_chunk_size=-1)
  apply_fn = _apply_fn(MODEL)
  with pytest.raises(ValueError, match=r"targets_BxT must be a 2-D integer array .*\(4, 13\)"):
    jax.eval_shape(lambda: apply_fn(params, tokens, targets_BxT=jnp.zeros((B, L + 1), int)))
  with pytest.raises(ValueError, match=r"targets_BxT \(4, 13\) must be 2-D"):
    losses.target_logprobs(params, apply_fn, tokens, jnp.zeros((B, L + 1), jnp.int32))
  with pytest.raises(ValueError, match=r"apply_fn returned shape \(4,\)"):
    losses.target_logprobs(params, lambda p, t, **kw: t[:, 0], tokens, tokens)
