"""Fair-baseline study: regularised AR next to masked diffusion in the data-constrained grid.

Gao et al. (2025, arXiv 2510.04071) find that random masking of the input tokens explains
most of diffusion's multi-epoch advantage, and that dropout gives AR similar gains. This
sweep trains the two AR variants on the U = 8192 column of configs/scaling_shakespeare.py
(same model d32l2, optimizer, weight decay 0.1, epochs 0.5 to 256):

  ar-dropout0.1   model.dropout = 0.1 (attention probabilities and residual branches)
  ar-inmask0.15   data.input_mask_rate = 0.15 (inputs masked, next-token targets clean)

The plain AR and MDM runs of that grid are in docs/scaling_shakespeare_runs.csv (rerunning
two of them with this code gives the same losses to 3 decimals); `collect --merge_csv` adds
them to the table. `:baselines` trains them here instead. Results: docs/studies.md.

python -m diffusionlm.scaling sweep --sweep_config=configs/study_fair_baseline.py \
    --sweep_config.source_path=../shared/data/tinyshakespeare/input.txt \
    --root=runs/study_fair_baseline
python -m diffusionlm.scaling collect --root=runs/study_fair_baseline \
    --merge_csv=docs/scaling_shakespeare_runs.csv
python -m diffusionlm.scaling plot --root=runs/study_fair_baseline
"""
import ml_collections

from configs import scaling_shakespeare


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = scaling_shakespeare.get_config()
  c.objectives = ("ar",)
  c.models = ("d32l2",)
  c.unique_tokens = (8192,)
  c.epochs = (0.5, 1, 4, 16, 64, 256)
  c.variants = ("dropout0.1:model.dropout=0.1", "inmask0.15:data.input_mask_rate=0.15")
  if arg == "baselines":  # Plain AR and MDM on the same grid.
    c.objectives = ("ar", "mdm")
    c.variants = ()
  elif arg:
    raise ValueError(f"configs/study_fair_baseline.py: unknown variant {arg!r} "
                     "(try 'baselines')")
  return c
