"""Config checks that run before anything compiles; every error names the field.

`validate_run_config` checks what every run reads (state.build calls it);
`validate_train_config` adds the training-only fields. RL checks config.rl in rl/setup.py.
"""
import os

import ml_collections

from diffusionlm import config_defaults
from diffusionlm.diffusion import schedules
from diffusionlm.models import lora
from diffusionlm.train import optimizer, sharding


def require(ok: bool, message: str) -> None:
  """ValueError(message) unless `ok`."""
  if not ok:
    raise ValueError(message)


def validate_run_config(config: ml_collections.ConfigDict, *, num_devices: int) -> None:
  """Raises ValueError naming the first bad field that every run reads: steps, model,
  optimizer, mesh and init_from."""
  c = config
  for field in ("num_train_steps", "log_every_steps", "checkpoint_every_steps",
                "keep_checkpoints"):
    require(int(c[field]) > 0, f"config.{field}={c[field]} must be positive.")
  sharding.mesh_shape(c.mesh, num_devices)  # Raises naming the mesh field.

  m = c.model
  for field in ("d_model", "num_layers", "num_heads", "mlp_dim"):
    require(int(m[field]) > 0, f"config.model.{field}={m[field]} must be positive.")
  require(m.d_model % m.num_heads == 0,
          f"config.model.d_model={m.d_model} is not divisible by config.model.num_heads={m.num_heads}.")
  require(m.vocab_size >= 0, f"config.model.vocab_size={m.vocab_size} must be >= 0 (0 = from tokenizer).")
  require(0.0 <= m.dropout < 1.0, f"config.model.dropout={m.dropout} must be in [0, 1).")

  o = c.optimizer
  require(o.name in optimizer.OPTIMIZERS,
          f"config.optimizer.name={o.name!r}: expected one of {optimizer.OPTIMIZERS}.")
  require(o.lr > 0, f"config.optimizer.lr={o.lr} must be positive.")
  require(o.warmup_steps >= 0, f"config.optimizer.warmup_steps={o.warmup_steps} must be >= 0.")
  require(o.decay in optimizer.DECAYS, f"config.optimizer.decay={o.decay!r}: expected one of {optimizer.DECAYS}.")
  require(o.grad_clip >= 0, f"config.optimizer.grad_clip={o.grad_clip} must be >= 0.")

  if c.init_from:
    require(os.path.isdir(c.init_from), f"config.init_from={c.init_from!r} is not a directory.")
  lora.validate(c.lora)


def validate_train_config(config: ml_collections.ConfigDict, *, num_devices: int,
                          process_count: int) -> None:
  """Raises ValueError naming the first bad field of a training config."""
  c = config
  require(c.objective in config_defaults.OBJECTIVES,
          f"config.objective={c.objective!r}: expected one of {config_defaults.OBJECTIVES}.")
  require(c.model.get("causal") is None or c.model.causal == (c.objective == "ar"),
          f"config.model.causal={c.model.get('causal')} does not fit config.objective={c.objective!r}: "
          "'ar' trains a causal model, 'mdm' and 'sft' a bidirectional one (leave it unset).")
  for field in ("global_batch_size", "num_eval_batches"):
    require(int(c[field]) > 0, f"config.{field}={c[field]} must be positive.")
  require(c.eval_every_steps >= 0, f"config.eval_every_steps={c.eval_every_steps} must be >= 0.")
  require(not c.lora.rank or c.init_from,
          f"config.lora.rank={c.lora.rank} adapts a trained model: set config.init_from to "
          "the run (or imported checkpoint) whose parameters are the frozen base.")

  mesh_shape = dict(zip(sharding.MESH_AXES, sharding.mesh_shape(c.mesh, num_devices)))
  data_parallel = mesh_shape["data"] * mesh_shape["fsdp"]
  require(c.global_batch_size % data_parallel == 0,
          f"config.global_batch_size={c.global_batch_size} is not divisible by the "
          f"data-parallel size {data_parallel} (mesh data={mesh_shape['data']} x "
          f"fsdp={mesh_shape['fsdp']}).")
  require(c.global_batch_size % process_count == 0,
          f"config.global_batch_size={c.global_batch_size} is not divisible by the number "
          f"of processes {process_count}.")

  d = c.diffusion
  require(d.schedule in schedules.SCHEDULES,
          f"config.diffusion.schedule={d.schedule!r}: expected one of {schedules.SCHEDULES}.")
  require(0.0 <= d.eps < 1.0, f"config.diffusion.eps={d.eps} must be in [0, 1).")
  require(0.0 <= d.random_length_prob <= 1.0,
          f"config.diffusion.random_length_prob={d.random_length_prob} must be in [0, 1].")
  require(d.eval_num_mc >= 1, f"config.diffusion.eval_num_mc={d.eval_num_mc} must be >= 1.")

  require(c.data.seq_len >= 2, f"config.data.seq_len={c.data.seq_len} must be >= 2.")
  require(c.data.unique_tokens >= 0, f"config.data.unique_tokens={c.data.unique_tokens} must be >= 0.")
  require(0.0 <= c.data.noise_rate <= 1.0, f"config.data.noise_rate={c.data.noise_rate} must be in [0, 1].")
  require(0.0 <= c.data.input_mask_rate < 1.0,
          f"config.data.input_mask_rate={c.data.input_mask_rate} must be in [0, 1).")
  require(c.data.input_mask_rate == 0 or c.objective == "ar",
          f"config.data.input_mask_rate={c.data.input_mask_rate} applies to the 'ar' objective "
          f"only (config.objective={c.objective!r}); the diffusion objectives mask by design.")

  validate_run_config(c, num_devices=num_devices)
