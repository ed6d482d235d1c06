"""The one training loop, for the `mdm`, `ar` and `sft` objectives.

Reads top to bottom: config checks -> tokenizer, model, mesh -> abstract state and its
shardings (`jax.eval_shape`, before any allocation) -> init or resume -> compile the step
ahead of the loop (memory, parameters and FLOPs logged) -> loop (log, evaluate, checkpoint)
-> summary.json.
"""
import dataclasses
import functools
import json
import math
import os
import signal
import time
from typing import Any

from absl import logging
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import optax
import tqdm

from diffusionlm.data import pipeline, tokenizers
from diffusionlm.models import transformer
from diffusionlm.scaling import flops
from diffusionlm.train import checkpoint, metrics, objectives, optimizer, sharding, validation


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  first_nonfinite_step: jax.Array  # -1 while every loss so far was finite.


@dataclasses.dataclass
class Setup:
  """Everything derived from the config before training starts."""
  config: ml_collections.ConfigDict
  tokenizer: Any
  model_config: transformer.TransformerConfig
  model: transformer.Transformer
  mesh: jax.sharding.Mesh
  tx: optax.GradientTransformation
  lr_schedule: optax.Schedule
  abstract_state: TrainState  # ShapeDtypeStructs carrying their shardings.
  state_sharding: TrainState
  boxed_params: Any  # eval_shape of model.init with logical axis names.

  def apply_fn(self, params, tokens_BxL, **kwargs):
    return self.model.apply({"params": params}, tokens_BxL, **kwargs)


def build(config: ml_collections.ConfigDict, devices=None, *, vocab_size: int | None = None) -> Setup:
  """Validates the config and derives model, mesh, optimizer and state shardings.

  `devices` defaults to all devices of all processes. `vocab_size` (benchmarks) skips the
  tokenizer; otherwise the vocabulary is the tokenizer's.
  """
  devices = jax.devices() if devices is None else list(devices)
  validation.validate_config(config, num_devices=len(devices), process_count=jax.process_count())
  tokenizer = None if vocab_size else tokenizers.load_tokenizer(config.data.tokenizer)
  model_config = transformer.config_from_dict(
      config.model, vocab_size=vocab_size or tokenizer.vocab_size, causal=config.objective == "ar")
  model = transformer.Transformer(model_config)
  mesh = sharding.make_mesh(config.mesh, devices)
  tx, lr_schedule = optimizer.make_optimizer(config.optimizer, config.num_train_steps)

  dummy_BxL = jnp.zeros((1, config.data.seq_len), jnp.int32)
  boxed_params = jax.eval_shape(lambda k: model.init(k, dummy_BxL)["params"], jax.random.key(0))
  param_sharding = sharding.logical_to_sharding(boxed_params, mesh)
  abstract_params = nn.unbox(boxed_params)
  abstract_opt_state = jax.eval_shape(tx.init, abstract_params)
  opt_sharding = optax.tree_map_params(
      tx, lambda _, s: s, abstract_opt_state, param_sharding,
      transform_non_params=lambda _: sharding.replicated(mesh))
  rep = sharding.replicated(mesh)
  state_sharding = TrainState(step=rep, params=param_sharding, opt_state=opt_sharding,
                              first_nonfinite_step=rep)
  abstract_state = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=abstract_params,
                 opt_state=abstract_opt_state,
                 first_nonfinite_step=jax.ShapeDtypeStruct((), jnp.int32)),
      state_sharding)
  return Setup(config, tokenizer, model_config, model, mesh, tx, lr_schedule, abstract_state,
               state_sharding, boxed_params)


def make_init_fn(setup: Setup):
  """Jitted state initialisation whose outputs land directly in their shardings."""
  seq_len = setup.config.data.seq_len

  def init(key):
    params = setup.model.init(key, jnp.zeros((1, seq_len), jnp.int32))["params"]
    params = nn.unbox(params)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=setup.tx.init(params),
                      first_nonfinite_step=jnp.full((), -1, jnp.int32))

  return jax.jit(init, out_shardings=setup.state_sharding)


def apply_gradients(tx: optax.GradientTransformation, state: TrainState, loss, grads):
  """One optax update -> (new_state, grad_norm). A non-finite loss or gradient leaves the
  parameters unchanged and records the step in `first_nonfinite_step`, which the loop turns
  into a clear error. Shared with the RL update (diffusionlm/rl/grpo.py)."""
  grad_norm = optax.global_norm(grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  keep_new = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
  new_state = TrainState(
      step=state.step + 1,
      params=keep_new(params, state.params),
      opt_state=keep_new(opt_state, state.opt_state),
      first_nonfinite_step=jnp.where(
          (state.first_nonfinite_step < 0) & ~finite, state.step + 1, state.first_nonfinite_step))
  return new_state, grad_norm


def make_train_step(setup: Setup):
  """One optimizer step (see `apply_gradients` for the non-finite guard)."""
  loss_fn = objectives.make_loss_fn(setup.config, mask_id=setup.model_config.mask_id)
  base_key = jax.random.key(setup.config.seed)

  def train_step(state: TrainState, batch):
    key = jax.random.fold_in(base_key, state.step)  # Resumed runs see the same noise.
    (loss, aux), grads = jax.value_and_grad(
        lambda p: loss_fn(p, setup.apply_fn, batch, key), has_aux=True)(state.params)
    new_state, grad_norm = apply_gradients(setup.tx, state, loss, grads)
    step_metrics = {**aux, "loss": loss, "grad_norm": grad_norm, "lr": setup.lr_schedule(state.step)}
    return new_state, step_metrics

  return train_step


def make_eval_step(setup: Setup):
  eval_fn = objectives.make_eval_fn(setup.config, mask_id=setup.model_config.mask_id)
  return jax.jit(lambda params, batch, key: eval_fn(params, setup.apply_fn, batch, key))


def compile_train_step(setup: Setup, local_batch: dict):
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


def _log(message: str) -> None:
  logging.info(message)
  if jax.process_index() == 0:
    print(message, flush=True)


def _check_run_compatible(config, workdir: str, vocab_size: int) -> None:
  """A workdir resumed with a different model or tokenizer is an error, not a silent mix."""
  previous = checkpoint.read_run_config(workdir)
  if previous is None:
    return
  current = config.model.to_dict()
  current["vocab_size"] = vocab_size
  changed = {k: (previous["model"].get(k), v) for k, v in current.items()
             if k not in ("dtype", "remat") and previous["model"].get(k) != v}
  if changed:
    raise ValueError(
        f"{workdir} holds a run with a different model ({', '.join(f'model.{k}: {a} -> {b}' for k, (a, b) in changed.items())}); "
        "use a new --workdir, or config.init_from to start from its parameters.")


def _read_metrics(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def _write_json(path: str, obj) -> None:
  if jax.process_index() == 0:
    with open(path, "w") as f:
      json.dump(obj, f, indent=2, sort_keys=True)


class _Preemption:
  """SIGTERM -> save a checkpoint at the next step boundary, on every process together."""

  def __init__(self):
    self.requested = False
    self._previous = None
    if jax.process_count() == 1:
      self._previous = signal.signal(signal.SIGTERM, self._handler)

  def restore(self) -> None:
    """Reinstates the SIGTERM handler that was in place before this run."""
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def _handler(self, signum, frame):
    del signum, frame
    self.requested = True

  def reached(self, step: int) -> bool:
    if jax.process_count() > 1:  # JAX's coordination service agrees on one step.
      return multihost_utils.reached_preemption_sync_point(step)
    return self.requested


def raise_if_nonfinite(state: TrainState, *, ckpt: checkpoint.Checkpointer, unit: str,
                       run: str, advice: str) -> None:
  """FloatingPointError if the NaN guard skipped an update (`state.first_nonfinite_step`),
  naming that `unit`, the intact last good checkpoint and what to lower (`advice`)."""
  bad = int(state.first_nonfinite_step)
  if bad >= 0:
    last_good = ckpt.steps()[-1] if ckpt.steps() else None
    raise FloatingPointError(
        f"Non-finite loss or gradient at {unit} {bad}; {run} stopped. The last good "
        f"checkpoint (step {last_good}) in {ckpt.directory} is intact. Lower {advice}.")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains `config.objective` in `workdir`, resuming from its newest good checkpoint."""
  preemption = _Preemption()  # Installed first: a SIGTERM during start-up is not lost.
  try:
    return _train(config, workdir, preemption)
  finally:
    preemption.restore()


def _train(config: ml_collections.ConfigDict, workdir: str, preemption: _Preemption) -> dict:
  setup = build(config)
  c = setup.config
  os.makedirs(workdir, exist_ok=True)
  _check_run_compatible(c, workdir, setup.model_config.vocab_size)
  resolved = c.to_dict()
  resolved["model"]["vocab_size"] = setup.model_config.vocab_size
  _write_json(os.path.join(workdir, "config.json"), resolved)
  sharding.log_mesh(setup.mesh)

  loader = pipeline.make_train_loader(
      c.data, setup.tokenizer, objective=c.objective, global_batch_size=c.global_batch_size,
      seed=c.seed, process_index=jax.process_index(), process_count=jax.process_count())
  data_iter = iter(loader)
  ckpt = checkpoint.Checkpointer(checkpoint.checkpoint_dir(workdir), keep=c.keep_checkpoints)

  restored = ckpt.restore_latest(setup.abstract_state, data_iter)
  if restored is not None:
    start_step, state = restored
    _log(f"Resumed from {ckpt.directory} at step {start_step}.")
  else:
    start_step = 0
    state = make_init_fn(setup)(jax.random.key(c.seed))
    if c.init_from:
      params = checkpoint.restore_params(c.init_from, setup.abstract_state.params)
      state = state.replace(params=params, opt_state=jax.jit(
          setup.tx.init, out_shardings=setup.state_sharding.opt_state)(params))
      _log(f"Initialised parameters from {c.init_from}.")

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
  _log(f"Model: {param_counts['total']:,} parameters ({param_counts['non_embedding']:,} "
       f"non-embedding); {flops_per_step:.3e} FLOPs per step (exact, {tokens_per_step} tokens); "
       f"measured matmul peak {peak_flops:.3e} FLOP/s over {jax.device_count()} devices.")
  if memory is not None:
    _log(f"Compiled step memory per device: arguments {memory.argument_size_in_bytes / 2**20:.1f} MiB, "
         f"outputs {memory.output_size_in_bytes / 2**20:.1f} MiB, temporaries "
         f"{memory.temp_size_in_bytes / 2**20:.1f} MiB.")

  eval_step = make_eval_step(setup)
  eval_batches = None
  eval_key = jax.random.fold_in(jax.random.key(c.seed), 2**31 - 1)

  def evaluate(params) -> float:
    nonlocal eval_batches
    if eval_batches is None:
      eval_batches = [sharding.global_batch({k: v for k, v in b.items() if k != "epoch"}, setup.mesh)
                      for b in pipeline.make_eval_batches(
                          c.data, setup.tokenizer, objective=c.objective,
                          global_batch_size=c.global_batch_size, num_batches=c.num_eval_batches,
                          process_index=jax.process_index(), process_count=jax.process_count())]
    totals = [eval_step(params, b, jax.random.fold_in(eval_key, i)) for i, b in enumerate(eval_batches)]
    nll, count = (float(sum(t[i] for t in totals)) for i in (0, 1))
    return nll / (count * math.log(2))

  writer = metrics.MetricsWriter(workdir, resume_step=start_step)
  pending, epochs_seen = [], int(np.max(epoch))
  tick, tick_step = time.perf_counter(), start_step
  progress = tqdm.tqdm(total=c.num_train_steps, initial=start_step, disable=jax.process_index() != 0,
                       desc=f"train {c.objective}", dynamic_ncols=True)

  check_finite = functools.partial(
      raise_if_nonfinite, ckpt=ckpt, unit="step", run="training",
      advice="config.optimizer.lr, raise warmup, or check the data")

  step, batch = start_step, first_batch
  try:
    while step < c.num_train_steps:
      if batch is None:
        batch = next(data_iter)
        epoch = batch.pop("epoch")
        epochs_seen = max(epochs_seen, int(np.max(epoch)))
      state, step_metrics = compiled(state, sharding.global_batch(batch, setup.mesh))
      pending.append(step_metrics)
      batch = None
      step += 1
      progress.update(1)

      if step % c.log_every_steps == 0 or step == c.num_train_steps:
        check_finite(state)
        means = {k: float(np.mean([jax.device_get(m[k]) for m in pending])) for k in pending[0]}
        elapsed = time.perf_counter() - tick
        tokens_per_sec = (step - tick_step) * tokens_per_step / elapsed
        row = {f"train/{k}": v for k, v in means.items()}
        row.update({"train/tokens_per_sec": tokens_per_sec,
                    "train/mfu": tokens_per_sec * flops_per_token["exact"] / peak_flops,
                    "train/epoch": epochs_seen})
        writer.write(step, row)
        progress.set_postfix(loss=f"{means['loss']:.4f}", refresh=False)
        pending, tick, tick_step = [], time.perf_counter(), step

      if c.eval_every_steps and (step % c.eval_every_steps == 0 or step == c.num_train_steps):
        last_eval = evaluate(state.params)
        writer.write(step, {"eval/bits_per_token": last_eval})
        if jax.process_index() == 0:
          progress.write(f"step {step}: eval bits/token {last_eval:.4f}")

      preempted = preemption.reached(step)
      if step % c.checkpoint_every_steps == 0 or step == c.num_train_steps or preempted:
        check_finite(state)
        ckpt.save(step, state, data_iter, resolved)
      if preempted:
        _log(f"Preempted (SIGTERM): saved step {step}; rerun the same command to resume.")
        break
  finally:
    progress.close()
    ckpt.wait()
    ckpt.close()
    writer.close()

  evals = [r["eval/bits_per_token"] for r in _read_metrics(writer.path) if "eval/bits_per_token" in r]
  summary = {
      "step": step, "objective": c.objective,
      "final_eval_bits_per_token": evals[-1] if evals else None,
      "best_eval_bits_per_token": min(evals) if evals else None,
      "num_params": param_counts["total"], "num_nonembedding_params": param_counts["non_embedding"],
      "flops_per_token": flops_per_token, "tokens_seen": step * tokens_per_step,
      "epochs": epochs_seen,
  }
  if step >= c.num_train_steps:
    _write_json(os.path.join(workdir, "summary.json"), summary)
  return summary
