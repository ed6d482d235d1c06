"""d1 (diffu-GRPO, Zhao et al. 2025) on Countdown with LLaDA-8B-Instruct: G = 6, mu = 8.

Needs accelerators (see docs/launch.md) and LLaDA-8B-Instruct imported once:

  python -m diffusionlm.convert --hf_dir=LLaDA-8B-Instruct --out=runs/llada_8b_instruct \
      --config=configs/llada_8b.py
  python -m diffusionlm.rl --config=configs/d1_countdown.py:runs/llada_8b_instruct \
      --workdir=runs/d1_countdown
  python -m diffusionlm.evaluate --workdir=runs/d1_countdown --task=countdown --gen_length=256 \
      --block_length=32 --steps=128

The problems are our generated ones with three numbers (--config.data.dataset=countdown:4
for four), not d1's Countdown data, and the prompt and response formats are ours
(diffusionlm/tasks/countdown.py), not d1's instruction prompt. The shared settings and their
sources are in configs/llada_8b_rl.py (`d1_config`).
"""
from configs import llada_8b_rl


def get_config(arg: str | None = None):
  return llada_8b_rl.d1_config(arg, task="countdown")
