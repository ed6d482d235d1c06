"""Load a trained run for inference: `load_run(workdir)` -> model, parameters, tokenizer.

Used by the sampler CLI, evaluation, the LoRA merge and the scaling tools. A LoRA run loads
as its merged model (base + adapters, `checkpoint.restore_params`).
"""
import dataclasses
from typing import Any

import jax
import ml_collections

from diffusionlm.train import checkpoint, run_dir, train_state


@dataclasses.dataclass
class LoadedRun:
  config: ml_collections.ConfigDict
  setup: train_state.Setup
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


def read_run_config(workdir: str, *, source: str = "--workdir") -> ml_collections.ConfigDict:
  """WORKDIR/config.json (`run_dir.read_config`); a ValueError if the directory has none."""
  config = run_dir.read_config(workdir)
  if config is None:
    raise ValueError(f"{source}={workdir!r} has no config.json: is it a diffusionlm run "
                     "directory?")
  return config


def load_run(workdir: str, devices=None, *, source: str = "--workdir",
             **overrides) -> LoadedRun:
  """Rebuilds a run's model from WORKDIR/config.json and loads its newest good parameters.

  `overrides` replace top-level config fields (e.g. `mesh=...` to run on other devices);
  `source` names where `workdir` came from in errors. The loaded config describes the
  model the parameters are: a LoRA run's has lora.rank 0 (its adapters are merged).
  """
  config = read_run_config(workdir, source=source)
  config.init_from = ""
  config.lora.rank = 0
  for key, value in overrides.items():
    config[key] = value
  if devices is None and config.mesh.data * config.mesh.fsdp * config.mesh.tensor > jax.device_count():
    config.mesh.update(data=-1, fsdp=1, tensor=1)
  setup = train_state.build(config, devices)
  params = checkpoint.restore_params(workdir, setup.abstract_state.params, source=source)
  return LoadedRun(config=config, setup=setup, params=params)
