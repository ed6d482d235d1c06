"""LoRA against full fine-tuning: trainable parameters, state bytes, SFT step time and memory.

  python benchmarks/lora.py                 # quickstart model timed; LLaDA-8B shapes only
  python benchmarks/lora.py --steps=20

Sizes come from the abstract train state (`train_state.build`, jax.eval_shape: nothing is
allocated), so the LLaDA-8B rows need no accelerator. The step rows compile and time the
SFT train step of configs/quickstart.py's model, full and LoRA, in the same process
(alternating, so that machine load affects both alike), with the compiled step's memory
(compiled.memory_analysis()).
"""
import time

from absl import app
from absl import flags
import jax
import numpy as np

from configs import llada_8b, quickstart
from diffusionlm.train import sharding, train_state, trainer

_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per variant (after one warm-up step).")
_QUICKSTART_LORA = dict(rank=8, alpha=16.0)
_LLADA_LORA = dict(rank=128, alpha=64.0)  # d1's.


def _config(get_config, lora=None, base_dtype="float32"):
  c = get_config()
  c.objective = "sft"
  c.mesh.update(data=1, fsdp=1, tensor=1)
  if lora:
    c.lora.update(**lora, base_dtype=base_dtype)
  return c


def _bytes(tree) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def size_row(name, setup) -> str:
  s = setup.abstract_state
  trainable = sum(x.size for x in jax.tree.leaves(s.params))
  frozen = _bytes(getattr(s, "base_params", {}))
  total = _bytes(s)
  return (f"| {name} | {trainable:,} | {_bytes(s.params) / 2**20:,.1f} | "
          f"{_bytes(s.opt_state) / 2**20:,.1f} | {frozen / 2**20:,.1f} | {total / 2**20:,.1f} |")


def _step_memory_mib(compiled) -> float:
  mem = compiled.memory_analysis()
  return (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
          - mem.alias_size_in_bytes) / 2**20


def main(argv):
  del argv
  devices = jax.devices()[:1]
  print("State sizes (MiB; optimizer AdamW):")
  print("| model | trainable params | trainable | optimizer state | frozen base | whole state |")
  print("|---|---|---|---|---|---|")
  rows = [("quickstart, full", _config(quickstart.get_config), 0),
          (f"quickstart, LoRA r {_QUICKSTART_LORA['rank']}",
           _config(quickstart.get_config, _QUICKSTART_LORA), 0),
          ("LLaDA-8B, full", _config(llada_8b.get_config), llada_8b.VOCAB_SIZE),
          (f"LLaDA-8B, LoRA r {_LLADA_LORA['rank']}, base fp32",
           _config(llada_8b.get_config, _LLADA_LORA), llada_8b.VOCAB_SIZE),
          (f"LLaDA-8B, LoRA r {_LLADA_LORA['rank']}, base bf16",
           _config(llada_8b.get_config, _LLADA_LORA, "bfloat16"), llada_8b.VOCAB_SIZE)]
  for name, c, vocab in rows:
    print(size_row(name, train_state.build(c, devices, vocab_size=vocab or None)), flush=True)

  print(f"\nSFT train step, quickstart model (seq {quickstart.get_config().data.seq_len}, "
        f"batch {quickstart.get_config().global_batch_size}), {jax.devices()[0].device_kind}:")
  variants = {}
  for name, lora in (("full", None), (f"LoRA r {_QUICKSTART_LORA['rank']}", _QUICKSTART_LORA)):
    c = _config(quickstart.get_config, lora)
    setup = train_state.build(c, devices)
    state = train_state.make_init_fn(setup)(jax.random.key(0))
    rng = np.random.default_rng(0)
    B, L = c.global_batch_size, c.data.seq_len
    local = {"tokens": rng.integers(0, setup.model_config.vocab_size, (B, L), dtype=np.int32),
             "valid": np.ones((B, L), bool), "prompt_len": np.full((B,), L // 2, np.int32)}
    compiled = trainer.compile_train_step(setup, local)
    batch = sharding.global_batch(local, setup.mesh)
    state, m = compiled(state, batch)
    jax.block_until_ready(m)
    variants[name] = [compiled, state, batch, []]
  for _ in range(_STEPS.value):
    for v in variants.values():
      compiled, state, batch, times = v
      tick = time.perf_counter()
      v[1], m = compiled(state, batch)
      jax.block_until_ready(m)
      times.append(time.perf_counter() - tick)
  print("| variant | median step (ms) | vs full | step memory (MiB) |")
  print("|---|---|---|---|")
  full = np.median(variants["full"][3])
  for name, (compiled, _, _, times) in variants.items():
    print(f"| {name} | {1e3 * np.median(times):.1f} | {np.median(times) / full:.2f} | "
          f"{_step_memory_mib(compiled):,.1f} |")


if __name__ == "__main__":
  app.run(main)
