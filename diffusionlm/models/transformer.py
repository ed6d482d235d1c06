"""One Transformer for both objectives: LLaDA / LLaMA shape, causal or bidirectional.

Pre-norm blocks x + Attn(RMSNorm(x)), x + SwiGLU(RMSNorm(x)) without biases (Touvron et al.
2023; LLaDA, Nie et al. 2025, Table 5), rotary position embeddings (Su et al. 2021) and
grouped-query attention (Ainslie et al. 2023). `causal=True` is the autoregressive baseline,
`causal=False` the masked-diffusion model; nothing else differs.

`dropout` > 0 drops the attention probabilities and each residual branch's output (attention,
MLP) before it is added (Srivastava et al. 2014; Vaswani et al. 2017, Sec. 5.4). It acts
only when the model is called with `deterministic=False` and a 'dropout' rng, which only the
training step does; evaluation and the samplers use the default `deterministic=True`.

The embedding has `vocab_size + 1` rows: the last one, id `vocab_size` (= `config.mask_id`),
is the mask token. The output head covers only the `vocab_size` real ids, so the model can
never predict the mask token. Logits are float32 whatever the compute dtype.

Losses need only log p(target) per position, never the B x L x V logits. Called with
`targets_BxT`, the model returns those log-probs; with `logits_chunk_size > 0` it computes
them chunk by chunk along the sequence, each chunk's logits recomputed in the backward pass
instead of stored (StreamBP's LM-head streaming, Luo et al. 2025), so peak memory holds one
B x chunk x V block instead of B x L x V.

`attention` picks the attention kernel (`attend`: the einsum reference, or
jax.nn.dot_product_attention, i.e. cuDNN flash attention on GPU); `scan_layers` runs the
blocks as one nn.scan (`layer_stack`), so compile time does not grow with depth. The two
parameter layouts convert into each other with models/layer_layout.py.
"""
import dataclasses
import math
import numbers
from collections.abc import Mapping
from typing import Any

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
# "dots" keeps the outputs of the weight matmuls and recomputes attention scores, whose
# memory grows with L^2 (MaxText's "minimal" policy).
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
_NEG_INF = -1e30  # Finite, so a query with no visible key gives a uniform row, not NaN.
# How attention is computed (`attend`): "einsum" = the reference (B x heads x L x T float32
# scores materialised); "dot_product" = jax.nn.dot_product_attention (cuDNN flash attention
# on GPU where its constraints hold, XLA's implementation elsewhere); "auto" = the fastest
# path that computes the same function on the current backend (`resolve_attention`).
ATTENTION_KERNELS = ("auto", "einsum", "dot_product")
LAYERS = "blocks"  # Name of the stacked (scanned) layers in the params tree.


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Static model settings; validated on construction."""
  vocab_size: int  # Real vocabulary V; the mask token is the extra id V.
  d_model: int
  num_layers: int
  num_heads: int
  num_kv_heads: int  # 0 = num_heads (no grouped-query attention).
  mlp_dim: int  # SwiGLU hidden width.
  rope_theta: float
  norm_eps: float
  tie_embeddings: bool
  causal: bool  # True = AR baseline, False = bidirectional diffusion model.
  dtype: str = "float32"  # Compute dtype.
  param_dtype: str = "float32"
  remat: str = "none"  # "none" | "full" | "dots", per block.
  logits_chunk_size: int = 0  # Target log-probs over sequence chunks of this size; 0 = off.
  attention: str = "auto"  # One of ATTENTION_KERNELS.
  scan_layers: bool = False  # The blocks as one nn.scan (params stacked under LAYERS).
  dropout: float = 0.0  # Attention-probability and residual dropout rate; 0 = off.

  def __post_init__(self):
    positive = ("vocab_size", "d_model", "num_layers", "num_heads", "mlp_dim")
    for name in positive:
      value = getattr(self, name)
      if not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"TransformerConfig.{name} must be a positive int, got {value!r}.")
    if not isinstance(self.num_kv_heads, numbers.Integral) or self.num_kv_heads < 0:
      raise ValueError(f"TransformerConfig.num_kv_heads must be an int >= 0 (0 = num_heads), "
                       f"got {self.num_kv_heads!r}.")
    if self.d_model % self.num_heads:
      raise ValueError(f"TransformerConfig.d_model={self.d_model} is not divisible by "
                       f"num_heads={self.num_heads}.")
    if self.head_dim % 2:
      raise ValueError(f"Rotary embeddings need an even head dimension; d_model / num_heads = "
                       f"{self.d_model} / {self.num_heads} = {self.head_dim}.")
    if self.num_heads % self.kv_heads:
      raise ValueError(f"TransformerConfig.num_heads={self.num_heads} is not divisible by "
                       f"num_kv_heads={self.num_kv_heads}.")
    if not self.rope_theta > 0 or not self.norm_eps > 0:
      raise ValueError(f"TransformerConfig.rope_theta={self.rope_theta} and "
                       f"norm_eps={self.norm_eps} must be > 0.")
    for name in ("dtype", "param_dtype"):
      if getattr(self, name) not in DTYPES:
        raise ValueError(f"TransformerConfig.{name}={getattr(self, name)!r} is not one of "
                         f"{sorted(DTYPES)}.")
    if not isinstance(self.logits_chunk_size, numbers.Integral) or self.logits_chunk_size < 0:
      raise ValueError(f"TransformerConfig.logits_chunk_size must be an int >= 0 (0 = off), "
                       f"got {self.logits_chunk_size!r}.")
    if not (isinstance(self.dropout, numbers.Real) and 0.0 <= self.dropout < 1.0):
      raise ValueError(f"TransformerConfig.dropout must be a float in [0, 1), got "
                       f"{self.dropout!r}.")
    if self.remat not in REMAT_POLICIES:
      raise ValueError(f"TransformerConfig.remat={self.remat!r} is not one of "
                       f"{sorted(REMAT_POLICIES)}.")
    if self.attention not in ATTENTION_KERNELS:
      raise ValueError(f"TransformerConfig.attention={self.attention!r} is not one of "
                       f"{list(ATTENTION_KERNELS)}.")
    if not isinstance(self.scan_layers, bool):
      raise ValueError(f"TransformerConfig.scan_layers must be a bool, got "
                       f"{self.scan_layers!r}.")

  @property
  def mask_id(self) -> int:
    return self.vocab_size

  @property
  def kv_heads(self) -> int:
    """Number of key/value heads, with 0 resolved to num_heads."""
    return self.num_kv_heads or self.num_heads

  @property
  def head_dim(self) -> int:
    return self.d_model // self.num_heads


_CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(TransformerConfig))


def config_from_dict(model_cfg: Mapping[str, Any], *, vocab_size: int,
                     causal: bool) -> TransformerConfig:
  """Builds the config from `config.model` (diffusionlm/config_defaults.py), the
  tokenizer's size and the attention direction.

  `model_cfg.vocab_size == 0` means "take it from the tokenizer" and `model_cfg.causal`
  None means "take `causal`"; any other value must equal `vocab_size` / `causal`.
  """
  fields = dict(model_cfg.items())
  unknown = sorted(set(fields) - set(_CONFIG_FIELDS))
  missing = sorted(set(_CONFIG_FIELDS) - set(fields))
  if unknown or missing:
    raise ValueError(f"config.model: unknown fields {unknown}, missing fields {missing}; "
                     f"expected exactly {list(_CONFIG_FIELDS)}.")
  if fields["vocab_size"] not in (0, vocab_size):
    raise ValueError(f"config.model.vocab_size={fields['vocab_size']} disagrees with the "
                     f"tokenizer's vocab_size={vocab_size} (use 0 to take the tokenizer's).")
  if fields["causal"] not in (None, causal):
    raise ValueError(f"config.model.causal={fields['causal']} disagrees with causal={causal}.")
  return TransformerConfig(**{**fields, "vocab_size": vocab_size, "causal": causal})


def _param(module: nn.Module, name: str, shape, axes, init):
  """A parameter of `shape` whose dimensions carry the logical axis names `axes`."""
  dtype = DTYPES[module.config.param_dtype]
  return module.param(name, nn.with_logical_partitioning(init, axes), shape, dtype)


def _fan_in(num_in_dims: int = 1):
  """LeCun-normal init of a kernel whose first `num_in_dims` dimensions are its inputs.

  Drawn as a 2-D matrix and reshaped (like nn.DenseGeneral): the same distribution, and
  XLA compiles 2-D random draws much faster than 3-D ones on CPU.
  """
  def init(key, shape, dtype=jnp.float32):
    flat_shape = (math.prod(shape[:num_in_dims]), math.prod(shape[num_in_dims:]))
    return nn.initializers.lecun_normal()(key, flat_shape, dtype).reshape(shape)
  return init


def rope_angles(positions_BxL: jax.Array, head_dim: int, theta: float):
  """cos and sin of the rotary angles pos * theta^(-2i/H), i < H/2 (Su et al. eq. 34)."""
  half = head_dim // 2
  inv_freq_H2 = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angle_BxLxH2 = positions_BxL.astype(jnp.float32)[..., None] * inv_freq_H2
  return jnp.cos(angle_BxLxH2), jnp.sin(angle_BxLxH2)


def apply_rope(x_BxLxNxH: jax.Array, cos_BxLxH2: jax.Array, sin_BxLxH2: jax.Array):
  """Rotates the pairs (x_i, x_{i+H/2}) by the position angles (LLaMA's rotate-half layout)."""
  x1, x2 = jnp.split(x_BxLxNxH.astype(jnp.float32), 2, axis=-1)
  cos, sin = cos_BxLxH2[:, :, None, :], sin_BxLxH2[:, :, None, :]
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return rotated.astype(x_BxLxNxH.dtype)


class RMSNorm(nn.Module):
  """y = x / sqrt(mean(x^2) + eps) * scale (Zhang & Sennrich 2019), computed in float32."""
  config: TransformerConfig

  @nn.compact
  def __call__(self, x_BxLxD):
    scale_D = _param(self, "scale", (x_BxLxD.shape[-1],), ("embed",), nn.initializers.ones)
    x = x_BxLxD.astype(jnp.float32)
    y = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.config.norm_eps)
    return (y * scale_D.astype(jnp.float32)).astype(DTYPES[self.config.dtype])


def resolve_attention(kernel: str) -> str:
  """"auto" -> "dot_product" on GPU (cuDNN flash attention), "einsum" elsewhere (where
  jax.nn.dot_product_attention has no fused kernel and runs the same XLA computation)."""
  if kernel != "auto":
    return kernel
  return "dot_product" if jax.default_backend() == "gpu" else "einsum"


_LOGGED = set()


def _log_once(message: str) -> None:
  if message not in _LOGGED:
    _LOGGED.add(message)
    logging.warning(message)


def _dot_product_implementation(q_BxLxNxH, T: int, masked: bool) -> str:
  """"cudnn" where cuDNN's flash attention can compute the call, else "xla" (said once).

  The constraints are those `jax.nn.dot_product_attention(implementation="cudnn")` checks:
  bfloat16/float16 inputs, a head dimension <= 128 that is a multiple of 8 and, with a mask
  (turned into an additive bias), even query and key lengths.
  """
  if jax.default_backend() != "gpu":
    return "xla"
  L, H = q_BxLxNxH.shape[1], q_BxLxNxH.shape[3]
  reason = None
  if q_BxLxNxH.dtype not in (jnp.bfloat16, jnp.float16):
    reason = f"{q_BxLxNxH.dtype} inputs (it needs bfloat16 or float16)"
  elif H > 128 or H % 8:
    reason = f"head dimension {H} (it needs <= 128 and a multiple of 8)"
  elif masked and (L % 2 or T % 2):
    reason = f"a mask with odd lengths (queries {L}, keys {T})"
  if reason is None:
    return "cudnn"
  _log_once(f"attention=dot_product: cuDNN flash attention cannot take {reason}; these calls "
            "use XLA's dot_product_attention (same values, scores materialised).")
  return "xla"


def attend(q_BxLxNxH, k_BxTxKxH, v_BxTxKxH, mask_BxLxT, *, causal: bool, kernel: str,
           drop_probs=None):
  """softmax(q k^T / sqrt(H) + mask) v (Vaswani et al. 2017, eq. 1) with grouped-query heads:
  query head n reads kv head n // (N / K). Softmax in float32, output in q's dtype.

  mask_BxLxT[b, i, j]: query i may see key j. None: every key is visible, or with `causal`
  (then T = L) key j <= i, which fused kernels compute without a mask. kernel: "einsum" (the
  reference) or "dot_product" (`jax.nn.dot_product_attention`). drop_probs: dropout of the
  attention probabilities (training with config.dropout), which only the einsum kernel
  computes: a dot_product kernel falls back to it while dropout is on.
  """
  B, L, N, H = q_BxLxNxH.shape
  T, K = k_BxTxKxH.shape[1], k_BxTxKxH.shape[2]
  if kernel == "dot_product" and drop_probs is not None:
    _log_once("attention=dot_product with model.dropout > 0: the training step's attention "
              "uses the einsum kernel (fused kernels do not drop attention probabilities); "
              "evaluation and sampling keep dot_product.")
  elif kernel == "dot_product":
    implementation = _dot_product_implementation(q_BxLxNxH, T, mask_BxLxT is not None)
    return jax.nn.dot_product_attention(
        q_BxLxNxH, k_BxTxKxH, v_BxTxKxH,
        mask=None if mask_BxLxT is None else mask_BxLxT[:, None],
        is_causal=causal and mask_BxLxT is None, implementation=implementation)
  if kernel not in ("einsum", "dot_product"):
    raise ValueError(f"attend: kernel={kernel!r} is not 'einsum' or 'dot_product'.")
  if mask_BxLxT is None and causal:
    mask_BxLxT = jnp.tril(jnp.ones((L, T), bool))[None]
  q_BxLxKxGxH = q_BxLxNxH.reshape(B, L, K, N // K, H)
  scores_BxKxGxLxT = jnp.einsum("blkgh,btkh->bkglt", q_BxLxKxGxH, k_BxTxKxH,
                                preferred_element_type=jnp.float32) / math.sqrt(H)
  if mask_BxLxT is not None:
    scores_BxKxGxLxT = jnp.where(mask_BxLxT[:, None, None], scores_BxKxGxLxT, _NEG_INF)
  probs_BxKxGxLxT = jax.nn.softmax(scores_BxKxGxLxT, axis=-1).astype(q_BxLxNxH.dtype)
  if drop_probs is not None:
    probs_BxKxGxLxT = drop_probs(probs_BxKxGxLxT)
  out_BxLxKxGxH = jnp.einsum("bkglt,btkh->blkgh", probs_BxKxGxLxT, v_BxTxKxH)
  return out_BxLxKxGxH.reshape(B, L, N, H)


class Attention(nn.Module):
  """softmax(q k^T / sqrt(H) + mask) v over the cached prefix and the tokens themselves."""
  config: TransformerConfig

  @nn.compact
  def __call__(self, x_BxLxD, cos_BxLxH2, sin_BxLxH2, mask_BxLxT, prefix_k, prefix_v,
               deterministic: bool = True):
    c = self.config
    dtype = DTYPES[c.dtype]
    D, N, K, H = c.d_model, c.num_heads, c.kv_heads, c.head_dim
    w_q = _param(self, "query", (D, N, H), ("embed", "heads", "head_dim"), _fan_in())
    w_k = _param(self, "key", (D, K, H), ("embed", "kv_heads", "head_dim"), _fan_in())
    w_v = _param(self, "value", (D, K, H), ("embed", "kv_heads", "head_dim"),
                 _fan_in())
    w_o = _param(self, "out", (N, H, D), ("heads", "head_dim", "embed"), _fan_in(2))

    q_BxLxNxH = jnp.einsum("bld,dnh->blnh", x_BxLxD, w_q.astype(dtype))
    k_BxLxKxH = jnp.einsum("bld,dkh->blkh", x_BxLxD, w_k.astype(dtype))
    v_BxLxKxH = jnp.einsum("bld,dkh->blkh", x_BxLxD, w_v.astype(dtype))
    q_BxLxNxH = apply_rope(q_BxLxNxH, cos_BxLxH2, sin_BxLxH2)
    k_BxLxKxH = apply_rope(k_BxLxKxH, cos_BxLxH2, sin_BxLxH2)

    k_BxTxKxH, v_BxTxKxH = k_BxLxKxH, v_BxLxKxH  # T = S cached keys + L own keys.
    if prefix_k is not None:
      k_BxTxKxH = jnp.concatenate([prefix_k.astype(dtype), k_BxLxKxH], axis=1)
      v_BxTxKxH = jnp.concatenate([prefix_v.astype(dtype), v_BxLxKxH], axis=1)

    drop_probs = None
    if c.dropout > 0 and not deterministic:
      drop_probs = lambda probs: nn.Dropout(c.dropout)(probs, deterministic=False)
    out_BxLxNxH = attend(q_BxLxNxH, k_BxTxKxH, v_BxTxKxH, mask_BxLxT, causal=c.causal,
                         kernel=resolve_attention(c.attention), drop_probs=drop_probs)
    out_BxLxD = jnp.einsum("blnh,nhd->bld", out_BxLxNxH, w_o.astype(dtype))
    return out_BxLxD, (k_BxLxKxH, v_BxLxKxH)


class Mlp(nn.Module):
  """SwiGLU: (silu(x W_gate) * (x W_up)) W_down (Shazeer 2020, eq. 6)."""
  config: TransformerConfig

  @nn.compact
  def __call__(self, x_BxLxD):
    c = self.config
    dtype = DTYPES[c.dtype]
    w_gate = _param(self, "gate", (c.d_model, c.mlp_dim), ("embed", "mlp"), _fan_in())
    w_up = _param(self, "up", (c.d_model, c.mlp_dim), ("embed", "mlp"), _fan_in())
    w_down = _param(self, "down", (c.mlp_dim, c.d_model), ("mlp", "embed"), _fan_in())
    gate_BxLxF = jnp.einsum("bld,df->blf", x_BxLxD, w_gate.astype(dtype))
    up_BxLxF = jnp.einsum("bld,df->blf", x_BxLxD, w_up.astype(dtype))
    return jnp.einsum("blf,fd->bld", nn.silu(gate_BxLxF) * up_BxLxF, w_down.astype(dtype))


class Block(nn.Module):
  """x + Drop(Attn(RMSNorm(x))), then x + Drop(Mlp(RMSNorm(x))); also returns this block's
  (k, v) (None without `return_kv`: a scan would otherwise stack every layer's keys and
  values). Dropout acts only when `deterministic` is False."""
  config: TransformerConfig
  return_kv: bool = True
  activation_sharding: Any = None  # See Transformer.
  deterministic: bool = True

  @nn.compact
  def __call__(self, x_BxLxD, cos_BxLxH2, sin_BxLxH2, mask_BxLxT, prefix_k, prefix_v):
    drop = lambda y: nn.Dropout(self.config.dropout)(y, deterministic=self.deterministic)
    h_BxLxD, kv = Attention(self.config, name="attn")(
        RMSNorm(self.config, name="attn_norm")(x_BxLxD), cos_BxLxH2, sin_BxLxH2, mask_BxLxT,
        prefix_k, prefix_v, deterministic=self.deterministic)
    x_BxLxD = x_BxLxD + drop(h_BxLxD)
    x_BxLxD = x_BxLxD + drop(Mlp(self.config, name="mlp")(
        RMSNorm(self.config, name="mlp_norm")(x_BxLxD)))
    return shard_activations(x_BxLxD, self.activation_sharding), kv if self.return_kv else None


def shard_activations(x_BxLxD, sharding):
  """x constrained to `sharding` (rows over the data-parallel axes) where given.

  Without it XLA may keep the activations split along d_model like the FSDP-sharded
  weights, so that every device computes the whole batch's logits (measured: 8x the LM
  head's memory on 8 devices).
  """
  return x_BxLxD if sharding is None else jax.lax.with_sharding_constraint(x_BxLxD, sharding)


def layer_stack(config: TransformerConfig, x_BxLxD, cos_BxLxH2, sin_BxLxH2, mask_BxLxT,
                prefix_kv, *, return_kv: bool, activation_sharding=None,
                deterministic: bool = True):
  """The num_layers blocks (called inside Transformer's compact scope) -> (x, kv).

  Unrolled: submodules block_0 ... block_{n-1}. Scanned (`scan_layers`): one nn.scan named
  LAYERS whose parameters carry a leading `layers` axis, so the program holds one block
  whatever the depth; its 'params' and 'dropout' rngs are split per layer. Both take and
  give kv as a tuple over layers of (k_BxLxKxH, v_BxLxKxH).
  """
  c = config
  policy = REMAT_POLICIES[c.remat]
  if not c.scan_layers:
    block_cls = Block if c.remat == "none" else nn.remat(Block, policy=policy)
    kv = []
    for i in range(c.num_layers):
      prefix_k, prefix_v = (None, None) if prefix_kv is None else prefix_kv[i]
      block = block_cls(c, activation_sharding=activation_sharding,
                        deterministic=deterministic, name=f"block_{i}")
      x_BxLxD, kv_i = block(x_BxLxD, cos_BxLxH2, sin_BxLxH2, mask_BxLxT, prefix_k, prefix_v)
      kv.append(kv_i)
    return x_BxLxD, tuple(kv)
  block_cls = Block if c.remat == "none" else nn.remat(Block, policy=policy, prevent_cse=False)
  scanned = nn.scan(block_cls, variable_axes={"params": 0},
                    split_rngs={"params": True, "dropout": True},
                    in_axes=(nn.broadcast, nn.broadcast, nn.broadcast, 0, 0),
                    length=c.num_layers, metadata_params={nn.PARTITION_NAME: "layers"})
  prefix_k_NxBxSxKxH = prefix_v_NxBxSxKxH = None
  if prefix_kv is not None:
    prefix_k_NxBxSxKxH = jnp.stack([k for k, _ in prefix_kv])
    prefix_v_NxBxSxKxH = jnp.stack([v for _, v in prefix_kv])
  blocks = scanned(c, return_kv=return_kv, activation_sharding=activation_sharding,
                   deterministic=deterministic, name=LAYERS)
  x_BxLxD, kv = blocks(
      x_BxLxD, cos_BxLxH2, sin_BxLxH2, mask_BxLxT, prefix_k_NxBxSxKxH, prefix_v_NxBxSxKxH)
  if not return_kv:
    return x_BxLxD, ()
  k_NxBxLxKxH, v_NxBxLxKxH = kv
  return x_BxLxD, tuple((k_NxBxLxKxH[i], v_NxBxLxKxH[i]) for i in range(c.num_layers))


def attention_mask(valid_BxL, prefix_valid_BxS, *, causal: bool):
  """mask_BxLxT[b, i, j]: query i may see key j of [S cached keys, L own keys].

  A key is visible iff it is valid; in causal mode own key j also needs j <= i (all valid
  cached keys stay visible).
  """
  B, L = valid_BxL.shape
  S = prefix_valid_BxS.shape[1]
  key_valid_BxT = jnp.concatenate([prefix_valid_BxS, valid_BxL], axis=1)
  mask_BxLxT = jnp.broadcast_to(key_valid_BxT[:, None, :], (B, L, S + L))
  if causal:
    own_LxL = jnp.tril(jnp.ones((L, L), bool))
    mask_BxLxT = mask_BxLxT & jnp.concatenate([jnp.ones((L, S), bool), own_LxL], axis=1)
  return mask_BxLxT


def _head_logits(x_BxTxD, head_DxV):
  return jnp.einsum("btd,dv->btv", x_BxTxD, head_DxV, preferred_element_type=jnp.float32)


def _target_logprobs(x_BxTxD, head_DxV, targets_BxT):
  """(log softmax(x W_head)[target], logsumexp(x W_head)) per position, in float32."""
  logits_BxTxV = _head_logits(x_BxTxD, head_DxV)
  target_logit_BxT = jnp.take_along_axis(logits_BxTxV, targets_BxT[..., None], axis=-1)[..., 0]
  lse_BxT = jax.nn.logsumexp(logits_BxTxV, axis=-1)
  return target_logit_BxT - lse_BxT, lse_BxT


@jax.custom_vjp
def _chunked_target_logprobs(x_NxBxCxD, head_DxV, targets_NxBxC):
  """_target_logprobs of each of N chunks; see `streamed_target_logprobs`."""
  return _chunked_fwd(x_NxBxCxD, head_DxV, targets_NxBxC)[0]


def _chunked_fwd(x_NxBxCxD, head_DxV, targets_NxBxC):
  """A scan over chunks that keeps each chunk's logsumexp (B x C floats), not its logits."""
  _, (logp_NxBxC, lse_NxBxC) = jax.lax.scan(
      lambda _, xt: (None, _target_logprobs(xt[0], head_DxV, xt[1])), None,
      (x_NxBxCxD, targets_NxBxC))
  return logp_NxBxC, (x_NxBxCxD, head_DxV, targets_NxBxC, lse_NxBxC)


def _chunked_bwd(residuals, g_NxBxC):
  """Recomputes each chunk's logits; d logp / d logits = onehot(target) - softmax(logits).

  The matmuls are those autodiff gives the unchunked path (float32 cotangent, float32
  results); the head gradient is summed over chunks in float32.
  """
  x_NxBxCxD, head_DxV, targets_NxBxC, lse_NxBxC = residuals

  def chunk(dhead_DxV, inputs):
    x_BxCxD, targets_BxC, lse_BxC, g_BxC = inputs
    probs_BxCxV = jnp.exp(_head_logits(x_BxCxD, head_DxV) - lse_BxC[..., None])
    onehot_BxCxV = jax.nn.one_hot(targets_BxC, head_DxV.shape[1], dtype=jnp.float32)
    dlogits_BxCxV = (onehot_BxCxV - probs_BxCxV) * g_BxC[..., None]
    dx_BxCxD = jnp.einsum("bcv,dv->bcd", dlogits_BxCxV, head_DxV,
                          preferred_element_type=jnp.float32)
    dhead_DxV += jnp.einsum("bcd,bcv->dv", x_BxCxD, dlogits_BxCxV,
                            preferred_element_type=jnp.float32)
    return dhead_DxV, dx_BxCxD.astype(x_BxCxD.dtype)

  dhead_DxV, dx_NxBxCxD = jax.lax.scan(
      chunk, jnp.zeros(head_DxV.shape, jnp.float32),
      (x_NxBxCxD, targets_NxBxC, lse_NxBxC, g_NxBxC))
  return dx_NxBxCxD, dhead_DxV.astype(head_DxV.dtype), None


_chunked_target_logprobs.defvjp(_chunked_fwd, _chunked_bwd)


def streamed_target_logprobs(x_BxTxD, head_DxV, targets_BxT, *, chunk_size: int):
  """log softmax(x W_head)[target] in float32, chunk_size positions at a time (0 = all).

  StreamBP's LM-head streaming (Luo et al. 2025, Sec. 3.2): a scan over sequence chunks
  whose forward pass keeps only each chunk's logsumexp, and whose backward pass recomputes
  the chunk's B x chunk x V logits and adds its share of the head gradient, so no B x T x V
  array exists at once. Values and gradients equal the unchunked ones up to float summation
  order. T need not be a multiple of chunk_size: the last chunk is zero-padded and its
  padding dropped.
  """
  B, T, D = x_BxTxD.shape
  if chunk_size == 0 or chunk_size >= T:
    return _target_logprobs(x_BxTxD, head_DxV, targets_BxT)[0]
  num_chunks = -(-T // chunk_size)
  pad = num_chunks * chunk_size - T
  x_BxTxD = jnp.pad(x_BxTxD, ((0, 0), (0, pad), (0, 0)))
  targets_BxT = jnp.pad(targets_BxT, ((0, 0), (0, pad)))
  x_NxBxCxD = x_BxTxD.reshape(B, num_chunks, chunk_size, D).swapaxes(0, 1)
  targets_NxBxC = targets_BxT.reshape(B, num_chunks, chunk_size).swapaxes(0, 1)
  logp_NxBxC = _chunked_target_logprobs(x_NxBxCxD, head_DxV, targets_NxBxC)
  return logp_NxBxC.swapaxes(0, 1).reshape(B, num_chunks * chunk_size)[:, :T]


class Transformer(nn.Module):
  """tokens_BxL (ids in [0, V], V = mask) -> float32 logits_BxLxV over the V real ids, or
  with `targets_BxT` the float32 log-probs logp_BxT of those targets.

  activation_sharding: a sharding of the B x L x D activations (train_state.build gives rows
  over the mesh's data-parallel axes), applied after the embedding and every block; None
  leaves placement to XLA.
  """
  config: TransformerConfig
  activation_sharding: Any = None

  def _check_inputs(self, tokens_BxL, valid_BxL, positions_BxL, prefix_kv, prefix_valid_BxS,
                    targets_BxT):
    c = self.config
    if tokens_BxL.ndim != 2 or not jnp.issubdtype(tokens_BxL.dtype, jnp.integer):
      raise ValueError(f"tokens_BxL must be a 2-D integer array, got {tokens_BxL.dtype}"
                       f"{tuple(tokens_BxL.shape)}.")
    if targets_BxT is not None and (
        targets_BxT.ndim != 2 or not jnp.issubdtype(targets_BxT.dtype, jnp.integer)
        or targets_BxT.shape[0] != tokens_BxL.shape[0]
        or targets_BxT.shape[1] > tokens_BxL.shape[1]):
      raise ValueError(f"targets_BxT must be a 2-D integer array with the rows of tokens_BxL "
                       f"{tuple(tokens_BxL.shape)} and at most as many columns, got "
                       f"{targets_BxT.dtype}{tuple(targets_BxT.shape)}.")
    for name, x in (("valid_BxL", valid_BxL), ("positions_BxL", positions_BxL)):
      if x is not None and x.shape != tokens_BxL.shape:
        raise ValueError(f"{name} has shape {tuple(x.shape)}, tokens_BxL has "
                         f"{tuple(tokens_BxL.shape)}.")
    if prefix_kv is None:
      if prefix_valid_BxS is not None:
        raise ValueError("prefix_valid_BxS was given without prefix_kv.")
      return
    if len(prefix_kv) != c.num_layers:
      raise ValueError(f"prefix_kv has {len(prefix_kv)} layers, the model {c.num_layers}.")
    B = tokens_BxL.shape[0]
    S = prefix_kv[0][0].shape[1]
    want = (B, S, c.kv_heads, c.head_dim)
    for i, (k, v) in enumerate(prefix_kv):
      if tuple(k.shape) != want or tuple(v.shape) != want:
        raise ValueError(f"prefix_kv[{i}] has k{tuple(k.shape)}, v{tuple(v.shape)}; expected "
                         f"(B, S, num_kv_heads, head_dim) = {want}.")
    if prefix_valid_BxS is not None and tuple(prefix_valid_BxS.shape) != (B, S):
      raise ValueError(f"prefix_valid_BxS has shape {tuple(prefix_valid_BxS.shape)}, "
                       f"expected {(B, S)}.")

  @nn.compact
  def __call__(self, tokens_BxL, *, valid_BxL=None, positions_BxL=None, prefix_kv=None,
               prefix_valid_BxS=None, return_kv=False, targets_BxT=None, deterministic=True):
    """Logits, and with `return_kv` the tuple over layers of this call's (k, v) (k rotated).

    targets_BxT: instead of logits return logp_BxT = log p(targets_BxT | tokens) at the last
      T <= L positions (T = L: all of them), computed over chunks of
      `config.logits_chunk_size` positions (`streamed_target_logprobs`). Targets outside
      [0, V) are clipped into it, so padding may hold any id (weight it 0).

    valid_BxL: False marks keys no query may attend to (padding).
    positions_BxL: RoPE positions, default arange(L).
    prefix_kv / prefix_valid_BxS: cached (k_BxSxKxH, v_BxSxKxH) per layer that every query
      also attends to where valid (keys already rotated by their own positions).
    deterministic: False applies `config.dropout` (needs a 'dropout' rng in `apply`).
    """
    c = self.config
    self._check_inputs(tokens_BxL, valid_BxL, positions_BxL, prefix_kv, prefix_valid_BxS,
                       targets_BxT)
    B, L = tokens_BxL.shape
    given_valid = valid_BxL is not None
    if valid_BxL is None:
      valid_BxL = jnp.ones((B, L), bool)
    if positions_BxL is None:
      positions_BxL = jnp.broadcast_to(jnp.arange(L), (B, L))
    S = 0 if prefix_kv is None else prefix_kv[0][0].shape[1]
    if prefix_valid_BxS is None:
      prefix_valid_BxS = jnp.ones((B, S), bool)

    # V + 1 rows: the last one (id V = mask_id) embeds the mask token.
    embedding_V1xD = _param(self, "embedding", (c.vocab_size + 1, c.d_model),
                            ("vocab", "embed"), nn.initializers.normal(stddev=c.d_model**-0.5))
    x_BxLxD = jnp.take(embedding_V1xD, tokens_BxL, axis=0).astype(DTYPES[c.dtype])
    x_BxLxD = shard_activations(x_BxLxD, self.activation_sharding)
    cos_BxLxH2, sin_BxLxH2 = rope_angles(positions_BxL, c.head_dim, c.rope_theta)
    # No padding and no cache: no mask (causal or not), which fused kernels take as is.
    mask_BxLxT = None
    if given_valid or prefix_kv is not None:
      mask_BxLxT = attention_mask(valid_BxL.astype(bool), prefix_valid_BxS.astype(bool),
                                  causal=c.causal)
    x_BxLxD, kv = layer_stack(c, x_BxLxD, cos_BxLxH2, sin_BxLxH2, mask_BxLxT, prefix_kv,
                              return_kv=return_kv, activation_sharding=self.activation_sharding,
                              deterministic=deterministic)
    x_BxLxD = RMSNorm(c, name="final_norm")(x_BxLxD)

    if c.tie_embeddings:
      head_DxV = embedding_V1xD[:c.vocab_size].T
    else:
      head_DxV = _param(self, "head", (c.d_model, c.vocab_size), ("embed", "vocab"),
                        _fan_in())
    head_DxV = head_DxV.astype(x_BxLxD.dtype)
    if targets_BxT is None:
      out = jnp.einsum("bld,dv->blv", x_BxLxD, head_DxV, preferred_element_type=jnp.float32)
    else:
      T = targets_BxT.shape[1]
      out = streamed_target_logprobs(x_BxLxD[:, L - T:], head_DxV,
                                     jnp.clip(targets_BxT, 0, c.vocab_size - 1),
                                     chunk_size=c.logits_chunk_size)
    return (out, kv) if return_kv else out
