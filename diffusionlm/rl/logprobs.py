"""Per-token log-probabilities of a completion under a randomly masked prompt (diffu-GRPO).

A masked diffusion model has no cheap exact log p(completion | prompt). d1 (Zhao et al.
2025, Sec. 3.2) uses a one-step mean-field estimate: the completion is fully masked, each
prompt token is independently masked with probability p_mask_prompt (d1: 0.15), and ONE
forward pass gives

    log pi(o_k | q') = log softmax(f(q' + [mask] * |o|))[k, o_k]        (d1 eq. 4)

for every completion token o_k; the sequence log-probability is the sum over k (the
mean-field factorisation, d1 eq. 3). The random prompt mask q' acts as a regulariser and
lets the mu policy-gradient iterations of one rollout see mu different views (d1 Sec. 3.2).

Completion positions after the first EOS (padding written by the sampler or the data)
carry no weight; the first EOS itself is scored, so the policy learns where to stop.
Shapes: B batch, P prompt, C completion, V real vocabulary (mask id = V).
"""
import jax
import jax.numpy as jnp

from diffusionlm.diffusion import losses


def completion_mask(completion_BxC, *, eos_id: int) -> jax.Array:
  """bool_BxC: True up to and including the first `eos_id` of each row (all True if none).

  Rows run along the last axis, so [M, b, C] micro-batched completions work too.
  """
  is_eos_BxC = completion_BxC == eos_id
  eos_before_BxC = jnp.cumsum(is_eos_BxC, axis=-1) - is_eos_BxC  # EOS strictly before k.
  return eos_before_BxC == 0


def mask_prompt(key, prompt_BxP, *, p_mask_prompt: float, mask_id: int, prompt_valid_BxP=None):
  """(noisy_prompt_BxP, masked_BxP): each valid prompt token is masked w.p. p_mask_prompt.

  Padding (prompt_valid_BxP False) is never masked. The same key gives the same mask.
  """
  p_B = jnp.full(prompt_BxP.shape[:1], p_mask_prompt, jnp.float32)
  return losses.forward_mask(key, prompt_BxP, p_B, mask_id=mask_id,
                             maskable_BxL=prompt_valid_BxP)


def check_rows(prompt_BxP, completion_BxC, *, p_mask_prompt: float) -> None:
  """Raises ValueError unless prompt and completion are 2-D with the same rows and
  p_mask_prompt is a probability."""
  if prompt_BxP.ndim != 2 or completion_BxC.ndim != 2:
    raise ValueError(f"prompt_BxP {tuple(prompt_BxP.shape)} and completion_BxC "
                     f"{tuple(completion_BxC.shape)} must both be 2-D [batch, length].")
  if prompt_BxP.shape[0] != completion_BxC.shape[0]:
    raise ValueError(f"prompt_BxP has {prompt_BxP.shape[0]} rows, completion_BxC "
                     f"{completion_BxC.shape[0]}.")
  if not 0.0 <= p_mask_prompt <= 1.0:
    raise ValueError(f"p_mask_prompt={p_mask_prompt} must be in [0, 1].")


def view_logps(params, apply_fn, noisy_prompt_BxP, completion_BxC, hidden_BxC, *,
               mask_id: int, prompt_valid_BxP=None) -> jax.Array:
  """logp_BxC[b, k] = log pi(completion[b, k] | noisy prompt, the completion with the
  `hidden_BxC` positions replaced by mask_id), every k, from ONE forward pass on B x (P + C)
  tokens through `losses.target_logprobs` (apply_fn may return logits, or the target
  log-probs streamed over chunks: TransformerConfig.logits_chunk_size). Prompt padding
  (prompt_valid_BxP False) is invisible to attention.
  """
  completion_BxC = completion_BxC.astype(jnp.int32)
  tokens_BxL = jnp.concatenate(
      [noisy_prompt_BxP.astype(jnp.int32), jnp.where(hidden_BxC, mask_id, completion_BxC)],
      axis=1)
  valid_BxL = None
  if prompt_valid_BxP is not None:
    valid_BxL = jnp.concatenate([prompt_valid_BxP.astype(bool),
                                 jnp.ones(completion_BxC.shape, bool)], 1)
  return losses.target_logprobs(params, apply_fn, tokens_BxL, completion_BxC,
                                valid_BxL=valid_BxL)


def completion_logps(params, apply_fn, prompt_BxP, completion_BxC, key, *,
                     p_mask_prompt: float, mask_id: int, eos_id: int, prompt_valid_BxP=None):
  """(logp_BxC, completion_mask_BxC): d1 eq. 4 under the prompt mask drawn from `key`.

  logp_BxC[b, k] = log pi(completion[b, k] | masked prompt, fully masked completion) where
  completion_mask_BxC (see `completion_mask`), else 0; logp_BxC.sum(1) is the mean-field
  sequence log-probability (d1 eq. 3). One forward pass (`view_logps`, every completion
  position hidden).
  """
  check_rows(prompt_BxP, completion_BxC, p_mask_prompt=p_mask_prompt)
  noisy_prompt_BxP, _ = mask_prompt(key, prompt_BxP, p_mask_prompt=p_mask_prompt,
                                    mask_id=mask_id, prompt_valid_BxP=prompt_valid_BxP)
  logp_BxC = view_logps(params, apply_fn, noisy_prompt_BxP, completion_BxC,
                        jnp.ones(completion_BxC.shape, bool), mask_id=mask_id,
                        prompt_valid_BxP=prompt_valid_BxP)
  weight_BxC = completion_mask(completion_BxC, eos_id=eos_id)
  return jnp.where(weight_BxC, logp_BxC, 0.0), weight_BxC
