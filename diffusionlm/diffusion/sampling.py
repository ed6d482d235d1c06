"""Sampling: LLaDA's semi-autoregressive masked-diffusion sampler and a KV-cached AR sampler.

`generate` is LLaDA's reverse process (Nie et al. 2025, semi-autoregressive remasking): the
prompt followed by `gen_length` mask tokens is denoised block by block, left to right; in each
step the model predicts every masked token and the most confident predictions of the current
block are committed, the rest stay masked ("low-confidence remasking"). Two faster modes from
Fast-dLLM (Wu et al. 2025) are selectable:
  decoding="threshold": commit every masked token of the block whose confidence exceeds a
    threshold (at least one per step), so easy blocks take fewer forward passes.
  cache="block": the block-wise approximate KV cache (Fast-dLLM's "DualCache": prefix and
    suffix cached): one full forward per block refreshes the keys/values of all positions;
    the block's later steps run only the block's own tokens against that cache.

`generate_ar` is the causal baseline's sampler: prefill the prompt, then one token per step
against a fixed-size KV cache.

Both are one jit-compiled program with static shapes (lax loops over blocks and steps), pure
in (params, prompt, key), and agnostic of how the batch is sharded. Shapes: B batch, P prompt,
G gen_length, L = P + G, N block_length, V real vocabulary (the mask id is V), S cache length.
"""
import functools

import jax
import jax.numpy as jnp

REMASKING = ("low_confidence", "random", "margin")
DECODING = ("plain", "threshold")
CACHE = ("none", "block")


def num_transfer_tokens(num_masked_B: jax.Array, steps: int) -> jax.Array:
  """Tokens to commit per step, k_BxS: the masked count split evenly over `steps`.

  LLaDA's linear schedule (`get_num_transfer_tokens` in its code): every step commits
  floor(m / steps) tokens and the first (m mod steps) steps one more, so sum_s k[b, s] = m_b.
  """
  num_masked_B = jnp.asarray(num_masked_B, jnp.int32)
  base_B, remainder_B = num_masked_B // steps, num_masked_B % steps
  return base_B[:, None] + (jnp.arange(steps) < remainder_B[:, None]).astype(jnp.int32)


def gumbel_noise(key: jax.Array, shape) -> jax.Array:
  """Standard Gumbel noise in float64 if `jax_enable_x64`, else float32 from 64 random bits.

  LLaDA notes that low-precision Gumbel noise truncates its tail and so lowers the
  effective temperature. float32 noise drawn from 32 bits cannot exceed ~16; JAX's "highest"
  mode draws each value from 64 bits, reaching ~44 (tail probabilities down to 2^-64). The
  remaining float32 caveat is the rounding of logits/T + noise (relative 6e-8), which only
  matters for near-exact ties.
  """
  if jax.config.jax_enable_x64:
    return jax.random.gumbel(key, shape, jnp.float64)
  return jax.random.gumbel(key, shape, jnp.float32, mode="highest")


def sample_tokens(key: jax.Array, logits_BxNxV: jax.Array, temperature: float) -> jax.Array:
  """argmax(logits / T + Gumbel) ~ softmax(logits / T) (Gumbel-max); T = 0 is greedy argmax."""
  if temperature == 0:
    return jnp.argmax(logits_BxNxV, axis=-1).astype(jnp.int32)
  noise_BxNxV = gumbel_noise(key, logits_BxNxV.shape)
  scores_BxNxV = logits_BxNxV.astype(noise_BxNxV.dtype) / temperature + noise_BxNxV
  return jnp.argmax(scores_BxNxV, axis=-1).astype(jnp.int32)


def token_confidence(key: jax.Array, logits_BxNxV: jax.Array, tokens_BxN: jax.Array, *,
                     remasking: str) -> jax.Array:
  """The score that decides which predictions are committed (higher = commit first).

  "low_confidence": p(token) under softmax(logits) (LLaDA's low-confidence remasking);
  "random": uniform noise (LLaDA's random remasking);
  "margin": p(top-1) - p(top-2) (Kim et al. 2025, top-probability margin).
  """
  if remasking == "random":
    return jax.random.uniform(key, tokens_BxN.shape, jnp.float32)
  probs_BxNxV = jax.nn.softmax(logits_BxNxV.astype(jnp.float32), axis=-1)
  if remasking == "low_confidence":
    return jnp.take_along_axis(probs_BxNxV, tokens_BxN[..., None], axis=-1)[..., 0]
  top2_BxNx2 = jax.lax.top_k(probs_BxNxV, 2)[0]
  return top2_BxNx2[..., 0] - top2_BxNx2[..., 1]


def _check_prompt(prompt_BxP, prompt_valid_BxP, *, min_length: int = 0):
  """Raises ValueError unless the prompt is [batch, prompt_len] and its mask matches."""
  if prompt_BxP.ndim != 2 or prompt_BxP.shape[1] < min_length:
    raise ValueError(f"prompt_BxP must be 2-D [batch, prompt_len] with prompt_len >= "
                     f"{min_length}, got shape {tuple(prompt_BxP.shape)}.")
  if prompt_valid_BxP is not None and tuple(prompt_valid_BxP.shape) != tuple(prompt_BxP.shape):
    raise ValueError(f"prompt_valid_BxP has shape {tuple(prompt_valid_BxP.shape)}, "
                     f"prompt_BxP has {tuple(prompt_BxP.shape)}.")


def check_settings(*, gen_length: int, block_length: int, steps: int, mask_id: int,
                   temperature: float = 0.0, remasking: str = "low_confidence",
                   cfg_scale: float = 0.0, suppress_eos_id: int | None = None,
                   decoding: str = "plain", threshold: float = 0.9,
                   cache: str = "none") -> None:
  """Raises ValueError, naming the argument, for settings `generate` cannot run.

  `generate` calls it before compiling; CLIs call it before loading a model.
  """
  if gen_length < 1:
    raise ValueError(f"gen_length must be >= 1, got {gen_length}.")
  if block_length < 1:
    raise ValueError(f"block_length must be >= 1, got {block_length}.")
  if gen_length % block_length:
    raise ValueError(f"gen_length={gen_length} is not divisible by block_length="
                     f"{block_length}.")
  num_blocks = gen_length // block_length
  if steps < num_blocks:
    raise ValueError(f"steps={steps} is fewer than the number of blocks "
                     f"gen_length / block_length = {num_blocks}.")
  if steps % num_blocks:
    raise ValueError(f"steps={steps} is not divisible by the number of blocks "
                     f"gen_length / block_length = {num_blocks}.")
  if mask_id < 0:
    raise ValueError(f"mask_id must be >= 0, got {mask_id}.")
  if suppress_eos_id is not None and not 0 <= suppress_eos_id < mask_id:
    raise ValueError(f"suppress_eos_id={suppress_eos_id} is not a real token id in "
                     f"[0, mask_id={mask_id}).")
  if temperature < 0:
    raise ValueError(f"temperature must be >= 0, got {temperature}.")
  if cfg_scale < 0:
    raise ValueError(f"cfg_scale must be >= 0, got {cfg_scale}.")
  for name, value, allowed in (("remasking", remasking, REMASKING),
                               ("decoding", decoding, DECODING), ("cache", cache, CACHE)):
    if value not in allowed:
      raise ValueError(f"{name}={value!r} is not one of {allowed}.")
  if not 0 < threshold <= 1:
    raise ValueError(f"threshold must be in (0, 1], got {threshold}.")


def check_ar_settings(*, gen_length: int, temperature: float = 0.0) -> None:
  """Raises ValueError, naming the argument, for settings `generate_ar` cannot run."""
  if gen_length < 1:
    raise ValueError(f"gen_length must be >= 1, got {gen_length}.")
  if temperature < 0:
    raise ValueError(f"temperature must be >= 0, got {temperature}.")


def _forward(params, apply_fn, tokens_BxT, *, cfg_scale, mask_id, hide_BxT=None,
             prefix_kv=None, return_kv=False, **row_kwargs):
  """One model call; with cfg_scale > 0 also the unconditional one, combined as in LLaDA.

  Classifier-free guidance as in LLaDA, p ~ p_c^(1+w) / p_u^w, i.e. on logits
  l = l_u + (w + 1) (l_c - l_u), where l_u sees the prompt (`hide_BxT`) replaced by mask
  tokens. The two passes run as one call on 2B rows, conditional rows first; `prefix_kv`
  (from a guided call) already has 2B rows.
  Row arguments left as None are not passed on.
  """
  kwargs = {k: v for k, v in row_kwargs.items() if v is not None}
  if prefix_kv is not None:
    kwargs["prefix_kv"] = prefix_kv
  if return_kv:
    kwargs["return_kv"] = True
  if cfg_scale == 0:
    return apply_fn(params, tokens_BxT, **kwargs)
  uncond_BxT = tokens_BxT if hide_BxT is None else jnp.where(hide_BxT, mask_id, tokens_BxT)
  double = lambda x_BxT: jnp.concatenate([x_BxT, x_BxT], axis=0)
  kwargs.update({k: double(v) for k, v in row_kwargs.items() if v is not None})
  out = apply_fn(params, jnp.concatenate([tokens_BxT, uncond_BxT], axis=0), **kwargs)
  logits_2BxTxV, kv = out if return_kv else (out, None)
  cond_BxTxV, uncond_BxTxV = jnp.split(logits_2BxTxV, 2, axis=0)
  logits_BxTxV = uncond_BxTxV + (cfg_scale + 1.0) * (cond_BxTxV - uncond_BxTxV)
  return (logits_BxTxV, kv) if return_kv else logits_BxTxV


def generate(params, apply_fn, prompt_BxP, key, *, gen_length: int, block_length: int,
             steps: int, mask_id: int, temperature: float = 0.0,
             remasking: str = "low_confidence", cfg_scale: float = 0.0,
             suppress_eos_id: int | None = None, decoding: str = "plain",
             threshold: float = 0.9, cache: str = "none", prompt_valid_BxP=None,
             return_stats: bool = False):
  """LLaDA semi-autoregressive sampling: tokens_Bx(P+G), the prompt followed by G new ids.

  The G generated positions form G / block_length blocks, denoised left to right with
  steps / num_blocks steps each. Each step samples every position of the block (Gumbel-max
  at `temperature`) and scores the predictions by `remasking` (see token_confidence).
  decoding="plain" commits the num_transfer_tokens(...) best-scored masked positions per
  step (LLaDA's linear schedule); decoding="threshold" commits every masked position whose
  score exceeds `threshold`, and at least the best one, until the block is full (`steps` is
  then unused; at most block_length passes per block). Only masked positions of the current
  block are ever committed. cache="block" reuses the keys/values of one full forward per
  block for the block's later steps (an approximation; exact for a 1-layer model).

  apply_fn(params, tokens, **kw) is the model (docs/architecture.md); it is a static argument
  of the compiled program, so pass the same function object to avoid recompiling.
  suppress_eos_id: a token id whose logit is -inf at every generated position.
  prompt_valid_BxP: False on prompt padding (left-pad prompts of different lengths).
  return_stats: also return {"forward_passes": int32 scalar, model calls on the batch (with
    cfg one call covers both passes; with cache="block" num_blocks of them are full-length,
    the rest block-length), "commit_step_BxG": int32, the index of the forward pass whose
    prediction committed each generated token}.
  """
  _check_prompt(prompt_BxP, prompt_valid_BxP)
  check_settings(gen_length=gen_length, block_length=block_length, steps=steps,
                 mask_id=mask_id, temperature=temperature, remasking=remasking,
                 cfg_scale=cfg_scale, suppress_eos_id=suppress_eos_id, decoding=decoding,
                 threshold=threshold, cache=cache)
  tokens_BxL, stats = _generate(
      params, prompt_BxP, key, prompt_valid_BxP, apply_fn=apply_fn, gen_length=gen_length,
      block_length=block_length, steps=steps, mask_id=mask_id, temperature=float(temperature),
      remasking=remasking, cfg_scale=float(cfg_scale), suppress_eos_id=suppress_eos_id,
      decoding=decoding, threshold=float(threshold), cache=cache)
  return (tokens_BxL, stats) if return_stats else tokens_BxL


@functools.partial(jax.jit, static_argnames=(
    "apply_fn", "gen_length", "block_length", "steps", "mask_id", "temperature", "remasking",
    "cfg_scale", "suppress_eos_id", "decoding", "threshold", "cache"))
def _generate(params, prompt_BxP, key, prompt_valid_BxP, *, apply_fn, gen_length,
              block_length, steps, mask_id, temperature, remasking, cfg_scale,
              suppress_eos_id, decoding, threshold, cache):
  """The compiled program behind `generate` (settings already validated)."""
  B, P = prompt_BxP.shape
  G, N = gen_length, block_length
  L = P + G
  num_blocks = G // N
  steps_per_block = steps // num_blocks
  x_BxL = jnp.concatenate(
      [prompt_BxP.astype(jnp.int32), jnp.full((B, G), mask_id, jnp.int32)], axis=1)
  valid_BxL = None
  if prompt_valid_BxP is not None:
    valid_BxL = jnp.concatenate([prompt_valid_BxP.astype(bool), jnp.ones((B, G), bool)], 1)
  hide_BxL = jnp.broadcast_to(jnp.arange(L) < P, (B, L))  # The prompt, for cfg's l_u.
  forward = functools.partial(_forward, params, apply_fn, cfg_scale=cfg_scale,
                              mask_id=mask_id)
  # One key pair (token noise, remasking score) per forward pass; a threshold-decoded block
  # of N tokens takes at most N passes, since every pass commits at least one token.
  max_passes = steps if decoding == "plain" else G
  keys_Tx2 = jax.random.split(key, (max_passes, 2))

  def commit(state, logits_BxNxV, start, k_B):
    """One denoising step on the block at `start`: sample, score, commit the chosen."""
    x_BxL, commit_step_BxG, passes = state
    x_BxN = jax.lax.dynamic_slice_in_dim(x_BxL, start, N, axis=1)
    masked_BxN = x_BxN == mask_id
    if suppress_eos_id is not None:
      logits_BxNxV = logits_BxNxV.at[..., suppress_eos_id].set(-jnp.inf)
    pred_BxN = sample_tokens(keys_Tx2[passes, 0], logits_BxNxV, temperature)
    score_BxN = token_confidence(keys_Tx2[passes, 1], logits_BxNxV, pred_BxN,
                                 remasking=remasking)
    score_BxN = jnp.where(masked_BxN, score_BxN, -jnp.inf)
    rank_BxN = jnp.argsort(jnp.argsort(-score_BxN, axis=1), axis=1)  # 0 = most confident.
    if decoding == "plain":
      chosen_BxN = rank_BxN < k_B[:, None]
    else:
      chosen_BxN = (score_BxN > threshold) | (rank_BxN == 0)
    chosen_BxN &= masked_BxN
    x_BxL = jax.lax.dynamic_update_slice_in_dim(
        x_BxL, jnp.where(chosen_BxN, pred_BxN, x_BxN), start, axis=1)
    old_BxN = jax.lax.dynamic_slice_in_dim(commit_step_BxG, start - P, N, axis=1)
    commit_step_BxG = jax.lax.dynamic_update_slice_in_dim(
        commit_step_BxG, jnp.where(chosen_BxN, passes, old_BxN), start - P, axis=1)
    return x_BxL, commit_step_BxG, passes + 1

  def run_block(b, state):
    start = P + b * N
    block_slice = lambda a: jax.lax.dynamic_slice_in_dim(a, start, N, axis=1)
    full_forward = functools.partial(forward, hide_BxT=hide_BxL, valid_BxL=valid_BxL)
    if cache == "block":
      # Fast-dLLM: a full forward refreshes the cache and its logits serve the block's step 0;
      # later steps run the block alone against the cache of every other position.
      logits_BxLxV, kv = full_forward(state[0], return_kv=True)
      in_block_L = (jnp.arange(L) >= start) & (jnp.arange(L) < start + N)
      prefix_valid_BxL = jnp.broadcast_to(~in_block_L, (B, L))
      if valid_BxL is not None:
        prefix_valid_BxL &= valid_BxL
      positions_BxN = jnp.broadcast_to(start + jnp.arange(N), (B, N))
      cached_forward = lambda x_BxL: forward(
          block_slice(x_BxL), prefix_kv=kv, prefix_valid_BxS=prefix_valid_BxL,
          positions_BxL=positions_BxN)
      predict = lambda i, x_BxL: jax.lax.cond(
          i == 0, lambda: block_slice(logits_BxLxV), lambda: cached_forward(x_BxL))
    else:
      predict = lambda i, x_BxL: block_slice(full_forward(x_BxL))

    if decoding == "plain":
      k_BxS = num_transfer_tokens(jnp.sum(block_slice(state[0]) == mask_id, axis=1),
                                  steps_per_block)
      step = lambda i, s: commit(s, predict(i, s[0]), start, k_BxS[:, i])
      return jax.lax.fori_loop(0, steps_per_block, step, state)
    has_mask = lambda i_s: jnp.any(block_slice(i_s[1][0]) == mask_id)
    step = lambda i_s: (i_s[0] + 1, commit(i_s[1], predict(i_s[0], i_s[1][0]), start, None))
    return jax.lax.while_loop(has_mask, step, (0, state))[1]

  state = (x_BxL, jnp.full((B, G), -1, jnp.int32), jnp.zeros((), jnp.int32))
  x_BxL, commit_step_BxG, passes = jax.lax.fori_loop(0, num_blocks, run_block, state)
  return x_BxL, {"forward_passes": passes, "commit_step_BxG": commit_step_BxG}


def generate_ar(params, apply_fn, prompt_BxP, key, *, gen_length: int,
                temperature: float = 0.0, eos_id: int | None = None, prompt_valid_BxP=None,
                return_stats: bool = False):
  """Autoregressive sampling with a KV cache: tokens_Bx(P+G), x_t ~ softmax(logits_t / T).

  The prompt is prefilled once (return_kv=True); each later step runs only the newest token
  at its position against a fixed-size cache of L = P + G slots (prefix_kv, with
  prefix_valid_BxS marking the filled ones). T = 0 is greedy. After a row emits `eos_id`
  its remaining positions are `eos_id`, and the loop stops once every row has finished.
  prompt_valid_BxP: False on padding; prompts of different lengths must be left-padded so
  that every row's last prompt position is real.
  return_stats: also return {"forward_passes": int32 scalar, model calls on the batch: the
    prefill plus one per token fed back (at most G; fewer when every row stops early)}.
  """
  _check_prompt(prompt_BxP, prompt_valid_BxP, min_length=1)
  check_ar_settings(gen_length=gen_length, temperature=temperature)
  tokens_BxL, passes = _generate_ar(
      params, prompt_BxP, key, prompt_valid_BxP, apply_fn=apply_fn, gen_length=gen_length,
      temperature=float(temperature), eos_id=eos_id)
  return (tokens_BxL, {"forward_passes": passes}) if return_stats else tokens_BxL


@functools.partial(jax.jit, static_argnames=("apply_fn", "gen_length", "temperature",
                                             "eos_id"))
def _generate_ar(params, prompt_BxP, key, prompt_valid_BxP, *, apply_fn, gen_length,
                 temperature, eos_id):
  """The compiled program behind `generate_ar`: (tokens_BxL, forward_passes)."""
  B, P = prompt_BxP.shape
  G = gen_length
  L = P + G
  valid_BxP = (jnp.ones((B, P), bool) if prompt_valid_BxP is None
               else prompt_valid_BxP.astype(bool))
  logits_BxPxV, prompt_kv = apply_fn(params, prompt_BxP.astype(jnp.int32),
                                     valid_BxL=valid_BxP, return_kv=True)
  pad = lambda a_BxPxKxH: jnp.pad(a_BxPxKxH, ((0, 0), (0, G), (0, 0), (0, 0)))
  cache = tuple((pad(k), pad(v)) for k, v in prompt_kv)
  cache_valid_BxL = jnp.concatenate([valid_BxP, jnp.zeros((B, G), bool)], axis=1)
  fill = 0 if eos_id is None else eos_id
  tokens_BxL = jnp.concatenate(
      [prompt_BxP.astype(jnp.int32), jnp.full((B, G), fill, jnp.int32)], axis=1)
  keys_G = jax.random.split(key, G)

  def feed(i, cache, cache_valid_BxL, tokens_BxL):
    """Runs token P + i against the cache; returns its logits and the cache with it added."""
    token_Bx1 = jax.lax.dynamic_slice_in_dim(tokens_BxL, P + i, 1, axis=1)
    logits_Bx1xV, new_kv = apply_fn(
        params, token_Bx1, positions_BxL=jnp.full((B, 1), P + i, jnp.int32), prefix_kv=cache,
        prefix_valid_BxS=cache_valid_BxL, return_kv=True)
    cache = tuple((jax.lax.dynamic_update_slice_in_dim(k, k1, P + i, axis=1),
                   jax.lax.dynamic_update_slice_in_dim(v, v1, P + i, axis=1))
                  for (k, v), (k1, v1) in zip(cache, new_kv))
    return logits_Bx1xV[:, 0], cache, cache_valid_BxL.at[:, P + i].set(True)

  def step(state):
    """Samples token P + i from the carried logits, then (unless last) runs it for i + 1."""
    i, tokens_BxL, cache, cache_valid_BxL, logits_BxV, done_B, passes = state
    token_B = sample_tokens(keys_G[i], logits_BxV[:, None], temperature)[:, 0]
    if eos_id is not None:
      token_B = jnp.where(done_B, eos_id, token_B)
      done_B = done_B | (token_B == eos_id)
    tokens_BxL = tokens_BxL.at[:, P + i].set(token_B)
    more = (i + 1 < G) & ~jnp.all(done_B)
    logits_BxV, cache, cache_valid_BxL = jax.lax.cond(
        more, lambda: feed(i, cache, cache_valid_BxL, tokens_BxL),
        lambda: (logits_BxV, cache, cache_valid_BxL))
    return (i + 1, tokens_BxL, cache, cache_valid_BxL, logits_BxV, done_B,
            passes + more.astype(jnp.int32))

  not_finished = lambda s: (s[0] < G) & ~jnp.all(s[5])
  state = (jnp.zeros((), jnp.int32), tokens_BxL, cache, cache_valid_BxL, logits_BxPxV[:, -1],
           jnp.zeros((B,), bool), jnp.ones((), jnp.int32))
  final = jax.lax.while_loop(not_finished, step, state)
  return final[1], final[6]
