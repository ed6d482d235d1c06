"""Tiny networks shared by the RL, sampler and estimator tests (cheap to compile)."""
import jax
import jax.numpy as jnp
import numpy as np


def mixing_apply_fn(params, tokens_BxT, *, valid_BxL=None, **unused):
  """A tiny bidirectional model: every logit depends on its token, position and the mean of
  the valid context (so masking any token changes every prediction)."""
  del unused
  T = tokens_BxT.shape[1]
  h_BxTxD = params["embed"][tokens_BxT] + params["pos"][:T]
  weight_BxT = (jnp.ones(tokens_BxT.shape) if valid_BxL is None
                else valid_BxL.astype(jnp.float32))
  context_BxD = jnp.einsum("bt,btd->bd", weight_BxT, h_BxTxD) / weight_BxT.sum(1, keepdims=True)
  return 3.0 * jnp.tanh(h_BxTxD + context_BxD[:, None]) @ params["out"]


def mixing_params(vocab_size: int, length: int, *, seed: int = 0, width: int = 8):
  """Random parameters of `mixing_apply_fn` for ids 0..vocab_size (the mask id is
  vocab_size) and sequences of up to `length` tokens."""
  rng = np.random.default_rng(seed)
  shapes = {"embed": (vocab_size + 1, width), "pos": (length, width), "out": (width, vocab_size)}
  return {name: jnp.asarray(rng.normal(size=shape), jnp.float32)
          for name, shape in shapes.items()}


def recording(apply_fn):
  """apply_fn that also appends (tokens, logits) of every call to the returned list."""
  calls = []

  def record(tokens_BxT, logits_BxTxV):
    calls.append((np.asarray(tokens_BxT), np.asarray(logits_BxTxV)))

  def recorded_apply_fn(params, tokens_BxT, **kwargs):
    logits_BxTxV = apply_fn(params, tokens_BxT, **kwargs)
    jax.debug.callback(record, tokens_BxT, logits_BxTxV, ordered=True)
    return logits_BxTxV

  return recorded_apply_fn, calls
