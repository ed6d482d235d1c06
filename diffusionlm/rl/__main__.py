"""diffu-GRPO: `python -m diffusionlm.rl --config=configs/NAME.py --workdir=DIR
--config.init_from=SFT_DIR`.

Any config field can be overridden, e.g. `--config.rl.num_iterations=8`. Rerunning the same
command resumes from the newest good checkpoint in DIR.
"""
from absl import flags
from ml_collections import config_flags

from diffusionlm import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "RL config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and logs.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  cli.start(argv)
  from diffusionlm.rl import loop  # pylint: disable=g-import-not-at-top
  loop.train(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  cli.run(main)
