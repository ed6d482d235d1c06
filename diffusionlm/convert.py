"""Import a Hugging Face checkpoint: `python -m diffusionlm.convert --hf_dir=DIR --out=DIR`.

HF_DIR holds config.json, safetensors weights and tokenizer.json of a LLaDA or LLaMA-family
model (diffusionlm/train/convert.py). OUT becomes a run directory to start from with
`--config.init_from=OUT` (training, SFT, RL) or to load with `load_run(OUT)`. `--config`
(default: the base config) supplies everything but the shape, e.g. the mesh that places the
weights while they load and the dtypes:

  python -m diffusionlm.convert --hf_dir=LLaDA-8B-Instruct --out=runs/llada_8b_instruct \
      --config=configs/llada_8b.py
"""
from absl import app
from absl import flags
from ml_collections import config_flags

from diffusionlm import cli

_HF_DIR = flags.DEFINE_string("hf_dir", None, "Hugging Face checkpoint directory.")
_OUT = flags.DEFINE_string("out", None, "Run directory to write (must hold no checkpoints).")
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Optional config file for everything but the model shape.",
    lock_config=True)
flags.mark_flags_as_required(["hf_dir", "out"])


def main(argv):
  cli.start(argv)
  import jax  # pylint: disable=g-import-not-at-top
  from diffusionlm.train import convert  # pylint: disable=g-import-not-at-top
  config = convert.convert_checkpoint(_HF_DIR.value, _OUT.value, _CONFIG.value)
  if jax.process_index() == 0:
    m = config.model
    print(f"Converted {_HF_DIR.value} -> {_OUT.value}: {m.num_layers} layers, d_model "
          f"{m.d_model}, vocab {m.vocab_size} (+1 mask row), objective {config.objective}, "
          f"tokenizer {config.data.tokenizer}.\nStart from it with "
          f"--config.init_from={_OUT.value}", flush=True)


if __name__ == "__main__":
  app.run(main)
