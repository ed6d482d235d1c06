"""A small masked-diffusion model pretrained on a synthetic task's text, on CPU in minutes.

python -m diffusionlm.train --config=configs/quickstart.py --workdir=runs/quickstart
python -m diffusionlm.train --config=configs/quickstart.py:countdown --workdir=runs/pretrain_cd

`get_config(task)` pretrains on 4x4 Sudoku (the default) or Countdown. This file also holds
the settings that the quickstart's three stages share for every task (`sft_config`,
`rl_config`); configs/{sft,rl}_{sudoku,countdown}.py are those stages for one task, and
`python -m diffusionlm.quickstart --task=TASK` runs them in order (pretraining -> SFT ->
diffu-GRPO -> test table, see diffusionlm/quickstart.py).
"""
import dataclasses

from configs import base


@dataclasses.dataclass(frozen=True)
class TaskSizes:
  """What differs between the quickstart's tasks: the text's length and the RL sampler's."""
  seq_len: int  # Training sequence: the longest prompt + response + EOS fits.
  gen_length: int  # RL and evaluation answer length (one block), the response + EOS.
  steps: int  # Denoising steps of the RL rollouts (and the headline evaluation).
  trajectory_group: int  # Sampler passes per trajectory-estimator score: 5 scores each.


TASKS = {
    # Prompt 23 chars, response 35 (the <answer> block) + EOS.
    "sudoku": TaskSizes(seq_len=64, gen_length=40, steps=20, trajectory_group=4),
    # Prompt <= 25 chars ("Use 21 40 41 to make 102"), response <= 76 (reasoning steps and
    # the <answer> expression) + EOS; 20 steps (4 tokens a pass) keep the rollouts CPU-sized.
    "countdown": TaskSizes(seq_len=112, gen_length=80, steps=20, trajectory_group=4),
}
SFT_VARIANTS = (None, "pretrained")
RL_VARIANTS = (None, "d1", "one_step")


def _sizes(task: str | None) -> TaskSizes:
  if (task or "sudoku") not in TASKS:
    raise ValueError(f"configs/quickstart.py:{task}: expected one of {tuple(TASKS)}.")
  return TASKS[task or "sudoku"]


def get_config(arg: str | None = None):
  """Masked-diffusion pretraining on task `arg` (None = sudoku)."""
  sizes = _sizes(arg)
  c = base.get_config()
  c.objective = "mdm"
  c.data.dataset = arg or "sudoku"
  c.data.tokenizer = "char"
  c.data.seq_len = sizes.seq_len
  c.global_batch_size = 32
  c.num_train_steps = 600
  c.log_every_steps = 25
  c.eval_every_steps = 200
  c.checkpoint_every_steps = 200
  c.model.d_model = 128
  c.model.num_layers = 4
  c.model.num_heads = 4
  c.model.mlp_dim = 384
  c.optimizer.lr = 1e-3
  c.optimizer.warmup_steps = 50
  c.optimizer.weight_decay = 0.01
  return c


def sft_config(task: str, arg: str | None):
  """SFT on `task` with the pretraining run's model and data; `arg` "pretrained" fine-tunes
  a pretraining run (set init_from) at lr 3e-4, None trains from scratch at lr 1e-3."""
  if arg not in SFT_VARIANTS:
    raise ValueError(f"configs/sft_{task}.py:{arg}: expected no argument or one of "
                     f"{SFT_VARIANTS[1:]}.")
  c = get_config(task)
  c.objective = "sft"
  c.num_train_steps = 600
  c.log_every_steps = 25
  c.eval_every_steps = 200
  c.checkpoint_every_steps = 200
  c.optimizer.lr = 3e-4 if arg == "pretrained" else 1e-3
  c.optimizer.warmup_steps = 50
  c.optimizer.decay = "cosine"
  return c


def rl_config(task: str, arg: str | None):
  """diffu-GRPO on `task` from an SFT run, CPU-sized; variants in configs/rl_sudoku.py."""
  if arg not in RL_VARIANTS:
    raise ValueError(f"configs/rl_{task}.py:{arg}: expected no argument or one of "
                     f"{RL_VARIANTS[1:]}.")
  sizes = _sizes(task)
  c = get_config(task)
  c.rl = base.rl_defaults()
  c.rl.task = task
  c.rl.gen_length = sizes.gen_length
  c.rl.block_length = sizes.gen_length  # One block: blocks force a left-to-right fill.
  c.rl.steps = sizes.steps
  c.rl.temperature = 1.0
  c.rl.estimator = "trajectory"
  c.rl.trajectory_group = sizes.trajectory_group
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
    c.rl.trajectory_group = 1  # Must divide the one pass, although mean_field ignores it.
    c.num_train_steps = 120
  return c
