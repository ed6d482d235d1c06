"""Load a trained run for inference: `load_run(workdir)` -> model, parameters, tokenizer.

Used by the sampler CLI, evaluation, RL (`config.init_from`) and the scaling tools.
"""
import dataclasses
from typing import Any

import jax
import ml_collections

from configs import base
from diffusionlm.train import checkpoint, trainer


@dataclasses.dataclass
class LoadedRun:
  config: ml_collections.ConfigDict
  setup: trainer.Setup
  params: Any

  @property
  def tokenizer(self):
    return self.setup.tokenizer

  @property
  def model_config(self):
    return self.setup.model_config

  @property
  def apply_fn(self):
    return self.setup.apply_fn


def _with_defaults(saved: dict) -> ml_collections.ConfigDict:
  """The saved config over today's defaults, so runs saved before a field existed still load."""
  merged = base.get_config().to_dict()

  def merge(into: dict, update: dict) -> None:
    for key, value in update.items():
      if isinstance(value, dict) and isinstance(into.get(key), dict):
        merge(into[key], value)
      else:
        into[key] = value

  merge(merged, saved)
  return ml_collections.ConfigDict(merged)


def load_run(workdir: str, devices=None, **overrides) -> LoadedRun:
  """Rebuilds a run's model from WORKDIR/config.json and loads its newest good parameters.

  `overrides` replace top-level config fields (e.g. `mesh=...` to run on other devices).
  """
  saved = checkpoint.read_run_config(workdir)
  if saved is None:
    raise ValueError(f"{workdir} has no config.json: is it a diffusionlm run directory?")
  config = _with_defaults(saved)
  config.init_from = ""
  for key, value in overrides.items():
    config[key] = value
  if devices is None and config.mesh.data * config.mesh.fsdp * config.mesh.tensor > jax.device_count():
    config.mesh.update(data=-1, fsdp=1, tensor=1)
  setup = trainer.build(config, devices)
  params = checkpoint.restore_params(workdir, setup.abstract_state.params)
  return LoadedRun(config=config, setup=setup, params=params)
