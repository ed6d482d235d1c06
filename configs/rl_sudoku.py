"""diffu-GRPO (d1, Zhao et al. 2025) on 4x4 Sudoku, starting from an SFT run; CPU-sized.

python -m diffusionlm.rl --config=configs/rl_sudoku.py --workdir=runs/rl_sudoku \
    --config.init_from=runs/sft_sudoku

`config.rl` starts from `base.rl_defaults()` (d1's values for LLaDA-8B, every field
documented in diffusionlm/config_defaults.py); `get_config` shrinks the rollout to what 2
CPU cores run in minutes. The model and tokenizer are taken from the init_from run (its
config.json). `num_train_steps` counts RL steps (rollouts); each makes `rl.num_iterations`
optimizer updates, and the learning-rate schedule spans all num_train_steps * num_iterations
of them.
"""
from configs import base, quickstart


def get_config(arg: str | None = None):
  c = quickstart.get_config(arg)
  c.rl = base.rl_defaults()
  # One-step decoding: every completion token is sampled at once from the fully masked
  # completion, so d1's mean-field log-prob (completion masked, prompt clean) is the exact
  # log-probability of the sampled completion and diffu-GRPO an exact policy gradient.
  # Multi-step rollouts decide at partly decoded states the estimate never sees; none of
  # the runs with them gained more than noise (docs/rl.md).
  c.rl.gen_length = 40  # The answer block is 35 characters + EOS.
  c.rl.block_length = 40  # One block.
  c.rl.steps = 1
  c.rl.temperature = 1.0
  # No prompt masking, one update per rollout: an SFT-only model has never seen a masked
  # prompt (d1's 0.15 suits LLaDA, pretrained with masks anywhere; here it diverged), and
  # with clean prompts the mu masks would all be the same view.
  c.rl.p_mask_prompt = 0.0
  c.rl.num_iterations = 1
  c.rl.num_prompts_per_step = 32
  c.rl.num_generations = 8
  c.rl.eval_every_steps = 20
  c.rl.num_eval_examples = 128
  c.num_train_steps = 120  # RL steps = optimizer updates (mu = 1).
  c.log_every_steps = 1
  c.checkpoint_every_steps = 20
  c.optimizer.lr = 1e-4
  c.optimizer.warmup_steps = 20  # Adam's first update is a sign step (docs/rl.md).
  c.optimizer.decay = "constant"
  c.optimizer.weight_decay = 0.0
  return c
