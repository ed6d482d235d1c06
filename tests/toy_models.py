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


def write_random_run(workdir: str, *, objective: str = "mdm", seed: int = 0, scale: float = 0.5,
                     **config_overrides) -> str:
  """A run directory as training leaves it (config.json, an orbax checkpoint of step 0) with
  random parameters: a tiny character-level Transformer (d_model 16, one layer unless
  `model=` overrides it); nothing trained or compiled. `config_overrides` set top-level
  config fields (dicts update a section)."""
  import json  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  from configs import base  # pylint: disable=g-import-not-at-top
  from diffusionlm.train import convert, train_state  # pylint: disable=g-import-not-at-top
  c = base.get_config()
  c.objective = objective
  c.model.update(d_model=16, num_layers=1, num_heads=2, mlp_dim=32)
  for key, value in config_overrides.items():
    if isinstance(value, dict):
      c[key].update(value)
    else:
      c[key] = value
  setup = train_state.build(c, jax.devices()[:1])
  rng = np.random.default_rng(seed)
  params = jax.tree.map(lambda x: (scale * rng.normal(size=x.shape)).astype(x.dtype),
                        setup.abstract_state.params)
  c.model.vocab_size = setup.model_config.vocab_size
  c.model.causal = setup.model_config.causal
  os.makedirs(workdir, exist_ok=True)
  convert.save_params(workdir, params, c.to_dict())
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(c.to_dict(), f)
  return workdir


def direct_request_nll(run, *, seq_len: int, num_mc: int):
  """(context ids, continuation ids, key) -> -log p(continuation | context) of one request
  alone, by losses.mdm_nll / ar_nll (jitted once) on the documented row: the context cut on
  the left to fit `seq_len`, padded to it, the draws keyed by fold_in(key, request_hash)."""
  from diffusionlm import likelihood  # pylint: disable=g-import-not-at-top
  from diffusionlm.diffusion import losses  # pylint: disable=g-import-not-at-top

  @jax.jit
  def nll(tokens, valid, scored, key):
    if run.model_config.causal:
      return losses.ar_nll(run.params, run.apply_fn, tokens, valid_BxL=valid, scored_BxL=scored)
    return losses.mdm_nll(run.params, run.apply_fn, tokens, key, num_mc=num_mc,
                          mask_id=run.model_config.mask_id, valid_BxL=valid, scored_BxL=scored)

  def one(context, continuation, key):
    context = list(context)[max(0, len(context) + len(continuation) - seq_len):]
    n = len(context) + len(continuation)
    tokens = np.zeros((1, seq_len), np.int32)
    tokens[0, :n] = list(context) + list(continuation)
    valid = np.arange(seq_len)[None] < n
    scored = valid & (np.arange(seq_len)[None] >= len(context))
    row_key = jax.random.fold_in(key, likelihood.request_hash(context, continuation))
    return float(nll(tokens, valid, scored, row_key)[0])
  return one
