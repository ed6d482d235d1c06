"""d1 (diffu-GRPO, Zhao et al. 2025) on GSM8K with LLaDA-8B-Instruct: G = 6, mu = 12.

Needs accelerators (see docs/launch.md) and LLaDA-8B-Instruct imported once:

  python -m diffusionlm.convert --hf_dir=LLaDA-8B-Instruct --out=runs/llada_8b_instruct \
      --config=configs/llada_8b.py
  python -m diffusionlm.rl --config=configs/d1_gsm8k.py:runs/llada_8b_instruct \
      --workdir=runs/d1_gsm8k --config.data.source_path=data/gsm8k
  python -m diffusionlm.evaluate --workdir=runs/d1_gsm8k --task=gsm8k --gen_length=256 \
      --block_length=32 --steps=128

data/gsm8k holds the official train.jsonl and test.jsonl. The shared settings and their
sources are in configs/llada_8b_rl.py (`d1_config`).
"""
from configs import llada_8b_rl


def get_config(arg: str | None = None):
  return llada_8b_rl.d1_config(arg, task="gsm8k")
