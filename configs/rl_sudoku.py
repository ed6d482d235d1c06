"""diffu-GRPO (d1, Zhao et al. 2025) on 4x4 Sudoku, starting from an SFT run; CPU-sized.

python -m diffusionlm.rl --config=configs/rl_sudoku.py --workdir=runs/rl_sudoku \
    --config.init_from=runs/sft_sudoku

`rl_defaults()` documents every field of `config.rl` with d1's value for LLaDA-8B where it
has one; `get_config` shrinks the rollout to what 2 CPU cores run in minutes. The model and
tokenizer are taken from the init_from run (its config.json). `num_train_steps` counts RL
steps (rollouts); each makes `rl.num_iterations` optimizer updates, and the learning-rate
schedule spans all num_train_steps * num_iterations of them.
"""
import ml_collections

from configs import quickstart


def rl_defaults() -> ml_collections.ConfigDict:
  """The `config.rl` section: diffu-GRPO and rollout settings."""
  rl = ml_collections.ConfigDict()
  rl.task = "sudoku"  # Reward functions (diffusionlm/rl/rewards.py); must match data.dataset.
  rl.num_prompts_per_step = 8  # Prompts per rollout; each gets num_generations samples.
  rl.num_generations = 6  # G, the group size (d1: 6).
  rl.num_iterations = 12  # mu, optimizer updates per rollout, each under its own prompt
  #                         mask (d1: 12 for GSM8K / MATH, 8 for Countdown / Sudoku).
  rl.num_micro_batches = 1  # Gradient accumulation: the rollout's rows in M chunks.
  rl.p_mask_prompt = 0.15  # Probability of masking each prompt token (d1: 0.15).
  rl.beta = 0.04  # Weight of the k3 KL to the reference (initial) policy (d1: 0.04).
  rl.clip_eps = 0.5  # PPO clip range of the ratio (d1: 0.5).
  rl.scale_rewards = True  # Advantages divided by the group's reward std (+1e-4), as GRPO.
  # Rollout sampler (diffusionlm/diffusion/sampling.py:generate); d1: 256 / 32 / 128.
  rl.gen_length = 256
  rl.block_length = 32
  rl.steps = 128
  rl.temperature = 0.9
  rl.remasking = "low_confidence"
  rl.decoding = "plain"
  rl.threshold = 0.9  # Only for decoding="threshold".
  rl.cache = "none"
  # Task evaluation during the run (diffusionlm/evaluate.py), greedy by default.
  rl.eval_every_steps = 0  # 0 = off; else also once before the first step.
  rl.eval_split = "validation"
  rl.num_eval_examples = 200
  rl.eval_batch_size = 64
  rl.eval_temperature = 0.0
  return rl


def get_config(arg: str | None = None):
  c = quickstart.get_config(arg)
  c.objective = "sft"  # A masked-diffusion model (the RL loss replaces the objective).
  c.rl = rl_defaults()
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
  c.global_batch_size = c.rl.num_prompts_per_step * c.rl.num_generations
  c.num_train_steps = 120  # RL steps = optimizer updates (mu = 1).
  c.log_every_steps = 1
  c.checkpoint_every_steps = 20
  c.optimizer.lr = 1e-4
  c.optimizer.warmup_steps = 20  # Adam's first update is a sign step (docs/rl.md).
  c.optimizer.decay = "constant"
  c.optimizer.weight_decay = 0.0
  return c
