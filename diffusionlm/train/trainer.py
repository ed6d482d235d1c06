"""The training loop, for the `mdm`, `ar` and `sft` objectives.

Reads top to bottom: config checks -> model, mesh, abstract state and its shardings
(train_state.build) -> init or resume -> compile the step ahead of the loop (memory, parameters
and FLOPs logged) -> loop (log, evaluate, checkpoint; bookkeeping.Bookkeeping) ->
summary.json.
"""
import functools
import math
import time

import jax
import ml_collections
import numpy as np

from diffusionlm.data import pipeline
from diffusionlm.models import flops
from diffusionlm.train import (bookkeeping, checkpoint, metrics, objectives, run_dir, sharding,
                               train_state, validation)
from diffusionlm.train import memory as device_memory

_DROPOUT_STREAM = 1  # fold_in(step key, this) seeds the step's dropout masks.


def make_train_step(setup: train_state.Setup):
  """One optimizer step (see `train_state.apply_gradients` for the non-finite guard) of the
  trainable parameters: all of them, or under LoRA the adapters only.

  With `config.model.dropout` > 0 the network runs with dropout on, its 'dropout' rng folded
  from the step key; with dropout 0 the step is the deterministic network's.
  """
  loss_fn = objectives.make_loss_fn(setup.config, mask_id=setup.model_config.mask_id)
  base_key = jax.random.key(setup.config.seed)

  def train_step(state: train_state.TrainState, batch):
    key = jax.random.fold_in(base_key, state.step)  # Resumed runs see the same noise.
    apply_fn = setup.apply_fn
    if setup.model_config.dropout > 0:
      apply_fn = functools.partial(setup.apply_fn, deterministic=False, rngs={
          "dropout": jax.random.fold_in(key, _DROPOUT_STREAM)})
    (loss, aux), grads = jax.value_and_grad(
        lambda p: loss_fn(setup.model_params(state, p), apply_fn, batch, key),
        has_aux=True)(state.params)
    new_state, grad_norm = train_state.apply_gradients(setup.tx, state, loss, grads)
    step_metrics = {**aux, "loss": loss, "grad_norm": grad_norm, "lr": setup.lr_schedule(state.step)}
    return new_state, step_metrics

  return train_step


def make_eval_step(setup: train_state.Setup):
  """Jitted (state, batch, key) -> (nll_nats_sum, num_scored_tokens) of the state's model."""
  eval_fn = objectives.make_eval_fn(setup.config, mask_id=setup.model_config.mask_id)
  return jax.jit(lambda state, batch, key: eval_fn(setup.model_params(state), setup.apply_fn,
                                                   batch, key))


def compile_train_step(setup: train_state.Setup, local_batch: dict):
  """Lowers and compiles the step before the loop (MaxText style) on a real batch's shapes."""
  mesh = setup.mesh
  batch_sharding = sharding.batch_sharding(mesh)
  process_count = jax.process_count()
  abstract_batch = {
      k: jax.ShapeDtypeStruct((v.shape[0] * process_count,) + v.shape[1:], v.dtype, sharding=batch_sharding)
      for k, v in local_batch.items()
  }
  step = jax.jit(make_train_step(setup),
                 in_shardings=(setup.state_sharding, batch_sharding),
                 out_shardings=(setup.state_sharding, sharding.replicated(mesh)),
                 donate_argnums=(0,))
  compiled = step.lower(setup.abstract_state, abstract_batch).compile()
  return compiled


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains `config.objective` in `workdir`, resuming from its newest good checkpoint."""
  preemption = run_dir.Preemption()  # Installed first: a SIGTERM during start-up is not lost.
  try:
    return _train(config, workdir, preemption)
  finally:
    preemption.restore()


def _train(config: ml_collections.ConfigDict, workdir: str,
           preemption: run_dir.Preemption) -> dict:
  validation.validate_train_config(config, num_devices=jax.device_count(),
                                   process_count=jax.process_count())
  setup = train_state.build(config)
  c = setup.config
  resolved = run_dir.start(workdir, c)
  finished = run_dir.finished_summary(workdir, c)
  if finished is not None:
    return finished
  sharding.log_mesh(setup.mesh)

  loader = pipeline.make_train_loader(
      c.data, setup.tokenizer, objective=c.objective, global_batch_size=c.global_batch_size,
      seed=c.seed, process_index=jax.process_index(), process_count=jax.process_count())
  data_iter = iter(loader)
  ckpt = checkpoint.Checkpointer(checkpoint.checkpoint_dir(workdir), keep=c.keep_checkpoints)

  restored = ckpt.restore_latest(setup.abstract_state, data_iter)
  if restored is not None:
    start_step, state = restored
    run_dir.log(f"Resumed from {ckpt.directory} at step {start_step}.")
  else:
    start_step = 0
    state = train_state.initial_state(setup, jax.random.key(c.seed))

  # Compile ahead of the loop, on the shapes of a real batch.
  first_batch = next(data_iter)
  epoch = first_batch.pop("epoch")
  compiled = compile_train_step(setup, first_batch)
  param_counts = flops.param_counts(setup.model_config)
  flops_per_token = flops.flops_per_token(setup.model_config, c.data.seq_len)
  tokens_per_step = c.global_batch_size * c.data.seq_len
  flops_per_step = flops_per_token["exact"] * tokens_per_step
  peak_flops = metrics.measure_matmul_peak() * jax.device_count()
  memory = compiled.memory_analysis()
  run_dir.log(
      f"Model: {param_counts['total']:,} parameters ({param_counts['non_embedding']:,} "
      f"non-embedding); {flops_per_step:.3e} FLOPs per step (exact, {tokens_per_step} tokens); "
      f"measured matmul peak {peak_flops:.3e} FLOP/s over {jax.device_count()} devices.")
  if setup.lora is not None:
    trainable = sum(x.size for x in jax.tree.leaves(setup.abstract_state.params))
    run_dir.log(f"LoRA rank {setup.lora.rank} on {', '.join(setup.lora.targets)}: {trainable:,} "
                f"trainable parameters ({100 * trainable / param_counts['total']:.2f}% of the "
                f"model); the base is frozen in {setup.lora.base_dtype}.")
  if memory is not None:
    run_dir.log(
        f"Compiled step memory per device: arguments {memory.argument_size_in_bytes / 2**20:.1f} "
        f"MiB, outputs {memory.output_size_in_bytes / 2**20:.1f} MiB, temporaries "
        f"{memory.temp_size_in_bytes / 2**20:.1f} MiB.")
  device_memory.check_fits(
      device_memory.StepMemory.of(compiled), limit_gib=c.device_memory_gib, what="train step",
      drivers=f"global_batch_size ({c.global_batch_size}), data.seq_len ({c.data.seq_len}), "
              f"the model (d_model {c.model.d_model}, num_layers {c.model.num_layers}, "
              f"mlp_dim {c.model.mlp_dim}), or set model.remat (now {c.model.remat!r}) or "
              f"model.logits_chunk_size (now {c.model.logits_chunk_size})")

  eval_step = make_eval_step(setup)
  eval_batches = None
  eval_key = jax.random.fold_in(jax.random.key(c.seed), 2**31 - 1)

  def evaluate(state) -> float:
    nonlocal eval_batches
    if eval_batches is None:
      eval_batches = [sharding.global_batch({k: v for k, v in b.items() if k != "epoch"}, setup.mesh)
                      for b in pipeline.make_eval_batches(
                          c.data, setup.tokenizer, objective=c.objective,
                          global_batch_size=c.global_batch_size, num_batches=c.num_eval_batches,
                          process_index=jax.process_index(), process_count=jax.process_count())]
    totals = [eval_step(state, b, jax.random.fold_in(eval_key, i)) for i, b in enumerate(eval_batches)]
    nll, count = (float(sum(t[i] for t in totals)) for i in (0, 1))
    return nll / (count * math.log(2))

  books = bookkeeping.Bookkeeping(
      workdir, c, ckpt=ckpt, preemption=preemption, config_dict=resolved, start_step=start_step,
      desc=f"train {c.objective}", nonfinite=dict(
          unit="step", run="training", advice="config.optimizer.lr, raise warmup, or check the data"))
  pending, epochs_seen = [], int(np.max(epoch))
  tick, tick_step = time.perf_counter(), start_step
  step, batch = start_step, first_batch
  with books:
    while step < c.num_train_steps:
      if batch is None:
        batch = next(data_iter)
        epoch = batch.pop("epoch")
        epochs_seen = max(epochs_seen, int(np.max(epoch)))
      state, step_metrics = compiled(state, sharding.global_batch(batch, setup.mesh))
      pending.append(step_metrics)
      batch = None
      step += 1
      books.progress.update(1)

      if books.due(step, c.log_every_steps):
        books.check_finite(state)
        means = {k: float(np.mean([jax.device_get(m[k]) for m in pending])) for k in pending[0]}
        elapsed = time.perf_counter() - tick
        tokens_per_sec = (step - tick_step) * tokens_per_step / elapsed
        row = {f"train/{k}": v for k, v in means.items()}
        row.update({"train/tokens_per_sec": tokens_per_sec,
                    "train/mfu": tokens_per_sec * flops_per_token["exact"] / peak_flops,
                    "train/epoch": epochs_seen})
        books.writer.write(step, row)
        books.progress.set_postfix(loss=f"{means['loss']:.4f}", refresh=False)
        pending, tick, tick_step = [], time.perf_counter(), step

      if books.due(step, c.eval_every_steps):
        last_eval = evaluate(state)
        books.writer.write(step, {"eval/bits_per_token": last_eval})
        if jax.process_index() == 0:
          books.progress.write(f"step {step}: eval bits/token {last_eval:.4f}")

      if books.end_step(step, state, data_iter):
        break

  evals = [r["eval/bits_per_token"] for r in books.logged() if "eval/bits_per_token" in r]
  return books.finish(step, {
      "step": step, "objective": c.objective,
      "final_eval_bits_per_token": evals[-1] if evals else None,
      "best_eval_bits_per_token": min(evals) if evals else None,
      "num_params": param_counts["total"], "num_nonembedding_params": param_counts["non_embedding"],
      "flops_per_token": flops_per_token, "tokens_seen": step * tokens_per_step,
      "epochs": epochs_seen,
  })
