"""Config checks that run before anything compiles; every error names the field."""
import os

import ml_collections

from diffusionlm.diffusion import schedules
from diffusionlm.train import objectives, optimizer, sharding


def _require(ok: bool, message: str) -> None:
  if not ok:
    raise ValueError(message)


def validate_config(config: ml_collections.ConfigDict, *, num_devices: int, process_count: int) -> None:
  """Raises ValueError naming the first bad field of a training config."""
  c = config
  _require(c.objective in objectives.OBJECTIVES,
           f"config.objective={c.objective!r}: expected one of {objectives.OBJECTIVES}.")
  for field in ("global_batch_size", "num_train_steps", "log_every_steps",
                "checkpoint_every_steps", "keep_checkpoints", "num_eval_batches"):
    _require(int(c[field]) > 0, f"config.{field}={c[field]} must be positive.")
  _require(c.eval_every_steps >= 0, f"config.eval_every_steps={c.eval_every_steps} must be >= 0.")

  mesh_shape = dict(zip(sharding.MESH_AXES, sharding.mesh_shape(c.mesh, num_devices)))
  data_parallel = mesh_shape["data"] * mesh_shape["fsdp"]
  _require(c.global_batch_size % data_parallel == 0,
           f"config.global_batch_size={c.global_batch_size} is not divisible by the "
           f"data-parallel size {data_parallel} (mesh data={mesh_shape['data']} x "
           f"fsdp={mesh_shape['fsdp']}).")
  _require(c.global_batch_size % process_count == 0,
           f"config.global_batch_size={c.global_batch_size} is not divisible by the number "
           f"of processes {process_count}.")

  m = c.model
  for field in ("d_model", "num_layers", "num_heads", "mlp_dim"):
    _require(int(m[field]) > 0, f"config.model.{field}={m[field]} must be positive.")
  _require(m.d_model % m.num_heads == 0,
           f"config.model.d_model={m.d_model} is not divisible by config.model.num_heads={m.num_heads}.")
  _require(m.vocab_size >= 0, f"config.model.vocab_size={m.vocab_size} must be >= 0 (0 = from tokenizer).")

  d = c.diffusion
  _require(d.schedule in schedules.SCHEDULES,
           f"config.diffusion.schedule={d.schedule!r}: expected one of {schedules.SCHEDULES}.")
  _require(0.0 <= d.eps < 1.0, f"config.diffusion.eps={d.eps} must be in [0, 1).")
  _require(0.0 <= d.random_length_prob <= 1.0,
           f"config.diffusion.random_length_prob={d.random_length_prob} must be in [0, 1].")
  _require(d.eval_num_mc >= 1, f"config.diffusion.eval_num_mc={d.eval_num_mc} must be >= 1.")

  _require(c.data.seq_len >= 2, f"config.data.seq_len={c.data.seq_len} must be >= 2.")
  _require(c.data.unique_tokens >= 0, f"config.data.unique_tokens={c.data.unique_tokens} must be >= 0.")
  _require(0.0 <= c.data.noise_rate <= 1.0, f"config.data.noise_rate={c.data.noise_rate} must be in [0, 1].")

  o = c.optimizer
  _require(o.name in optimizer.OPTIMIZERS,
           f"config.optimizer.name={o.name!r}: expected one of {optimizer.OPTIMIZERS}.")
  _require(o.lr > 0, f"config.optimizer.lr={o.lr} must be positive.")
  _require(o.warmup_steps >= 0, f"config.optimizer.warmup_steps={o.warmup_steps} must be >= 0.")
  _require(o.decay in optimizer.DECAYS, f"config.optimizer.decay={o.decay!r}: expected one of {optimizer.DECAYS}.")
  _require(o.grad_clip >= 0, f"config.optimizer.grad_clip={o.grad_clip} must be >= 0.")

  if c.init_from:
    _require(os.path.isdir(c.init_from), f"config.init_from={c.init_from!r} is not a directory.")
