"""What every entry point that touches the devices does before anything else: train, rl,
convert, quickstart, sample, evaluate and benchmarks/sampler.py."""
from absl import app
from absl import flags
from absl import logging

from diffusionlm.train import sharding


def start(argv) -> None:
  """Rejects stray positional arguments, quiets library INFO logs (orbax) that drown the
  progress bar unless --verbosity is given, and joins the multi-host job (before anything
  touches the devices)."""
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  sharding.initialize_distributed()
