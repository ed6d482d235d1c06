"""An RL run's setup: its config, state and compiled diffu-GRPO programs (d1, Zhao et al.).

The RL config is a run config (diffusionlm/config_defaults.py) with a `config.rl` section
(`rl_defaults()`); the training-only fields (objective, global_batch_size, evaluation
batches) are not read. `resolve_config` takes the model and tokenizer from the init_from
run, `validate_rl_config` checks config.rl, and `build` derives the sharded state
(train_state.build, one optimizer whose schedule spans every update) and jits the programs
of grpo.py. The loop that uses them is rl/loop.py.

Under LoRA (config.lora.rank > 0) the state is a train_state.LoraTrainState: the policy is
the frozen base with the trained adapters merged, and the reference policy is the base with
the adapters off, so no second copy of the parameters exists (`split`, `join`).
"""
import dataclasses
import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections

from diffusionlm import config_defaults, tasks
from diffusionlm.rl import estimators, grpo, rollout
from diffusionlm.train import checkpoint, run_dir, sharding, train_state, validation


@flax.struct.dataclass
class RLState(train_state.TrainState):
  """TrainState plus the reference policy. Flat, so that an RL checkpoint's "params" load
  wherever a training run's do (load_run, config.init_from)."""
  ref_params: Any  # The reference policy: the parameters the run started from, frozen.

  @property
  def policy(self) -> train_state.TrainState:
    return train_state.TrainState(**{f.name: getattr(self, f.name)
                                     for f in dataclasses.fields(train_state.TrainState)})

  @classmethod
  def create(cls, policy: train_state.TrainState, ref_params) -> "RLState":
    return cls(ref_params=ref_params, **{f.name: getattr(policy, f.name)
                                         for f in dataclasses.fields(policy)})


def split(state) -> tuple[train_state.TrainState, Any]:
  """(the policy's train state, the reference policy's parameters): an RLState's policy and
  ref_params, or a LoRA state and its base (the model with the adapters off)."""
  if isinstance(state, RLState):
    return state.policy, state.ref_params
  return state, state.base_params


def join(state, policy: train_state.TrainState):
  """`state` with its policy replaced by `policy` (the inverse of `split`)."""
  return RLState.create(policy, state.ref_params) if isinstance(state, RLState) else policy


def resolve_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of the RL config with the init_from run's model and tokenizer.

  The model section (except config_defaults.MODEL_RUN_TIME_FIELDS) and
  data.tokenizer come from INIT_FROM/config.json, so the parameters always load.
  """
  if "rl" not in config:
    raise ValueError("config.rl is missing: an RL config adds the diffu-GRPO settings "
                     "(c.rl = base.rl_defaults(), as configs/rl_sudoku.py does).")
  if not config.init_from:
    raise ValueError("config.init_from is required: diffu-GRPO starts from a trained run "
                     "(e.g. --config.init_from=runs/sft_sudoku).")
  saved = run_dir.read_config(config.init_from)
  if saved is None:
    raise ValueError(f"config.init_from={config.init_from!r} has no config.json: is it a "
                     "diffusionlm run directory?")
  if saved.model.causal:
    raise ValueError(f"config.init_from={config.init_from!r} is an autoregressive run "
                     "(model.causal=True); diffu-GRPO needs a masked-diffusion model.")
  c = config.copy_and_resolve_references()
  c.model.update({k: v for k, v in saved.model.items()
                  if k not in config_defaults.MODEL_RUN_TIME_FIELDS})
  c.data.tokenizer = saved.data.tokenizer
  return c


def validate_rl_config(c: ml_collections.ConfigDict, *, data_parallel: int) -> None:
  """Raises ValueError naming the first bad field of config.rl (train_state.build checks
  the fields every run reads)."""
  need = validation.require
  rl = c.rl
  need(rl.task in tasks.names(), f"config.rl.task={rl.task!r}: expected one of "
       f"{sorted(tasks.names())}.")
  dataset_task = c.data.dataset.split(":")[0]
  need(dataset_task == rl.task, f"config.rl.task={rl.task!r} does not match "
       f"config.data.dataset={c.data.dataset!r}: the prompts come from the dataset.")
  need(rl.num_generations >= 2, f"config.rl.num_generations={rl.num_generations} must be "
       ">= 2: advantages compare samples within a group.")
  for field in ("num_iterations", "num_prompts_per_step", "num_micro_batches", "gen_length",
                "eval_batch_size"):
    need(int(rl[field]) >= 1, f"config.rl.{field}={rl[field]} must be >= 1.")
  for field in ("eval_every_steps", "num_eval_examples"):
    need(int(rl[field]) >= 0, f"config.rl.{field}={rl[field]} must be >= 0.")
  need(0.0 <= rl.p_mask_prompt <= 1.0, f"config.rl.p_mask_prompt={rl.p_mask_prompt} must be "
       "in [0, 1].")
  need(rl.beta >= 0, f"config.rl.beta={rl.beta} must be >= 0.")
  need(rl.clip_eps > 0, f"config.rl.clip_eps={rl.clip_eps} must be > 0.")
  need(rl.eval_temperature >= 0, f"config.rl.eval_temperature={rl.eval_temperature} must be "
       ">= 0.")
  rows = rl.num_prompts_per_step * rl.num_generations
  need(rows % rl.num_micro_batches == 0 and (rows // rl.num_micro_batches) % data_parallel == 0,
       f"config.rl.num_prompts_per_step * num_generations = {rows} rows must split into "
       f"config.rl.num_micro_batches={rl.num_micro_batches} micro-batches whose size is a "
       f"multiple of the data-parallel size {data_parallel}.")
  need(rl.eval_batch_size % data_parallel == 0, f"config.rl.eval_batch_size="
       f"{rl.eval_batch_size} must be a multiple of the data-parallel size {data_parallel}.")
  estimators.validate_config(rl)


def eval_sampler_settings(rl: ml_collections.ConfigDict, *, mask_id: int) -> dict:
  """The sampler settings of task evaluation: the rollout's (config.rl, checked by
  rollout.sampler_kwargs) at config.rl.eval_temperature, greedy by default."""
  return {**rollout.sampler_kwargs(rl, mask_id=mask_id), "temperature": rl.eval_temperature}


@dataclasses.dataclass
class RLSetup:
  """The run's Setup (its optimizer schedule spans every update) and the RL programs."""
  config: ml_collections.ConfigDict  # Resolved, as setup.config.
  setup: train_state.Setup
  apply_fn: Any  # Bound once: a static argument of the compiled programs.
  abstract_state: Any  # RLState, or under LoRA a train_state.LoraTrainState.
  sampler_settings: dict
  logps_step: Any
  update_step: Any

  def policy_params(self, state):
    """The parameters the policy runs on (under LoRA merged into a new tree, once)."""
    policy, _ = split(state)
    if self.setup.lora is None:
      return policy.params
    return self._merge(policy)

  @functools.cached_property
  def _merge(self):
    return jax.jit(self.setup.model_params, out_shardings=self.setup.model_sharding)


def build(config: ml_collections.ConfigDict, devices=None, *, apply_fn=None) -> RLSetup:
  """Resolves and validates the RL config; builds the sharded setup and the jitted GRPO
  programs.

  `apply_fn` (tests) wraps the model's setup.apply_fn, e.g. to observe its inputs.
  """
  c = resolve_config(config)
  setup = train_state.build(c, devices, num_updates=c.num_train_steps * c.rl.num_iterations)
  c, rl = setup.config, setup.config.rl
  validate_rl_config(c, data_parallel=sharding.data_parallel_size(setup.mesh))
  apply_fn = apply_fn or setup.apply_fn
  loss_kwargs = dict(p_mask_prompt=rl.p_mask_prompt, eos_id=setup.tokenizer.eos_id,
                     estimator=estimators.from_config(rl))
  return RLSetup(
      config=c, setup=setup, apply_fn=apply_fn,
      abstract_state=(setup.abstract_state if setup.lora else
                      RLState.create(setup.abstract_state, setup.abstract_state.params)),
      sampler_settings=rollout.sampler_kwargs(rl, mask_id=setup.model_config.mask_id),
      logps_step=grpo.make_logps_step(setup, apply_fn, num_iterations=rl.num_iterations,
                                      with_ref=rl.beta > 0, **loss_kwargs),
      update_step=grpo.make_update_step(setup, apply_fn, beta=rl.beta, clip_eps=rl.clip_eps,
                                        **loss_kwargs))


def init_state(rs: RLSetup):
  """Policy and reference = the init_from run's newest parameters; fresh optimizer state.
  Under LoRA: that model is the frozen base, with fresh adapters (B = 0: policy = base)."""
  setup = rs.setup
  if setup.lora is not None:
    return train_state.initial_state(setup, jax.random.key(rs.config.seed))
  params = checkpoint.restore_params(rs.config.init_from, setup.abstract_state.params)
  opt_state = jax.jit(setup.tx.init, out_shardings=setup.state_sharding.opt_state)(params)
  policy = train_state.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                  opt_state=opt_state,
                                  first_nonfinite_step=jnp.full((), -1, jnp.int32))
  # A separate copy: the update donates the policy's buffers.
  return RLState.create(policy, jax.tree.map(lambda x: x.copy(), params))
