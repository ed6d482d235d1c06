"""SFT on 4x4 Sudoku, starting from the quickstart masked-diffusion run (d1's first stage).

python -m diffusionlm.train --config=configs/sft_sudoku.py --workdir=runs/sft_sudoku \
    --config.init_from=runs/quickstart

The model section equals the quickstart's, so its parameters load. The loss is LLaDA's SFT
objective on the response (`<answer>` block + EOS) given the clean prompt.
"""
from configs import quickstart


def get_config(arg: str | None = None):
  c = quickstart.get_config(arg)
  c.objective = "sft"
  c.num_train_steps = 300
  c.log_every_steps = 25
  c.eval_every_steps = 100
  c.checkpoint_every_steps = 100
  c.optimizer.lr = 3e-4
  c.optimizer.warmup_steps = 20
  c.optimizer.decay = "cosine"
  return c
