"""Attention kernels and the scanned layer stack compute what the reference paths compute.

- attention="dot_product" (jax.nn.dot_product_attention) equals the einsum reference in value
  and gradient for bidirectional, causal, padded, grouped-query and KV-cached calls, and the
  samplers give the same tokens with it;
- scan_layers=True equals the unrolled model with the same weights (logits, kv, loss,
  gradients, samplers), and the layouts convert into each other (layer_layout).
"""
import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import numerics
from diffusionlm.diffusion import sampling
from diffusionlm.models import layer_layout, transformer
from diffusionlm.train import sharding

V, L, S = 13, 8, 5  # Vocabulary, tokens, cached prefix length.
GQA = transformer.TransformerConfig(
    vocab_size=V, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=64,
    rope_theta=10000.0, norm_eps=1e-5, tie_embeddings=False, causal=False,
    attention="einsum")
MHA = dataclasses.replace(GQA, num_kv_heads=0)
REL = 1e-5  # float32: the kernels differ only in summation order.


def _config(base, **changes):
  return dataclasses.replace(base, **changes)


@functools.cache
def _apply(config):
  model = transformer.Transformer(config)
  return jax.jit(lambda p, tokens, **kw: model.apply({"params": p}, tokens, **kw),
                 static_argnames="return_kv")


def _params(config, seed=0):
  """Random parameters in `config`'s layout (numpy draws: no init compile)."""
  rng = np.random.default_rng(seed)
  shapes = nn.unbox(jax.eval_shape(transformer.Transformer(config).init, jax.random.key(0),
                                   jnp.zeros((1, L), jnp.int32))["params"])
  return jax.tree_util.tree_map_with_path(
      lambda path, x: jnp.asarray((1.0 if path[-1].key == "scale" else 0.0)
                                  + 0.3 * rng.normal(size=x.shape), jnp.float32), shapes)


def _inputs(seed=1):
  rng = np.random.default_rng(seed)
  tokens_BxL = jnp.asarray(rng.integers(0, V + 1, (2, L)), jnp.int32)
  valid_BxL = jnp.asarray(np.arange(L)[None] >= np.array([[0], [3]]))  # Row 1: left padding.
  return tokens_BxL, valid_BxL


def _loss_and_grads(config, params, tokens_BxL, **kw):
  """A scalar of all logits (fixed random weights) and its gradient w.r.t. the params."""
  w_BxLxV = jnp.asarray(np.random.default_rng(2).normal(size=(2, L, V)), jnp.float32)
  model = transformer.Transformer(config)
  loss = lambda p: jnp.sum(model.apply({"params": p}, tokens_BxL, **kw) * w_BxLxV)
  return jax.jit(jax.value_and_grad(loss))(params)


CASES = {  # name: (base config, causal, pass valid_BxL)
    "bidirectional": (MHA, False, False),
    "causal": (MHA, True, False),
    "padded": (MHA, False, True),
    "causal_padded_gqa": (GQA, True, True),
    "gqa": (GQA, False, False),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_dot_product_equals_einsum_value_and_gradient(case):
  base, causal, padded = CASES[case]
  einsum = _config(base, causal=causal)
  params = _params(einsum)
  tokens_BxL, valid_BxL = _inputs()
  kw = dict(valid_BxL=valid_BxL) if padded else {}
  want = _loss_and_grads(einsum, params, tokens_BxL, **kw)
  got = _loss_and_grads(_config(einsum, attention="dot_product"), params, tokens_BxL, **kw)
  numerics.assert_close_at_scale(got, want, rel=REL)


@pytest.mark.parametrize("causal", [False, True])
def test_cached_call_equals_across_kernels_and_layouts(causal):
  """A call against a prefix KV cache (padded prefix, GQA): every kernel and layout gives the
  reference's logits and new (k, v)."""
  reference = _config(GQA, causal=causal)
  params = _params(reference)
  rng = np.random.default_rng(3)
  prefix_kv = tuple((jnp.asarray(rng.normal(size=(2, S, 2, 8)), jnp.float32),
                     jnp.asarray(rng.normal(size=(2, S, 2, 8)), jnp.float32))
                    for _ in range(GQA.num_layers))
  kw = dict(prefix_kv=prefix_kv, prefix_valid_BxS=jnp.asarray(np.arange(S)[None] >= [[0], [2]]),
            positions_BxL=jnp.broadcast_to(S + jnp.arange(L), (2, L)), return_kv=True)
  tokens_BxL, _ = _inputs()
  want = _apply(reference)(params, tokens_BxL, **kw)
  for attention in ("einsum", "dot_product"):
    for scan in (False, True):
      config = _config(reference, attention=attention, scan_layers=scan)
      p = layer_layout.to_layout(params, layer_layout.model_layout(scan))
      got = _apply(config)(p, tokens_BxL, **kw)
      numerics.assert_close_at_scale(got, want, rel=REL, err_msg=f"{attention} scan={scan}")


@pytest.mark.parametrize("remat", ["none", "full"])
def test_scanned_model_equals_unrolled_with_same_weights(remat):
  unrolled = _config(GQA, causal=False, remat=remat)
  scanned = _config(unrolled, scan_layers=True)
  params = _params(unrolled)
  stacked = layer_layout.to_layout(params, layer_layout.SCANNED)
  assert set(stacked) == {"embedding", "blocks", "final_norm", "head"}
  tokens_BxL, valid_BxL = _inputs()
  want_loss, want_grads = _loss_and_grads(unrolled, params, tokens_BxL, valid_BxL=valid_BxL)
  loss, grads = _loss_and_grads(scanned, stacked, tokens_BxL, valid_BxL=valid_BxL)
  numerics.assert_close_at_scale(loss, want_loss, rel=REL)
  numerics.assert_close_at_scale(layer_layout.to_layout(grads, layer_layout.UNROLLED),
                                 want_grads, rel=REL)
  want_kv = _apply(unrolled)(params, tokens_BxL, return_kv=True)[1]
  numerics.assert_close_at_scale(_apply(scanned)(stacked, tokens_BxL, return_kv=True)[1],
                                 want_kv, rel=REL)


def test_dropout_in_every_kernel_and_layout():
  """model.dropout: deterministic calls (evaluation, samplers) are the plain network in both
  layouts; in training the dot_product kernel falls back to einsum (same values for the same
  'dropout' rng), and the scanned stack's masks follow the rng."""
  base = _config(GQA, causal=True, dropout=0.5)
  params = _params(base)
  stacked = layer_layout.to_layout(params, layer_layout.SCANNED)
  tokens_BxL, valid_BxL = _inputs()
  plain = _apply(_config(base, dropout=0.0))(params, tokens_BxL, valid_BxL=valid_BxL)

  def run(scan, attention, key=None):
    model = transformer.Transformer(_config(base, scan_layers=scan, attention=attention))
    p = stacked if scan else params
    if key is None:
      return model.apply({"params": p}, tokens_BxL, valid_BxL=valid_BxL)
    return model.apply({"params": p}, tokens_BxL, valid_BxL=valid_BxL, deterministic=False,
                       rngs={"dropout": key})

  k0, k1 = jax.random.key(0), jax.random.key(1)
  for scan in (False, True):
    numerics.assert_close_at_scale(run(scan, "dot_product"), plain, rel=REL)
    train = run(scan, "einsum", k0)
    numerics.assert_close_at_scale(run(scan, "dot_product", k0), train, rel=REL,
                                   err_msg=f"scan={scan}")
    np.testing.assert_array_equal(run(scan, "einsum", k0), train)
    assert np.abs(train - plain).max() > 1e-3 and np.abs(run(scan, "einsum", k1) - train).max() > 1e-3


def test_scanned_init_has_the_unrolled_shapes_stacked_and_logical_axes():
  """Scanned parameters carry a leading `layers` axis (unsharded) and otherwise the unrolled
  parameters' shapes and shardings: converting one abstract tree gives the other."""
  mesh = sharding.make_mesh(ml_mesh(fsdp=2, tensor=2), jax.devices()[:4])
  unrolled = sharding.abstract_params(transformer.Transformer(GQA), mesh)
  scanned = sharding.abstract_params(
      transformer.Transformer(_config(GQA, scan_layers=True)), mesh)
  describe = lambda tree: jax.tree.map(lambda a: (a.shape, a.dtype, a.sharding.spec), tree)
  assert describe(layer_layout.to_layout(unrolled, layer_layout.SCANNED)) == describe(scanned)
  assert describe(layer_layout.to_layout(scanned, layer_layout.UNROLLED)) == describe(unrolled)
  assert scanned["blocks"]["attn"]["query"].sharding.spec == jax.sharding.PartitionSpec(
      None, "fsdp", "tensor", None)  # layers, embed, heads, head_dim.


def ml_mesh(**sizes):
  import ml_collections  # pylint: disable=g-import-not-at-top
  return ml_collections.ConfigDict({"data": 1, "fsdp": 1, "tensor": 1, **sizes})


def test_layout_conversion_covers_optimizer_state_and_round_trips():
  import optax  # pylint: disable=g-import-not-at-top
  params = _params(GQA)
  opt_state = optax.adamw(1e-3).init(params)
  scanned = layer_layout.to_layout({"params": params, "opt": opt_state}, layer_layout.SCANNED)
  assert layer_layout.layout_of(scanned) == layer_layout.SCANNED
  mu = scanned["opt"][0].mu
  assert "blocks" in mu and not any(k.startswith("block_") for k in mu)
  back = layer_layout.to_layout(scanned, layer_layout.UNROLLED)
  jax.tree.map(np.testing.assert_array_equal, back, {"params": params, "opt": opt_state})
  with pytest.raises(ValueError, match="block_0"):
    layer_layout.to_layout({"block_0": {}, "block_2": {}}, layer_layout.SCANNED)


SAMPLER_CONFIG = dataclasses.replace(MHA, vocab_size=16, num_heads=2, num_kv_heads=1,
                                     causal=False)


def _sampler_model(attention, scan, causal=False):
  config = _config(SAMPLER_CONFIG, attention=attention, scan_layers=scan, causal=causal)
  model = transformer.Transformer(config)
  return lambda p, tokens, **kw: model.apply({"params": p}, tokens, **kw)


def test_samplers_give_identical_tokens_across_kernels_and_layouts():
  """The block-cached diffusion sampler (left-padded prompt) and the AR KV-cache sampler:
  reference (einsum, unrolled) vs both options on (each is checked alone above)."""
  params = _params(SAMPLER_CONFIG, seed=4)
  rng = np.random.default_rng(5)
  prompt_BxP = jnp.asarray(rng.integers(0, 16, (2, 6)), jnp.int32)
  valid_BxP = jnp.asarray(np.arange(6)[None] >= [[0], [2]])
  outputs = {}
  for attention, scan in (("einsum", False), ("dot_product", True)):
    p = layer_layout.to_layout(params, layer_layout.model_layout(scan))
    diffusion = sampling.generate(
        p, _sampler_model(attention, scan), prompt_BxP, jax.random.key(0),
        prompt_valid_BxP=valid_BxP, gen_length=8, block_length=4, steps=4, mask_id=16,
        cache="block")
    ar = sampling.generate_ar(p, _sampler_model(attention, scan, causal=True), prompt_BxP,
                              jax.random.key(0), prompt_valid_BxP=valid_BxP, gen_length=4)
    outputs[attention] = (np.asarray(diffusion), np.asarray(ar))
  np.testing.assert_array_equal(outputs["dot_product"][0], outputs["einsum"][0])
  np.testing.assert_array_equal(outputs["dot_product"][1], outputs["einsum"][1])
  assert (outputs["einsum"][0][:, 6:] != 16).all()  # Every position generated.


def test_auto_attention_resolves_per_backend_and_bad_names_raise():
  want = "dot_product" if jax.default_backend() == "gpu" else "einsum"
  assert transformer.resolve_attention("auto") == want
  assert transformer.resolve_attention("einsum") == "einsum"
  with pytest.raises(ValueError, match="attention='flash'"):
    _config(GQA, attention="flash")
  with pytest.raises(ValueError, match="scan_layers"):
    _config(GQA, scan_layers=1)
