"""Text-level sampling: evaluate_task's scores on a model whose output is known, batching and
left-padding invariance, the sampler settings' defaults and errors, and the CLIs' failures.
"""
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from diffusionlm import generation, sampler_flags, tasks
from diffusionlm.data import tokenizers
from diffusionlm.models import transformer

TOK = tokenizers.load_tokenizer("char")
V = TOK.vocab_size
MASK = V
S1 = "1234341221434321"
S2 = "2134341221434321"  # S1 with the first two cells swapped.
EXAMPLES = [
    {"task": "sudoku", "puzzle": "1234341221434301", "solution": S1},  # S1 solves it.
    {"task": "sudoku", "puzzle": "0104341221434321", "solution": S2},  # S1: blank 2 of 0, 2.
    {"task": "sudoku", "puzzle": "0234341221434321", "solution": S1},  # S1 solves it.
]
ACCURACY, MEAN_REWARD = 2 / 3, (1 + 0.5 + 1) / 3
P = len(tasks.get("sudoku").prompt(EXAMPLES[0]))  # Every 4x4 Sudoku prompt has this length.
G = 40
RESPONSE = tasks.get("sudoku").response({"task": "sudoku", "solution": S1})  # 35 characters.
# Position p of prompt + generation holds TARGET[p]: the S1 response, then EOS.
TARGET = np.array([TOK.pad_id] * P + TOK.encode(RESPONSE) + [TOK.eos_id] * (G - len(RESPONSE)))


def target_apply_fn(params, tokens_BxT, *, positions_BxL=None, return_kv=False, **unused):
  """Diffusion toy: puts almost all mass on TARGET[position] (dummy kv when asked)."""
  del unused
  B, T = tokens_BxT.shape
  if positions_BxL is None:
    positions_BxL = jnp.broadcast_to(jnp.arange(T), (B, T))
  target = jnp.append(params["target"], TOK.eos_id)
  logits_BxTxV = 30.0 * jax.nn.one_hot(target[positions_BxL + params["shift"]], V)
  if return_kv:
    zeros_BxTx1x2 = jnp.zeros((B, T, 1, 2))
    return logits_BxTxV, ((zeros_BxTx1x2, zeros_BxTx1x2),)
  return logits_BxTxV


# mode: (causal, sampler_kwargs, forward passes per batch)
MODES = {
    "plain": (False, {}, G),  # steps = gen_length by default.
    "threshold+cache": (False, {"decoding": "threshold", "cache": "block"}, 2),  # 2 blocks.
    "ar": (True, {}, 1 + len(RESPONSE)),  # Prefill, then one pass per token up to EOS.
}


@pytest.mark.parametrize("mode", list(MODES))
def test_evaluate_task_scores_known_completions(mode):
  causal, sampler_kwargs, passes_per_batch = MODES[mode]
  # The AR toy's logits at position p point at the next token, TARGET[p + 1].
  params = {"target": jnp.asarray(TARGET), "shift": 1 if causal else 0}
  result = generation.evaluate_task(
      params, target_apply_fn, TOK, EXAMPLES, task="sudoku", mask_id=MASK, causal=causal,
      batch_size=2, gen_length=G, key=jax.random.key(0), sampler_kwargs=sampler_kwargs)
  assert result["completions"] == [RESPONSE] * 3  # Cut at the first EOS.
  assert result["accuracy"] == pytest.approx(ACCURACY)
  assert result["mean_reward"] == pytest.approx(MEAN_REWARD)
  assert result["mean_completion_length"] == len(RESPONSE)
  # Two batches (3 examples, the last batch padded), each passes_per_batch passes.
  assert result["passes_per_token"] == pytest.approx(2 * passes_per_batch / (2 * G))
  assert result["num_examples"] == 3 and result["tokens_per_sec"] > 0


def test_evaluate_task_rejects_bad_input():
  run = lambda examples, **kw: generation.evaluate_task(
      {}, None, TOK, examples, mask_id=MASK, causal=False, batch_size=2, gen_length=G,
      key=jax.random.key(0), **({"task": "sudoku"} | kw))
  with pytest.raises(ValueError, match="task"):
    run(EXAMPLES, task="chess")
  with pytest.raises(ValueError, match=r"examples\[1\]"):
    run([EXAMPLES[0], {**EXAMPLES[1], "task": "countdown"}])
  with pytest.raises(ValueError, match="empty"):
    run([])
  with pytest.raises(ValueError, match="block_length"):
    run(EXAMPLES, sampler_kwargs={"block_length": 3})


def test_encode_prompts_left_pads_and_cut_at_eos():
  prompt_NxP, valid_NxP = generation.encode_prompts(TOK, ["ab", "abcd"])
  np.testing.assert_array_equal(valid_NxP, [[False, False, True, True], [True] * 4])
  np.testing.assert_array_equal(prompt_NxP[0, :2], TOK.pad_id)
  np.testing.assert_array_equal(prompt_NxP[0, 2:], TOK.encode("ab"))
  np.testing.assert_array_equal(prompt_NxP[1], TOK.encode("abcd"))
  with pytest.raises(ValueError, match="prompt 1"):
    generation.encode_prompts(TOK, ["a", ""])
  e = TOK.eos_id
  cut = generation.cut_at_eos(np.array([[5, e, 6, e], [5, 6, 7, 8], [e, 5, 5, 5]]), e)
  assert [c.tolist() for c in cut] == [[5], [5, 6, 7, 8], []]


@pytest.fixture(scope="module")
def tiny_model():
  """A random one-layer Transformer over the character vocabulary (nothing compiled)."""
  config = transformer.TransformerConfig(
      vocab_size=V, d_model=16, num_layers=1, num_heads=2, num_kv_heads=1, mlp_dim=32,
      rope_theta=10000.0, norm_eps=1e-5, tie_embeddings=False, causal=False)
  model = transformer.Transformer(config)
  shapes = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32)))
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), x.dtype), shapes)
  return params["params"], lambda p, tokens_BxT, **kw: model.apply({"params": p}, tokens_BxT,
                                                                    **kw)


def test_completions_do_not_depend_on_batching_or_padding(tiny_model):
  """Prompts of different lengths, left-padded together and split into padded batches, get
  the completions they get alone (RoPE sees relative positions; padding is masked out)."""
  params, apply_fn = tiny_model
  prompts = ["ab\n", "Sudoku: 12\n", "xy\n"]  # The last one fills a padded batch.
  run = lambda prompts, batch_size: generation.complete(
      params, apply_fn, TOK, prompts, mask_id=MASK, causal=False, batch_size=batch_size,
      gen_length=8, key=jax.random.key(0), sampler_kwargs={"block_length": 4, "steps": 8})
  together = run(prompts, 2)["completions"]
  alone = [run([p], 1)["completions"][0] for p in prompts]
  assert together == alone
  assert len(set(alone)) == 3  # The prompts matter, so the order is checked too.


def test_resolve_fills_defaults_and_names_bad_settings():
  assert [generation.default_block_length(g) for g in (64, 36, 40, 31, 7)] == [
      32, 18, 20, 31, 7]
  kwargs = generation.resolve_sampler_settings(gen_length=36, causal=False, mask_id=MASK)
  assert (kwargs["block_length"], kwargs["steps"], kwargs["decoding"]) == (18, 36, "plain")
  assert generation.resolve_sampler_settings(gen_length=36, causal=True, mask_id=MASK,
                                             temperature=0.5) == {"temperature": 0.5}
  for causal, given, name in [(True, {"cache": "block"}, "cache"),
                              (False, {"block_length": 5}, "block_length"),
                              (False, {"steps": 3}, "steps"),
                              (False, {"threshold": 2.0}, "threshold"),
                              (False, {"bogus": 1}, "bogus"),
                              (True, {"temperature": -1.0}, "temperature")]:
    with pytest.raises(ValueError, match=name):
      generation.resolve_sampler_settings(gen_length=36, causal=causal, mask_id=MASK, **given)


def _fake_run(path, objective):
  """A run directory with only config.json: enough for the CLIs' flag checks."""
  c = base.get_config()
  c.objective = objective
  os.makedirs(path)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(c.to_dict(), f)
  return str(path)


def test_run_settings_are_checked_against_the_run(tmp_path):
  ar_run = _fake_run(tmp_path / "ar", "ar")
  with pytest.raises(ValueError, match="cache"):
    sampler_flags.settings_for_run(ar_run, gen_length=8, settings={"cache": "block"})
  config, causal = sampler_flags.settings_for_run(ar_run, gen_length=8,
                                                  settings={"temperature": 1.0})
  assert causal and config.objective == "ar"
  with pytest.raises(ValueError, match="config.json"):
    sampler_flags.settings_for_run(str(tmp_path), gen_length=8, settings={})


def test_cli_rejects_bad_flags_before_loading(tmp_path):
  workdir = _fake_run(tmp_path / "run", "mdm")  # No checkpoint: loading would fail.
  result = subprocess.run(
      [sys.executable, "-m", "diffusionlm.sample", f"--workdir={workdir}", "--prompt=hi",
       "--gen_length=6", "--block_length=4"], capture_output=True, text=True, timeout=300,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  output = result.stderr + result.stdout
  assert result.returncode != 0
  assert "gen_length=6 is not divisible by block_length=4" in output
  assert "checkpoint" not in output
