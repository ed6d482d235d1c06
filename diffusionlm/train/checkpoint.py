"""Checkpoints: orbax CheckpointManager holding the train state, data-iterator state and config.

Guarantees:
- Atomic: orbax writes each step into a temporary directory and renames it when complete,
  so a run killed mid-save leaves no half checkpoint that looks complete.
- A checkpoint that fails to restore (corrupt or truncated files) is never loaded: once an
  older one loads, each newer failed one is moved aside to `corrupt-<step>` with one warning
  (nothing is deleted, and a later save cannot overwrite a good checkpoint).
- If checkpoints exist but none loads, `restore_latest` raises `UnreadableCheckpointsError`
  listing them and moves nothing, so a run never silently starts over on top of its history.
- The newest `keep` checkpoints are kept.
- Layers are stored in the layout the run computes in (unrolled `block_i` or scanned
  `blocks`, config.model.scan_layers) and converted on load when the reader's layout differs
  (`layer_layout`): a run may resume, or start from init_from, with scan_layers flipped.
"""
import functools
import os
import sys

from absl import logging
from etils import epath
import grain
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

from diffusionlm.models import layer_layout, lora
from diffusionlm.train import run_dir

STATE, DATA, CONFIG = "state", "data", "config"
CORRUPT_PREFIX = "corrupt-"


class UnreadableCheckpointsError(RuntimeError):
  """The run has checkpoints but none of them loads: refusing to start over."""


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
    """Saves a checkpoint of `step` (asynchronously where enabled). A checkpoints folder
    deleted during the run is said and made again (what it held is gone)."""
    if not self.directory.exists():
      logging.warning("The checkpoints folder %s was deleted while the run was going: every "
                      "checkpoint it held is gone. Making it again to save step %d.",
                      self.directory, step)
      if jax.process_index() == 0:
        self.directory.mkdir(parents=True, exist_ok=True)
      multihost_utils.sync_global_devices(f"recreate-checkpoints-{step}")
      self._manager.reload()
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
    restored straight onto the mesh. The data iterator is restored in place. None means a
    fresh run (no checkpoint at all); checkpoints that all fail raise
    `UnreadableCheckpointsError` (module docstring).
    """
    _ignore_orbax_closed_event_loop_reports()
    failures = []
    for step in reversed(self.steps()):
      try:
        restore = lambda target, step=step: self._manager.restore(
            step,
            args=ocp.args.Composite(**{
                STATE: ocp.args.PyTreeRestore(
                    target, restore_args=ocp.checkpoint_utils.construct_restore_args(target)),
                DATA: grain.checkpoint.CheckpointRestore(data_iterator),
            }),
        )[STATE]
        restored = read_in_layout(restore, self.directory / str(step), abstract_state)
        ok, error = True, None
      except Exception as e:  # pylint: disable=broad-except
        ok, error = False, e
      if _all_processes_ok(ok):
        for failed_step, failed_error in failures:
          self._quarantine(failed_step, failed_error)
        return step, restored
      failures.append((step, error))
    quarantined = sorted(p.name for p in self.directory.glob(f"{CORRUPT_PREFIX}*"))
    if failures or quarantined:
      lines = [f"  step {step}: {short_error(error)}" for step, error in failures]
      lines += [f"  {name} (moved aside by an earlier start)" for name in quarantined]
      raise UnreadableCheckpointsError(
          f"{self.directory} holds checkpoints but none of them loads:\n" + "\n".join(lines)
          + "\nNothing was changed (metrics.jsonl and every checkpoint are as they were). To "
          "start this run over, move or delete its workdir (or pass a new --workdir); to "
          "repair it, restore a good checkpoint into this folder and rerun.")
    return None

  def _quarantine(self, step: int, error) -> None:
    """Moves a checkpoint that failed to load out of orbax's view, keeping its files."""
    target = self.directory / f"{CORRUPT_PREFIX}{step}"
    suffix = 0
    while target.exists():
      suffix += 1
      target = self.directory / f"{CORRUPT_PREFIX}{step}.{suffix}"
    if jax.process_index() == 0:
      logging.warning("Checkpoint step %d in %s failed to load and was moved to %s: %s",
                      step, self.directory, target.name, short_error(error))
      (self.directory / str(step)).rename(target)
    multihost_utils.sync_global_devices(f"quarantine-{step}")
    self._manager.reload()

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def short_error(error, limit: int = 300) -> str:
  """One line of an orbax / tensorstore error: its first line, without the JSON spec dump."""
  text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
  text = text.split(" [tensorstore_spec")[0]
  return text if len(text) <= limit else text[:limit] + " ..."


def _ignore_orbax_closed_event_loop_reports() -> None:
  """Drops the "Event loop is closed" reports of a failed orbax restore.

  When one array of a restore fails, orbax closes its asyncio loop while tensorstore still
  completes the reads of the other arrays; each completion reports RuntimeError('Event loop
  is closed') through sys.unraisablehook, tens to hundreds of tracebacks that bury the one
  useful warning. Every other unraisable exception still reaches the previous hook.
  """
  previous = sys.unraisablehook
  if getattr(previous, "ignores_closed_event_loop", False):
    return

  def hook(unraisable):
    value = unraisable.exc_value
    if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
      return
    previous(unraisable)

  hook.ignores_closed_event_loop = True
  sys.unraisablehook = hook


def stored_layout(step_dir) -> str | None:
  """The layer layout (layer_layout.SCANNED / UNROLLED) of a checkpoint step's parameters,
  from its tree metadata (nothing is read); None if it holds no layered parameters."""
  tree = ocp.PyTreeCheckpointHandler().metadata(epath.Path(step_dir) / STATE).tree
  return layer_layout.layout_of(tree.get("params", {}))


def read_in_layout(restore, step_dir, target):
  """restore(target) -> the tree `target` describes, read in the layout stored in step_dir.

  Where the stored layout differs from target's, the stored layout is read (onto the same
  devices, the `layers` axis unsharded) and converted with one jitted program whose outputs
  land in target's shardings; for that moment both copies exist.
  """
  want = layer_layout.layout_of(target)
  stored = stored_layout(step_dir)
  if want is None or stored is None or stored == want:
    return restore(target)
  logging.info("Checkpoint %s stores %s layers; converting them to %s.", step_dir, stored, want)
  restored = restore(layer_layout.to_layout(target, stored))
  convert = jax.jit(functools.partial(layer_layout.to_layout, layout=want),
                    out_shardings=jax.tree.map(lambda a: a.sharding, target))
  return convert(restored)


def _all_processes_ok(ok: bool) -> bool:
  if jax.process_count() == 1:
    return ok
  return bool(np.all(multihost_utils.process_allgather(np.array(ok))))


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(workdir, "checkpoints")


def restore_params(workdir: str, abstract_params, *, source: str = "config.init_from"):
  """The model parameters of the newest loadable checkpoint of another run
  (`config.init_from`, `load_run`), as `abstract_params` (ShapeDtypeStructs with shardings).

  Only the parameters are read (optimizer state, step and data position are not), so a
  pretraining run can start an SFT run, and an SFT run an RL run. A LoRA run's parameters
  are its base with its adapters merged (diffusionlm/models/lora.py). `source` names where
  `workdir` came from in errors (a config field or a flag).
  """
  directory = epath.Path(checkpoint_dir(workdir)).absolute()
  if not directory.exists() or not any(p.name.isdigit() for p in directory.iterdir()):
    raise ValueError(f"{source}={workdir!r}: the run has no checkpoint yet (nothing in "
                     f"{directory}); train it first, or point at a run that saved one.")
  saved = run_dir.read_config(workdir)
  lora_config = saved.lora if saved is not None and saved.lora.rank else None
  if lora_config is None:
    target = {"params": abstract_params}
    return _restore_state_items(directory, target, source, workdir)["params"]
  base = lora.abstract_base(abstract_params, lora_config)
  restored = _restore_state_items(
      directory, {"params": lora.abstract_adapters(base, lora_config), "base_params": base},
      source, workdir)
  merge = lambda b, a: jax.tree.map(lambda x, t: x.astype(t.dtype),
                                    lora.merge(b, a, lora_config), abstract_params)
  return jax.jit(merge, out_shardings=jax.tree.map(lambda a: a.sharding, abstract_params))(
      restored["base_params"], restored["params"])


def _restore_state_items(directory, target: dict, source: str, workdir: str) -> dict:
  """The items of `target` (abstract trees) from the state of the newest checkpoint in
  `directory` that loads them."""
  _ignore_orbax_closed_event_loop_reports()
  manager = ocp.CheckpointManager(directory, item_names=(STATE, DATA, CONFIG),
                                  options=ocp.CheckpointManagerOptions(read_only=True))
  errors = []
  for step in sorted(manager.all_steps(), reverse=True):
    restore = lambda tree, step=step: manager.restore(step, args=ocp.args.Composite(**{
        STATE: ocp.args.PyTreeRestore(
            tree, restore_args=ocp.checkpoint_utils.construct_restore_args(tree),
            partial_restore=True)}))[STATE]
    try:
      restored = read_in_layout(restore, directory / str(step), target)
      logging.info("Initialised parameters from %s step %d.", directory, step)
      return restored
    except Exception as e:  # pylint: disable=broad-except
      logging.warning("init_from: checkpoint step %d of %s failed to load: %s", step, directory,
                      short_error(e))
      errors.append(f"step {step}: {short_error(e)}")
  raise ValueError(f"{source}={workdir!r}: no loadable checkpoint in {directory}. "
                   + "; ".join(errors))
