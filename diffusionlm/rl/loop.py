"""The diffu-GRPO loop (d1, Zhao et al. 2025): rollout -> rewards -> mu updates, repeated.

Reads top to bottom like the trainer, whose pieces it reuses (trainer.build for the model,
mesh and state shardings; checkpoint.Checkpointer; optimizer.make_optimizer;
metrics.MetricsWriter): config -> the init_from run's model and parameters -> resume or
start -> per RL step: next prompts (a grain iterator, checkpointed) -> G completions each
(rollout.py) -> old-policy and reference log-probs of every prompt mask, once
(grpo.make_logps_step) -> `num_iterations` optax updates, update i under mask i
(grpo.make_update_step) -> metrics, evaluation, checkpoint.

Step s draws everything from step_key = fold_in(key(seed), s): the sampler uses
fold_in(step_key, 0), the prompt masks grpo.mask_key(fold_in(step_key, 1), i, m). With the
prompt iterator's state and the parameters in the checkpoint, a resumed run repeats the
uninterrupted one. The reference policy is the initial parameters, frozen and checkpointed
with the state. `config.num_train_steps` counts RL steps; state.policy.step counts optimizer
updates (num_iterations per RL step).
"""
import dataclasses
import os
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from diffusionlm import evaluate
from diffusionlm.data import formatting, pipeline
from diffusionlm.rl import grpo, rewards, rollout
from diffusionlm.train import checkpoint, metrics, optimizer, sharding, trainer, validation

# The update batch's arrays (rollout.rollout's batch minus the logged rewards).
UPDATE_KEYS = ("prompt", "prompt_valid", "completion", "completion_mask", "advantages")


@flax.struct.dataclass
class RLState:
  """The trainer's TrainState fields plus the reference policy. Flat, so that an RL
  checkpoint's "params" load wherever a training run's do (load_run, config.init_from)."""
  step: jax.Array  # Optimizer updates so far (num_iterations per RL step).
  params: Any
  opt_state: Any
  first_nonfinite_step: jax.Array
  ref_params: Any  # The reference policy: the parameters the run started from, frozen.

  @property
  def policy(self) -> trainer.TrainState:
    return trainer.TrainState(step=self.step, params=self.params, opt_state=self.opt_state,
                              first_nonfinite_step=self.first_nonfinite_step)

  @classmethod
  def create(cls, policy: trainer.TrainState, ref_params) -> "RLState":
    return cls(step=policy.step, params=policy.params, opt_state=policy.opt_state,
               first_nonfinite_step=policy.first_nonfinite_step, ref_params=ref_params)


def resolve_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of the RL config with the init_from run's model and tokenizer.

  The model section (except the run-time choices dtype, remat and logits_chunk_size) and
  data.tokenizer come from INIT_FROM/config.json, so the parameters always load.
  """
  if "rl" not in config:
    raise ValueError("config.rl is missing: an RL config needs the diffu-GRPO settings "
                     "(start from configs/rl_sudoku.py).")
  if not config.init_from:
    raise ValueError("config.init_from is required: diffu-GRPO starts from a trained run "
                     "(e.g. --config.init_from=runs/sft_sudoku).")
  saved = checkpoint.read_run_config(config.init_from)
  if saved is None:
    raise ValueError(f"config.init_from={config.init_from!r} has no config.json: is it a "
                     "diffusionlm run directory?")
  if saved.get("objective") == "ar":
    raise ValueError(f"config.init_from={config.init_from!r} is an autoregressive run "
                     "(objective 'ar'); diffu-GRPO needs a masked-diffusion model.")
  c = ml_collections.ConfigDict(config.to_dict())
  c.model.update({k: v for k, v in saved["model"].items()
                  if k not in ("dtype", "remat", "logits_chunk_size")})
  c.data.tokenizer = saved["data"]["tokenizer"]
  return c


def validate_rl_config(c: ml_collections.ConfigDict, *, data_parallel: int) -> None:
  """Raises ValueError naming the first bad field of config.rl (trainer.build checks the rest)."""
  need = validation._require  # pylint: disable=protected-access
  rl = c.rl
  need(c.objective != "ar", f"config.objective={c.objective!r}: diffu-GRPO needs a "
       "masked-diffusion model (use 'sft' or 'mdm').")
  need(rl.task in rewards.REWARD_FUNCTIONS and rl.task in formatting.TASKS,
       f"config.rl.task={rl.task!r}: expected one of "
       f"{sorted(set(rewards.REWARD_FUNCTIONS) & set(formatting.TASKS))}.")
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


@dataclasses.dataclass
class RLSetup:
  """The trainer's Setup with the RL optimizer schedule, and the compiled RL programs."""
  config: ml_collections.ConfigDict
  setup: trainer.Setup
  apply_fn: Any  # Bound once: a static argument of the compiled programs.
  abstract_state: RLState
  sampler_settings: dict
  logps_step: Any
  update_step: Any


def build(config: ml_collections.ConfigDict, devices=None, *, apply_fn=None) -> RLSetup:
  """Validates the RL config and builds the sharded setup and the jitted GRPO programs.

  `apply_fn` (tests) wraps the model's setup.apply_fn, e.g. to observe its inputs.
  """
  devices = jax.devices() if devices is None else list(devices)
  c = resolve_config(config)
  setup = trainer.build(c, devices)
  validate_rl_config(c, data_parallel=sharding.data_parallel_size(setup.mesh))
  rl = c.rl
  tx, schedule = optimizer.make_optimizer(c.optimizer, c.num_train_steps * rl.num_iterations)
  setup = dataclasses.replace(setup, tx=tx, lr_schedule=schedule)
  apply_fn = apply_fn or setup.apply_fn
  eos_id = setup.tokenizer.eos_id
  loss_kwargs = dict(p_mask_prompt=rl.p_mask_prompt, eos_id=eos_id)
  return RLSetup(
      config=c, setup=setup, apply_fn=apply_fn,
      abstract_state=RLState.create(setup.abstract_state, setup.abstract_state.params),
      sampler_settings=rollout.sampler_kwargs(rl, mask_id=setup.model_config.mask_id),
      logps_step=grpo.make_logps_step(setup, apply_fn, num_iterations=rl.num_iterations,
                                      with_ref=rl.beta > 0, **loss_kwargs),
      update_step=grpo.make_update_step(setup, apply_fn, beta=rl.beta, clip_eps=rl.clip_eps,
                                        **loss_kwargs))


def init_state(rs: RLSetup) -> RLState:
  """Policy and reference = the init_from run's newest parameters; fresh optimizer state."""
  setup = rs.setup
  params = checkpoint.restore_params(rs.config.init_from, setup.abstract_state.params)
  opt_state = jax.jit(setup.tx.init, out_shardings=setup.state_sharding.opt_state)(params)
  policy = trainer.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                              opt_state=opt_state,
                              first_nonfinite_step=jnp.full((), -1, jnp.int32))
  # A separate copy: the update donates the policy's buffers.
  return RLState.create(policy, jax.tree.map(lambda x: x.copy(), params))


def rl_step(rs: RLSetup, state: RLState, prompts: rollout.PromptSet, indices_N, step: int, *,
            score):
  """One RL step: rollout on indices_N, then rl.num_iterations updates. Returns
  (state, metrics as host floats, completions)."""
  c, rl = rs.config, rs.config.rl
  step_key = jax.random.fold_in(jax.random.key(c.seed), step)
  batch, roll_metrics, completions = rollout.rollout(
      state.policy.params, rs.apply_fn, prompts, indices_N, jax.random.fold_in(step_key, 0),
      tokenizer=rs.setup.tokenizer, mesh=rs.setup.mesh, num_generations=rl.num_generations,
      gen_length=rl.gen_length, mask_id=rs.setup.model_config.mask_id,
      scale_rewards=rl.scale_rewards, score=score, sampler_settings=rs.sampler_settings)
  micro_sharding = grpo.micro_batch_sharding(rs.setup.mesh)
  M = rl.num_micro_batches
  update_batch = {k: rollout.to_global(batch[k].reshape((M, -1) + batch[k].shape[1:]),
                                       micro_sharding) for k in UPDATE_KEYS}
  policy, history = grpo.run_iterations(
      state.policy, state.ref_params, update_batch, jax.random.fold_in(step_key, 1),
      logps_step=rs.logps_step, update_step=rs.update_step, num_iterations=rl.num_iterations)
  history = jax.device_get(history)
  update_metrics = {k: float(np.mean([h[k] for h in history])) for k in history[0]}
  update_metrics["lr"] = float(history[-1]["lr"])
  return RLState.create(policy, state.ref_params), {**roll_metrics, **update_metrics}, completions


def make_evaluator(rs: RLSetup, examples):
  """evaluate(params) -> {"accuracy", "mean_reward"} on `examples` (greedy by default)."""
  rl = rs.config.rl
  settings = {**rs.sampler_settings, "temperature": rl.eval_temperature}
  key = jax.random.fold_in(jax.random.key(rs.config.seed), 2**31 - 1)

  def run(params) -> dict:
    result = evaluate.evaluate_task(
        params, rs.apply_fn, rs.setup.tokenizer, examples, task=rl.task,
        mask_id=rs.setup.model_config.mask_id, causal=False, batch_size=rl.eval_batch_size,
        gen_length=rl.gen_length, key=key, sampler_kwargs=settings, mesh=rs.setup.mesh)
    return {"accuracy": result["accuracy"], "mean_reward": result["mean_reward"]}

  return run


def train(config: ml_collections.ConfigDict, workdir: str, *, devices=None) -> dict:
  """Runs diffu-GRPO with `config` in `workdir`, resuming from its newest good checkpoint.

  Returns the summary (also written to WORKDIR/summary.json when the run finishes).
  """
  return run(build(config, devices), workdir)


def run(rs: RLSetup, workdir: str, *, score=None) -> dict:
  """`train` with a built RLSetup, whose compiled programs can serve several runs.

  score(completions, examples) -> (rewards_B, {term: values_B}) replaces the task rewards.
  """
  c, rl, setup = rs.config, rs.config.rl, rs.setup
  score = score or rollout.score_with_rewards(rl.task)
  os.makedirs(workdir, exist_ok=True)
  trainer._check_run_compatible(c, workdir, setup.model_config.vocab_size)  # pylint: disable=protected-access
  resolved = c.to_dict()
  resolved["model"]["vocab_size"] = setup.model_config.vocab_size
  trainer._write_json(os.path.join(workdir, "config.json"), resolved)  # pylint: disable=protected-access
  sharding.log_mesh(setup.mesh)

  prompts = rollout.PromptSet(pipeline.load_task_examples(c.data, "train"), setup.tokenizer)
  prompt_iter = rollout.prompt_iterator(len(prompts), batch_size=rl.num_prompts_per_step,
                                        seed=c.seed)
  ckpt = checkpoint.Checkpointer(checkpoint.checkpoint_dir(workdir), keep=c.keep_checkpoints)
  restored = ckpt.restore_latest(rs.abstract_state, prompt_iter)
  if restored is not None:
    start_step, state = restored
    trainer._log(f"Resumed from {ckpt.directory} at RL step {start_step}.")  # pylint: disable=protected-access
  else:
    start_step, state = 0, init_state(rs)
    trainer._log(f"Initialised policy and reference from {c.init_from}.")  # pylint: disable=protected-access

  evaluator = None
  if rl.eval_every_steps:
    eval_examples = pipeline.load_task_examples(c.data, rl.eval_split)[:rl.num_eval_examples]
    evaluator = make_evaluator(rs, eval_examples)
  writer = metrics.MetricsWriter(workdir, resume_step=start_step)
  preemption = trainer._Preemption()  # pylint: disable=protected-access
  progress = tqdm.tqdm(total=c.num_train_steps, initial=start_step,
                       disable=jax.process_index() != 0, desc="diffu-GRPO", dynamic_ncols=True)
  def log_eval(step, params):
    result = evaluator(params)
    writer.write(step, {f"eval/{k}": v for k, v in result.items()})
    if jax.process_index() == 0:
      progress.write(f"step {step}: eval accuracy {result['accuracy']:.3f}, "
                     f"mean reward {result['mean_reward']:.3f}")

  step, row = start_step, {}
  try:
    if evaluator and start_step == 0:
      log_eval(0, state.policy.params)
    while step < c.num_train_steps:
      tick = time.perf_counter()
      indices_N = next(prompt_iter)
      state, step_metrics, _ = rl_step(rs, state, prompts, indices_N, step, score=score)
      step += 1
      row = {f"rl/{k}": v for k, v in step_metrics.items()}
      row["rl/seconds"] = time.perf_counter() - tick
      if step % c.log_every_steps == 0 or step == c.num_train_steps:
        writer.write(step, row)
      progress.update(1)
      progress.set_postfix(reward=f"{step_metrics['reward_mean']:.3f}",
                           kl=f"{step_metrics['kl']:.4f}", refresh=False)
      if evaluator and (step % rl.eval_every_steps == 0 or step == c.num_train_steps):
        log_eval(step, state.policy.params)
      preempted = preemption.reached(step)
      if step % c.checkpoint_every_steps == 0 or step == c.num_train_steps or preempted:
        trainer.raise_if_nonfinite(state.policy, ckpt=ckpt, unit="optimizer update",
                                   run="RL", advice="config.optimizer.lr or config.rl.clip_eps")
        ckpt.save(step, state, prompt_iter, resolved)
      if preempted:
        trainer._log(f"Preempted (SIGTERM): saved RL step {step}; rerun to resume.")  # pylint: disable=protected-access
        break
  finally:
    progress.close()
    ckpt.wait()
    ckpt.close()
    writer.close()

  logged = trainer._read_metrics(writer.path)  # pylint: disable=protected-access
  summary = {"step": step, "task": rl.task,
             "final_reward_mean": row.get("rl/reward_mean"),
             "evals": [{"step": r["step"], "accuracy": r["eval/accuracy"],
                        "mean_reward": r["eval/mean_reward"]}
                       for r in logged if "eval/accuracy" in r]}
  if step >= c.num_train_steps:
    trainer._write_json(os.path.join(workdir, "summary.json"), summary)  # pylint: disable=protected-access
  return summary
