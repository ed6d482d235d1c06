"""The state factory: a run's model, mesh, optimizer and sharded train state, from its config.

`build` derives everything before any allocation (`jax.eval_shape`): the abstract state
carries its shardings, so `make_init_fn` initialises straight onto the mesh and checkpoints
restore straight onto it. Training (trainer.py), RL (rl/setup.py), `load_run` and the
benchmarks start here.
"""
import dataclasses
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from diffusionlm import config_defaults
from diffusionlm.data import tokenizers
from diffusionlm.models import transformer
from diffusionlm.train import optimizer, sharding, validation


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # Optimizer updates so far.
  params: Any
  opt_state: Any
  first_nonfinite_step: jax.Array  # -1 while every loss so far was finite.


@dataclasses.dataclass
class Setup:
  """Everything derived from the config before a run starts."""
  config: ml_collections.ConfigDict  # Resolved: model.vocab_size and model.causal set.
  tokenizer: Any
  model_config: transformer.TransformerConfig
  model: transformer.Transformer
  mesh: jax.sharding.Mesh
  tx: optax.GradientTransformation
  lr_schedule: optax.Schedule
  abstract_state: TrainState  # ShapeDtypeStructs carrying their shardings.
  state_sharding: TrainState

  def apply_fn(self, params, tokens_BxL, **kwargs):
    return self.model.apply({"params": params}, tokens_BxL, **kwargs)


def build(config: ml_collections.ConfigDict, devices=None, *, vocab_size: int | None = None,
          num_updates: int | None = None) -> Setup:
  """Checks the fields every run reads and derives model, mesh, optimizer and shardings.

  `devices` defaults to all devices of all processes. `vocab_size` (benchmarks) skips the
  tokenizer; otherwise the vocabulary is the tokenizer's. `num_updates` is the length of
  the learning-rate schedule in optimizer updates (default config.num_train_steps).
  """
  devices = jax.devices() if devices is None else list(devices)
  validation.validate_run_config(config, num_devices=len(devices))
  tokenizer = None if vocab_size else tokenizers.load_tokenizer(config.data.tokenizer)
  model_config = transformer.config_from_dict(
      config.model, vocab_size=vocab_size or tokenizer.vocab_size,
      causal=config_defaults.is_causal(config))
  config = config.copy_and_resolve_references()
  config.model.update(vocab_size=model_config.vocab_size, causal=model_config.causal)
  mesh = sharding.make_mesh(config.mesh, devices)
  model = transformer.Transformer(model_config,
                                  activation_sharding=sharding.batch_sharding(mesh))
  tx, lr_schedule = optimizer.make_optimizer(
      config.optimizer, config.num_train_steps if num_updates is None else num_updates)

  abstract_params = sharding.abstract_params(model, mesh)
  param_sharding = jax.tree.map(lambda a: a.sharding, abstract_params)
  abstract_opt_state = jax.eval_shape(tx.init, abstract_params)
  rep = sharding.replicated(mesh)
  opt_sharding = optax.tree_map_params(
      tx, lambda _, s: s, abstract_opt_state, param_sharding, transform_non_params=lambda _: rep)
  state_sharding = TrainState(step=rep, params=param_sharding, opt_state=opt_sharding,
                              first_nonfinite_step=rep)
  scalar = jax.ShapeDtypeStruct((), jnp.int32)
  abstract_state = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      TrainState(step=scalar, params=abstract_params, opt_state=abstract_opt_state,
                 first_nonfinite_step=scalar),
      state_sharding)
  return Setup(config, tokenizer, model_config, model, mesh, tx, lr_schedule, abstract_state,
               state_sharding)


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
  parameters unchanged and records the step in `first_nonfinite_step`, which the loops turn
  into a clear error. Any state with TrainState's fields passes through (`state.replace`):
  the training step and the RL update (diffusionlm/rl/grpo.py) share it."""
  grad_norm = optax.global_norm(grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  keep_new = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
  new_state = state.replace(
      step=state.step + 1,
      params=keep_new(params, state.params),
      opt_state=keep_new(opt_state, state.opt_state),
      first_nonfinite_step=jnp.where(
          (state.first_nonfinite_step < 0) & ~finite, state.step + 1, state.first_nonfinite_step))
  return new_state, grad_norm
