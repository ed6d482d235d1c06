"""Base config: every field the trainer reads, with its meaning and default.

Experiment configs start from `get_config()` here and override what they need.
Any field can be overridden on the command line, e.g.
`--config.optimizer.lr=3e-4 --config.model.num_layers=4`.
"""
import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  c = ml_collections.ConfigDict()

  # ---- Run -------------------------------------------------------------------
  c.seed = 0  # Seeds parameter init, the data order and the diffusion noise.
  c.objective = "mdm"  # "mdm" (masked diffusion), "ar" (causal baseline), "sft".
  c.global_batch_size = 32  # Sequences per step, summed over all processes.
  c.num_train_steps = 1000
  c.log_every_steps = 50  # Train metrics -> metrics.jsonl, TensorBoard, stdout.
  c.eval_every_steps = 500  # Validation loss (bits per token); 0 disables.
  c.num_eval_batches = 4  # Validation batches of global_batch_size sequences.
  c.checkpoint_every_steps = 500  # Also saved at the end and on SIGTERM.
  c.keep_checkpoints = 3  # The newest K checkpoints are kept.
  c.init_from = ""  # Another run's workdir: start from its latest parameters.

  # ---- Model (diffusionlm/models/transformer.py) ---------------------------------
  c.model = ml_collections.ConfigDict()
  c.model.vocab_size = 0  # 0 = take it from the tokenizer; else must match it.
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
