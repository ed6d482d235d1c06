"""LLaDA-8B (Nie et al. 2025, Table 5): fine-tune GSAI-ML/LLaDA-8B-Base or -Instruct.

Import the Hugging Face weights once, then train from them (SFT on GSM8K here; any
objective but "ar" works, e.g. --config.objective=mdm with a text dataset):

  python -m diffusionlm.convert --hf_dir=LLaDA-8B-Instruct --out=runs/llada_8b_instruct \
      --config=configs/llada_8b.py
  python -m diffusionlm.train --config=configs/llada_8b.py:runs/llada_8b_instruct \
      --workdir=runs/llada_8b_sft --config.data.source_path=data/gsm8k

The argument is the converted run directory: parameters (init_from) and tokenizer come from
it. Shape, as LLaDA's config.json: vocabulary 126464 with the mask token 126336 inside it
(our mask is the extra id 126464, whose embedding the converter copies from row 126336; see
diffusionlm/train/convert.py), 32 layers, d_model 4096, 32 heads without grouped-query
attention, SwiGLU width 12288, RoPE theta 500000, RMSNorm eps 1e-5, untied output head;
8.02B parameters.

Systems: bfloat16 compute with float32 parameters (bfloat16 parameters would round away Adam
updates at learning rates near 1e-5), every block rematerialised, the LM-head loss streamed
over sequence chunks (126464-way logits), and parameters and optimizer state sharded over all
devices (mesh fsdp = -1): 16 bytes per parameter, 128 GB in all, 16 GB per device on one
8-GPU node. global_batch_size must be a multiple of the device count. The 32 blocks are one
nn.scan (compile time independent of depth); attention "auto" is cuDNN flash attention on GPU.

Memory (docs/launch.md "LLaDA-8B memory plan", benchmarks/memory_plan.py): this config's SFT
step needs 30.8 GiB per device on 8 devices at seq_len 1024 (28.4 at 512); at seq_len 4096
the einsum attention needs 95.0 GiB at this batch (8 x 141 GB only), so lower
global_batch_size there on 80 GB GPUs.
"""
from configs import base
from diffusionlm import config_defaults

VOCAB_SIZE = 126464  # LLaDA's; its mask token 126336 is one of these ids.


def get_config(arg: str | None = None):
  c = base.get_config()
  c.objective = "sft"
  c.data.dataset = "gsm8k"  # Needs --config.data.source_path=DIR with train.jsonl / test.jsonl.
  c.data.seq_len = 1024
  c.global_batch_size = 64
  c.num_train_steps = 1000
  c.log_every_steps = 10
  c.eval_every_steps = 200
  c.num_eval_batches = 4
  c.checkpoint_every_steps = 200
  c.keep_checkpoints = 2

  m = c.model
  m.vocab_size = VOCAB_SIZE
  m.d_model = 4096
  m.num_layers = 32
  m.num_heads = 32
  m.num_kv_heads = 0  # = num_heads.
  m.mlp_dim = 12288
  m.rope_theta = 500000.0
  m.norm_eps = 1e-5
  m.tie_embeddings = False
  m.dtype = "bfloat16"
  m.param_dtype = "float32"
  m.remat = "full"
  m.logits_chunk_size = 512
  m.scan_layers = True
  m.attention = "auto"

  c.optimizer.lr = 1e-5
  c.optimizer.warmup_steps = 50
  c.optimizer.decay = "cosine"
  c.optimizer.weight_decay = 0.1

  c.mesh.data = 1
  c.mesh.fsdp = -1
  c.mesh.tensor = 1

  if arg:  # The converted run directory.
    c.init_from = arg
    c.data.tokenizer = config_defaults.converted_tokenizer(arg, VOCAB_SIZE)
  return c
