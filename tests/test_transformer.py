"""The Transformer: causality, key padding, KV-cache equivalence, GQA, tying, remat, config."""
import dataclasses
import functools
import importlib.util
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusionlm.models import transformer

V, L = 13, 8
CAUSAL = transformer.TransformerConfig(
    vocab_size=V, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=64,
    rope_theta=10000.0, norm_eps=1e-5, tie_embeddings=False, causal=True)
BIDIRECTIONAL = dataclasses.replace(CAUSAL, causal=False)
TOL = dict(rtol=1e-5, atol=1e-5)


@functools.cache
def forward(config):
  """jit(apply) for one config, returning (logits, kv); shared by all tests."""
  model = transformer.Transformer(config)
  return jax.jit(lambda p, tokens, **kw: model.apply({"params": p}, tokens, return_kv=True, **kw))


@pytest.fixture(scope="module")
def params():
  """One random parameter set; causal and bidirectional models share it (same network).

  Drawn with numpy in the shapes `init` gives (compiling `init` would cost seconds).
  """
  rng = np.random.default_rng(0)
  shapes = nn.unbox(jax.eval_shape(transformer.Transformer(CAUSAL).init, jax.random.key(0),
                                   jnp.zeros((1, L), jnp.int32))["params"])
  return jax.tree_util.tree_map_with_path(
      lambda path, x: jnp.asarray((1.0 if path[-1].key == "scale" else 0.0)
                                  + 0.3 * rng.normal(size=x.shape), jnp.float32), shapes)


@pytest.fixture(scope="module")
def tokens():
  return jnp.asarray(np.random.default_rng(1).integers(0, V + 1, (2, L)))  # With mask ids.


def _full_valid(tokens_BxL):
  """The default valid_BxL and positions_BxL, passed explicitly so calls share a compile."""
  return dict(valid_BxL=jnp.ones(tokens_BxL.shape, bool),
              positions_BxL=jnp.broadcast_to(jnp.arange(tokens_BxL.shape[1]), tokens_BxL.shape))


def test_output_shape_and_dtype(params, tokens):
  logits, kv = forward(CAUSAL)(params, tokens, **_full_valid(tokens))
  assert logits.shape == (2, L, V) and logits.dtype == jnp.float32  # Never predicts the mask.
  assert len(kv) == CAUSAL.num_layers
  assert kv[0][0].shape == kv[0][1].shape == (2, L, CAUSAL.kv_heads, CAUSAL.head_dim)
  assert np.isfinite(np.asarray(logits)).all()


def test_causal_never_looks_ahead_bidirectional_does(params, tokens):
  j = 5
  changed = tokens.at[:, j].set((tokens[:, j] + 1) % V)
  for config in (CAUSAL, BIDIRECTIONAL):
    before = forward(config)(params, tokens, **_full_valid(tokens))[0]
    after = forward(config)(params, changed, **_full_valid(tokens))[0]
    diff_L = np.abs(np.asarray(after - before)).max(axis=(0, 2))
    assert (diff_L[j:] > 1e-4).all()  # The changed token and its successors always see it.
    if config.causal:
      np.testing.assert_array_equal(diff_L[:j], 0.0)
    else:
      assert (diff_L[:j] > 1e-4).all()


def test_invalid_keys_are_never_attended(params, tokens):
  """Left padding (invalid, any ids) leaves the logits of the valid positions unchanged."""
  pad = 3
  padded = jnp.roll(tokens[0], pad).at[:pad].set(jnp.array([0, 5, V]))  # Arbitrary pad ids.
  batch = jnp.stack([tokens[0], padded])  # Row 1 = row 0 shifted behind `pad` invalid slots.
  short_valid = jnp.arange(L) < L - pad
  kw = _full_valid(batch) | dict(valid_BxL=jnp.stack([short_valid, jnp.roll(short_valid, pad)]))
  for config in (CAUSAL, BIDIRECTIONAL):
    logits = forward(config)(params, batch, **kw)[0]
    # RoPE is relative, so shifting every valid position by `pad` keeps the logits.
    np.testing.assert_allclose(logits[1, pad:], logits[0, :L - pad], **TOL)


def test_prefix_kv_causal_equals_full_forward(params, tokens):
  """Feeding the last k tokens with the first L-k tokens' cache reproduces the full pass."""
  k = 3
  full_logits, full_kv = forward(CAUSAL)(params, tokens, **_full_valid(tokens))
  head = tokens[:, :L - k]
  head_logits, head_kv = forward(CAUSAL)(params, head, **_full_valid(head))
  tail_logits, tail_kv = forward(CAUSAL)(
      params, tokens[:, L - k:], valid_BxL=jnp.ones((2, k), bool),
      positions_BxL=jnp.broadcast_to(jnp.arange(L - k, L), (2, k)), prefix_kv=head_kv,
      prefix_valid_BxS=jnp.ones((2, L - k), bool))
  np.testing.assert_allclose(head_logits, full_logits[:, :L - k], **TOL)
  np.testing.assert_allclose(tail_logits, full_logits[:, L - k:], **TOL)
  for (k_full, v_full), (k_tail, v_tail) in zip(full_kv, tail_kv):
    np.testing.assert_allclose(k_tail, k_full[:, L - k:], **TOL)
    np.testing.assert_allclose(v_tail, v_full[:, L - k:], **TOL)


def test_prefix_kv_bidirectional_equals_full_forward(params, tokens):
  """Queries at some positions, the other positions' keys/values as cache (one invalid)."""
  query = np.array([2, 5, 6])
  other = np.setdiff1d(np.arange(L), query)
  valid = jnp.ones((2, L), bool).at[0, other[1]].set(False)
  full_logits, full_kv = forward(BIDIRECTIONAL)(params, tokens,
                                                **_full_valid(tokens) | dict(valid_BxL=valid))
  prefix_kv = tuple((k[:, other], v[:, other]) for k, v in full_kv)
  logits, _ = forward(BIDIRECTIONAL)(
      params, tokens[:, query], valid_BxL=valid[:, query],
      positions_BxL=jnp.broadcast_to(jnp.asarray(query), (2, len(query))),
      prefix_kv=prefix_kv, prefix_valid_BxS=valid[:, other])
  np.testing.assert_allclose(logits, full_logits[:, query], **TOL)


def test_grouped_query_attention_equals_mha_with_shared_kv(params, tokens):
  """GQA (2 kv heads for 4 query heads) = MHA whose kv heads are copies within each group."""
  mha = dataclasses.replace(CAUSAL, num_kv_heads=0)
  group = CAUSAL.num_heads // CAUSAL.kv_heads
  mha_params = jax.tree_util.tree_map_with_path(
      lambda path, x: jnp.repeat(x, group, axis=1)
      if path[-1].key in ("key", "value") else x, params)
  gqa_logits = forward(CAUSAL)(params, tokens, **_full_valid(tokens))[0]
  mha_logits = forward(mha)(mha_params, tokens, **_full_valid(tokens))[0]
  np.testing.assert_allclose(mha_logits, gqa_logits, **TOL)


def test_tied_embeddings_use_the_real_rows_of_the_embedding(params, tokens):
  tied = dataclasses.replace(CAUSAL, tie_embeddings=True)
  tied_params = {k: v for k, v in params.items() if k != "head"}
  as_untied = dict(params, head=params["embedding"][:V].T)
  tied_logits = forward(tied)(tied_params, tokens, **_full_valid(tokens))[0]
  untied_logits = forward(CAUSAL)(as_untied, tokens, **_full_valid(tokens))[0]
  np.testing.assert_allclose(tied_logits, untied_logits, **TOL)


def test_remat_keeps_outputs_and_gradients(params, tokens):
  one_layer = dataclasses.replace(BIDIRECTIONAL, num_layers=1)  # Cheaper to compile.
  one_layer_params = {k: v for k, v in params.items() if k != "block_1"}

  def value_and_grad(remat, p):
    model = transformer.Transformer(dataclasses.replace(one_layer, remat=remat))
    return jax.value_and_grad(lambda p: jnp.mean(jnp.tanh(model.apply({"params": p}, tokens))))(p)

  # One program for the three variants compiles much faster than three.
  results = jax.jit(lambda p: {r: value_and_grad(r, p) for r in transformer.REMAT_POLICIES})(
      one_layer_params)
  for remat in ("full", "dots"):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL), results[remat],
                 results["none"])


def test_dropout_acts_only_when_not_deterministic(params, tokens):
  """Rate 0 or deterministic (the default: evaluation, samplers) = the plain network, bitwise;
  in training mode the masks follow the 'dropout' rng and survive remat's recomputation."""
  one_layer = dataclasses.replace(CAUSAL, num_layers=1)
  one_layer_params = {k: v for k, v in params.items() if k != "block_1"}

  def logits(p, rate, key=None, remat="none"):
    model = transformer.Transformer(dataclasses.replace(one_layer, dropout=rate, remat=remat))
    if key is None:
      return model.apply({"params": p}, tokens)
    return model.apply({"params": p}, tokens, deterministic=False, rngs={"dropout": key})

  def value_and_grad(p, key, remat):
    return jax.value_and_grad(lambda p: jnp.mean(jnp.tanh(logits(p, 0.5, key, remat))))(p)

  k0, k1 = jax.random.key(0), jax.random.key(1)
  out = jax.jit(lambda p: dict(
      plain=logits(p, 0.0), rate0_train=logits(p, 0.0, k0), eval=logits(p, 0.5),
      train0=logits(p, 0.5, k0), train0_again=logits(p, 0.5, k0), train1=logits(p, 0.5, k1),
      grad_none=value_and_grad(p, k0, "none"), grad_full=value_and_grad(p, k0, "full")))(
          one_layer_params)
  for name in ("rate0_train", "eval"):
    np.testing.assert_array_equal(out[name], out["plain"], err_msg=name)
  np.testing.assert_array_equal(out["train0"], out["train0_again"])
  assert np.abs(out["train0"] - out["plain"]).max() > 1e-3
  assert np.abs(out["train1"] - out["train0"]).max() > 1e-3
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL), out["grad_full"],
               out["grad_none"])


def test_bfloat16_compute_gives_float32_logits_close_to_float32(params, tokens):
  bf16 = dataclasses.replace(BIDIRECTIONAL, dtype="bfloat16")
  logits = forward(bf16)(params, tokens, **_full_valid(tokens))[0]
  reference = forward(BIDIRECTIONAL)(params, tokens, **_full_valid(tokens))[0]
  assert logits.dtype == jnp.float32
  np.testing.assert_allclose(logits, reference, atol=0.1 * np.abs(reference).max())
  bf16_params = jax.eval_shape(
      transformer.Transformer(dataclasses.replace(bf16, param_dtype="bfloat16")).init,
      jax.random.key(0), tokens)
  assert {x.dtype for x in jax.tree.leaves(nn.unbox(bf16_params))} == {jnp.dtype(jnp.bfloat16)}


def test_every_parameter_has_logical_axis_names():
  boxed = jax.eval_shape(transformer.Transformer(CAUSAL).init, jax.random.key(0),
                         jnp.zeros((1, L), jnp.int32))["params"]
  specs = nn.get_partition_spec(boxed)
  shapes = nn.unbox(boxed)
  allowed = {"vocab", "embed", "heads", "kv_heads", "head_dim", "mlp"}
  for spec, shape in zip(jax.tree.leaves(specs), jax.tree.leaves(shapes)):
    assert len(spec) == len(shape.shape) and set(spec) <= allowed, (spec, shape)
  assert tuple(specs["embedding"]) == ("vocab", "embed")
  assert shapes["embedding"].shape == (V + 1, CAUSAL.d_model)  # Last row: the mask token.
  assert tuple(specs["head"]) == ("embed", "vocab") and shapes["head"].shape == (32, V)
  assert CAUSAL.mask_id == V


def _base_model_config():
  path = pathlib.Path(__file__).parents[1] / "configs" / "base.py"
  spec = importlib.util.spec_from_file_location("base_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config().model


def test_config_from_base_config():
  model_cfg = _base_model_config()
  config = transformer.config_from_dict(model_cfg, vocab_size=57, causal=False)
  assert config.vocab_size == 57 and config.mask_id == 57 and not config.causal
  assert config.kv_heads == model_cfg.num_heads and config.d_model == model_cfg.d_model
  model_cfg.vocab_size = 57
  assert transformer.config_from_dict(model_cfg, vocab_size=57, causal=True).causal
  model_cfg.vocab_size = 50
  with pytest.raises(ValueError, match=r"vocab_size=50.*vocab_size=57"):
    transformer.config_from_dict(model_cfg, vocab_size=57, causal=True)


@pytest.mark.parametrize("overrides, message", [
    (dict(d_model=30), "d_model=30 is not divisible by num_heads=4"),
    (dict(num_kv_heads=3), "num_heads=4 is not divisible by num_kv_heads=3"),
    (dict(d_model=24, num_heads=8), "even head dimension; .* = 3"),
    (dict(dtype="float8"), "dtype='float8' is not one of"),
    (dict(param_dtype="int8"), "param_dtype='int8' is not one of"),
    (dict(remat="some"), "remat='some' is not one of"),
    (dict(dropout=1.0), r"dropout must be a float in \[0, 1\), got 1.0"),
    (dict(num_layers=0), "num_layers must be a positive int"),
    (dict(num_head=4), r"unknown fields \['num_head'\]"),
])
def test_bad_model_config_raises(overrides, message):
  model_cfg = _base_model_config()
  with model_cfg.unlocked():
    model_cfg.update(overrides)
  with pytest.raises(ValueError, match=message):
    transformer.config_from_dict(model_cfg, vocab_size=11, causal=False)


def test_bad_inputs_raise(params, tokens):
  model = transformer.Transformer(CAUSAL)
  apply = lambda **kw: jax.eval_shape(
      lambda p: model.apply({"params": p}, kw.pop("tokens", tokens), **kw), params)
  with pytest.raises(ValueError, match=r"valid_BxL has shape \(2, 7\)"):
    apply(valid_BxL=jnp.ones((2, L - 1), bool))
  with pytest.raises(ValueError, match="2-D integer"):
    apply(tokens=jnp.zeros((2, L)))
  kv = ((jnp.zeros((2, 4, 2, 8)),) * 2,)
  with pytest.raises(ValueError, match="prefix_kv has 1 layers, the model 2"):
    apply(prefix_kv=kv)
  with pytest.raises(ValueError, match="expected \\(B, S, num_kv_heads, head_dim\\)"):
    apply(prefix_kv=((jnp.zeros((2, 4, 4, 8)),) * 2,) * 2)
  with pytest.raises(ValueError, match="prefix_valid_BxS was given without prefix_kv"):
    apply(prefix_valid_BxS=jnp.ones((2, 4), bool))
