"""SFT on Countdown (3 numbers), the first stage of `python -m diffusionlm.quickstart
--task=countdown`.

python -m diffusionlm.train --config=configs/sft_countdown.py:pretrained \
    --workdir=runs/sft_countdown --config.init_from=runs/pretrain_countdown

LLaDA's SFT loss on the response (reasoning steps, `<answer>` expression, EOS) given the
clean prompt; the model and settings are those of configs/sft_sudoku.py
(configs/quickstart.py:sft_config) with Countdown's sequence length. Without an argument it
trains from scratch (lr 1e-3); `:pretrained` fine-tunes a run of
configs/quickstart.py:countdown (set --config.init_from) at lr 3e-4.
"""
from configs import quickstart

VARIANTS = quickstart.SFT_VARIANTS


def get_config(arg: str | None = None):
  return quickstart.sft_config("countdown", arg)
