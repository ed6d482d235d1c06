"""diffu-GRPO (d1, Zhao et al. 2025) on Countdown (3 numbers) from an SFT run; CPU-sized.

python -m diffusionlm.rl --config=configs/rl_countdown.py --workdir=runs/rl_countdown \
    --config.init_from=runs/sft_countdown

The settings and variants (none: the `trajectory` estimator; `d1`; `one_step`) are
configs/rl_sudoku.py's (configs/quickstart.py:rl_config), with Countdown's rollouts: 80
tokens in one block (the response is at most 76 characters + EOS) decoded in 20 steps, 4
tokens a pass (Sudoku's unmask 2), and trajectory scores grouping 4 passes. The reward is 1
for a correct expression, 0.1 for a wrong one (diffusionlm/tasks/countdown.py).
"""
from configs import quickstart

VARIANTS = quickstart.RL_VARIANTS


def get_config(arg: str | None = None):
  return quickstart.rl_config("countdown", arg)
