"""What the training loop (trainer.py) and the RL loop (rl/loop.py) do around their steps.

Each loop keeps its own step, metrics and evaluation, and reads top to bottom; `Bookkeeping`
holds what is the same: the metrics writer, the progress bar, when something is due, a
checkpoint when due or preempted (after the non-finite check) and summary.json at the end.
"""
import functools
import os

import jax
import ml_collections
import tqdm

from diffusionlm.train import checkpoint, metrics, run_dir


class Bookkeeping:
  """The bookkeeping of a run's loop: config.json, metrics writer, progress bar, checkpoints
  when due or preempted (after the non-finite check), and summary.json at the end. A context
  manager: leaving it waits for the last checkpoint and closes everything.

  Made once the run has started (its checkpoint restored or its state initialised), so a
  start that fails leaves the run directory as it was. On resume it says so if
  num_train_steps changed (run_dir.schedule_change) before config.json is rewritten.

  `nonfinite` are `run_dir.raise_if_nonfinite`'s unit, run and advice.
  """

  def __init__(self, workdir: str, config: ml_collections.ConfigDict, *,
               ckpt: checkpoint.Checkpointer, preemption: run_dir.Preemption, config_dict: dict,
               start_step: int, desc: str, nonfinite: dict):
    self.workdir, self.num_steps = workdir, config.num_train_steps
    self._checkpoint_every = config.checkpoint_every_steps
    self._ckpt, self._preemption, self._config_dict = ckpt, preemption, config_dict
    if start_step > 0:
      change = run_dir.schedule_change(workdir, config, resumed_step=start_step)
      if change:
        run_dir.log(change)
    run_dir.write_config(workdir, config_dict)
    self.writer = metrics.MetricsWriter(workdir, resume_step=start_step)
    self.progress = tqdm.tqdm(total=self.num_steps, initial=start_step, desc=desc,
                              disable=jax.process_index() != 0, dynamic_ncols=True)
    self.check_finite = functools.partial(run_dir.raise_if_nonfinite, ckpt=ckpt, **nonfinite)

  def __enter__(self) -> "Bookkeeping":
    return self

  def __exit__(self, *exc) -> None:
    self.progress.close()
    self._ckpt.wait()
    self._ckpt.close()
    self.writer.close()

  def due(self, step: int, every: int) -> bool:
    """True every `every` steps and at the last step; never for every = 0."""
    return bool(every) and (step % every == 0 or step == self.num_steps)

  def end_step(self, step: int, state, iterator) -> bool:
    """Checkpoints `state` and the data `iterator` when due or preempted; True = stop."""
    preempted = self._preemption.reached(step)
    if self.due(step, self._checkpoint_every) or preempted:
      self.check_finite(state)
      self._ckpt.save(step, state, iterator, self._config_dict)
    if preempted:
      run_dir.log(f"Preempted (SIGTERM): saved step {step}; rerun the same command to resume.")
    return preempted

  def logged(self) -> list[dict]:
    """The rows of metrics.jsonl."""
    return run_dir.read_jsonl(self.writer.path)

  def finish(self, step: int, summary: dict) -> dict:
    """Writes summary.json if the run reached its last step; returns `summary`."""
    if step >= self.num_steps:
      run_dir.write_json(os.path.join(self.workdir, run_dir.SUMMARY_FILE), summary)
    return summary
