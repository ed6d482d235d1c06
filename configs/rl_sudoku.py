"""diffu-GRPO (d1, Zhao et al. 2025) on 4x4 Sudoku, starting from an SFT run; CPU-sized.

python -m diffusionlm.rl --config=configs/rl_sudoku.py --workdir=runs/rl_sudoku \
    --config.init_from=runs/sft_sudoku

`config.rl` starts from `base.rl_defaults()` (d1's values for LLaDA-8B, every field
documented in diffusionlm/config_defaults.py); `get_config` shrinks the rollout to what 2
CPU cores run in minutes (configs/quickstart.py:rl_config, shared with
configs/rl_countdown.py). The model and tokenizer are taken from the init_from run (its
config.json). `num_train_steps` counts RL steps (rollouts); each makes `rl.num_iterations`
optimizer updates, and the learning-rate schedule spans all of them.

Variants (`--config=configs/rl_sudoku.py:VARIANT`), all with the same multi-step rollouts
(gen_length 40 in one block, 20 denoising steps, low-confidence remasking, temperature 1),
so that RL trains the decoder the models are evaluated with:
- (none)    the quickstart's RL row: the `trajectory` estimator (each answer token scored at
            the sampler's state when it was committed, passes grouped by 4) with clean
            prompts, where it is the exact log-probability of the rollout's choices;
- `d1`      diffu-GRPO as d1 publishes it: the one-step mean-field estimate, prompts masked
            at 0.15, mu = 4 updates per rollout, each under its own prompt mask;
- `one_step` the earlier miniature: one-step rollouts, where d1's estimate is exact
            (docs/rl.md: +4.7 to +11.4 points at one-step decoding, nothing at 20 steps).
"""
from configs import quickstart

VARIANTS = quickstart.RL_VARIANTS


def get_config(arg: str | None = None):
  return quickstart.rl_config("sudoku", arg)
