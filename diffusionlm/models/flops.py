"""Parameter and training-FLOP counts of the LLaMA-shaped Transformer.

Works on any object with the `TransformerConfig` attributes (`vocab_size`, `d_model`,
`num_layers`, `num_heads`, `num_kv_heads`, `mlp_dim`, `tie_embeddings`), so this module never
imports the model.

Which count the scaling law uses. Both reference codebases size runs with C = 6 N D where N
*includes* the embedding:
- Muennighoff et al. (2023), huggingface/datablations `utils/flops-params_py.py`:
  `simple_flops = 6 * params * D`, `params` counting the (tied) token embedding, position
  embeddings, biases and layer norms.
- Prabhudesai et al. (2025), wmn-231314/diffusion-data-constraint
  `examples_scaling/training/*/example_training_chinchilla.sh`: `DATA_CNT = C / 6 / N` with
  `N = 4 L d^2 + 3 L d F + 6 L d + V d` (one vocab x d matrix); its Megatron logger also
  records a "no embeddings" 6ND curve.
So `six_n_with_embedding` is the default compute axis here; `six_n` (Kaplan et al., 2020,
non-embedding N) and `exact` (matmul count, attention included) are reported alongside so a
sweep can switch its axis without re-running anything.
"""
from typing import Any

_FLOP_KINDS = ("six_n", "six_n_with_embedding", "exact")


def _shape(model_cfg: Any) -> tuple[int, int, int, int, int, int, int]:
  """(V, d, layers, heads, kv_heads, head_dim, mlp_dim), validated."""
  vocab, d, layers = model_cfg.vocab_size, model_cfg.d_model, model_cfg.num_layers
  heads, mlp = model_cfg.num_heads, model_cfg.mlp_dim
  kv_heads = model_cfg.num_kv_heads or heads
  for name, value in (("vocab_size", vocab), ("d_model", d), ("num_layers", layers),
                      ("num_heads", heads), ("mlp_dim", mlp), ("num_kv_heads", kv_heads)):
    if value <= 0:
      raise ValueError(f"model config {name} must be positive, got {value}")
  if d % heads:
    raise ValueError(f"model config d_model={d} is not divisible by num_heads={heads}")
  if heads % kv_heads:
    raise ValueError(f"model config num_heads={heads} is not a multiple of "
                     f"num_kv_heads={kv_heads}")
  return vocab, d, layers, heads, kv_heads, d // heads, mlp


def param_counts(model_cfg: Any) -> dict[str, int]:
  """Exact parameter counts: {"total", "embedding", "non_embedding"}.

  Per layer: two RMSNorm scales (2 d), q and o projections (d x d each), k and v projections
  (d x kv_heads * head_dim each), SwiGLU (3 d x mlp_dim); plus a final RMSNorm (d).
  "embedding" = the input embedding's V + 1 rows (the extra row is the mask token) and, when
  untied, the d x V LM head. Everything else, norms included, is "non_embedding".
  """
  vocab, d, layers, heads, kv_heads, head_dim, mlp = _shape(model_cfg)
  attention = 2 * d * heads * head_dim + 2 * d * kv_heads * head_dim
  per_layer = 2 * d + attention + 3 * d * mlp
  non_embedding = layers * per_layer + d
  embedding = (vocab + 1) * d + (0 if model_cfg.tie_embeddings else d * vocab)
  return {"total": embedding + non_embedding, "embedding": embedding,
          "non_embedding": non_embedding}


def flops_per_token(model_cfg: Any, seq_len: int, *, causal: bool | None = None
                    ) -> dict[str, float]:
  """Training FLOPs per token (forward + backward), three ways.

  - `six_n`: 6 x non-embedding params (Kaplan et al., 2020, C = 6 N D).
  - `six_n_with_embedding`: 6 x all params (Chinchilla; Muennighoff et al., 2023; the paper).
  - `exact`: 3 x the forward matmul FLOPs (backward = 2 x forward), 2 FLOPs per multiply-add:
    q/k/v/o projections, QK^T and AV over the keys each query sees, the SwiGLU matrices and
    the d x V LM head (also when tied). Embedding lookups, norms, RoPE, softmax and
    activations are not matmuls and are not counted.

  Attention keys per query: `causal=None` or `False` counts all `seq_len` keys, which is what
  a dense masked attention executes for the AR and the diffusion model alike (the default,
  so both objectives cost the same); `causal=True` counts only the unmasked lower triangle,
  (seq_len + 1) / 2 keys on average, for kernels that skip masked blocks.
  """
  if seq_len <= 0:
    raise ValueError(f"seq_len must be positive, got {seq_len}")
  vocab, d, layers, heads, kv_heads, head_dim, mlp = _shape(model_cfg)
  counts = param_counts(model_cfg)
  keys_per_query = (seq_len + 1) / 2 if causal else seq_len
  projections = 2 * d * heads * head_dim + 2 * d * kv_heads * head_dim
  scores_and_values = 2 * heads * head_dim * keys_per_query
  forward_macs = layers * (projections + scores_and_values + 3 * d * mlp) + d * vocab
  return {
      "six_n": 6.0 * counts["non_embedding"],
      "six_n_with_embedding": 6.0 * counts["total"],
      "exact": 3.0 * 2.0 * forward_macs,
  }


def training_flops(model_cfg: Any, seq_len: int, tokens: float, *,
                   kind: str = "six_n_with_embedding") -> float:
  """Total training compute C = flops_per_token[kind] x tokens (default C = 6 N D, N total)."""
  if kind not in _FLOP_KINDS:
    raise ValueError(f"kind must be one of {_FLOP_KINDS}, got {kind!r}")
  if tokens < 0:
    raise ValueError(f"tokens must be non-negative, got {tokens}")
  return flops_per_token(model_cfg, seq_len)[kind] * float(tokens)
