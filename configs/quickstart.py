"""A small masked-diffusion model pretrained on 4x4 Sudoku text, on CPU in a few minutes.

python -m diffusionlm.train --config=configs/quickstart.py --workdir=runs/quickstart

Its model and data sections are the base of configs/sft_sudoku.py and configs/rl_sudoku.py,
the two stages of the README's main job, `python -m diffusionlm.quickstart` (SFT ->
diffu-GRPO -> test table, see diffusionlm/quickstart.py).
"""
from configs import base


def get_config(arg: str | None = None):
  c = base.get_config(arg)
  c.objective = "mdm"
  c.data.dataset = "sudoku"
  c.data.tokenizer = "char"
  c.data.seq_len = 64
  c.global_batch_size = 32
  c.num_train_steps = 600
  c.log_every_steps = 25
  c.eval_every_steps = 200
  c.checkpoint_every_steps = 200
  c.model.d_model = 128
  c.model.num_layers = 4
  c.model.num_heads = 4
  c.model.mlp_dim = 384
  c.optimizer.lr = 1e-3
  c.optimizer.warmup_steps = 50
  c.optimizer.weight_decay = 0.01
  return c
