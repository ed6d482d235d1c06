"""The run config: every field the trainer and the RL loop read, with its meaning and default.

`get_config()` is the config every run starts from (configs/base.py re-exports it);
`rl_defaults()` is the `config.rl` section that RL configs add. Experiment configs in
configs/ override what they need; any field can be overridden on the command line, e.g.
`--config.optimizer.lr=3e-4 --config.model.num_layers=4`.

This module imports nothing of the package: every layer may read the schema.
"""
import os

import ml_collections
from ml_collections import config_dict

OBJECTIVES = ("mdm", "ar", "sft")  # The training losses (diffusionlm/train/objectives.py).
# The config.model fields that say how the model computes, not what: the only ones that may
# change when a run resumes, or when an RL run takes its model from the init_from run.
# attention and scan_layers are among them because checkpoints convert between the unrolled and
# the scanned layout on load (diffusionlm/models/layer_layout.py); dropout because it acts only
# in the training step, never at evaluation or sampling.
MODEL_RUN_TIME_FIELDS = ("dtype", "remat", "logits_chunk_size", "attention", "scan_layers",
                         "dropout")
CONVERTED_TOKENIZER_DIR = "tokenizer"  # Inside a run directory written by train/convert.py.


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  c = ml_collections.ConfigDict()

  # ---- Run (training and RL) ---------------------------------------------------
  c.seed = 0  # Seeds parameter init, the data order and the diffusion noise.
  c.num_train_steps = 1000  # Training steps; RL steps (rollouts) in an RL run.
  c.log_every_steps = 50  # Train metrics -> metrics.jsonl, TensorBoard, stdout.
  c.checkpoint_every_steps = 500  # Also saved at the end and on SIGTERM.
  c.keep_checkpoints = 3  # The newest K checkpoints are kept.
  c.init_from = ""  # Another run's workdir: start from its latest parameters.
  # Per-device memory the compiled train step may use, checked before the first step: 0 =
  # ask the backend (host memory / local devices on CPU); > 0 overrides it; -1 = no check.
  c.device_memory_gib = 0.0

  # ---- Training only (the RL loop reads config.rl instead) ----------------------
  c.objective = "mdm"  # "mdm" (masked diffusion), "ar" (causal baseline), "sft".
  c.global_batch_size = 32  # Sequences per step, summed over all processes.
  c.eval_every_steps = 500  # Validation loss (bits per token); 0 disables.
  c.num_eval_batches = 4  # Validation batches of global_batch_size sequences.

  # ---- Model (diffusionlm/models/transformer.py) ---------------------------------
  c.model = ml_collections.ConfigDict()
  c.model.vocab_size = 0  # 0 = take it from the tokenizer; else must match it.
  # True = autoregressive (causal attention), False = bidirectional (masked diffusion).
  # Unset = from the objective (True for "ar"); config.json always holds the value.
  c.model.causal = config_dict.placeholder(bool)
  c.model.d_model = 128
  c.model.num_layers = 4
  c.model.num_heads = 4
  c.model.num_kv_heads = 0  # 0 = num_heads (no grouped-query attention).
  c.model.mlp_dim = 512  # SwiGLU hidden width.
  c.model.rope_theta = 10000.0
  c.model.norm_eps = 1e-5
  c.model.tie_embeddings = False
  c.model.dtype = "float32"  # Compute dtype, e.g. "bfloat16" on accelerators.
  c.model.param_dtype = "float32"
  c.model.remat = "none"  # Activation checkpointing per block: "none" | "full" | "dots".
  # Losses and RL log-probs over sequence chunks of this many positions, each chunk's logits
  # recomputed in the backward pass, so the batch x seq_len x vocab logits never exist at
  # once (StreamBP); for long sequences and large vocabularies. 0 = all positions at once.
  c.model.logits_chunk_size = 0
  # Attention kernel: "einsum" (reference: the batch x heads x L x L float32 scores are
  # materialised), "dot_product" (jax.nn.dot_product_attention: cuDNN flash attention on GPU
  # where its constraints hold, else XLA's), "auto" = dot_product on GPU, einsum elsewhere.
  c.model.attention = "auto"
  # The blocks as one nn.scan (parameters stacked along a leading layers axis): compile time
  # independent of depth, and the remat policy keeps its savings (unrolled, XLA's CPU
  # schedule kept 197 of 211 MiB under remat "full", scanned 67 of 223: docs/benchmarks.md).
  # Checkpoints of either layout load into both. Use it for deep models.
  c.model.scan_layers = False
  # Dropout on the attention probabilities and on each residual branch (attention, MLP
  # output) in the training step only; evaluation and the samplers never drop. 0 = off.
  c.model.dropout = 0.0

  # ---- LoRA (diffusionlm/models/lora.py, docs/lora.md) --------------------------------
  # Low-rank adapters W + alpha / rank * A @ B on the kernels named in `targets`; only A and B
  # train (and hold optimizer state). The frozen base comes from init_from. rank 0 = off.
  c.lora = ml_collections.ConfigDict()
  c.lora.rank = 0
  c.lora.alpha = 16.0
  # Kernels of every block: attention "query", "key", "value", "out"; SwiGLU "gate", "up",
  # "down" (d1 adapts all seven).
  c.lora.targets = ("query", "key", "value", "out", "gate", "up", "down")
  c.lora.base_dtype = "float32"  # "float32" | "bfloat16": how the frozen base is stored.

  # ---- Diffusion objective (diffusionlm/diffusion/) ------------------------------
  c.diffusion = ml_collections.ConfigDict()
  c.diffusion.schedule = "linear"  # "linear" | "cosine" | "polynomial".
  c.diffusion.schedule_power = 1.0  # Exponent of the polynomial schedule.
  c.diffusion.eps = 1e-3  # Mask probability floor: p(t) = (1 - eps) * t + eps.
  c.diffusion.antithetic = True  # Stratified t over the global batch.
  c.diffusion.random_length_prob = 0.01  # LLaDA: cut this share of sequences short.
  c.diffusion.eval_num_mc = 8  # Monte-Carlo draws per sequence for validation.

  # ---- Data (diffusionlm/data/) ----------------------------------------------------
  c.data = ml_collections.ConfigDict()
  c.data.dataset = "sudoku"  # sudoku | countdown | gsm8k | text_files | tfds:<name>.
  c.data.data_dir = ""  # Where TFDS prepares datasets; "" = ~/tensorflow_datasets.
  c.data.source_path = ""  # text_files: glob(s), comma separated; gsm8k: its folder.
  c.data.text_key = "text"  # Feature holding the text, for tfds:<name> datasets.
  c.data.tokenizer = "char"  # "char" | "sentencepiece:<.model>" | "hf:<tokenizer.json>".
  c.data.seq_len = 128  # Tokens per training sequence.
  c.data.unique_tokens = 0  # Data-constrained mode: repeat the first U tokens; 0 = all.
  c.data.noise_rate = 0.0  # Share of training sequences replaced by random tokens.
  # `ar` only: each training input token becomes the mask token with this probability; the
  # next-token targets stay clean (input masking, Gao et al. 2025). 0 = off.
  c.data.input_mask_rate = 0.0
  c.data.num_examples = 0  # Synthetic tasks: training examples to generate; 0 = default.
  c.data.task_seed = 0  # Seed that generates the synthetic tasks (independent of `seed`).
  c.data.worker_count = 0  # grain worker processes; 0 = read in the main process.

  # ---- Optimizer (optax) -----------------------------------------------------------
  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adamw"  # "adamw" | "sgd" (plain SGD; b1, b2 unused).
  c.optimizer.lr = 3e-4  # Peak learning rate.
  c.optimizer.warmup_steps = 100
  c.optimizer.decay = "cosine"  # "cosine" | "linear" | "constant" after warmup.
  c.optimizer.min_lr_ratio = 0.1  # Final lr = min_lr_ratio * lr.
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.95
  c.optimizer.weight_decay = 0.1
  c.optimizer.grad_clip = 1.0  # Global-norm clip; 0 disables.

  # ---- Devices (diffusionlm/train/sharding.py) -------------------------------------
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # Data-parallel axis; -1 = all devices the other axes leave.
  c.mesh.fsdp = 1  # Parameters and optimizer state sharded along "embed".
  c.mesh.tensor = 1  # Heads / MLP / vocab sharded (Megatron-style).
  return c


def rl_defaults() -> ml_collections.ConfigDict:
  """The `config.rl` section of an RL run (diffu-GRPO, d1: Zhao et al. 2025), with d1's
  value for LLaDA-8B where it has one.

  An RL run takes its model and tokenizer from the `init_from` run (its config.json);
  `num_train_steps` counts RL steps (rollouts), each making `rl.num_iterations` optimizer
  updates, and the learning-rate schedule spans all num_train_steps * num_iterations.
  """
  rl = ml_collections.ConfigDict()
  rl.task = "sudoku"  # A task of diffusionlm/tasks/ (prompt, reward); must match data.dataset.
  rl.num_prompts_per_step = 8  # Prompts per rollout; each gets num_generations samples.
  rl.num_generations = 6  # G, the group size (d1: 6).
  rl.num_iterations = 12  # mu, optimizer updates per rollout, each under its own prompt
  #                         mask (d1: 12 for GSM8K / MATH, 8 for Countdown / Sudoku).
  rl.num_micro_batches = 1  # Gradient accumulation: the rollout's rows in M chunks.
  rl.p_mask_prompt = 0.15  # Probability of masking each prompt token (d1: 0.15).
  rl.beta = 0.04  # Weight of the k3 KL to the reference (initial) policy (d1: 0.04).
  rl.clip_eps = 0.5  # PPO clip range of the ratio (d1: 0.5).
  rl.scale_rewards = True  # Advantages divided by the group's reward std (+1e-4), as GRPO.
  # The log pi(o | q) behind the ratio and the KL (diffusionlm/rl/estimators.py):
  # "mean_field" (d1 eq. 4, one pass, completion fully masked), "trajectory" (each token at
  # the sampler's state when it was committed; TraceRL), "elbo" (complementary-pair Monte
  # Carlo ELBO, sequence-level ratio; VRPO / ESPO), "spg" (that ELBO for rows with positive
  # advantage, SPG's upper bound mixed with it for the others).
  rl.estimator = "mean_field"
  rl.trajectory_group = 1  # trajectory: s neighbouring sampler passes share one forward
  #                          pass (must divide the passes); 1 = exact.
  rl.elbo_samples = 2  # elbo, spg: masks per completion, an even number (complementary pairs).
  rl.spg_beta = 1.5  # spg: Renyi order of the upper bound, >= 1 (SPG: 1.0-2.0).
  rl.spg_mix = 0.5  # spg: weight of the upper bound for rows with advantage <= 0 (1 = EUBO).
  # Rollout sampler (diffusionlm/diffusion/sampling.py:generate); d1: 256 / 32 / 128.
  rl.gen_length = 256
  rl.block_length = 32
  rl.steps = 128
  rl.temperature = 0.9
  rl.remasking = "low_confidence"
  rl.decoding = "plain"
  rl.threshold = 0.9  # Only for decoding="threshold".
  rl.cache = "none"
  # Task evaluation during the run (diffusionlm/generation.py), greedy by default.
  rl.eval_every_steps = 0  # 0 = off; else also once before the first step.
  rl.eval_split = "validation"
  rl.num_eval_examples = 200
  rl.eval_batch_size = 64
  rl.eval_temperature = 0.0
  return rl


def is_causal(config: ml_collections.ConfigDict) -> bool:
  """config.model.causal, or, where it is unset or absent (config.json written before the
  field existed), the objective's: True for "ar"."""
  causal = config.model.get("causal")
  return config.get("objective") == "ar" if causal is None else bool(causal)


def converted_tokenizer(run_dir: str, vocab_size: int) -> str:
  """The `config.data.tokenizer` of a run directory written by the checkpoint importer
  (train/convert.py): its copied tokenizer.json, sized to the model's vocabulary (the
  checkpoint's vocabulary may have more ids than the tokenizer)."""
  path = os.path.join(os.path.abspath(run_dir), CONVERTED_TOKENIZER_DIR, "tokenizer.json")
  return f"hf:{path}?vocab_size={vocab_size}"
