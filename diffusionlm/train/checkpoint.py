"""Checkpoints: orbax CheckpointManager holding the train state, data-iterator state and config.

Guarantees:
- Atomic: orbax writes each step into a temporary directory and renames it when complete,
  so a run killed mid-save leaves no half checkpoint that looks complete.
- A checkpoint that fails to restore (corrupt or truncated files) is moved aside to
  `corrupt-<step>` with a warning, never loaded, and the next older one is tried; nothing
  is deleted and a later save cannot overwrite a good checkpoint.
- The newest `keep` checkpoints are kept.
"""
import json
import os

from absl import logging
from etils import epath
import grain
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

STATE, DATA, CONFIG = "state", "data", "config"


class Checkpointer:
  """Saves and restores (train state, data iterator, config) under `directory`."""

  def __init__(self, directory: str, *, keep: int, async_save: bool = True):
    self.directory = epath.Path(directory).absolute()
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, cleanup_tmp_directories=True,
            enable_async_checkpointing=async_save),
        item_names=(STATE, DATA, CONFIG),
    )

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state, data_iterator, config_dict: dict) -> None:
    self._manager.save(
        step,
        args=ocp.args.Composite(**{
            STATE: ocp.args.PyTreeSave(state),
            DATA: grain.checkpoint.CheckpointSave(data_iterator),
            CONFIG: ocp.args.JsonSave(config_dict),
        }),
        force=True,
    )

  def restore_latest(self, abstract_state, data_iterator):
    """Restores the newest checkpoint that loads cleanly; returns (step, state) or None.

    `abstract_state` is a tree of `jax.ShapeDtypeStruct` with shardings: arrays are
    restored straight onto the mesh. The data iterator is restored in place.
    """
    for step in reversed(self.steps()):
      try:
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(**{
                STATE: ocp.args.PyTreeRestore(
                    abstract_state, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_state)),
                DATA: grain.checkpoint.CheckpointRestore(data_iterator),
            }),
        )
        ok, error = True, None
      except Exception as e:  # pylint: disable=broad-except
        ok, error = False, e
      if _all_processes_ok(ok):
        return step, restored[STATE]
      self._quarantine(step, error)
    return None

  def _quarantine(self, step: int, error) -> None:
    """Moves a checkpoint that failed to load out of orbax's view, keeping its files."""
    logging.warning("Checkpoint at step %d in %s failed to restore and is skipped (moved to "
                    "corrupt-%d): %s", step, self.directory, step, error)
    print(f"WARNING: checkpoint step {step} in {self.directory} is corrupt or incomplete; "
          f"skipped and moved to corrupt-{step}. Error: {error}", flush=True)
    if jax.process_index() == 0:
      source = self.directory / str(step)
      target = self.directory / f"corrupt-{step}"
      suffix = 0
      while target.exists():
        suffix += 1
        target = self.directory / f"corrupt-{step}.{suffix}"
      source.rename(target)
    multihost_utils.sync_global_devices(f"quarantine-{step}")
    self._manager.reload()

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def _all_processes_ok(ok: bool) -> bool:
  if jax.process_count() == 1:
    return ok
  return bool(np.all(multihost_utils.process_allgather(np.array(ok))))


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(workdir, "checkpoints")


def restore_params(workdir: str, abstract_params):
  """Parameters of the newest loadable checkpoint of another run (`config.init_from`).

  Only the parameters are read (optimizer state, step and data position are not), so a
  pretraining run can start an SFT run, and an SFT run an RL run.
  """
  directory = epath.Path(checkpoint_dir(workdir)).absolute()
  if not directory.exists():
    raise ValueError(f"config.init_from={workdir!r}: no checkpoints directory {directory}.")
  manager = ocp.CheckpointManager(directory, item_names=(STATE, DATA, CONFIG),
                                  options=ocp.CheckpointManagerOptions(read_only=True))
  errors = []
  for step in sorted(manager.all_steps(), reverse=True):
    target = {"params": abstract_params}
    try:
      restored = manager.restore(step, args=ocp.args.Composite(**{
          STATE: ocp.args.PyTreeRestore(
              target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
              partial_restore=True)}))
      logging.info("Initialised parameters from %s step %d.", directory, step)
      return restored[STATE]["params"]
    except Exception as e:  # pylint: disable=broad-except
      logging.warning("init_from: checkpoint step %d of %s failed to load: %s", step, directory, e)
      errors.append(f"step {step}: {e}")
  raise ValueError(f"config.init_from={workdir!r}: no loadable checkpoint in {directory}. "
                   + "; ".join(errors))


def read_run_config(workdir: str) -> dict | None:
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)
