"""diffu-GRPO (d1, Zhao et al. 2025) on 4x4 Sudoku, starting from an SFT run; CPU-sized.

python -m diffusionlm.rl --config=configs/rl_sudoku.py --workdir=runs/rl_sudoku \
    --config.init_from=runs/sft_sudoku

`config.rl` starts from `base.rl_defaults()` (d1's values for LLaDA-8B, every field
documented in diffusionlm/config_defaults.py); `get_config` shrinks the rollout to what 2
CPU cores run in minutes. The model and tokenizer are taken from the init_from run (its
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
from configs import base, quickstart

VARIANTS = (None, "d1", "one_step")


def get_config(arg: str | None = None):
  if arg not in VARIANTS:
    raise ValueError(f"configs/rl_sudoku.py:{arg}: expected no argument or one of "
                     f"{VARIANTS[1:]}.")
  c = quickstart.get_config()
  c.rl = base.rl_defaults()
  c.rl.gen_length = 40  # The answer block is 35 characters + EOS.
  c.rl.block_length = 40  # One block: blocks force a left-to-right fill (docs/rl.md).
  c.rl.steps = 20
  c.rl.temperature = 1.0
  c.rl.estimator = "trajectory"
  c.rl.trajectory_group = 4  # 5 forward passes per score instead of 20.
  c.rl.p_mask_prompt = 0.0  # The sampler saw the clean prompt.
  c.rl.num_iterations = 1
  c.rl.num_prompts_per_step = 32
  c.rl.num_generations = 8
  c.rl.eval_every_steps = 20
  c.rl.num_eval_examples = 128
  c.num_train_steps = 40  # RL steps (rollouts).
  c.log_every_steps = 1
  c.checkpoint_every_steps = 20
  c.optimizer.lr = 1e-4
  c.optimizer.warmup_steps = 20  # Adam's first update is a sign step (docs/rl.md).
  c.optimizer.decay = "constant"
  c.optimizer.weight_decay = 0.0
  if arg == "d1":
    c.rl.estimator = "mean_field"
    c.rl.p_mask_prompt = 0.15
    c.rl.num_iterations = 4
  elif arg == "one_step":
    c.rl.steps = 1
    c.rl.estimator = "mean_field"
    c.num_train_steps = 120
  return c
