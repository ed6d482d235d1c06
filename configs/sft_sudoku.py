"""SFT on 4x4 Sudoku (d1's first stage; the quickstart's SFT stage).

python -m diffusionlm.train --config=configs/sft_sudoku.py --workdir=runs/sft_sudoku
python -m diffusionlm.train --config=configs/sft_sudoku.py:pretrained \
    --workdir=runs/sft_sudoku --config.init_from=runs/quickstart

The loss is LLaDA's SFT objective on the response (`<answer>` block + EOS) given the clean
prompt. The model is the quickstart's (configs/quickstart.py). Without an argument it trains
from scratch (lr 1e-3): 600 steps take about 3 minutes on 2 CPU cores and decode 48% of the
validation puzzles greedily (gen_length 40, one block, 20 steps) and 28% in one step (seed
0). `:pretrained` fine-tunes a masked-diffusion run of configs/quickstart.py (set
--config.init_from) at lr 3e-4, as the quickstart does: 72.7% at 20 steps (seed 0,
docs/rl.md).
"""
from configs import quickstart

VARIANTS = quickstart.SFT_VARIANTS


def get_config(arg: str | None = None):
  return quickstart.sft_config("sudoku", arg)
