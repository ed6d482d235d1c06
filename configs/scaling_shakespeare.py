"""CPU-scale data-constrained sweep on tinyshakespeare: AR vs masked diffusion.

2 objectives x 3 char-level models (d32l2, d48l2, d64l2: 0.04M to 0.14M parameters) x 2
unique-token budgets (8k, 32k characters) x 5 epoch counts (0.5 to 64) = 60 runs, about 40
minutes on 2 shared CPU cores. See docs/scaling.md for the results.

python -m diffusionlm.scaling sweep --sweep_config=configs/scaling_shakespeare.py \
    --sweep_config.source_path=../shared/data/tinyshakespeare/input.txt \
    --root=runs/scaling_shakespeare

`--sweep_config=configs/scaling_shakespeare.py:long` adds 6 runs in the same root: the small
budget (U = 8k) for 256 epochs, to follow diffusion past the point where AR overfits (~15
minutes more).
"""
import ml_collections

from configs import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.source_path = ml_collections.FieldReference("")  # tinyshakespeare's input.txt.
  c.data_dir = ml_collections.FieldReference("")  # Where TFDS prepares it; "" = default.

  # ---- Axes of the grid (diffusionlm/scaling/sweep.py) ---------------------------
  c.objectives = ("mdm", "ar")
  c.models = ("d32l2", "d48l2", "d64l2")  # d<d_model>l<num_layers>.
  c.head_dim = 16  # num_heads = d_model // head_dim.
  c.mlp_ratio = 4.0  # mlp_dim = mlp_ratio * d_model.
  c.unique_tokens = (8192, 32768)  # 16 and 64 steps of 8 x 64 characters per epoch.
  c.epochs = (0.5, 1, 4, 16, 64)  # Fractional epochs give the fit more single-epoch runs.
  c.total_tokens = ()  # Instead of epochs: total training tokens D per run.
  c.variants = ()  # "NAME:field=value;field=value" settings crossed with the objectives.
  c.evals_per_run = 8
  c.checkpoints_per_run = 2
  c.max_warmup_fraction = 0.1  # warmup_steps <= this share of each run's steps.

  # ---- The training config every run starts from (configs/base.py fields) ----------
  t = base.get_config()
  t.data.dataset = "text_files"
  t.data.source_path = c.get_ref("source_path")
  t.data.data_dir = c.get_ref("data_dir")
  t.data.tokenizer = "char"
  t.data.seq_len = 64
  t.global_batch_size = 8
  t.num_eval_batches = 16  # 16 x 8 x 64 = 8192 validation characters per evaluation.
  t.diffusion.eval_num_mc = 4
  t.keep_checkpoints = 1
  t.optimizer.lr = 2e-3
  t.optimizer.warmup_steps = 100
  t.optimizer.weight_decay = 0.1
  c.train = t

  if arg == "long":
    c.unique_tokens = (8192,)
    c.epochs = (256,)
  elif arg:
    raise ValueError(f"configs/scaling_shakespeare.py: unknown variant {arg!r} (try 'long')")
  return c
