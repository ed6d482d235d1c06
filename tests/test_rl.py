"""diffu-GRPO: prompt masks, mean-field log-probs, the clipped surrogate and k3 KL, group
advantages, the mu-mask schedule, sharded == single device, and resume.

Gradient properties use a toy bidirectional network (cheap to compile); the log-prob test
uses the real Transformer. The loop tests run a toy network over the Transformer's own
embedding and head parameters, so the real parameter tree, shardings, optimizer and
checkpoints are exercised while compiling in seconds (tests/test_trainer.py proves the
Transformer's sharded steps).
"""
import collections
import json
import os
import shutil

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import numerics
import toy_models
from configs import rl_sudoku
from diffusionlm.models import transformer
from diffusionlm.rl import grpo, logprobs, loop, rollout
from diffusionlm.rl import setup as rl_setup
from diffusionlm.train import checkpoint, train_state

V = 16  # Toy vocabulary; the mask id is V.
MASK, EOS = V, 2
B, P, C = 6, 8, 6


toy_apply_fn = toy_models.mixing_apply_fn


def tree_apply_fn(params, tokens_BxL, *, valid_BxL=None, **unused):
  """The same toy network on the Transformer's `embedding` and `head` parameters."""
  del unused
  toy = {"embed": params["embedding"], "out": params["head"],
         "pos": jnp.sin(jnp.arange(tokens_BxL.shape[1])[:, None]
                        * jnp.linspace(0.1, 1.0, params["head"].shape[0]))}
  return toy_apply_fn(toy, tokens_BxL, valid_BxL=valid_BxL)


@pytest.fixture(scope="module")
def toy_params():
  return toy_models.mixing_params(V, P + C)


def _batch(seed=0, *, rows=B):
  """Prompts (left-padded), completions with an EOS somewhere, advantages; old / ref
  log-probs to be filled in (every batch has the same keys: one compiled program each)."""
  rng = np.random.default_rng(seed)
  prompt_BxP = rng.integers(3, V, (rows, P)).astype(np.int32)
  valid_BxP = np.arange(P)[None] >= rng.integers(0, 3, rows)[:, None]
  prompt_BxP[~valid_BxP] = 0
  completion_BxC = rng.integers(3, V, (rows, C)).astype(np.int32)
  completion_BxC[np.arange(rows), rng.integers(1, C, rows)] = EOS
  return {"prompt": jnp.asarray(prompt_BxP), "prompt_valid": jnp.asarray(valid_BxP),
          "completion": jnp.asarray(completion_BxC),
          "advantages": jnp.asarray(rng.normal(size=rows), jnp.float32),
          "old_logps": jnp.zeros((rows, C)), "ref_logps": jnp.zeros((rows, C))}


LOSS_KW = dict(p_mask_prompt=0.3, mask_id=MASK, eos_id=EOS)


@jax.jit
def _logps(params, batch, key):
  return logprobs.completion_logps(params, toy_apply_fn, batch["prompt"], batch["completion"],
                                   key, prompt_valid_BxP=batch["prompt_valid"], **LOSS_KW)


@jax.jit
def _metrics_and_grad(params, batch, key, beta, clip_eps):
  """grpo_loss's metrics and gradient."""
  loss_fn = lambda p: grpo.grpo_loss(p, toy_apply_fn, batch, key, beta=beta, clip_eps=clip_eps,
                                     **LOSS_KW)
  (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  return metrics, grads


@jax.jit
def _weighted_logp_grad(params, batch, key, weight_B, num_tokens):
  """Written directly: grad of -1/T sum_b w_b sum_k log pi(o_bk), a weighted policy gradient."""
  return jax.grad(lambda p: -jnp.sum(weight_B[:, None] * _logps(p, batch, key)[0]) / num_tokens)(
      params)


def _assert_trees_close(a, b, **tol):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, **tol), a, b)


# ---- Log-probs ----------------------------------------------------------------------------


def test_prompt_mask_statistics_and_fully_masked_completion():
  """Each valid prompt token is masked independently w.p. p, padding never, the completion
  always; the key alone decides the mask (Monte Carlo, within 4 standard errors)."""
  rows, p = 4000, 0.15
  batch = _batch(1, rows=rows)
  seen = []

  def spy(params, tokens_BxL, *, valid_BxL=None, **unused):
    del params, unused
    seen.append((np.asarray(tokens_BxL), np.asarray(valid_BxL)))
    return jnp.zeros(tokens_BxL.shape + (V,))

  for key in (jax.random.key(0), jax.random.key(0), jax.random.key(1)):
    logprobs.completion_logps(None, spy, batch["prompt"], batch["completion"], key,
                              p_mask_prompt=p, mask_id=MASK, eos_id=EOS,
                              prompt_valid_BxP=batch["prompt_valid"])
  (tokens_BxL, valid_BxL), (again_BxL, _), (other_BxL, _) = seen
  valid_BxP = np.asarray(batch["prompt_valid"])
  np.testing.assert_array_equal(valid_BxL, np.concatenate([valid_BxP, np.ones((rows, C), bool)], 1))
  assert (tokens_BxL[:, P:] == MASK).all(), "the completion must be fully masked"
  masked_BxP = tokens_BxL[:, :P] == MASK
  assert not masked_BxP[~valid_BxP].any(), "padding must never be masked"
  np.testing.assert_array_equal(tokens_BxL[:, :P][~masked_BxP], np.asarray(batch["prompt"])[~masked_BxP])

  n = valid_BxP.sum()
  assert abs(masked_BxP[valid_BxP].mean() - p) < 4 * np.sqrt(p * (1 - p) / n)
  for j in range(P):  # Every position at the same rate.
    n_j = valid_BxP[:, j].sum()
    assert abs(masked_BxP[valid_BxP[:, j], j].mean() - p) < 4 * np.sqrt(p * (1 - p) / n_j)
  both = valid_BxP[:, 3:] & valid_BxP[:, :-3]  # Independence: P(i and i+3 masked) = p^2.
  pair_rate = (masked_BxP[:, 3:] & masked_BxP[:, :-3])[both].mean()
  assert abs(pair_rate - p * p) < 4 * np.sqrt(p * p * (1 - p * p) / both.sum())

  np.testing.assert_array_equal(again_BxL, tokens_BxL)  # Same key, same mask.
  assert (other_BxL[:, :P] == MASK).mean() > 0 and not np.array_equal(other_BxL, tokens_BxL)


def test_completion_logps_is_one_forward_of_the_masked_sequence():
  """logp = log_softmax(model(masked prompt + masks))[completion] at each scored position."""
  cfg = transformer.TransformerConfig(vocab_size=V, d_model=32, num_layers=1, num_heads=2,
                                      num_kv_heads=0, mlp_dim=64, rope_theta=1e4, norm_eps=1e-5,
                                      tie_embeddings=False, causal=False)
  model = transformer.Transformer(cfg)

  @jax.jit
  def run(batch, key):
    params = nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"])
    calls = []

    def apply_fn(p, tokens_BxL, **kw):
      calls.append((tokens_BxL, kw["valid_BxL"]))
      return model.apply({"params": p}, tokens_BxL, **kw)

    out = logprobs.completion_logps(params, apply_fn, batch["prompt"], batch["completion"], key,
                                    prompt_valid_BxP=batch["prompt_valid"], **LOSS_KW)
    assert len(calls) == 1, "one forward pass"
    tokens_BxL, valid_BxL = calls[0]
    # The direct computation: one explicit forward of the masked sequence.
    return out, tokens_BxL, model.apply({"params": params}, tokens_BxL, valid_BxL=valid_BxL)

  batch = _batch(2)
  (logp_BxC, mask_BxC), tokens_BxL, logits_BxLxV = run(batch, jax.random.key(3))
  assert (np.asarray(tokens_BxL)[:, P:] == MASK).all()
  direct_BxCxV = jax.nn.log_softmax(np.asarray(logits_BxLxV)[:, P:], axis=-1)
  direct_BxC = np.take_along_axis(np.asarray(direct_BxCxV),
                                  np.asarray(batch["completion"])[..., None], -1)[..., 0]
  np.testing.assert_allclose(logp_BxC, np.where(mask_BxC, direct_BxC, 0.0), rtol=1e-5, atol=1e-6)
  assert np.all(np.asarray(logp_BxC)[np.asarray(mask_BxC)] < 0)


def test_tokens_after_the_first_eos_carry_no_weight(toy_params):
  completion = jnp.array([[5, EOS, 7, EOS, 9, 4], [EOS, 5, 5, 5, 5, 5], [5, 6, 7, 8, 9, 10]])
  expected = np.array([[1, 1, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]], bool)
  np.testing.assert_array_equal(logprobs.completion_mask(completion, eos_id=EOS), expected)

  # Loss, metrics and gradient ignore the tokens (and the old/ref log-probs) after the EOS.
  batch, key = _batch(3), jax.random.key(4)
  mask_BxC = np.asarray(logprobs.completion_mask(batch["completion"], eos_id=EOS))
  logp_BxC, _ = _logps(toy_params, batch, key)
  assert np.all(np.asarray(logp_BxC)[~mask_BxC] == 0)
  batch = {**batch, "old_logps": logp_BxC - 0.1, "ref_logps": logp_BxC + 0.2}
  rng = np.random.default_rng(5)
  changed = {**batch,
             "completion": jnp.where(mask_BxC, batch["completion"], rng.integers(3, V, (B, C))),
             "old_logps": jnp.where(mask_BxC, batch["old_logps"], rng.normal(size=(B, C))),
             "ref_logps": jnp.where(mask_BxC, batch["ref_logps"], rng.normal(size=(B, C)))}
  _assert_trees_close(_metrics_and_grad(toy_params, batch, key, 0.1, 0.2),
                      _metrics_and_grad(toy_params, changed, key, 0.1, 0.2), rtol=1e-5, atol=1e-7)


# ---- The loss -----------------------------------------------------------------------------


def test_gradient_at_ratio_one_is_the_policy_gradient(toy_params):
  """pi = pi_old = pi_ref: grad L = -1/T sum_b A_b sum_k grad log pi(o_bk) (KL gradient 0)."""
  batch, key = _batch(6), jax.random.key(7)
  logp_BxC, mask_BxC = _logps(toy_params, batch, key)
  batch = {**batch, "old_logps": logp_BxC, "ref_logps": logp_BxC}
  num_tokens = mask_BxC.sum()
  metrics, grads = _metrics_and_grad(toy_params, batch, key, 0.04, 0.2)
  numerics.assert_close_at_scale(
      grads, _weighted_logp_grad(toy_params, batch, key, batch["advantages"], num_tokens))
  np.testing.assert_allclose(metrics["loss"],
                             -jnp.sum(batch["advantages"] * mask_BxC.sum(1)) / num_tokens, rtol=1e-5)
  assert float(metrics["ratio"]) == pytest.approx(1.0)
  assert float(metrics["kl"]) == 0.0 and float(metrics["clip_fraction"]) == 0.0


def test_one_update_per_rollout_needs_no_old_log_probs(toy_params):
  """mu = 1: without "old_logps" the loss is the one at pi_old = pi_theta (rho = 1), with
  the same gradient, so the logps program skips the old policy's pass."""
  batch, key = _batch(4), jax.random.key(8)
  logp_BxC, _ = _logps(toy_params, batch, key)
  with_old = {**batch, "old_logps": logp_BxC, "ref_logps": logp_BxC + 0.1}
  without_old = {k: v for k, v in with_old.items() if k != "old_logps"}
  metrics, grads = _metrics_and_grad(toy_params, without_old, key, 0.04, 0.2)
  numerics.assert_close_at_scale((metrics, grads),
                                 _metrics_and_grad(toy_params, with_old, key, 0.04, 0.2))
  assert float(metrics["ratio"]) == 1.0


@pytest.mark.parametrize("log_ratio", [1.0, -1.0])
def test_clipping_stops_the_gradient_exactly_where_it_should(toy_params, log_ratio):
  """rho = e^{+-1} lies outside [1 - 0.5, 1 + 0.5]. Rows whose advantage pushes rho further
  out (A > 0 with rho > 1.5, A < 0 with rho < 0.5) get zero gradient; the other rows get
  the unclipped -A rho grad log pi."""
  batch, key = _batch(8), jax.random.key(9)
  logp_BxC, mask_BxC = _logps(toy_params, batch, key)
  batch = {**batch, "old_logps": logp_BxC - log_ratio, "ref_logps": logp_BxC}
  ratio = np.exp(log_ratio)
  clipped_B = np.sign(np.asarray(batch["advantages"])) == np.sign(log_ratio)
  assert 0 < clipped_B.sum() < B
  num_tokens = mask_BxC.sum()
  metrics, grads = _metrics_and_grad(toy_params, batch, key, 0.0, 0.5)
  unclipped_weight_B = jnp.where(clipped_B, 0.0, batch["advantages"] * ratio)
  numerics.assert_close_at_scale(
      grads, _weighted_logp_grad(toy_params, batch, key, unclipped_weight_B, num_tokens))
  np.testing.assert_allclose(metrics["clip_fraction"],
                             mask_BxC[clipped_B].sum() / num_tokens, rtol=1e-6)
  np.testing.assert_allclose(metrics["ratio"], ratio, rtol=1e-5)

  everything_clipped = {**batch, "advantages": jnp.abs(batch["advantages"]) * np.sign(log_ratio)}
  _, grads = _metrics_and_grad(toy_params, everything_clipped, key, 0.0, 0.5)
  assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(grads))


def test_one_update_raises_the_probability_of_positive_advantage_completions(toy_params):
  """Completions of one prompt, those with A > 0 and those with A < 0 on disjoint tokens: a
  small gradient step on the loss raises the sequence log-prob of every positive one and
  lowers every negative one's. (The policy starts near uniform; from a peaked one, pushing
  the negative completions down may move mass anywhere, positive completions included.)"""
  toy_params = {**toy_params, "out": 0.2 * toy_params["out"]}
  batch, key = _batch(16), jax.random.key(17)
  batch = {**batch, "prompt": jnp.broadcast_to(batch["prompt"][:1], (B, P)),
           "prompt_valid": jnp.broadcast_to(batch["prompt_valid"][:1], (B, P)),
           "completion": jnp.array([[3, 4, 5, 6, EOS, EOS], [4, 5, 6, 3, EOS, EOS],
                                    [5, 6, 3, 4, 5, EOS], [7, 8, 9, 10, 11, EOS],
                                    [8, 9, 10, 11, 7, EOS], [9, 10, EOS, EOS, EOS, EOS]]),
           "advantages": jnp.array([1.0, 0.5, 1.5, -1.0, -0.5, -1.5])}
  logp_BxC, _ = _logps(toy_params, batch, key)
  batch = {**batch, "old_logps": logp_BxC, "ref_logps": logp_BxC}
  _, grads = _metrics_and_grad(toy_params, batch, key, 0.04, 0.2)
  stepped = jax.tree.map(lambda p, g: p - 1e-2 * g, toy_params, grads)
  change_B = np.asarray(_logps(stepped, batch, key)[0].sum(1) - logp_BxC.sum(1))
  np.testing.assert_array_equal(np.sign(change_B), np.sign(batch["advantages"]))


def test_k3_kl_is_nonnegative_and_zero_at_the_reference(toy_params):
  batch, key = _batch(10), jax.random.key(11)
  logp_BxC, _ = _logps(toy_params, batch, key)
  kl = lambda batch: float(_metrics_and_grad(toy_params, batch, key, 1.0, 0.2)[0]["kl"])
  at_ref = {**batch, "old_logps": logp_BxC, "ref_logps": logp_BxC}
  assert kl(at_ref) == 0.0
  rng = np.random.default_rng(12)
  for scale in (0.01, 1.0, 10.0):
    shifted = {**at_ref, "ref_logps": logp_BxC + scale * rng.normal(size=(B, C))}
    assert kl(shifted) > 0.0
  other = jax.tree.map(lambda x: x + 0.3 * rng.normal(size=x.shape), toy_params)
  from_other = {**at_ref, "ref_logps": _logps(other, batch, key)[0]}
  assert kl(from_other) > 0.0
  # At the reference the KL term is at its minimum: zero gradient (with A = 0).
  _, grads = _metrics_and_grad(toy_params, {**at_ref, "advantages": jnp.zeros(B)}, key, 1.0, 0.2)
  assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads)) < 1e-6


def test_group_advantages():
  rng = np.random.default_rng(13)
  rewards_B = rng.normal(size=20)
  rewards_B[4:8] = 0.7  # A group with equal rewards.
  raw_NxG = np.asarray(grpo.group_advantages(rewards_B, num_generations=4,
                                             scale_rewards=False)).reshape(5, 4)
  np.testing.assert_allclose(raw_NxG.mean(1), 0, atol=1e-6)
  np.testing.assert_allclose(rewards_B.reshape(5, 4) - raw_NxG,
                             np.broadcast_to(rewards_B.reshape(5, 4).mean(1, keepdims=True), (5, 4)),
                             atol=1e-6)
  scaled_NxG = np.asarray(grpo.group_advantages(rewards_B, num_generations=4,
                                                scale_rewards=True)).reshape(5, 4)
  np.testing.assert_allclose(scaled_NxG.mean(1), 0, atol=1e-6)
  np.testing.assert_allclose(np.delete(scaled_NxG.std(1, ddof=1), 1), 1, rtol=1e-3)
  np.testing.assert_array_equal(scaled_NxG[1], 0)
  with pytest.raises(ValueError, match="num_generations=4"):
    grpo.group_advantages(rewards_B[:7], num_generations=4, scale_rewards=True)
  with pytest.raises(ValueError, match="num_generations=1"):
    grpo.group_advantages(rewards_B, num_generations=1, scale_rewards=True)


# ---- The loop -----------------------------------------------------------------------------


def tiny_config(data_dir, init_from="", **overrides):
  c = rl_sudoku.get_config()
  c.init_from = init_from
  c.data.data_dir = data_dir
  c.data.num_examples = 64
  c.model.update(d_model=32, num_layers=1, num_heads=2, mlp_dim=64)
  c.rl.update(num_prompts_per_step=4, num_generations=4, num_iterations=2, num_micro_batches=2,
              gen_length=8, block_length=8, steps=4, eval_every_steps=0,
              estimator="mean_field", p_mask_prompt=0.15)  # d1's estimate and prompt masks.
  c.num_train_steps = 2
  c.checkpoint_every_steps = 1
  c.optimizer.lr = 1e-2
  c.update_from_flattened_dict(overrides)
  return c


def toy_score(completions, examples):
  """A reward that varies between samples of a random network: char codes mod 5."""
  del examples
  rewards_B = np.array([(sum(map(ord, c)) % 5) / 4 for c in completions], np.float32)
  return rewards_B, {"toy": rewards_B}


@pytest.fixture(scope="module")
def init_run(tmp_path_factory):
  """A randomly initialised 'SFT run' (checkpoint + config.json) to start RL from."""
  root = tmp_path_factory.mktemp("rl")
  data_dir, workdir = str(root / "tfds"), str(root / "init")
  config = tiny_config(data_dir)
  setup = train_state.build(config, jax.devices()[:1])
  state = train_state.make_init_fn(setup)(jax.random.key(0))
  ckpt = checkpoint.Checkpointer(checkpoint.checkpoint_dir(workdir), keep=1)
  ckpt.save(0, state, iter(grain.MapDataset.range(1).to_iter_dataset()), {})
  ckpt.wait()
  ckpt.close()
  saved = config.to_dict()
  saved["model"]["vocab_size"] = setup.model_config.vocab_size
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(saved, f)
  return data_dir, workdir


class Recorder:
  """apply_fn = tree_apply_fn that, while `phase` is set, records which prompt positions
  of each forward pass's input are masked (one entry per call, whole batch)."""

  def __init__(self, prompt_len: int, mask_id: int):
    self.prompt_len, self.mask_id = prompt_len, mask_id
    self.phase, self.seen = None, collections.defaultdict(list)

  def _record(self, tokens_BxL):
    if self.phase is not None:
      self.seen[self.phase].append(
          (np.asarray(tokens_BxL)[:, :self.prompt_len] == self.mask_id).tobytes())

  def apply_fn(self, params, tokens_BxL, **kw):
    jax.debug.callback(self._record, tokens_BxL)
    return tree_apply_fn(params, tokens_BxL, **kw)

  def in_phase(self, name, fn):
    """fn, run with `phase` = name() (or name) and waited for, callbacks included."""
    def run(*args):
      self.phase = name() if callable(name) else name
      out = jax.block_until_ready(fn(*args))
      jax.effects_barrier()
      self.phase = None
      return out
    return run


SUDOKU_PROMPT_LEN = 25  # "Sudoku: " + 16 digits + newline, char tokenizer.


@pytest.fixture(scope="module")
def recorder():
  return Recorder(SUDOKU_PROMPT_LEN, mask_id=99)


@pytest.fixture(scope="module")
def rs8(init_run, recorder):
  """The RL programs on a (data=2, fsdp=2, tensor=2) mesh, built once for several tests."""
  data_dir, init_dir = init_run
  config = tiny_config(data_dir, init_dir, **{"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2})
  rs = rl_setup.build(config, jax.devices(), apply_fn=recorder.apply_fn)
  assert rs.setup.model_config.mask_id == recorder.mask_id
  return rs


@pytest.fixture(scope="module")
def straight_run(rs8, tmp_path_factory):
  """Two RL steps without interruption, checkpoints after each."""
  workdir = str(tmp_path_factory.mktemp("straight") / "run")
  loop.run(rs8, workdir, score=toy_score)
  return workdir


def test_each_prompt_mask_is_used_exactly_once_per_micro_batch(rs8, recorder):
  """mu = 2 iterations x M = 2 micro-batches: the log-probs pass sees each of the 4 masks
  twice (old and reference policy), update i sees exactly masks (i, 0) and (i, 1)."""
  rl = rs8.config.rl
  mu, M, b, P_, p = rl.num_iterations, rl.num_micro_batches, 8, SUDOKU_PROMPT_LEN, rl.p_mask_prompt
  assert (mu, M) == (2, 2)
  rng = np.random.default_rng(14)
  batch_np = {"prompt": rng.integers(3, 90, (M, b, P_)).astype(np.int32),
              "prompt_valid": np.ones((M, b, P_), bool),
              "completion": rng.integers(3, 90, (M, b, rs8.config.rl.gen_length)).astype(np.int32),
              "advantages": rng.normal(size=(M, b)).astype(np.float32)}
  batch_np["completion_mask"] = np.asarray(logprobs.completion_mask(batch_np["completion"],
                                                                    eos_id=EOS))
  batch = {k: rollout.to_global(v, grpo.micro_batch_sharding(rs8.setup.mesh))
           for k, v in batch_np.items()}
  state = rl_setup.init_state(rs8)
  step_key = jax.random.key(15)
  calls = iter(range(mu))
  _, history, _ = grpo.run_iterations(
      state.policy, state.ref_params, batch, step_key, num_iterations=mu,
      logps_step=recorder.in_phase("logps", rs8.logps_step),
      update_step=recorder.in_phase(lambda: f"update {next(calls)}", rs8.update_step))

  def view(i, m):
    _, masked = logprobs.mask_prompt(grpo.mask_key(step_key, i, m), batch_np["prompt"][m],
                                     p_mask_prompt=p, mask_id=recorder.mask_id)
    return np.asarray(masked).tobytes()

  views = {(i, m): view(i, m) for i in range(mu) for m in range(M)}
  assert len(set(views.values())) == mu * M, "every (iteration, micro-batch) has its own mask"
  assert collections.Counter(recorder.seen["logps"]) == {v: 2 for v in views.values()}
  for i in range(mu):
    assert collections.Counter(recorder.seen[f"update {i}"]) == {views[i, m]: 1 for m in range(M)}
  assert float(history[0]["ratio"]) == pytest.approx(1.0, abs=1e-6)  # pi = pi_old at first.


def _read_rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _restore(rs, workdir, step=None):
  ckpt = checkpoint.Checkpointer(checkpoint.checkpoint_dir(workdir), keep=3)
  for later in (s for s in ckpt.steps() if step is not None and s > step):
    shutil.rmtree(os.path.join(checkpoint.checkpoint_dir(workdir), str(later)))
  ckpt = checkpoint.Checkpointer(checkpoint.checkpoint_dir(workdir), keep=3)
  iterator = rollout.prompt_iterator(64, batch_size=rs.config.rl.num_prompts_per_step, seed=0)
  restored_step, state = ckpt.restore_latest(rs.abstract_state, iterator)
  ckpt.close()
  return restored_step, jax.device_get(state), iterator


def test_rl_step_on_8_devices_matches_1_device(init_run, rs8, recorder, straight_run, tmp_path):
  """Step 1 of the 8-device run == the same RL step on 1 device (rollout, rewards, update)."""
  data_dir, init_dir = init_run
  rs1 = rl_setup.build(tiny_config(data_dir, init_dir, **{"mesh.data": 1}), jax.devices()[:1],
                   apply_fn=recorder.apply_fn)
  from diffusionlm.data import pipeline  # pylint: disable=g-import-not-at-top
  prompts = rollout.PromptSet(pipeline.load_task_examples(rs1.config.data, "train"),
                              rs1.setup.tokenizer)
  first_prompts = next(rollout.prompt_iterator(len(prompts), batch_size=4, seed=0))
  state_1, metrics_1, _ = loop.rl_step(rs1, rl_setup.init_state(rs1), prompts, first_prompts, 0,
                                       score=toy_score)
  copy = str(tmp_path / "run")
  shutil.copytree(straight_run, copy)
  _, state_8, _ = _restore(rs8, copy, step=1)
  row_8 = _read_rows(straight_run)[0]
  assert row_8["step"] == 1
  assert metrics_1["reward_std"] > 0 and metrics_1["grad_norm"] > 0
  for k, v in metrics_1.items():
    if not k.startswith("seconds/"):  # Wall times differ.
      np.testing.assert_allclose(row_8[f"rl/{k}"], v, rtol=1e-4, atol=1e-6, err_msg=k)
  # Within 1% of one Adam step (lr) per parameter.
  _assert_trees_close(state_8.policy.params, jax.device_get(state_1.policy.params),
                      rtol=0, atol=0.01 * rs1.config.optimizer.lr)


def test_resume_gives_the_same_next_step(rs8, init_run, straight_run, tmp_path):
  """2 steps straight == 1 step, stop, resume for the 2nd (params, metrics, prompt order)."""
  _, init_dir = init_run
  resumed = str(tmp_path / "resumed")
  shutil.copytree(straight_run, resumed)
  shutil.rmtree(os.path.join(checkpoint.checkpoint_dir(resumed), "2"))
  summary = loop.run(rs8, resumed, score=toy_score)
  assert summary["step"] == 2
  rows_straight, rows_resumed = _read_rows(straight_run), _read_rows(resumed)
  assert [r["step"] for r in rows_resumed] == [1, 2]
  drop_time = lambda row: {k: v for k, v in row.items() if not k.startswith("rl/seconds")}
  for a, b in zip(rows_straight, rows_resumed):
    assert drop_time(a) == pytest.approx(drop_time(b), rel=1e-6)
  step_a, state_a, iterator_a = _restore(rs8, resumed)
  step_b, state_b, iterator_b = _restore(rs8, straight_run)
  assert step_a == step_b == 2
  jax.tree.map(np.testing.assert_array_equal, state_a, state_b)
  assert iterator_a.get_state() == iterator_b.get_state()
  assert int(state_a.policy.step) == 2 * rs8.config.rl.num_iterations
  # The reference policy stays the initial parameters.
  initial = checkpoint.restore_params(init_dir, rs8.setup.abstract_state.params)
  jax.tree.map(np.testing.assert_array_equal, state_a.ref_params, jax.device_get(initial))


@pytest.mark.parametrize("estimator", [{"rl.estimator": "trajectory", "rl.trajectory_group": 2},
                                       {"rl.estimator": "elbo", "rl.elbo_samples": 4},
                                       {"rl.estimator": "spg", "rl.spg_mix": 0.5}],
                         ids=["trajectory", "elbo", "spg"])
def test_every_estimator_runs_sharded_as_on_one_device_and_resumes_bitwise(init_run, tmp_path,
                                                                          estimator):
  """The RL loop with each estimator beyond d1's: 2 steps on a (2, 2, 2) mesh; step 1 ==
  the same step on 1 device; 1 step + resume == 2 steps straight (bitwise)."""
  data_dir, init_dir = init_run
  mesh8 = {"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2}
  rs8 = rl_setup.build(tiny_config(data_dir, init_dir, **mesh8, **estimator), jax.devices())
  straight = str(tmp_path / "straight")
  loop.run(rs8, straight, score=toy_score)

  rs1 = rl_setup.build(tiny_config(data_dir, init_dir, **{"mesh.data": 1}, **estimator),
                       jax.devices()[:1])
  from diffusionlm.data import pipeline  # pylint: disable=g-import-not-at-top
  prompts = rollout.PromptSet(pipeline.load_task_examples(rs1.config.data, "train"),
                              rs1.setup.tokenizer)
  first_prompts = next(rollout.prompt_iterator(len(prompts), batch_size=4, seed=0))
  state_1, metrics_1, _ = loop.rl_step(rs1, rl_setup.init_state(rs1), prompts, first_prompts,
                                       0, score=toy_score)
  row_8 = _read_rows(straight)[0]
  assert metrics_1["reward_std"] > 0 and metrics_1["grad_norm"] > 0
  for k, v in metrics_1.items():
    if not k.startswith("seconds/"):  # Wall times differ.
      np.testing.assert_allclose(row_8[f"rl/{k}"], v, rtol=1e-4, atol=1e-6, err_msg=k)
  copy = str(tmp_path / "copy")
  shutil.copytree(straight, copy)
  _, state_8, _ = _restore(rs8, copy, step=1)
  _assert_trees_close(state_8.policy.params, jax.device_get(state_1.policy.params),
                      rtol=0, atol=0.01 * rs1.config.optimizer.lr)

  resumed = str(tmp_path / "resumed")
  shutil.copytree(straight, resumed)
  shutil.rmtree(os.path.join(checkpoint.checkpoint_dir(resumed), "2"))
  loop.run(rs8, resumed, score=toy_score)
  drop_time = lambda row: {k: v for k, v in row.items() if not k.startswith("rl/seconds")}
  assert [drop_time(r) for r in _read_rows(resumed)] == [drop_time(r) for r in
                                                         _read_rows(straight)]
  jax.tree.map(np.testing.assert_array_equal, _restore(rs8, resumed)[1],
               _restore(rs8, straight)[1])


@pytest.mark.parametrize("overrides, message", [
    ({"rl.num_generations": 1}, r"config.rl.num_generations=1 must be >= 2"),
    ({"rl.task": "math"}, r"config.rl.task='math'"),
    ({"rl.task": "countdown"}, r"config.rl.task='countdown' does not match config.data.dataset"),
    ({"rl.p_mask_prompt": 1.5}, r"config.rl.p_mask_prompt=1.5"),
    ({"rl.clip_eps": 0.0}, r"config.rl.clip_eps=0.0"),
    ({"rl.num_micro_batches": 3}, r"config.rl.num_micro_batches=3"),
    ({"rl.num_iterations": 0}, r"config.rl.num_iterations=0"),
    ({"rl.block_length": 3}, r"config.rl sampler settings: gen_length=8 is not divisible by block_length=3"),
    ({"rl.remasking": "best"}, r"config.rl sampler settings: remasking='best'"),
    ({"rl.estimator": "exact"}, r"config.rl.estimator='exact' is not one of"),
    ({"rl.estimator": "trajectory", "rl.trajectory_group": 3},
     r"config.rl.trajectory_group=3 must be an int >= 1 that divides .* 4"),
    ({"rl.estimator": "elbo", "rl.elbo_samples": 3}, r"config.rl.elbo_samples=3"),
    ({"rl.estimator": "spg", "rl.spg_beta": 0.5}, r"config.rl.spg_beta=0.5"),
])
def test_config_errors_name_the_field(init_run, overrides, message):
  data_dir, init_dir = init_run
  with pytest.raises(ValueError, match=message):
    rl_setup.build(tiny_config(data_dir, init_dir, **overrides))


def test_autoregressive_init_from_is_an_error(init_run, tmp_path):
  """The model comes from the init_from run: a causal one cannot be a diffu-GRPO policy.
  (Its config.json predates model.causal: the objective 'ar' says it is causal.)"""
  data_dir, init_dir = init_run
  with open(os.path.join(init_dir, "config.json")) as f:
    saved = json.load(f)
  saved["objective"] = "ar"
  saved["model"].pop("causal", None)
  ar_dir = tmp_path / "ar"
  ar_dir.mkdir()
  with open(ar_dir / "config.json", "w") as f:
    json.dump(saved, f)
  with pytest.raises(ValueError, match=r"autoregressive run \(model.causal=True\)"):
    rl_setup.build(tiny_config(data_dir, str(ar_dir)))


def test_init_from_is_required(init_run):
  data_dir, _ = init_run
  with pytest.raises(ValueError, match="config.init_from is required"):
    rl_setup.build(tiny_config(data_dir, ""))
