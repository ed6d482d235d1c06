"""Likelihood as a library: log p(continuation | context) of many requests, batched and sharded.

What the perplexity CLI and the lm-evaluation-harness model share:

  request_hash(context_ids, continuation_ids) -> the int that keys a request's draws
  rolling_windows(ids, max_len=, prefix_id=) -> (context, continuation) pairs scoring every
      token once (lm-evaluation-harness's rolling windows: the most context that fits)
  Scorer(apply_fn, causal=, mask_id=, max_len=, ...)(params, pairs, key=) -> nll_N in nats
      (and greedy_N for a causal model)

A request is scored in one row of `max_len` positions or fewer: its context (cut on the left
to fit) and its continuation. For a causal model the number is exact,
-log p = sum_j -log p(x_j | x_<j) over the continuation (`losses.ar_nll`); for a
masked-diffusion model it is the conditional Monte-Carlo ELBO (`losses.mdm_nll` with
`scored_BxL`, LLaDA's likelihood evaluation, eq. 6): only continuation tokens are masked, a
stratified number of them per draw, `num_mc` draws; an upper bound on -log p in expectation.

Rows are padded to a multiple of `pad_to` positions (at most max_len) and batched with rows
of the same padded length, so a row's number depends only on the row: its draws are keyed by
fold_in(key, request_hash) of the row's (cut) context and continuation, never by its batch
or its position in the list. Every process
passes the same pairs and gets every number (batches are sharded over the mesh's
data-parallel axes and all-gathered).
"""
from collections.abc import Sequence
import zlib

import jax
import jax.numpy as jnp
import numpy as np

from diffusionlm.diffusion import losses
from diffusionlm.generation import to_host
from diffusionlm.train import sharding

Pair = tuple[Sequence[int], Sequence[int]]


def request_hash(context_ids: Sequence[int], continuation_ids: Sequence[int]) -> int:
  """A 31-bit hash of a request's ids (CRC-32): its Monte-Carlo draws use
  fold_in(key, request_hash(...)), so equal requests get equal numbers anywhere."""
  ids = np.concatenate([np.asarray(context_ids, np.int64), [-1],
                        np.asarray(continuation_ids, np.int64)])
  return zlib.crc32(ids.tobytes()) & 0x7FFFFFFF


def rolling_windows(ids: Sequence[int], *, max_len: int, prefix_id: int) -> list[Pair]:
  """(context, continuation) pairs of at most max_len tokens that score each id once.

  The first window is conditioned on `prefix_id` (BOS or EOS), each later one on the ids
  before it, as many as fit: full windows get one token of context, the last window fills
  the row (lm-evaluation-harness's `get_rolling_token_windows` + `make_disjoint_window`).
  """
  if max_len < 2:
    raise ValueError(f"max_len must be >= 2 (a context and a continuation), got {max_len}.")
  ids = list(ids)
  pairs, start = [], 0
  while start < len(ids):
    end = min(len(ids), start + max_len - 1)
    context = [prefix_id] if start == 0 else ids[end - max_len:start]
    pairs.append((context, ids[start:end]))
    start = end
  return pairs


def _rows(pairs: Sequence[Pair], *, max_len: int, pad_to: int, pad_id: int):
  """Each pair as one row: context cut on the left to fit, right-padded to a multiple of
  pad_to (at most max_len). Returns (lengths_N padded, hash_N of the rows' requests,
  [(tokens_L, valid_L, scored_L)])."""
  rows, lengths, hashes = [], [], []
  for i, (context, continuation) in enumerate(pairs):
    context, continuation = list(context), list(continuation)
    if not continuation:
      raise ValueError(f"request {i}: the continuation is empty: nothing to score.")
    if not context:
      raise ValueError(f"request {i}: the context is empty (pass a BOS/EOS prefix).")
    if len(continuation) >= max_len:
      raise ValueError(f"request {i}: its continuation has {len(continuation)} tokens; with "
                       f"at least one token of context that exceeds the model's {max_len} "
                       "positions (its config.data.seq_len).")
    context = context[-(max_len - len(continuation)):]
    n = len(context) + len(continuation)
    length = min(max_len, -(-n // pad_to) * pad_to)
    tokens_L = np.full(length, pad_id, np.int32)
    tokens_L[:n] = context + continuation
    valid_L = np.arange(length) < n
    scored_L = valid_L & (np.arange(length) >= len(context))
    rows.append((tokens_L, valid_L, scored_L))
    lengths.append(length)
    hashes.append(request_hash(context, continuation))
  return np.array(lengths), np.array(hashes, np.int32), rows


def _score_fn(apply_fn, *, causal: bool, mask_id: int, num_mc: int, greedy: bool):
  """jit(rows -> (nll_B, greedy_B)); row b's draws are keyed by fold_in(key, hash_B[b])."""

  def one_row(params, tokens_L, valid_L, scored_L, key):
    args = (params, apply_fn, tokens_L[None])
    kw = dict(valid_BxL=valid_L[None], scored_BxL=scored_L[None])
    if causal:
      return losses.ar_nll(*args, **kw)[0]
    return losses.mdm_nll(*args, key, mask_id=mask_id, num_mc=num_mc, **kw)[0]

  def fn(params, tokens_BxL, valid_BxL, scored_BxL, key, hash_B):
    keys_B = jax.vmap(lambda h: jax.random.fold_in(key, h))(hash_B)
    nll_B = jax.vmap(one_row, in_axes=(None, 0, 0, 0, 0))(
        params, tokens_BxL, valid_BxL, scored_BxL, keys_B)
    if not greedy:
      return nll_B, jnp.zeros_like(nll_B, bool)
    # Causal: is every continuation token the argmax of the position before it?
    logits_BxLxV = apply_fn(params, tokens_BxL, valid_BxL=valid_BxL)
    hit_BxL1 = jnp.argmax(logits_BxLxV[:, :-1], -1) == tokens_BxL[:, 1:]
    return nll_B, jnp.all(hit_BxL1 | ~scored_BxL[:, 1:], axis=1)

  return jax.jit(fn)


class Scorer:
  """-log p(continuation | context) in nats of (context ids, continuation ids) pairs.

  causal: exact NLL (`ar_nll`); else the conditional Monte-Carlo ELBO with `num_mc`
  stratified draws (`mdm_nll`). max_len: the model's positions (config.data.seq_len).
  batch_size is rounded up to a multiple of the mesh's data-parallel size. Compiles once per
  padded row length (a multiple of pad_to) and kept for later calls.
  """

  def __init__(self, apply_fn, *, causal: bool, mask_id: int, max_len: int, num_mc: int = 1,
               batch_size: int = 32, pad_to: int = 64, pad_id: int = 0,
               mesh: jax.sharding.Mesh | None = None):
    if batch_size < 1 or num_mc < 1 or pad_to < 1:
      raise ValueError(f"batch_size, num_mc and pad_to must be >= 1, got {batch_size}, "
                       f"{num_mc}, {pad_to}.")
    if mesh is not None:
      parallel = sharding.data_parallel_size(mesh)
      batch_size = -(-batch_size // parallel) * parallel
    self.causal, self.max_len, self.num_mc, self.mesh = causal, max_len, num_mc, mesh
    self.batch_size, self.pad_to, self.pad_id = batch_size, pad_to, pad_id
    self._fns = {greedy: _score_fn(apply_fn, causal=causal, mask_id=mask_id, num_mc=num_mc,
                                   greedy=greedy) for greedy in (False, True)}

  def __call__(self, params, pairs: Sequence[Pair], *, key: jax.Array,
               greedy: bool = False) -> dict:
    """Returns {"nll": float64 [N], "greedy": bool [N] (whether greedy decoding reproduces
    each continuation; causal models only, else all False), "num_tokens": continuation
    tokens [N]}. Every process passes the same pairs and gets every number."""
    if not pairs:
      raise ValueError("pairs is empty: nothing to score.")
    lengths_N, hash_N, rows = _rows(pairs, max_len=self.max_len, pad_to=self.pad_to,
                                    pad_id=self.pad_id)
    fn = self._fns[bool(greedy and self.causal)]
    nll_N, greedy_N = np.zeros(len(pairs)), np.zeros(len(pairs), bool)
    B = self.batch_size
    for length in np.unique(lengths_N):
      members = np.flatnonzero(lengths_N == length)
      for start in range(0, len(members), B):
        chunk = members[start:start + B]
        fill = np.concatenate([chunk, np.full(B - len(chunk), chunk[-1])])
        batch = [np.stack([rows[i][k] for i in fill]) for k in range(3)] + [hash_N[fill]]
        if self.mesh is not None:
          batch = [jax.device_put(x, sharding.batch_sharding(self.mesh)) for x in batch]
        nll_B, greedy_B = fn(params, *batch[:3], key, batch[3])
        nll_N[chunk] = to_host(nll_B)[:len(chunk)]
        greedy_N[chunk] = to_host(greedy_B)[:len(chunk)]
    return {"nll": nll_N, "greedy": greedy_N,
            "num_tokens": np.array([len(x) for _, x in pairs])}
