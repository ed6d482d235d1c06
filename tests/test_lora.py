"""LoRA: the merge is the low-rank update, zero B is the base model, only adapters train,
the RL reference is the base with the adapters off, the merged run is the adapted model, and
LoRA SFT and RL resume bitwise (on a (data=2, fsdp=2, tensor=2) mesh)."""
import json
import os
import shutil

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import numerics
import test_rl
import test_trainer
from diffusionlm.data import pipeline
from diffusionlm.models import lora
from diffusionlm.rl import grpo, loop, rollout
from diffusionlm.rl import setup as rl_setup
from diffusionlm.train import (checkpoint, convert, load, merge_lora, run_dir, train_state,
                               trainer, validation)

MESH8 = {"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2}
ALL = ("query", "key", "value", "out", "gate", "up", "down")


def lora_overrides(**kw):
  return {"lora.rank": 4, "lora.alpha": 8.0, **{f"lora.{k}": v for k, v in kw.items()}}


# ---- The transform ------------------------------------------------------------------------


def test_merge_is_the_low_rank_update_per_stacked_matrix():
  """W' = W + alpha / r * A @ B with A over the kernel's input dims, B over its outputs; a
  stacked [layers, ...] kernel gets one update per layer; B = 0 leaves W bitwise."""
  rng = np.random.default_rng(0)
  cfg = {"rank": 3, "alpha": 6.0, "targets": ("query", "out"), "base_dtype": "float32"}
  base = {"attn": {"query": rng.normal(size=(5, 2, 4)), "out": rng.normal(size=(2, 4, 5)),
                   "norm": rng.normal(size=(5,))}}
  base = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), base)
  adapters = lora.init_adapters(jax.random.key(0), base, cfg)
  assert adapters["attn"]["query"]["a"].shape == (5, 3)
  assert adapters["attn"]["out"]["b"].shape == (3, 5)
  merged = lora.merge(base, adapters, cfg)
  jax.tree.map(np.testing.assert_array_equal, merged, base)  # B = 0.

  adapters = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32),
                          adapters)
  merged = lora.merge(base, adapters, cfg)
  q, o = adapters["attn"]["query"], adapters["attn"]["out"]
  want_q = base["attn"]["query"].reshape(5, 8) + 2.0 * q["a"] @ q["b"].reshape(3, 8)
  np.testing.assert_allclose(merged["attn"]["query"].reshape(5, 8), want_q, rtol=1e-5, atol=1e-5)
  want_o = base["attn"]["out"].reshape(8, 5) + 2.0 * o["a"].reshape(8, 3) @ o["b"]
  np.testing.assert_allclose(merged["attn"]["out"].reshape(8, 5), want_o, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(merged["attn"]["norm"], base["attn"]["norm"])

  stack = lambda *trees: jax.tree.map(lambda *xs: jnp.stack(xs), *trees)
  other = jax.tree.map(lambda x: x[::-1] * 0.5, adapters)
  stacked = lora.merge(stack(base, base), stack(adapters, other), cfg)
  numerics.assert_close_at_scale(jax.tree.map(lambda x: x[0], stacked), merged, rel=1e-6)
  numerics.assert_close_at_scale(jax.tree.map(lambda x: x[1], stacked),
                                 lora.merge(base, other, cfg), rel=1e-6)


@pytest.mark.parametrize("field, value, message", [
    ("targets", ("query", "q_proj"),
     r"config.lora.targets=\['query', 'q_proj'\]: unknown \['q_proj'\]"),
    ("targets", (), r"config.lora.targets=\[\]: empty"),
    ("rank", -1, r"config.lora.rank=-1 must be an int >= 0"),
    ("alpha", 0.0, r"config.lora.alpha=0.0 must be > 0"),
    ("base_dtype", "float16", r"config.lora.base_dtype='float16'"),
])
def test_config_errors_name_the_field(tfds_dir, field, value, message):
  config = test_trainer.tiny_config(tfds_dir, objective="sft", init_from=tfds_dir,
                                    **lora_overrides(**{field: value}))
  with pytest.raises(ValueError, match=message):
    validation.validate_train_config(config, num_devices=8, process_count=1)


def test_lora_needs_init_from_and_a_resume_keeps_its_settings(tfds_dir, tmp_path):
  config = test_trainer.tiny_config(tfds_dir, objective="sft", **lora_overrides())
  with pytest.raises(ValueError, match=r"config.lora.rank=4 adapts a trained model: set "
                                       r"config.init_from"):
    validation.validate_train_config(config, num_devices=8, process_count=1)
  config.model.causal = False  # Resolved, as a run saves it.
  run_dir.write_config(str(tmp_path), config.to_dict())
  run_dir.check_compatible(str(tmp_path), config)  # Tuples saved as JSON lists still match.
  config.lora.rank = 8
  with pytest.raises(ValueError, match=r"other LoRA settings \(lora.rank: 4 -> 8\)"):
    run_dir.check_compatible(str(tmp_path), config)


def test_only_adapters_hold_optimizer_state_and_shard_like_their_kernels(tfds_dir):
  """The abstract LoRA state: adapters in float32 with AdamW moments, the base frozen in
  bfloat16 without any; A sharded like the kernel's inputs, B like its outputs."""
  config = test_trainer.tiny_config(tfds_dir, objective="sft", init_from=tfds_dir, **MESH8,
                                    **lora_overrides(base_dtype="bfloat16"))
  setup = train_state.build(config)
  state = setup.abstract_state
  assert isinstance(state, train_state.LoraTrainState)
  size = lambda tree: sum(x.size for x in jax.tree.leaves(tree))
  num_adapters = size(state.params)
  moments = [x for x in jax.tree.leaves(state.opt_state) if x.ndim > 0]
  assert sum(x.size for x in moments) == 2 * num_adapters  # AdamW's mu and nu only.
  assert {x.dtype for x in jax.tree.leaves(state.base_params)} == {jnp.dtype(jnp.bfloat16)}
  assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype(jnp.float32)}
  c = setup.model_config
  # Rank 4; query, key, value, out: A and B of d_model x 4 each (heads x head_dim =
  # d_model); gate, up, down: (d_model + mlp_dim) x 4.
  per_layer = 4 * (8 * c.d_model + 3 * (c.d_model + c.mlp_dim))
  assert num_adapters == c.num_layers * per_layer
  query = setup.abstract_model_params["block_0"]["attn"]["query"].sharding.spec
  adapted = state.params["block_0"]["attn"]["query"]
  # A keeps the input's fsdp and B the output's tensor axis; each factor's rank takes the
  # axis it lost, so no factor is replicated where its kernel is split.
  assert tuple(adapted["a"].sharding.spec) == (query[0], query[1])
  assert tuple(adapted["b"].sharding.spec) == (query[0],) + tuple(query[1:])
  kernels = flax.traverse_util.flatten_dict(setup.abstract_model_params)
  shard_size = lambda x: np.prod(x.sharding.shard_shape(x.shape))
  for path, factor in flax.traverse_util.flatten_dict(state.params).items():
    kernel = kernels[path[:-1]]
    assert shard_size(factor) * kernel.size == factor.size * shard_size(kernel), path


def test_a_rank_the_lost_axes_do_not_divide_stays_replicated(tfds_dir):
  config = test_trainer.tiny_config(tfds_dir, objective="sft", init_from=tfds_dir, **MESH8,
                                    **lora_overrides(rank=3, alpha=6.0))
  state = train_state.build(config).abstract_state
  adapted = state.params["block_0"]["attn"]["query"]
  assert adapted["a"].sharding.spec[-1] is None and adapted["b"].sharding.spec[0] is None


# ---- LoRA SFT -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base_run(tfds_dir, tmp_path_factory):
  """A randomly initialised 1-layer model saved as a run directory: the base to adapt (SFT)
  and the diffu-GRPO start (RL, whose model comes from it)."""
  workdir = str(tmp_path_factory.mktemp("lora") / "base")
  config = test_trainer.tiny_config(tfds_dir, **{"model.num_layers": 1})
  setup = train_state.build(config, jax.devices()[:1])
  state = train_state.make_init_fn(setup)(jax.random.key(0))
  convert.save_params(workdir, state.params, setup.config.to_dict())
  run_dir.write_config(workdir, setup.config.to_dict())
  return workdir


def lora_sft_config(tfds_dir, base_run, **overrides):
  return test_trainer.tiny_config(
      tfds_dir, objective="sft", init_from=base_run, eval_every_steps=0,
      **{"model.num_layers": 1, "optimizer.lr": 1e-2, **MESH8, **lora_overrides(), **overrides})


@pytest.fixture(scope="module")
def lora_sft_run(tfds_dir, base_run, tmp_path_factory):
  """4 LoRA SFT steps, checkpoints at 2 and 4."""
  workdir = str(tmp_path_factory.mktemp("lora") / "sft")
  trainer.train_and_evaluate(lora_sft_config(tfds_dir, base_run), workdir)
  return workdir


def _restore(setup, workdir, config):
  ckpt = checkpoint.Checkpointer(checkpoint.checkpoint_dir(workdir), keep=3)
  loader = pipeline.make_train_loader(config.data, setup.tokenizer, objective="sft",
                                      global_batch_size=8, seed=0, process_index=0,
                                      process_count=1)
  step, state = ckpt.restore_latest(setup.abstract_state, iter(loader))
  ckpt.close()
  return step, state


def test_zero_b_lora_is_the_base_model(tfds_dir, base_run):
  """The initial LoRA model (fresh adapters, B = 0) gives the base run's logits bitwise."""
  setup = train_state.build(lora_sft_config(tfds_dir, base_run))
  state = train_state.initial_state(setup, jax.random.key(0))
  base = checkpoint.restore_params(base_run, setup.abstract_model_params)
  assert float(jnp.abs(jax.tree.leaves(state.params)[0]).max()) > 0  # A is random.
  tokens_BxL = jnp.arange(2 * 16, dtype=jnp.int32).reshape(2, 16) % setup.model_config.vocab_size
  logits = jax.jit(lambda s: setup.apply_fn(setup.model_params(s), tokens_BxL))(state)
  np.testing.assert_array_equal(logits, jax.jit(setup.apply_fn)(base, tokens_BxL))


def test_lora_sft_trains_only_the_adapters_and_resumes_bitwise(tfds_dir, base_run, lora_sft_run,
                                                               tmp_path):
  """After 4 steps the base is bitwise the base run's and B has moved; 2 steps + resume ==
  4 steps straight (state, data position and metrics)."""
  config = lora_sft_config(tfds_dir, base_run)
  setup = train_state.build(config)
  step, state = _restore(setup, lora_sft_run, config)
  assert step == 4
  base = checkpoint.restore_params(base_run, setup.abstract_model_params)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.base_params),
               jax.device_get(base))
  b = state.params["block_0"]["mlp"]["up"]["b"]
  assert float(jnp.abs(b).max()) > 0

  resumed = str(tmp_path / "resumed")
  shutil.copytree(lora_sft_run, resumed)
  shutil.rmtree(os.path.join(checkpoint.checkpoint_dir(resumed), "4"))
  trainer.train_and_evaluate(config, resumed)
  _, resumed_state = _restore(setup, resumed, config)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(resumed_state),
               jax.device_get(state))
  rows = lambda w: [{k: v for k, v in r.items() if "tokens_per_sec" not in k and "mfu" not in k}
                    for r in run_dir.read_jsonl(os.path.join(w, "metrics.jsonl"))]
  assert rows(resumed) == rows(lora_sft_run)


def test_merged_run_is_the_adapted_model(tfds_dir, base_run, lora_sft_run, tmp_path):
  """merge_lora writes a plain run whose parameters and logits are the LoRA model's; it
  loads with load_run (evaluate, sample) and starts another run (init_from)."""
  config = lora_sft_config(tfds_dir, base_run)
  setup = train_state.build(config)
  _, state = _restore(setup, lora_sft_run, config)
  adapted = jax.jit(setup.model_params)(state)
  out = str(tmp_path / "merged")
  merged_config = merge_lora.merge_run(lora_sft_run, out)
  assert merged_config.lora.rank == 0 and not merged_config.init_from
  with open(os.path.join(out, run_dir.CONFIG_FILE)) as f:
    assert json.load(f)["lora"]["rank"] == 0
  run = load.load_run(out)
  numerics.assert_close_at_scale(jax.device_get(run.params), jax.device_get(adapted), rel=1e-6)
  tokens_BxL = jnp.arange(2 * 16, dtype=jnp.int32).reshape(2, 16) % setup.model_config.vocab_size
  numerics.assert_close_at_scale(jax.jit(run.apply_fn)(run.params, tokens_BxL),
                                 jax.jit(setup.apply_fn)(adapted, tokens_BxL), rel=1e-5)
  # The LoRA run itself loads as the same model, and the merged run starts a plain run.
  numerics.assert_close_at_scale(jax.device_get(load.load_run(lora_sft_run).params),
                                 jax.device_get(run.params), rel=1e-6)
  plain = train_state.build(test_trainer.tiny_config(
      tfds_dir, objective="sft", init_from=out, **MESH8, **{"model.num_layers": 1}))
  start = train_state.initial_state(plain, jax.random.key(1))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(start.params),
               jax.device_get(run.params))
  with pytest.raises(ValueError, match="already holds checkpoints"):
    merge_lora.merge_run(lora_sft_run, out)
  with pytest.raises(ValueError, match=r"is not a LoRA run"):
    merge_lora.merge_run(base_run, str(tmp_path / "again"))


# ---- LoRA RL ------------------------------------------------------------------------------


def mlp_apply_fn(params, tokens_BxL, **kw):
  """test_rl's toy network on the Transformer's embedding and head, its embedding passed
  through block 0's (adapted) SwiGLU up / down kernels: the real parameter tree, LoRA state,
  shardings and checkpoints, compiled in seconds."""
  mlp = params["block_0"]["mlp"]
  embedding = params["embedding"]
  embedding = embedding + jnp.tanh(embedding @ mlp["up"]) @ mlp["down"]
  return test_rl.tree_apply_fn({**params, "embedding": embedding}, tokens_BxL, **kw)


def test_lora_rl_reference_is_the_base_and_resumes_bitwise(tfds_dir, base_run, tmp_path):
  """LoRA diffu-GRPO on 8 devices: no reference copy in the state; at the start the
  reference (adapters off) and the old policy give the same log-probs bitwise; the base
  never changes while the adapters do; 1 step + resume == 2 steps straight (bitwise)."""
  config = test_rl.tiny_config(tfds_dir, base_run, **MESH8, **lora_overrides(),
                               **{"rl.beta": 0.04})
  rs = rl_setup.build(config, jax.devices(), apply_fn=mlp_apply_fn)
  assert isinstance(rs.abstract_state, train_state.LoraTrainState)
  assert not hasattr(rs.abstract_state, "ref_params")
  state = rl_setup.init_state(rs)
  policy, reference = rl_setup.split(state)
  initial = checkpoint.restore_params(base_run, rs.setup.abstract_model_params)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(reference), jax.device_get(initial))
  rl = rs.config.rl
  rng = np.random.default_rng(0)
  M, b = rl.num_micro_batches, rl.num_prompts_per_step * rl.num_generations // rl.num_micro_batches
  batch = {"prompt": rng.integers(3, 20, (M, b, 6)).astype(np.int32),
           "prompt_valid": np.ones((M, b, 6), bool),
           "completion": rng.integers(3, 20, (M, b, rl.gen_length)).astype(np.int32)}
  batch = {k: rollout.to_global(v, grpo.micro_batch_sharding(rs.setup.mesh))
           for k, v in batch.items()}
  views = rs.logps_step(rs.policy_params(policy), reference, batch, jax.random.key(3))
  np.testing.assert_array_equal(views["old_logps"], views["ref_logps"])

  straight = str(tmp_path / "straight")
  loop.run(rs, straight, score=test_rl.toy_score)
  resumed = str(tmp_path / "resumed")
  shutil.copytree(straight, resumed)
  shutil.rmtree(os.path.join(checkpoint.checkpoint_dir(resumed), "2"))
  loop.run(rs, resumed, score=test_rl.toy_score)
  drop_time = lambda row: {k: v for k, v in row.items() if not k.startswith("rl/seconds")}
  read = lambda w: [drop_time(r) for r in run_dir.read_jsonl(os.path.join(w, "metrics.jsonl"))]
  assert read(resumed) == read(straight)
  restore = lambda w: test_rl._restore(rs, w)[1]  # pylint: disable=protected-access
  final = restore(straight)
  jax.tree.map(np.testing.assert_array_equal, restore(resumed), final)
  jax.tree.map(np.testing.assert_array_equal, final.base_params, jax.device_get(initial))
  assert float(np.abs(final.params["block_0"]["mlp"]["up"]["b"]).max()) > 0
