"""The state factory: a run's model, mesh, optimizer and sharded train state, from its config.

`build` derives everything before any allocation (`jax.eval_shape`): the abstract state
carries its shardings, so `make_init_fn` initialises straight onto the mesh and checkpoints
restore straight onto it. Training (trainer.py), RL (rl/setup.py), `load_run` and the
benchmarks start here.

With `config.lora.rank > 0` the state is a `LoraTrainState`: its `params` (the only ones
trained, the only ones with optimizer state) are LoRA adapters (diffusionlm/models/lora.py)
of the frozen `base_params`, which travel in the state, so checkpoints hold both and resume
is exact. `Setup.model_params(state)` is what the model runs on in either case.
"""
import dataclasses
import functools
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from diffusionlm import config_defaults
from diffusionlm.data import tokenizers
from diffusionlm.models import lora, transformer
from diffusionlm.train import checkpoint, optimizer, run_dir, sharding, validation


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # Optimizer updates so far.
  params: Any
  opt_state: Any
  first_nonfinite_step: jax.Array  # -1 while every loss so far was finite.


@flax.struct.dataclass
class LoraTrainState(TrainState):
  """TrainState whose `params` are LoRA adapters of `base_params` (config.lora)."""
  base_params: Any  # The adapted model, frozen (config.lora.base_dtype).


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
  # The model's parameters as ShapeDtypeStructs with shardings (= abstract_state.params
  # without LoRA).
  abstract_model_params: Any
  lora: ml_collections.ConfigDict | None  # config.lora when rank > 0, else None.

  def apply_fn(self, params, tokens_BxL, **kwargs):
    return self.model.apply({"params": params}, tokens_BxL, **kwargs)

  def model_params(self, state: TrainState, params=None):
    """The parameters the model runs on: the trainable `params` (default state.params),
    under LoRA merged into state.base_params (W + alpha / r * A @ B; differentiable in
    `params`)."""
    params = state.params if params is None else params
    return params if self.lora is None else lora.merge(state.base_params, params, self.lora)

  @property
  def model_sharding(self):
    return jax.tree.map(lambda a: a.sharding, self.abstract_model_params)


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

  abstract_model_params = sharding.abstract_params(model, mesh)
  lora_config = config.lora if config.lora.rank else None
  frozen = {}
  if lora_config is None:
    abstract_params = abstract_model_params
  else:
    frozen["base_params"] = lora.abstract_base(abstract_model_params, lora_config)
    abstract_params = lora.abstract_adapters(frozen["base_params"], lora_config)
  param_sharding = jax.tree.map(lambda a: a.sharding, abstract_params)
  abstract_opt_state = jax.eval_shape(tx.init, abstract_params)
  rep = sharding.replicated(mesh)
  opt_sharding = optax.tree_map_params(
      tx, lambda _, s: s, abstract_opt_state, param_sharding, transform_non_params=lambda _: rep)
  state_cls = TrainState if lora_config is None else LoraTrainState
  frozen_sharding = {k: jax.tree.map(lambda a: a.sharding, v) for k, v in frozen.items()}
  state_sharding = state_cls(step=rep, params=param_sharding, opt_state=opt_sharding,
                             first_nonfinite_step=rep, **frozen_sharding)
  scalar = jax.ShapeDtypeStruct((), jnp.int32)
  abstract_state = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      state_cls(step=scalar, params=abstract_params, opt_state=abstract_opt_state,
                first_nonfinite_step=scalar, **frozen),
      state_sharding)
  return Setup(config, tokenizer, model_config, model, mesh, tx, lr_schedule, abstract_state,
               state_sharding, abstract_model_params, lora_config)


def _fresh_state(setup: Setup, params, **frozen) -> TrainState:
  return type(setup.abstract_state)(
      step=jnp.zeros((), jnp.int32), params=params, opt_state=setup.tx.init(params),
      first_nonfinite_step=jnp.full((), -1, jnp.int32), **frozen)


def _adapt(setup: Setup, base_params, key) -> LoraTrainState:
  base_params = jax.tree.map(lambda x, a: x.astype(a.dtype), base_params,
                             setup.abstract_state.base_params)
  return _fresh_state(setup, lora.init_adapters(key, base_params, setup.lora),
                      base_params=base_params)


def adapter_key(key):
  """The key of the LoRA adapters' initialisation, from the run's init key."""
  return jax.random.fold_in(key, 1)


def make_init_fn(setup: Setup):
  """Jitted state initialisation whose outputs land directly in their shardings. Under
  LoRA the base is a random model too (benchmarks; runs take it from init_from:
  `make_adapt_fn`)."""
  seq_len = setup.config.data.seq_len

  def init(key):
    params = setup.model.init(key, jnp.zeros((1, seq_len), jnp.int32))["params"]
    params = nn.unbox(params)
    if setup.lora is None:
      return _fresh_state(setup, params)
    return _adapt(setup, params, adapter_key(key))

  return jax.jit(init, out_shardings=setup.state_sharding)


def make_adapt_fn(setup: Setup):
  """Jitted (base_params, key) -> LoraTrainState: fresh LoRA adapters (B = 0, so the model
  is the base) and their optimizer state on the given base model, which is donated."""
  return jax.jit(functools.partial(_adapt, setup), out_shardings=setup.state_sharding,
                 donate_argnums=(0,))


def initial_state(setup: Setup, key) -> TrainState:
  """The state a run starts from: random parameters, or config.init_from's (checked to be
  the same model) with fresh optimizer state; under LoRA, init_from's model as the frozen
  base with fresh adapters."""
  c = setup.config
  if not c.init_from:
    return make_init_fn(setup)(key)
  run_dir.check_init_from(c)
  if setup.lora is None:
    state = make_init_fn(setup)(key)
    params = checkpoint.restore_params(c.init_from, setup.abstract_state.params)
    state = state.replace(params=params, opt_state=jax.jit(
        setup.tx.init, out_shardings=setup.state_sharding.opt_state)(params))
  else:
    base_params = checkpoint.restore_params(c.init_from, setup.abstract_state.base_params)
    state = make_adapt_fn(setup)(base_params, adapter_key(key))
  run_dir.log(f"Initialised parameters from {c.init_from}"
              + (" (the frozen LoRA base)." if setup.lora else "."))
  return state


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
