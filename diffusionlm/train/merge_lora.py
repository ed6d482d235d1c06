"""A LoRA run's adapters merged into its base: a plain run directory (docs/lora.md).

OUT gets config.json (the LoRA run's config with lora.rank 0 and no init_from) and a
checkpoint of the merged parameters W + alpha / r * A @ B, the same layout as an imported
checkpoint (train/convert.py): `evaluate`, `sample`, `load_run` and `config.init_from`
read it like any run; it holds no optimizer state, so it starts runs, never resumes one.
"""
import os

import jax
from jax.experimental import multihost_utils
import ml_collections

from diffusionlm.train import checkpoint, convert, load, run_dir


def merge_run(workdir: str, out_dir: str, devices=None) -> ml_collections.ConfigDict:
  """Writes the merged model of the LoRA run in `workdir` to `out_dir`; returns its config."""
  config = run_dir.read_config(workdir)
  if config is None:
    raise ValueError(f"--workdir={workdir!r} has no config.json: is it a diffusionlm run "
                     "directory?")
  if not config.lora.rank:
    raise ValueError(f"--workdir={workdir!r} is not a LoRA run (lora.rank = 0): its "
                     "checkpoints already hold plain parameters.")
  if os.path.isdir(checkpoint.checkpoint_dir(out_dir)) and os.listdir(
      checkpoint.checkpoint_dir(out_dir)):
    raise ValueError(f"--out={out_dir!r} already holds checkpoints; merge into a new directory.")
  run = load.load_run(workdir, devices)
  resolved = run.config.to_dict()
  convert.save_params(out_dir, run.params, resolved)
  run_dir.write_config(out_dir, resolved)
  multihost_utils.sync_global_devices("merge-lora-done")
  return run.config
