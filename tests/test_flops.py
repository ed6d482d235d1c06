"""Parameter and FLOP counts against hand computations and a real model init."""
import dataclasses
import math

import pytest

from diffusionlm.models import flops


@dataclasses.dataclass(frozen=True)
class Cfg:
  """Duck-typed stand-in for TransformerConfig (only the fields flops.py reads)."""
  vocab_size: int = 11
  d_model: int = 8
  num_layers: int = 2
  num_heads: int = 4
  num_kv_heads: int = 2  # GQA: 2 query heads share each key/value head.
  mlp_dim: int = 24
  tie_embeddings: bool = False
  causal: bool = False


# Hand computation for Cfg(): V=11, d=8, L=2, H=4, K=2, head_dim=8/4=2, F=24.
#   input embedding: (V + 1) * d        = 12 * 8          = 96
#   LM head (untied): d * V             = 8 * 11          = 88
#   per layer:
#     2 RMSNorm scales: 2 * d           = 16
#     q: d * H * hd = 8 * 4 * 2         = 64
#     k: d * K * hd = 8 * 2 * 2         = 32
#     v: d * K * hd                     = 32
#     o: H * hd * d                     = 64
#     SwiGLU: 3 * d * F = 3 * 8 * 24    = 576
#     layer total                       = 784
#   final RMSNorm: d                    = 8
#   non-embedding = 2 * 784 + 8         = 1576
EMBED_IN, HEAD, LAYER, FINAL_NORM = 96, 88, 784, 8
NON_EMBEDDING = 2 * LAYER + FINAL_NORM


def test_param_counts_untied_by_hand():
  counts = flops.param_counts(Cfg())
  assert counts == {"total": EMBED_IN + HEAD + NON_EMBEDDING,
                    "embedding": EMBED_IN + HEAD,
                    "non_embedding": NON_EMBEDDING}


def test_param_counts_tied_drops_only_the_head():
  counts = flops.param_counts(Cfg(tie_embeddings=True))
  assert counts == {"total": EMBED_IN + NON_EMBEDDING, "embedding": EMBED_IN,
                    "non_embedding": NON_EMBEDDING}


def test_gqa_shrinks_k_and_v_only():
  # num_kv_heads=0 means num_heads: k and v grow from 2 to 4 heads of head_dim 2.
  full = flops.param_counts(Cfg(num_kv_heads=0))["non_embedding"]
  gqa = flops.param_counts(Cfg(num_kv_heads=2))["non_embedding"]
  layers, d, head_dim, extra_heads = 2, 8, 2, 4 - 2
  assert full - gqa == layers * 2 * d * extra_heads * head_dim  # k and v, both layers.
  assert flops.param_counts(Cfg(num_kv_heads=4)) == flops.param_counts(Cfg(num_kv_heads=0))


def test_flops_per_token_by_hand():
  seq_len = 16
  # Forward multiply-adds per token, per layer:
  #   q 64 + k 32 + v 32 + o 64          = 192
  #   QK^T: H * hd * seq_len = 4*2*16    = 128
  #   AV:   H * hd * seq_len             = 128
  #   SwiGLU: 3 * d * F                  = 576
  #   layer total                        = 1024
  # LM head: d * V = 88 (counted tied or not). Forward FLOPs = 2 * MACs; training = 3 x fwd.
  forward_macs = 2 * 1024 + 88
  for tied in (False, True):
    got = flops.flops_per_token(Cfg(tie_embeddings=tied), seq_len)
    total = flops.param_counts(Cfg(tie_embeddings=tied))["total"]
    assert got == {"six_n": 6.0 * NON_EMBEDDING, "six_n_with_embedding": 6.0 * total,
                   "exact": 6.0 * forward_macs}


def test_causal_counts_lower_triangle_only_when_asked():
  seq_len = 16
  dense = flops.flops_per_token(Cfg(causal=True), seq_len)["exact"]
  assert dense == flops.flops_per_token(Cfg(causal=False), seq_len)["exact"]
  tri = flops.flops_per_token(Cfg(), seq_len, causal=True)["exact"]
  # Attention MACs per layer drop from 2*H*hd*L to 2*H*hd*(L+1)/2; two layers; x6 FLOPs.
  assert dense - tri == pytest.approx(6 * 2 * (2 * 4 * 2) * (seq_len - (seq_len + 1) / 2))


def test_training_flops_and_errors():
  assert flops.training_flops(Cfg(), 16, 1000) == 6.0 * (EMBED_IN + HEAD + NON_EMBEDDING) * 1000
  assert flops.training_flops(Cfg(), 16, 10, kind="six_n") == 60.0 * NON_EMBEDDING
  with pytest.raises(ValueError, match="kind"):
    flops.training_flops(Cfg(), 16, 10, kind="seven_n")
  with pytest.raises(ValueError, match="num_heads"):
    flops.param_counts(Cfg(num_heads=3))
  with pytest.raises(ValueError, match="num_kv_heads"):
    flops.param_counts(Cfg(num_kv_heads=3))
  with pytest.raises(ValueError, match="seq_len"):
    flops.flops_per_token(Cfg(), 0)


@pytest.mark.parametrize("tied", [False, True])
def test_param_counts_match_real_model(tied):
  """Counts every leaf of an initialised Transformer (skipped until the model exists)."""
  transformer = pytest.importorskip("diffusionlm.models.transformer")
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  fields = {f.name for f in dataclasses.fields(transformer.TransformerConfig)}
  values = dict(vocab_size=11, d_model=8, num_layers=2, num_heads=4, num_kv_heads=2,
                mlp_dim=24, rope_theta=10000.0, norm_eps=1e-5, tie_embeddings=tied,
                causal=False, dtype="float32", param_dtype="float32", remat="none")
  cfg = transformer.TransformerConfig(**{k: v for k, v in values.items() if k in fields})
  model = transformer.Transformer(cfg)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
  leaves = jax.tree.leaves(shapes["params"])
  assert sum(math.prod(leaf.shape) for leaf in leaves) == flops.param_counts(cfg)["total"]
