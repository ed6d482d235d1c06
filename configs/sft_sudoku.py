"""SFT on 4x4 Sudoku from scratch (d1's first stage; the quickstart's SFT stage).

python -m diffusionlm.train --config=configs/sft_sudoku.py --workdir=runs/sft_sudoku

The loss is LLaDA's SFT objective on the response (`<answer>` block + EOS) given the clean
prompt. The model is the quickstart's (configs/quickstart.py), so a masked-diffusion run
of that config can be the starting point too: add --config.init_from=runs/quickstart
(and a lower --config.optimizer.lr=3e-4 for fine-tuning). From scratch, 600 steps take
about 3 minutes on 2 CPU cores and decode 48% of validation puzzles greedily
(gen_length 40, one block, 20 steps) and 28% in one step, the RL stage's sampler (seed 0;
other seeds differ by 10-20 points, docs/rl.md).
"""
from configs import quickstart


def get_config(arg: str | None = None):
  c = quickstart.get_config(arg)
  c.objective = "sft"
  c.num_train_steps = 600
  c.log_every_steps = 25
  c.eval_every_steps = 200
  c.checkpoint_every_steps = 200
  c.optimizer.lr = 1e-3
  c.optimizer.warmup_steps = 50
  c.optimizer.decay = "cosine"
  return c
