"""Per-device memory plan of LLaDA-8B fine-tuning, measured without allocating anything.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu \
      python benchmarks/memory_plan.py                       # the table of docs/launch.md
  ... python benchmarks/memory_plan.py --seq_lens=4096 --remats=full --steps=sft
  ... python benchmarks/memory_plan.py --lora_ranks=128 --remats=full   # LoRA rows

Each row compiles ahead of time (abstract inputs: `jax.ShapeDtypeStruct`s with their
NamedShardings, the state from `jax.eval_shape`; `lower().compile().memory_analysis()`) one
program at configs/llada_8b.py's shape on a mesh of --num_devices devices (fsdp over all):

  sft     the SFT train step (trainer.make_train_step) at global batch --sft_batch
  rl      one diffu-GRPO update (grpo.make_update_step, d1's mean-field estimator) on one
          micro-batch of --rl_rows rows: prompt seq_len - --gen_length, completion
          --gen_length; "+ ref" adds the frozen reference parameters the RL state also holds

--lora_ranks 0 is full fine-tuning; r > 0 plans LoRA (config.lora: rank r, d1's alpha 64,
every kernel adapted, the frozen base in --lora_base_dtype): the state is the base plus the
adapters and their Adam moments, and the RL reference is the base with the adapters off, so
"+ ref" adds nothing.

Peak = arguments + outputs - donated + temporaries, per device (diffusionlm/train/memory.py).
On CPU, attention="dot_product" compiles XLA's implementation, which materialises the scores
like "einsum": cuDNN's flash attention is a GPU kernel and its memory is not measured here.
"""
import itertools
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from configs import llada_8b
from diffusionlm.rl import estimators, grpo
from diffusionlm.train import memory, sharding, train_state, trainer

_SEQ_LENS = flags.DEFINE_list("seq_lens", ["512", "1024", "4096"], "Sequence lengths.")
_REMATS = flags.DEFINE_list("remats", ["full", "dots"], "config.model.remat values.")
_ATTENTIONS = flags.DEFINE_list("attentions", ["einsum"], "config.model.attention values.")
_STEPS = flags.DEFINE_list("steps", ["sft", "rl"], "Programs: sft, rl.")
_LORA_RANKS = flags.DEFINE_list("lora_ranks", ["0"], "config.lora.rank values (0 = full "
                                "fine-tuning).")
_LORA_BASE_DTYPE = flags.DEFINE_enum("lora_base_dtype", "bfloat16", ["float32", "bfloat16"],
                                     "config.lora.base_dtype of the LoRA rows.")
_NUM_DEVICES = flags.DEFINE_integer("num_devices", 8, "Devices of the mesh (fsdp = all).")
_SFT_BATCH = flags.DEFINE_integer("sft_batch", 64, "SFT global batch (configs/llada_8b.py).")
_RL_ROWS = flags.DEFINE_integer("rl_rows", 48, "Rows of one RL micro-batch (d1: 16 prompts x "
                                "6 generations / 2 micro-batches).")
_GEN_LENGTH = flags.DEFINE_integer("gen_length", 256, "RL completion length (d1's).")
_NUM_LAYERS = flags.DEFINE_integer("num_layers", 32, "Override the depth (quick checks).")
_D_MODEL = flags.DEFINE_integer("d_model", 4096, "Override the width (quick checks).")

GIB = 2**30


def run_config(seq_len: int, remat: str, attention: str, lora_rank: int):
  """configs/llada_8b.py with the row's settings; layers scanned (compile time)."""
  c = llada_8b.get_config()
  c.lora.update(rank=lora_rank, alpha=64.0, base_dtype=_LORA_BASE_DTYPE.value)
  c.model.update(remat=remat, attention=attention, scan_layers=True,
                 num_layers=_NUM_LAYERS.value, d_model=_D_MODEL.value,
                 mlp_dim=3 * _D_MODEL.value, num_heads=_D_MODEL.value // 128)
  c.data.seq_len = seq_len
  c.global_batch_size = _SFT_BATCH.value
  return c


def abstract_setup(config, devices):
  """(setup, abstract train state): nothing allocated. The one place that builds the state,
  so other trainable trees (e.g. LoRA adapters) can be planned by changing only this."""
  setup = train_state.build(config, devices, vocab_size=llada_8b.VOCAB_SIZE)
  return setup, setup.abstract_state


def sft_program(setup, state, seq_len: int):
  B = _SFT_BATCH.value
  batch_sharding = sharding.batch_sharding(setup.mesh)
  batch = {"tokens": jax.ShapeDtypeStruct((B, seq_len), jnp.int32, sharding=batch_sharding),
           "valid": jax.ShapeDtypeStruct((B, seq_len), bool, sharding=batch_sharding),
           "prompt_len": jax.ShapeDtypeStruct((B,), jnp.int32, sharding=batch_sharding),
           "epoch": jax.ShapeDtypeStruct((B,), jnp.int32, sharding=batch_sharding)}
  step = jax.jit(trainer.make_train_step(setup),
                 in_shardings=(setup.state_sharding, batch_sharding),
                 out_shardings=(setup.state_sharding, sharding.replicated(setup.mesh)),
                 donate_argnums=(0,))
  return step.lower(state, batch)


def rl_program(setup, state, seq_len: int):
  b, C = _RL_ROWS.value, _GEN_LENGTH.value
  P = seq_len - C
  rows = grpo.micro_batch_sharding(setup.mesh)
  spec = lambda shape, dtype: jax.ShapeDtypeStruct((1,) + shape, dtype, sharding=rows)
  batch = {"prompt": spec((b, P), jnp.int32), "prompt_valid": spec((b, P), bool),
           "completion": spec((b, C), jnp.int32), "completion_mask": spec((b, C), bool),
           "advantages": spec((b,), jnp.float32), "old_logps": spec((b, C), jnp.float32),
           "ref_logps": spec((b, C), jnp.float32)}
  update = grpo.make_update_step(setup, setup.apply_fn, beta=0.04, clip_eps=0.5,
                                 p_mask_prompt=0.15, eos_id=-1,
                                 estimator=estimators.mean_field)
  key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype)
  return update.lower(state, batch, key, jax.ShapeDtypeStruct((), jnp.int32))


def reference_bytes_per_device(state) -> int:
  """Bytes of one device's shard of the RL reference policy the state does not already hold:
  a copy of the parameters, or nothing with LoRA (the reference is the frozen base)."""
  if isinstance(state, train_state.LoraTrainState):
    return 0
  total = 0
  for a in jax.tree.leaves(state.params):
    shard = a.sharding.shard_shape(a.shape)
    total += int(np.prod(shard)) * a.dtype.itemsize
  return total


def main(argv):
  del argv
  devices = jax.devices()[:_NUM_DEVICES.value]
  print(f"{len(devices)} x {devices[0].device_kind} devices; d_model {_D_MODEL.value}, "
        f"{_NUM_LAYERS.value} layers; SFT batch {_SFT_BATCH.value}, RL micro-batch "
        f"{_RL_ROWS.value} rows x (prompt + {_GEN_LENGTH.value})")
  print("| program | seq | remat | attention | LoRA rank | arguments | temporaries "
        "| peak/device (GiB) | + ref (GiB) | compile s |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  started = time.perf_counter()
  for step in _STEPS.value:
    for seq_len in map(int, _SEQ_LENS.value):
      for remat in _REMATS.value:
        for attention, lora_rank in itertools.product(_ATTENTIONS.value,
                                                      map(int, _LORA_RANKS.value)):
          config = run_config(seq_len, remat, attention, lora_rank)
          setup, state = abstract_setup(config, devices)
          t0 = time.perf_counter()
          lowered = (sft_program if step == "sft" else rl_program)(setup, state, seq_len)
          mem = memory.StepMemory.of(lowered.compile())
          seconds = time.perf_counter() - t0
          ref = (f"{(mem.peak + reference_bytes_per_device(state)) / GIB:.1f}"
                 if step == "rl" else "-")
          print(f"| {step} | {seq_len} | {remat} | {attention} | {lora_rank or '-'} | "
                f"{mem.arguments / GIB:.1f} | {mem.temporaries / GIB:.1f} | "
                f"{mem.peak / GIB:.1f} | {ref} | {seconds:.0f} |", flush=True)
  print(f"total wall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
  app.run(main)
