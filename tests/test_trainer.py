"""The training system: sharded == unsharded, NaN guard, config errors, corrupt checkpoints."""
import json
import os
import shutil

import jax
import numpy as np
import pytest

import numerics
from configs import base
from diffusionlm.data import pipeline
from diffusionlm.train import (checkpoint, objectives, sharding, train_state, trainer,
                               validation)


@pytest.fixture
def data_dir(tfds_dir):
  return tfds_dir


def tiny_config(data_dir, **overrides):
  c = base.get_config()
  c.data.dataset = "sudoku"
  c.data.data_dir = data_dir
  c.data.seq_len = 64
  c.data.num_examples = 256
  c.model.d_model = 32
  c.model.num_layers = 2
  c.model.num_heads = 2
  c.model.mlp_dim = 64
  c.global_batch_size = 8
  c.num_train_steps = 4
  c.log_every_steps = 1
  c.eval_every_steps = 2
  c.num_eval_batches = 1
  c.checkpoint_every_steps = 2
  c.optimizer.warmup_steps = 1
  c.update_from_flattened_dict(overrides)
  return c


def _setup_state_batch(config, devices):
  setup = train_state.build(config, devices)
  state = train_state.make_init_fn(setup)(jax.random.key(config.seed))
  batch = next(iter(pipeline.make_train_loader(
      config.data, setup.tokenizer, objective=config.objective,
      global_batch_size=config.global_batch_size, seed=config.seed, process_index=0, process_count=1)))
  batch.pop("epoch")
  return setup, state, batch


def _one_step(config, devices):
  setup, state, batch = _setup_state_batch(config, devices)
  step = trainer.compile_train_step(setup, batch)
  state, metrics = step(state, sharding.global_batch(batch, setup.mesh))
  return float(metrics["loss"]), jax.device_get(state.params)


REGULARISED = {"model.dropout": 0.1, "data.input_mask_rate": 0.2}


@pytest.mark.parametrize("objective, overrides", [
    ("mdm", {}), ("ar", {}), ("sft", {}), ("mdm", {"model.dropout": 0.1}), ("ar", REGULARISED)])
def test_sharded_step_matches_single_device(data_dir, objective, overrides):
  """One step on a (data=2, fsdp=2, tensor=2) mesh == the same step on one device, dropout
  and input masking included (their random draws do not depend on the sharding)."""
  one = tiny_config(data_dir, objective=objective, **{"mesh.data": 1}, **overrides)
  loss_1, params_1 = _one_step(one, jax.devices()[:1])
  many = tiny_config(data_dir, objective=objective, **{"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2},
                     **overrides)
  loss_8, params_8 = _one_step(many, jax.devices())
  numerics.assert_close_at_scale(loss_8, loss_1, rel=1e-5)
  numerics.assert_close_at_scale(params_8, params_1, rel=1e-4)


def test_dropout_zero_is_the_deterministic_step_and_dropout_is_on_in_training(data_dir):
  """model.dropout 0: the step is, bitwise, the step of the deterministic network (the
  computation before dropout existed); dropout > 0 changes the step but not evaluation."""
  def reference_step(setup):  # The training step without dropout, written out.
    loss_fn = objectives.make_loss_fn(setup.config, mask_id=setup.model_config.mask_id)

    def step(state, batch):
      key = jax.random.fold_in(jax.random.key(setup.config.seed), state.step)
      (loss, _), grads = jax.value_and_grad(
          lambda p: loss_fn(p, setup.apply_fn, batch, key), has_aux=True)(state.params)
      return train_state.apply_gradients(setup.tx, state, loss, grads)[0], loss
    return step

  config = tiny_config(data_dir, objective="ar", **{"mesh.data": 1})
  setup, state, batch = _setup_state_batch(config, jax.devices()[:1])
  ref_state, ref_loss = jax.jit(reference_step(setup))(state, batch)
  new_state, metrics = jax.jit(trainer.make_train_step(setup))(state, batch)
  assert float(metrics["loss"]) == float(ref_loss)
  jax.tree.map(np.testing.assert_array_equal, new_state.params, ref_state.params)

  dropped = train_state.build(tiny_config(data_dir, objective="ar", **{"mesh.data": 1,
                                                                       "model.dropout": 0.3}),
                              jax.devices()[:1])
  _, drop_metrics = jax.jit(trainer.make_train_step(dropped))(state, batch)
  assert float(drop_metrics["loss"]) != float(ref_loss)
  key = jax.random.key(0)
  eval_plain = trainer.make_eval_step(setup)(state, batch, key)
  eval_dropped = trainer.make_eval_step(dropped)(state, batch, key)
  assert [float(x) for x in eval_plain] == [float(x) for x in eval_dropped]


def test_resume_with_dropout_and_input_masking_equals_uninterrupted(data_dir, tmp_path):
  """Dropout masks and input masks come from the step key: a run resumed from its step-2
  checkpoint ends with the parameters of the uninterrupted run, bitwise."""
  config = tiny_config(data_dir, objective="ar", eval_every_steps=0, **REGULARISED)
  workdir = str(tmp_path / "run")
  trainer.train_and_evaluate(config, workdir)
  setup = train_state.build(config)
  uninterrupted = checkpoint.restore_params(workdir, setup.abstract_state.params)
  shutil.rmtree(os.path.join(checkpoint.checkpoint_dir(workdir), "4"))
  os.remove(os.path.join(workdir, "summary.json"))
  trainer.train_and_evaluate(config, workdir)
  resumed = checkpoint.restore_params(workdir, setup.abstract_state.params)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(resumed),
               jax.device_get(uninterrupted))


def test_data_fsdp_mesh_matches_single_device(data_dir):
  """The issue's setting: mesh (data=2, fsdp=4) vs one device."""
  loss_1, params_1 = _one_step(tiny_config(data_dir, **{"mesh.data": 1}), jax.devices()[:1])
  loss_8, params_8 = _one_step(tiny_config(data_dir, **{"mesh.data": 2, "mesh.fsdp": 4}), jax.devices())
  numerics.assert_close_at_scale(loss_8, loss_1, rel=1e-5)
  numerics.assert_close_at_scale(params_8, params_1, rel=1e-4)


def test_train_writes_metrics_summary_and_checkpoints(data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  summary = trainer.train_and_evaluate(tiny_config(data_dir), workdir)
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  train_steps = [r["step"] for r in rows if "train/loss" in r]
  assert train_steps == [1, 2, 3, 4]
  for key in ("train/loss", "train/bits_per_token", "train/lr", "train/grad_norm",
              "train/tokens_per_sec", "train/mfu", "train/epoch"):
    assert key in rows[0], key
  evals = [r for r in rows if "eval/bits_per_token" in r]
  assert [r["step"] for r in evals] == [2, 4]
  assert summary["final_eval_bits_per_token"] == evals[-1]["eval/bits_per_token"]
  assert json.load(open(os.path.join(workdir, "summary.json")))["step"] == 4
  assert json.load(open(os.path.join(workdir, "config.json")))["model"]["vocab_size"] > 0
  assert checkpoint.Checkpointer(checkpoint.checkpoint_dir(workdir), keep=3).steps() == [2, 4]
  assert os.listdir(os.path.join(workdir, "tensorboard"))


def test_nonfinite_loss_stops_run_and_keeps_last_good_checkpoint(data_dir, tmp_path):
  """An exploding learning rate makes step 2's loss non-finite: the run stops with a clear
  error, and the checkpoint of step 1 is intact and finite."""
  workdir = str(tmp_path / "run")
  config = tiny_config(data_dir, num_train_steps=6, checkpoint_every_steps=1, eval_every_steps=0,
                       **{"optimizer.lr": 1e30, "optimizer.grad_clip": 0.0, "optimizer.warmup_steps": 0})
  with pytest.raises(FloatingPointError, match=r"Non-finite loss .* step \d+.*intact"):
    trainer.train_and_evaluate(config, workdir)
  setup = train_state.build(config)
  ckpt = checkpoint.Checkpointer(checkpoint.checkpoint_dir(workdir), keep=3)
  steps = ckpt.steps()
  assert steps, "no checkpoint survived"
  loader = pipeline.make_train_loader(config.data, setup.tokenizer, objective="mdm",
                                      global_batch_size=8, seed=0, process_index=0, process_count=1)
  step, state = ckpt.restore_latest(setup.abstract_state, iter(loader))
  assert step == steps[-1]
  assert int(state.first_nonfinite_step) == -1
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(jax.device_get(state.params)))


def test_corrupt_checkpoint_is_skipped_not_overwritten(data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  trainer.train_and_evaluate(tiny_config(data_dir, eval_every_steps=0), workdir)
  ckpt_dir = checkpoint.checkpoint_dir(workdir)
  # Corrupt every file of the newest checkpoint's state.
  for root, _, files in os.walk(os.path.join(ckpt_dir, "4", "state")):
    for name in files:
      with open(os.path.join(root, name), "wb") as f:
        f.write(b"garbage")
  summary = trainer.train_and_evaluate(
      tiny_config(data_dir, eval_every_steps=0, num_train_steps=6), workdir)
  assert summary["step"] == 6
  assert os.path.isdir(os.path.join(ckpt_dir, "corrupt-4")), "corrupt checkpoint must be kept aside"
  assert checkpoint.Checkpointer(ckpt_dir, keep=3).steps() == [2, 4, 6]
  steps_logged = [json.loads(l)["step"] for l in open(os.path.join(workdir, "metrics.jsonl"))]
  assert steps_logged == [1, 2, 3, 4, 5, 6], "resumed from step 2: steps 3-4 relogged once"


def test_init_from_copies_parameters(data_dir, tmp_path):
  first = str(tmp_path / "pretrain")
  trainer.train_and_evaluate(tiny_config(data_dir, eval_every_steps=0, num_train_steps=2), first)
  config = tiny_config(data_dir, eval_every_steps=0, objective="sft", init_from=first)
  setup = train_state.build(config)
  params = checkpoint.restore_params(first, setup.abstract_state.params)
  ckpt = checkpoint.Checkpointer(checkpoint.checkpoint_dir(first), keep=3)
  loader = pipeline.make_train_loader(config.data, setup.tokenizer, objective="mdm",
                                      global_batch_size=8, seed=0, process_index=0, process_count=1)
  _, state = ckpt.restore_latest(setup.abstract_state, iter(loader))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(params), jax.device_get(state.params))
  with pytest.raises(ValueError, match="init_from"):
    checkpoint.restore_params(str(tmp_path / "nothing"), setup.abstract_state.params)


def test_resume_with_different_model_is_an_error(data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  trainer.train_and_evaluate(tiny_config(data_dir, eval_every_steps=0, num_train_steps=2), workdir)
  with pytest.raises(ValueError, match=r"model.d_model: 32 -> 64"):
    trainer.train_and_evaluate(tiny_config(data_dir, **{"model.d_model": 64}), workdir)


@pytest.mark.parametrize("overrides, message", [
    ({"objective": "gan"}, r"config.objective='gan'"),
    ({"model.causal": True}, r"config.model.causal=True does not fit config.objective='mdm'"),
    ({"global_batch_size": 12}, r"config.global_batch_size=12 is not divisible by the data-parallel size 8"),
    ({"mesh.data": 16}, r"config.mesh .* needs a multiple of 16 devices"),
    ({"mesh.data": -1, "mesh.fsdp": -1}, r"at most one axis may be -1"),
    ({"model.num_heads": 3}, r"config.model.d_model=32 is not divisible by config.model.num_heads=3"),
    ({"optimizer.decay": "step"}, r"config.optimizer.decay='step'"),
    ({"optimizer.name": "lion"}, r"config.optimizer.name='lion'"),
    ({"diffusion.schedule": "exp"}, r"config.diffusion.schedule='exp'"),
    ({"num_train_steps": 0}, r"config.num_train_steps=0 must be positive"),
    ({"data.seq_len": 1}, r"config.data.seq_len=1"),
    ({"model.dropout": 1.0}, r"config.model.dropout=1.0 must be in \[0, 1\)"),
    ({"data.input_mask_rate": 0.1}, r"input_mask_rate=0.1 applies to the 'ar' objective only"),
    ({"init_from": "/nonexistent/run"}, r"config.init_from='/nonexistent/run' is not a directory"),
])
def test_config_errors_name_the_field(data_dir, overrides, message):
  with pytest.raises(ValueError, match=message):
    validation.validate_train_config(tiny_config(data_dir, **overrides), num_devices=8,
                                     process_count=1)


def test_resume_and_init_from_across_layer_layouts(data_dir, tmp_path):
  """A run resumed with model.scan_layers flipped continues as the uninterrupted run (the
  Adam moments convert too), and init_from reads either layout into either model."""
  from diffusionlm.models import layer_layout  # pylint: disable=g-import-not-at-top
  config = lambda steps, **kw: tiny_config(data_dir, eval_every_steps=0, num_train_steps=steps,
                                           **kw)
  straight, flipped = str(tmp_path / "straight"), str(tmp_path / "flipped")
  trainer.train_and_evaluate(config(4), straight)
  trainer.train_and_evaluate(config(2), flipped)
  trainer.train_and_evaluate(config(4, **{"model.scan_layers": True}), flipped)
  unrolled = train_state.build(config(4)).abstract_state.params
  scanned = train_state.build(config(4, **{"model.scan_layers": True})).abstract_state.params
  want = jax.device_get(checkpoint.restore_params(straight, unrolled))
  got = jax.device_get(checkpoint.restore_params(flipped, unrolled))  # Stored scanned.
  numerics.assert_close_at_scale(got, want, rel=1e-4)
  got_scanned = jax.device_get(checkpoint.restore_params(straight, scanned))  # Stored unrolled.
  jax.tree.map(np.testing.assert_array_equal, got_scanned,
               layer_layout.to_layout(want, layer_layout.SCANNED))
