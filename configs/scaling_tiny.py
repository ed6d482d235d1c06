"""Tiny data-constrained sweep for tests: 2 objectives x 1 model x 1 U x 2 epoch counts.

Runs of 2 and 4 steps on a text file (char tokenizer, seq_len 16, batch 8):
python -m diffusionlm.scaling sweep --sweep_config=configs/scaling_tiny.py --root=DIR \
    --sweep_config.source_path=corpus.txt
"""
import ml_collections

from configs import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.source_path = ml_collections.FieldReference("")  # The text corpus (path or glob).
  c.data_dir = ml_collections.FieldReference("")  # Where TFDS prepares it; "" = default.

  # ---- Axes of the grid (diffusionlm/scaling/sweep.py) ---------------------------
  c.objectives = ("mdm", "ar")
  c.models = ("d16l1",)  # d<d_model>l<num_layers>.
  c.head_dim = 8  # num_heads = d_model // head_dim.
  c.mlp_ratio = 2.0  # mlp_dim = mlp_ratio * d_model.
  c.unique_tokens = (256,)  # 16 sequences of 16 tokens = 2 steps per epoch.
  c.epochs = (1, 2)
  c.total_tokens = ()  # Instead of epochs: total training tokens D per run.
  c.variants = ()  # "NAME:field=value;field=value" settings crossed with the objectives.
  c.evals_per_run = 2
  c.checkpoints_per_run = 2
  c.max_warmup_fraction = 0.1  # warmup_steps <= this share of each run's steps.

  # ---- The training config every run starts from (configs/base.py fields) ----------
  t = base.get_config(arg)
  t.data.dataset = "text_files"
  t.data.source_path = c.get_ref("source_path")
  t.data.data_dir = c.get_ref("data_dir")
  t.data.tokenizer = "char"
  t.data.seq_len = 16
  t.global_batch_size = 8
  t.num_eval_batches = 1
  t.diffusion.eval_num_mc = 2
  t.optimizer.lr = 1e-3
  c.train = t
  return c
