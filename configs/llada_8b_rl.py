"""d1 on LLaDA-8B-Instruct: diffu-GRPO (Zhao et al. 2025) at full scale; GSM8K by default.

`d1_config(arg, task=...)` holds the settings that configs/d1_gsm8k.py, d1_math.py,
d1_countdown.py and d1_sudoku.py share; `get_config` here is d1_gsm8k's.

  python -m diffusionlm.convert --hf_dir=LLaDA-8B-Instruct --out=runs/llada_8b_instruct \
      --config=configs/llada_8b.py
  python -m diffusionlm.rl --config=configs/llada_8b_rl.py:runs/llada_8b_instruct \
      --workdir=runs/d1_gsm8k --config.data.source_path=data/gsm8k

The argument is the converted (or an SFT) run directory: the RL run starts from its
parameters, which also stay frozen as the reference policy, and takes its model and
tokenizer from its config.json. d1's settings (base.rl_defaults()): G = 6
samples per prompt, mu = 12 updates per rollout for GSM8K and MATH, 8 for Countdown and
Sudoku, beta = 0.04, clip 0.5, prompt masking 0.15, generation 256 tokens in blocks of 32
with 128 steps, learning rate 3e-6 held constant; Adam b2 = 0.99 and gradient clipping
0.2 as in d1's released training config. d1 trains LoRA adapters (rank 128, alpha 64) on
a 4-bit model; here every parameter is trained unless --config.lora.rank=128 (alpha 64 is
set; --config.lora.base_dtype=bfloat16 stores the frozen base in bf16; docs/lora.md).
Systems as configs/llada_8b.py (parameters, optimizer state and the reference sharded over
all devices). A rollout's num_prompts_per_step * num_generations / num_micro_batches rows
must be a multiple of the device count: 96 / 2 = 48 rows fit 8, 16 or 48 devices; on 32 use
--config.rl.num_prompts_per_step=32.

Memory (docs/launch.md "LLaDA-8B memory plan"): with prompts up to 768 tokens one update
needs 30.5 GiB per device on 8 devices including the reference policy (remat "full", layers
scanned), which fits 8 x 80 GB and 8 x 141 GB GPUs; --config.model.remat=dots (63.5 GiB)
recomputes less and still fits both. On a TPU v5p-8 host (4 chips) pass
--config.rl.num_micro_batches=4 (53.2 GiB per chip).
"""
from configs import base, llada_8b

# mu, optimizer updates per rollout: d1's values per task.
D1_NUM_ITERATIONS = {"gsm8k": 12, "math": 12, "countdown": 8, "sudoku": 8}


def d1_config(arg: str | None = None, *, task: str):
  """d1's diffu-GRPO settings for `task` on LLaDA-8B; `arg` is the converted run folder."""
  if task not in D1_NUM_ITERATIONS:
    raise ValueError(f"d1 config: unknown task {task!r}; expected one of "
                     f"{sorted(D1_NUM_ITERATIONS)}")
  c = llada_8b.get_config(arg)
  c.data.dataset = task  # gsm8k and math need --config.data.source_path=FOLDER.
  c.rl = base.rl_defaults()  # d1's G, beta, clip, p_mask_prompt and sampler.
  c.rl.task = task
  c.rl.num_iterations = D1_NUM_ITERATIONS[task]
  c.rl.num_prompts_per_step = 16
  c.rl.num_micro_batches = 2
  c.model.remat = "full"  # Fits 8 x 80 GB, 8 x 141 GB and a v5p-8 (see the docstring).
  # d1's one-step mean-field log-probs (d1 eq. 4). The estimators beyond it: "trajectory"
  # (with rl.trajectory_group), "elbo" (with rl.elbo_samples) or "spg" (with rl.elbo_samples,
  # rl.spg_beta, rl.spg_mix); docs/rl.md "Which estimator".
  c.rl.estimator = "mean_field"
  c.rl.eval_every_steps = 100
  c.rl.eval_split = "test"
  c.rl.num_eval_examples = 256
  c.rl.eval_batch_size = 64
  c.num_train_steps = 2000  # RL steps (rollouts); each makes rl.num_iterations updates.
  c.log_every_steps = 1
  c.checkpoint_every_steps = 50
  c.optimizer.lr = 3e-6
  c.optimizer.warmup_steps = 0
  c.optimizer.decay = "constant"
  c.optimizer.b2 = 0.99
  c.optimizer.grad_clip = 0.2
  c.lora.alpha = 64.0  # d1's LoRA scale; LoRA is on with --config.lora.rank=128 (d1's rank).
  return c


def get_config(arg: str | None = None):
  return d1_config(arg, task="gsm8k")
