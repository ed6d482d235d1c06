"""Noise study: does masked diffusion tolerate random sequences in its pretraining data as
well as AR does? ("Do we really have to filter out random noise in pre-training data?", 2025:
with 20% random sequences, AR's clean next-token loss rises by less than 1%.)

2 objectives x 4 noise rates (0, 5, 10, 20% of the training sequences replaced by uniformly
random tokens, data.noise_rate), and 0 and 20% again with seed 1, on one char-level model (d32l2), one pass over the first
256k characters of tinyshakespeare (512 steps of 8 x 64), so every noise row is seen once,
as in single-epoch pretraining. Validation (clean text) bits per character, as in
configs/scaling_shakespeare.py, whose training settings these runs share. Results:
docs/studies.md.

python -m diffusionlm.scaling sweep --sweep_config=configs/study_noise.py \
    --sweep_config.source_path=../shared/data/tinyshakespeare/input.txt --root=runs/study_noise
python -m diffusionlm.scaling collect --root=runs/study_noise
python -m diffusionlm.scaling plot --root=runs/study_noise  # + plots/noise_rate.{png,md}
"""
import ml_collections

from configs import scaling_shakespeare


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg:
    raise ValueError(f"configs/study_noise.py takes no variant, got {arg!r}")
  c = scaling_shakespeare.get_config()
  c.objectives = ("ar", "mdm")
  c.models = ("d32l2",)
  c.unique_tokens = (262144,)  # 4096 sequences of 64 characters: 512 steps per epoch.
  c.epochs = (1,)
  c.variants = ("noise0", "noise0.05:data.noise_rate=0.05", "noise0.1:data.noise_rate=0.1",
                "noise0.2:data.noise_rate=0.2",
                # A second seed (initialisation, data order, noise rows) at 0 and 20%: how
                # much of a difference the seed alone makes.
                "noise0.seed1:seed=1", "noise0.2.seed1:data.noise_rate=0.2;seed=1")
  c.evals_per_run = 4
  return c
