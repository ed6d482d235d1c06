"""Merge a LoRA run into a plain run directory:

  python -m diffusionlm.merge_lora --workdir=runs/lora_sft --out=runs/lora_sft_merged

OUT holds the model W + alpha / r * A @ B of WORKDIR's newest checkpoint
(diffusionlm/train/merge_lora.py), ready for `evaluate`, `sample` and `--config.init_from`.
(Those also read a LoRA run directly, merging on load; OUT is the self-contained copy.)
"""
from absl import app
from absl import flags

from diffusionlm import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "The LoRA run's directory.")
_OUT = flags.DEFINE_string("out", None, "Run directory to write (must hold no checkpoints).")
flags.mark_flags_as_required(["workdir", "out"])


def main(argv):
  cli.start(argv)
  import jax  # pylint: disable=g-import-not-at-top
  from diffusionlm.train import merge_lora  # pylint: disable=g-import-not-at-top
  config = merge_lora.merge_run(_WORKDIR.value, _OUT.value)
  if jax.process_index() == 0:
    print(f"Merged the LoRA adapters of {_WORKDIR.value} into {_OUT.value} "
          f"({config.model.num_layers} layers, d_model {config.model.d_model}).\nEvaluate it with "
          f"`python -m diffusionlm.evaluate --workdir={_OUT.value}`, or start from it with "
          f"--config.init_from={_OUT.value}", flush=True)


if __name__ == "__main__":
  app.run(main)
