"""The diffu-GRPO loop (d1, Zhao et al. 2025): rollout -> rewards -> mu updates, repeated.

Reads top to bottom like the trainer and shares its bookkeeping (bookkeeping.Bookkeeping:
metrics, progress, checkpoints when due or preempted, summary): the setup (rl/setup.py: the init_from
run's model, the sharded state, the jitted GRPO programs) -> resume or start -> per RL step:
next prompts (a grain iterator, checkpointed) -> G completions each (rollout.py) ->
old-policy and reference log-probs of every prompt mask, once (grpo.make_logps_step) ->
`num_iterations` optax updates, update i under mask i (grpo.make_update_step) -> metrics,
evaluation, checkpoint.

Step s draws everything from step_key = fold_in(key(seed), s): the sampler uses
fold_in(step_key, 0), the prompt masks grpo.mask_key(fold_in(step_key, 1), i, m). With the
prompt iterator's state and the parameters in the checkpoint, a resumed run repeats the
uninterrupted one. The reference policy is the initial parameters, frozen and checkpointed
with the state (under LoRA: the frozen base with the adapters off, rl/setup.py).
`config.num_train_steps` counts RL steps; state.step counts optimizer updates
(num_iterations per RL step).
"""
import time

import jax
import ml_collections
import numpy as np

from diffusionlm import generation
from diffusionlm.data import pipeline
from diffusionlm.rl import grpo, rollout
from diffusionlm.rl import setup as rl_setup
from diffusionlm.train import bookkeeping, checkpoint, run_dir, sharding

# The update batch's arrays (rollout.rollout's batch minus the logged rewards).
UPDATE_KEYS = ("prompt", "prompt_valid", "completion", "completion_mask", "commit_step",
               "advantages")


def rl_step(rs: rl_setup.RLSetup, state: rl_setup.RLState, prompts: rollout.PromptSet, indices_N, step: int, *,
            score):
  """One RL step: rollout on indices_N, then rl.num_iterations updates. Returns
  (state, metrics as host floats, completions); the metrics include where the step's time
  went: seconds/rollout (sampling and rewards), seconds/logps (old and reference log-probs
  of every view), seconds/updates (the mu optimizer updates)."""
  c, rl = rs.config, rs.config.rl
  step_key = jax.random.fold_in(jax.random.key(c.seed), step)
  tick = time.perf_counter()
  policy, ref_params = rl_setup.split(state)
  params = rs.policy_params(state)
  batch, roll_metrics, completions = rollout.rollout(
      params, rs.apply_fn, prompts, indices_N, jax.random.fold_in(step_key, 0),
      tokenizer=rs.setup.tokenizer, mesh=rs.setup.mesh, num_generations=rl.num_generations,
      gen_length=rl.gen_length, mask_id=rs.setup.model_config.mask_id,
      scale_rewards=rl.scale_rewards, score=score, sampler_settings=rs.sampler_settings)
  seconds = {"rollout": time.perf_counter() - tick}
  micro_sharding = grpo.micro_batch_sharding(rs.setup.mesh)
  M = rl.num_micro_batches
  update_batch = {k: rollout.to_global(batch[k].reshape((M, -1) + batch[k].shape[1:]),
                                       micro_sharding) for k in UPDATE_KEYS}
  policy, history, update_seconds = grpo.run_iterations(
      policy, ref_params, update_batch, jax.random.fold_in(step_key, 1),
      logps_step=rs.logps_step, update_step=rs.update_step, num_iterations=rl.num_iterations,
      old_params=params)
  seconds.update(update_seconds)
  history = jax.device_get(history)
  update_metrics = {k: float(np.mean([h[k] for h in history])) for k in history[0]}
  update_metrics["lr"] = float(history[-1]["lr"])
  new_state = rl_setup.join(state, policy)
  timing = {f"seconds/{phase}": value for phase, value in seconds.items()}
  return new_state, {**roll_metrics, **update_metrics, **timing}, completions


def make_evaluator(rs: rl_setup.RLSetup, examples):
  """evaluate(params) -> {"accuracy", "mean_reward"} on `examples` (greedy by default)."""
  rl = rs.config.rl
  settings = rl_setup.eval_sampler_settings(rl, mask_id=rs.setup.model_config.mask_id)
  key = jax.random.fold_in(jax.random.key(rs.config.seed), 2**31 - 1)

  def run(params) -> dict:
    result = generation.evaluate_task(
        params, rs.apply_fn, rs.setup.tokenizer, examples, task=rl.task,
        mask_id=rs.setup.model_config.mask_id, causal=False, batch_size=rl.eval_batch_size,
        gen_length=rl.gen_length, key=key, sampler_kwargs=settings, mesh=rs.setup.mesh)
    return {"accuracy": result["accuracy"], "mean_reward": result["mean_reward"]}

  return run


def train(config: ml_collections.ConfigDict, workdir: str, *, devices=None) -> dict:
  """Runs diffu-GRPO with `config` in `workdir`, resuming from its newest good checkpoint.

  Returns the summary (also written to WORKDIR/summary.json when the run finishes).
  """
  return run(rl_setup.build(config, devices), workdir)


def run(rs: rl_setup.RLSetup, workdir: str, *, score=None) -> dict:
  """`train` with a built RLSetup, whose compiled programs can serve several runs.

  score(completions, examples) -> (rewards_B, {term: values_B}) replaces the task rewards.
  """
  preemption = run_dir.Preemption()
  try:
    return _run(rs, workdir, score or rollout.score_with_rewards(rs.config.rl.task), preemption)
  finally:
    preemption.restore()


def _run(rs: rl_setup.RLSetup, workdir: str, score, preemption: run_dir.Preemption) -> dict:
  c, rl, setup = rs.config, rs.config.rl, rs.setup
  resolved = run_dir.start(workdir, c)
  finished = run_dir.finished_summary(workdir, c)
  if finished is not None:
    return finished
  sharding.log_mesh(setup.mesh)

  prompts = rollout.PromptSet(pipeline.load_task_examples(c.data, "train"), setup.tokenizer)
  prompt_iter = rollout.prompt_iterator(len(prompts), batch_size=rl.num_prompts_per_step,
                                        seed=c.seed)
  ckpt = checkpoint.Checkpointer(checkpoint.checkpoint_dir(workdir), keep=c.keep_checkpoints)
  restored = ckpt.restore_latest(rs.abstract_state, prompt_iter)
  if restored is not None:
    start_step, state = restored
    run_dir.log(f"Resumed from {ckpt.directory} at RL step {start_step}.")
  else:
    start_step, state = 0, rl_setup.init_state(rs)
    run_dir.log(f"Initialised policy and reference from {c.init_from}.")

  evaluator = None
  if rl.eval_every_steps:
    eval_examples = pipeline.load_task_examples(c.data, rl.eval_split)[:rl.num_eval_examples]
    evaluator = make_evaluator(rs, eval_examples)
  books = bookkeeping.Bookkeeping(
      workdir, c, ckpt=ckpt, preemption=preemption, config_dict=resolved, start_step=start_step,
      desc="diffu-GRPO", nonfinite=dict(unit="optimizer update", run="RL",
                                        advice="config.optimizer.lr or config.rl.clip_eps"))

  def log_eval(step, params):
    result = evaluator(params)
    books.writer.write(step, {f"eval/{k}": v for k, v in result.items()})
    if jax.process_index() == 0:
      books.progress.write(f"step {step}: eval accuracy {result['accuracy']:.3f}, "
                           f"mean reward {result['mean_reward']:.3f}")

  step, row = start_step, {}
  with books:
    if evaluator and start_step == 0:
      log_eval(0, rs.policy_params(state))
    while step < c.num_train_steps:
      tick = time.perf_counter()
      indices_N = next(prompt_iter)
      state, step_metrics, _ = rl_step(rs, state, prompts, indices_N, step, score=score)
      step += 1
      row = {f"rl/{k}": v for k, v in step_metrics.items()}
      row["rl/seconds"] = time.perf_counter() - tick
      if books.due(step, c.log_every_steps):
        books.writer.write(step, row)
      books.progress.update(1)
      books.progress.set_postfix(reward=f"{step_metrics['reward_mean']:.3f}",
                                 kl=f"{step_metrics['kl']:.4f}", refresh=False)
      if books.due(step, rl.eval_every_steps):
        log_eval(step, rs.policy_params(state))
      if books.end_step(step, state, prompt_iter):
        break

  return books.finish(step, {
      "step": step, "task": rl.task, "final_reward_mean": row.get("rl/reward_mean"),
      "evals": [{"step": r["step"], "accuracy": r["eval/accuracy"],
                 "mean_reward": r["eval/mean_reward"]}
                for r in books.logged() if "eval/accuracy" in r]})
