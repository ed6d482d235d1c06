"""Train-step throughput: tokens/s, MFU against a measured matmul peak, compiled memory.

  python benchmarks/train_step.py                      # CPU-sized models
  python benchmarks/train_step.py --preset=gpu         # accelerator-sized models, bf16

Every row is measured in the same process, so ratios between rows are meaningful even on a
noisy machine. MFU = achieved model FLOP/s (exact count incl. attention, forward+backward)
over the matmul peak measured at the start of the run on the same devices and dtype.
"""
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from configs import base
from diffusionlm.models import flops
from diffusionlm.train import metrics, sharding, train_state, trainer

_PRESET = flags.DEFINE_enum("preset", "cpu", ["cpu", "gpu"], "Model sizes and dtype.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per row (after one warm-up step).")

# name: (d_model, num_layers, num_heads, mlp_dim, seq_len, global_batch, vocab)
PRESETS = {
    "cpu": {"dtype": "float32", "rows": {
        "small": (128, 4, 4, 512, 128, 16, 256),
        "medium": (256, 6, 8, 1024, 256, 8, 256)}},
    "gpu": {"dtype": "bfloat16", "rows": {
        "125M": (768, 12, 12, 2048, 1024, 32, 32000),
        "350M": (1024, 24, 16, 2816, 1024, 16, 32000)}},
}


def bench_row(name, shape, objective, dtype, peak, steps):
  d_model, layers, heads, mlp, seq_len, batch_size, vocab = shape
  c = base.get_config()
  c.objective = objective
  c.model.update(d_model=d_model, num_layers=layers, num_heads=heads, mlp_dim=mlp, dtype=dtype)
  c.data.seq_len = seq_len
  c.global_batch_size = batch_size
  c.diffusion.random_length_prob = 0.0
  setup = train_state.build(c, vocab_size=vocab)
  state = train_state.make_init_fn(setup)(jax.random.key(0))
  rng = np.random.default_rng(0)
  local = {"tokens": rng.integers(0, setup.model_config.vocab_size, (batch_size, seq_len), dtype=np.int32),
           "valid": np.ones((batch_size, seq_len), bool)}
  compiled = trainer.compile_train_step(setup, local)
  batch = sharding.global_batch(local, setup.mesh)
  state, m = compiled(state, batch)
  jax.block_until_ready(m)
  start = time.perf_counter()
  for _ in range(steps):
    state, m = compiled(state, batch)
  jax.block_until_ready(m)
  seconds = (time.perf_counter() - start) / steps
  tokens_per_sec = batch_size * seq_len / seconds
  fpt = flops.flops_per_token(setup.model_config, seq_len)["exact"]
  mem = compiled.memory_analysis()
  peak_mem = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
              - mem.alias_size_in_bytes) / 2**20 if mem is not None else float("nan")
  n = flops.param_counts(setup.model_config)["total"]
  return (f"| {name} | {objective} | {n / 1e6:.1f}M | {seq_len} | {batch_size} | "
          f"{tokens_per_sec:,.0f} | {100 * tokens_per_sec * fpt / peak:.1f}% | {peak_mem:,.0f} |")


def main(argv):
  del argv
  preset = PRESETS[_PRESET.value]
  dtype = jnp.dtype(preset["dtype"])
  peak = metrics.measure_matmul_peak(dtype=dtype, n=8192 if preset["dtype"] == "bfloat16" else 2048)
  peak *= jax.device_count()
  print(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}; dtype {dtype.name}; "
        f"measured matmul peak {peak / 1e12:.2f} TFLOP/s")
  print("| model | objective | params | seq | batch | tokens/s | MFU | step memory (MiB) |")
  print("|---|---|---|---|---|---|---|---|")
  for name, shape in preset["rows"].items():
    for objective in ("mdm", "ar"):
      print(bench_row(name, shape, objective, preset["dtype"], peak, _STEPS.value), flush=True)


if __name__ == "__main__":
  app.run(main)
