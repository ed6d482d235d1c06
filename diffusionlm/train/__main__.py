"""Train a model: `python -m diffusionlm.train --config=configs/NAME.py[:ARG] --workdir=DIR`.

Any config field can be overridden, e.g. `--config.optimizer.lr=3e-4`. Rerunning the same
command resumes from the newest good checkpoint in DIR.
"""
from absl import flags
from ml_collections import config_flags

from diffusionlm import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and logs.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  cli.start(argv)
  from diffusionlm.train import trainer  # pylint: disable=g-import-not-at-top
  trainer.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  cli.run(main)
