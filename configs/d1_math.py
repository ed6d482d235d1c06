"""d1 (diffu-GRPO, Zhao et al. 2025) on MATH with LLaDA-8B-Instruct: G = 6, mu = 12.

Needs accelerators (see docs/launch.md) and LLaDA-8B-Instruct imported once:

  python -m diffusionlm.convert --hf_dir=LLaDA-8B-Instruct --out=runs/llada_8b_instruct \
      --config=configs/llada_8b.py
  python -m diffusionlm.rl --config=configs/d1_math.py:runs/llada_8b_instruct \
      --workdir=runs/d1_math --config.data.source_path=data/math
  python -m diffusionlm.evaluate --workdir=runs/d1_math --task=math --gen_length=256 \
      --block_length=32 --steps=128

data/math holds test.jsonl (MATH500: one {"problem", "solution", "answer"} object a line)
and train.jsonl (the MATH training problems, same layout; a missing "answer" is read from
the solution's last \\boxed{}), see diffusionlm/data/builders/math_problems.py. Rewards as
d1's: the last \\boxed{} answer's correctness (2.0) and a \\boxed{} inside <answer> (0.5).
The shared settings and their sources are in configs/llada_8b_rl.py (`d1_config`).
"""
from configs import llada_8b_rl


def get_config(arg: str | None = None):
  return llada_8b_rl.d1_config(arg, task="math")
