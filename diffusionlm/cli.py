"""What every entry point that touches the devices does: `start` before anything else (train,
rl, convert, quickstart, sample, evaluate and benchmarks/sampler.py), and `run` in place of
absl's app.run for the ones that run as several processes (train, rl, quickstart)."""
import os
import sys
import traceback

from absl import app
from absl import flags
from absl import logging
import jax

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


def run(main) -> None:
  """absl's app.run(main), except that in a job of several processes an error in this one
  stops it at once: its traceback and one line saying so, then exit(1), without waiting
  at JAX's shutdown barrier for processes that will never arrive. The others then fail in
  their next collective with this one (or at the heartbeat timeout) and stop the same way;
  checkpoints are atomic, so the newest complete one is intact."""
  def guarded(argv):
    try:
      return main(argv)
    except (Exception, KeyboardInterrupt) as e:  # pylint: disable=broad-except
      if not (jax.distributed.is_initialized() and jax.process_count() > 1):
        raise
      traceback.print_exc()
      print(f"diffusionlm: process {jax.process_index()} of {jax.process_count()} stops on "
            f"{type(e).__name__}; the other processes stop when they next need it. The "
            "newest complete checkpoint is intact: rerun the same command to resume.",
            file=sys.stderr, flush=True)
      os._exit(1)

  app.run(guarded)
