"""Quickstart: a small masked-diffusion model learns 4x4 Sudoku on CPU in a few minutes.

python -m diffusionlm.train --config=configs/quickstart.py --workdir=runs/quickstart
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
