"""Training objectives and likelihood estimates: masked diffusion (MDM), SFT and AR.

All functions are pure and jit-able. `apply_fn(params, tokens_BxL, **kw)` is the network
(see models/transformer.py), called through `target_logprobs` with `valid_BxL=` for key
padding and `targets_BxT=` for the ids to score: it returns their log-probs logp_BxT (our
Transformer, which can stream its LM head over sequence chunks so the B x L x V logits never
exist), or simply logits_BxLxV, which `target_logprobs` reduces (any research network). The
mask token `mask_id` must lie outside the V ids the network predicts. Losses are in nats per
token; `metrics` always holds `loss` and `bits_per_token` (= loss / ln 2).

The MDM loss is the Monte-Carlo estimate of the continuous-time negative ELBO

    NELBO(x) = E_{t ~ U(0,1)} E_{x_t} [ w(t) sum_{i: x_t^i = mask} -log p_theta(x^i | x_t) ]

(LLaDA, Nie et al. 2025, eq. 3; MDLM eq. 10; MD4 eq. 5) with p(t) and w(t) from
schedules.py, where w = 1/p(t) for the linear schedule.
"""
import math
import numbers

import jax
import jax.numpy as jnp

from diffusionlm.diffusion import schedules


def _check_tokens(tokens_BxL, valid_BxL, name="valid_BxL") -> jax.Array:
  """Checks shapes; returns the mask `valid_BxL` as bool (all True when None)."""
  if tokens_BxL.ndim != 2:
    raise ValueError(f"tokens_BxL must be 2-D, got shape {tuple(tokens_BxL.shape)}.")
  if valid_BxL is None:
    return jnp.ones(tokens_BxL.shape, bool)
  if valid_BxL.shape != tokens_BxL.shape:
    raise ValueError(f"{name} has shape {tuple(valid_BxL.shape)}, tokens_BxL has "
                     f"{tuple(tokens_BxL.shape)}.")
  return valid_BxL.astype(bool)


def _check_mask_id(mask_id, vocab_size: int | None = None) -> None:
  if not isinstance(mask_id, numbers.Integral) or mask_id < 0:
    raise ValueError(f"mask_id must be a non-negative int, got {mask_id!r}.")
  if vocab_size is not None and mask_id < vocab_size:
    raise ValueError(f"mask_id={mask_id} lies inside the vocabulary of the {vocab_size} ids "
                     f"the network predicts; the mask token must be id >= {vocab_size} "
                     f"(TransformerConfig.mask_id = vocab_size).")


def _scores(params, apply_fn, inputs_BxL, targets_BxT, kw):
  """(logp_BxT, V if the network returned logits else None); see `target_logprobs`."""
  if inputs_BxL.ndim != 2 or targets_BxT.ndim != 2 or (
      targets_BxT.shape[0] != inputs_BxL.shape[0] or targets_BxT.shape[1] > inputs_BxL.shape[1]):
    raise ValueError(f"targets_BxT {tuple(targets_BxT.shape)} must be 2-D with the rows of "
                     f"inputs_BxL {tuple(inputs_BxL.shape)} and at most as many columns.")
  out = apply_fn(params, inputs_BxL, targets_BxT=targets_BxT, **kw)
  if out.ndim == 3:  # A network that returns logits: reduce them here.
    vocab_size = out.shape[-1]
    logp_BxTxV = jax.nn.log_softmax(out[:, out.shape[1] - targets_BxT.shape[1]:]
                                    .astype(jnp.float32), axis=-1)
    targets_BxT = jnp.clip(targets_BxT, 0, vocab_size - 1)  # Padding may be any id.
    return jnp.take_along_axis(logp_BxTxV, targets_BxT[..., None], axis=-1)[..., 0], vocab_size
  if out.shape != targets_BxT.shape:
    raise ValueError(f"apply_fn returned shape {tuple(out.shape)}: expected logits "
                     f"[B, L, V] or target log-probs {tuple(targets_BxT.shape)}.")
  return out.astype(jnp.float32), None


def target_logprobs(params, apply_fn, inputs_BxL, targets_BxT, **kw) -> jax.Array:
  """logp_BxT = log p_theta(targets_BxT | inputs_BxL) at the last T <= L positions, float32.

  Calls `apply_fn(params, inputs_BxL, targets_BxT=targets_BxT, **kw)`: a network that
  returns the target log-probs itself (our Transformer, with
  `TransformerConfig.logits_chunk_size` > 0 streaming its LM head over sequence chunks) never
  materialises B x L x V logits; one that ignores `targets_BxT` and returns logits_BxLxV has
  them reduced here by log_softmax. Targets outside [0, V) are clipped (padding may hold any
  id; weight it 0). `kw` is passed on (e.g. valid_BxL).
  """
  return _scores(params, apply_fn, inputs_BxL, targets_BxT, kw)[0]


def _masked_nll(params, apply_fn, tokens_BxL, masked_BxL, valid_BxL, mask_id):
  """-log p(x^i | x with `masked` positions set to mask_id) where masked, else 0."""
  noisy_BxL = jnp.where(masked_BxL, mask_id, tokens_BxL)
  logp_BxL, vocab_size = _scores(params, apply_fn, noisy_BxL, tokens_BxL,
                                 dict(valid_BxL=valid_BxL))
  _check_mask_id(mask_id, vocab_size)  # Our Transformer's mask id is V by construction.
  return jnp.where(masked_BxL, -logp_BxL, 0.0)


def _uniform_BxL(key, shape):
  """U[0, 1) draws of shape (B, L), drawn flat: XLA compiles 1-D draws ~2x faster on CPU."""
  return jax.random.uniform(key, (math.prod(shape),)).reshape(shape)


def sample_times(key, batch_size: int, *, antithetic: bool) -> jax.Array:
  """t_B in (0, 1]; antithetic: t_b = 1 - ((u + b / B) mod 1), one u for the global batch.

  Each t_b is marginally uniform, and the batch covers (0, 1] with one point per stratum
  of width 1/B (MD4 / VDM's low-discrepancy sampler), which lowers the loss variance.
  """
  if antithetic:
    u = jax.random.uniform(key, ())
    frac_B = jnp.mod(u + jnp.arange(batch_size) / batch_size, 1.0)
  else:
    frac_B = jax.random.uniform(key, (batch_size,))
  return 1.0 - frac_B


def _mask_where(uniform_BxL, tokens_BxL, p_mask_B, maskable_BxL, mask_id):
  masked_BxL = (uniform_BxL < p_mask_B[:, None]) & maskable_BxL
  return jnp.where(masked_BxL, mask_id, tokens_BxL), masked_BxL


def forward_mask(key, tokens_BxL, p_mask_B, *, mask_id, maskable_BxL=None):
  """Forward process q(x_t | x): each maskable token becomes mask_id w.p. p_mask_B[b].

  Returns (noisy_BxL, masked_BxL).
  """
  _check_mask_id(mask_id)
  maskable_BxL = _check_tokens(tokens_BxL, maskable_BxL, "maskable_BxL")
  if p_mask_B.shape != tokens_BxL.shape[:1]:
    raise ValueError(f"p_mask_B has shape {tuple(p_mask_B.shape)}, expected "
                     f"({tokens_BxL.shape[0]},) for tokens_BxL {tuple(tokens_BxL.shape)}.")
  uniform_BxL = _uniform_BxL(key, tokens_BxL.shape)
  return _mask_where(uniform_BxL, tokens_BxL, p_mask_B, maskable_BxL, mask_id)


def _random_length_cut(key, valid_BxL, prob: float):
  """LLaDA (Sec. B.1): w.p. `prob` a row keeps only a uniform random length in {1..L}."""
  k_cut, k_len = jax.random.split(key)
  B, L = valid_BxL.shape
  cut_B = jax.random.bernoulli(k_cut, prob, (B,))
  length_B = jax.random.randint(k_len, (B,), 1, L + 1)
  keep_BxL = jnp.arange(L)[None, :] < length_B[:, None]
  return valid_BxL & (keep_BxL | ~cut_B[:, None])


def mdm_loss(params, apply_fn, tokens_BxL, key, *, mask_id, schedule="linear", eps=1e-3,
             power=1.0, antithetic=True, random_length_prob=0.0, valid_BxL=None):
  """Masked-diffusion loss: sum over masked valid tokens of w(t_b) * CE / #valid tokens.

  An unbiased estimate of E_{s~U(eps,1)}[(1/s) E[sum_{masked} CE]] per token, which is the
  negative ELBO as eps -> 0 and the exact NLL for context-free predictions at any eps
  (schedules.py, eq. (*)).
  t_B is drawn over the whole (global) batch; with `random_length_prob` a share of rows
  is cut to a random length, the cut tail being invalid for both attention and loss.
  Returns (loss, {"loss", "bits_per_token", "mask_rate"}).
  """
  valid_BxL = _check_tokens(tokens_BxL, valid_BxL)
  if not 0.0 <= random_length_prob <= 1.0:
    raise ValueError(f"random_length_prob={random_length_prob} must lie in [0, 1].")
  k_t, k_mask, k_len = jax.random.split(key, 3)
  if random_length_prob > 0:
    valid_BxL = _random_length_cut(k_len, valid_BxL, random_length_prob)
  t_B = sample_times(k_t, tokens_BxL.shape[0], antithetic=antithetic)
  p_B = schedules.mask_prob(t_B, schedule=schedule, eps=eps, power=power)
  w_B = schedules.elbo_weight(t_B, schedule=schedule, eps=eps, power=power)
  _, masked_BxL = forward_mask(k_mask, tokens_BxL, p_B, mask_id=mask_id, maskable_BxL=valid_BxL)

  nll_BxL = _masked_nll(params, apply_fn, tokens_BxL, masked_BxL, valid_BxL, mask_id)
  num_valid = jnp.maximum(valid_BxL.sum(), 1)
  loss = jnp.sum(nll_BxL * w_B[:, None]) / num_valid
  metrics = {"loss": loss, "bits_per_token": loss / math.log(2),
             "mask_rate": masked_BxL.sum() / num_valid}
  return loss, metrics


def sft_loss(params, apply_fn, tokens_BxL, prompt_len_B, key, *, mask_id, valid_BxL=None,
             schedule="linear", eps=1e-3, power=1.0, antithetic=True):
  """LLaDA SFT (Nie et al. 2025, eq. 5): mask only the response, score only its masked tokens.

  The response of row b is every valid position >= prompt_len_B[b] (EOS padding included).
  Per row: sum_{masked} w(t_b) CE / response length; the loss is the mean over rows.
  The mask noise is indexed by the position relative to the response start, so adding
  (invalid) padding to a prompt changes neither the masked tokens nor the loss.
  """
  valid_BxL = _check_tokens(tokens_BxL, valid_BxL)
  B, L = tokens_BxL.shape
  if prompt_len_B.shape != (B,):
    raise ValueError(f"prompt_len_B has shape {tuple(prompt_len_B.shape)}, expected ({B},) "
                     f"for tokens_BxL {tuple(tokens_BxL.shape)}.")
  response_BxL = valid_BxL & (jnp.arange(L)[None, :] >= prompt_len_B[:, None])
  k_t, k_mask = jax.random.split(key)
  t_B = sample_times(k_t, B, antithetic=antithetic)
  p_B = schedules.mask_prob(t_B, schedule=schedule, eps=eps, power=power)
  w_B = schedules.elbo_weight(t_B, schedule=schedule, eps=eps, power=power)
  # Position prompt_len + j draws uniform j: roll each row right by its prompt length.
  uniform_BxL = _uniform_BxL(k_mask, (B, L))
  source_BxL = jnp.mod(jnp.arange(L)[None, :] - prompt_len_B[:, None], L)
  uniform_BxL = jnp.take_along_axis(uniform_BxL, source_BxL, axis=1)
  _, masked_BxL = _mask_where(uniform_BxL, tokens_BxL, p_B, response_BxL, mask_id)

  nll_BxL = _masked_nll(params, apply_fn, tokens_BxL, masked_BxL, valid_BxL, mask_id)
  response_len_B = response_BxL.sum(axis=1)
  loss_B = w_B * nll_BxL.sum(axis=1) / jnp.maximum(response_len_B, 1)
  loss = loss_B.mean()
  metrics = {"loss": loss, "bits_per_token": loss / math.log(2),
             "mask_rate": masked_BxL.sum() / jnp.maximum(response_len_B.sum(), 1)}
  return loss, metrics


def _next_token_nll(params, apply_fn, tokens_BxL, valid_BxL, inputs_BxL=None):
  """(-log p(x_{i+1} | inputs_{<=i}) for i < L-1, mask of pairs whose input and target are
  valid); the inputs are the clean tokens unless `inputs_BxL` is given."""
  valid_BxL = _check_tokens(tokens_BxL, valid_BxL)
  inputs_BxL = tokens_BxL if inputs_BxL is None else inputs_BxL
  # Position i scores x_{i+1}; the last position's target (wrapped around) is dropped.
  logp_BxL = target_logprobs(params, apply_fn, inputs_BxL, jnp.roll(tokens_BxL, -1, axis=1),
                             valid_BxL=valid_BxL)
  pair_valid_BxL1 = valid_BxL[:, :-1] & valid_BxL[:, 1:]
  return jnp.where(pair_valid_BxL1, -logp_BxL[:, :-1], 0.0), pair_valid_BxL1


def ar_loss(params, apply_fn, tokens_BxL, *, valid_BxL=None, input_mask_rate=0.0, key=None,
            mask_id=None):
  """Next-token cross-entropy with the causal network, mean over valid (input, target) pairs.

  input_mask_rate > 0 (needs `key` and `mask_id`): input masking (Gao et al. 2025), each
  valid input token replaced by mask_id with this probability, independently; the targets
  are the clean next tokens, so the loss is -log p(x_{i+1} | masked x_{<=i}).
  """
  if not 0.0 <= input_mask_rate < 1.0:
    raise ValueError(f"input_mask_rate={input_mask_rate} must lie in [0, 1).")
  metrics = {}
  inputs_BxL = None
  if input_mask_rate > 0:
    if key is None or mask_id is None:
      raise ValueError("ar_loss: input_mask_rate > 0 needs `key` and `mask_id`.")
    valid = _check_tokens(tokens_BxL, valid_BxL)
    p_mask_B = jnp.full(tokens_BxL.shape[:1], input_mask_rate, jnp.float32)
    inputs_BxL, masked_BxL = forward_mask(key, tokens_BxL, p_mask_B, mask_id=mask_id,
                                          maskable_BxL=valid)
    metrics["input_mask_rate"] = masked_BxL.sum() / jnp.maximum(valid.sum(), 1)
  nll_BxL1, pair_valid_BxL1 = _next_token_nll(params, apply_fn, tokens_BxL, valid_BxL,
                                              inputs_BxL)
  loss = nll_BxL1.sum() / jnp.maximum(pair_valid_BxL1.sum(), 1)
  return loss, {"loss": loss, "bits_per_token": loss / math.log(2), **metrics}


def _check_scored(tokens_BxL, valid_BxL, scored_BxL) -> jax.Array:
  """`scored_BxL` as bool and within `valid_BxL` (all valid tokens when None)."""
  if scored_BxL is None:
    return valid_BxL
  return _check_tokens(tokens_BxL, scored_BxL, "scored_BxL") & valid_BxL


def ar_nll(params, apply_fn, tokens_BxL, *, valid_BxL=None, scored_BxL=None) -> jax.Array:
  """Exact NLL per row, nats: sum_i -log p(x_{i+1} | x_{<=i}) over valid pairs.

  The first valid token of a row is conditioned on, not scored (BOS in our data).
  scored_BxL (optional): only these targets x_{i+1} are scored, e.g. a continuation after
  its context: -log p(continuation | context).
  """
  valid_BxL = _check_tokens(tokens_BxL, valid_BxL)
  nll_BxL1, _ = _next_token_nll(params, apply_fn, tokens_BxL, valid_BxL)
  if scored_BxL is not None:
    nll_BxL1 = jnp.where(_check_scored(tokens_BxL, valid_BxL, scored_BxL)[:, 1:], nll_BxL1, 0.0)
  return nll_BxL1.sum(axis=1)


def mdm_nll(params, apply_fn, tokens_BxL, key, *, mask_id, num_mc, valid_BxL=None,
            scored_BxL=None):
  """Monte-Carlo negative ELBO per row in nats (LLaDA Algorithm 3, eq. 6).

      -log p(x) <= E_{l ~ U{1..L}} E_{M: |M| = l} [ (L / l) sum_{i in M} -log p(x^i | x_{-M}) ]

  with L the row's number of valid tokens. Draw m of `num_mc` takes
  l = floor(L (m + u) / num_mc) + 1 (stratified: the draws cover {1..L} evenly, and the
  mean over draws is unbiased) and masks exactly l valid tokens uniformly at random.
  scored_BxL (optional): only these tokens are masked and scored (L counts them), the
  other valid tokens stay visible: the conditional bound on -log p(continuation | context)
  that LLaDA's likelihood evaluation (eq. 6 with a prompt) uses.
  Draws run sequentially, so memory is that of one forward pass. Returns nll_B.
  """
  if not isinstance(num_mc, numbers.Integral) or num_mc < 1:
    raise ValueError(f"num_mc must be an int >= 1, got {num_mc!r}.")
  _check_mask_id(mask_id)
  valid_BxL = _check_tokens(tokens_BxL, valid_BxL)
  maskable_BxL = _check_scored(tokens_BxL, valid_BxL, scored_BxL)
  B, L = tokens_BxL.shape
  length_B = maskable_BxL.sum(axis=1)
  k_strata, k_draws = jax.random.split(key)
  u_B = jax.random.uniform(k_strata, (B,))

  def one_draw(args):
    m, key_m = args
    frac_B = (m + u_B) / num_mc
    num_masked_B = jnp.minimum(jnp.floor(frac_B * length_B).astype(jnp.int32) + 1, length_B)
    # Rank maskable positions in a random order (the others last); mask the first l.
    order_BxL = jnp.where(maskable_BxL, _uniform_BxL(key_m, (B, L)), 2.0)
    rank_BxL = jnp.argsort(jnp.argsort(order_BxL, axis=1), axis=1)
    masked_BxL = rank_BxL < num_masked_B[:, None]
    nll_BxL = _masked_nll(params, apply_fn, tokens_BxL, masked_BxL, valid_BxL, mask_id)
    return nll_BxL.sum(axis=1) * length_B / jnp.maximum(num_masked_B, 1)

  draws_MxB = jax.lax.map(one_draw, (jnp.arange(num_mc), jax.random.split(k_draws, num_mc)))
  return draws_MxB.mean(axis=0)
