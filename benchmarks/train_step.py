"""Train-step throughput: tokens/s, MFU against a measured matmul peak, compiled memory.

  python benchmarks/train_step.py                      # CPU-sized models
  python benchmarks/train_step.py --preset=gpu         # accelerator-sized models, bf16
  python benchmarks/train_step.py --preset=gpu --attentions=einsum,dot_product --scan_layers
  python benchmarks/train_step.py --preset=depth --compile_only --scan_layers=false,true
  python benchmarks/train_step.py --preset=cpu_long --compile_only --attentions=einsum,dot_product

Each row is one (model, objective, attention, scan_layers) combination; --attentions and
--scan_layers list the values to compare. --compile_only reports compile time and the
compiled step memory without running a step (e.g. CPU rows of a 32-layer model).

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
from diffusionlm.models import flops, transformer
from diffusionlm.train import metrics, sharding, train_state, trainer

_PRESET = flags.DEFINE_enum("preset", "cpu", ["cpu", "cpu_long", "depth", "gpu"],
                            "Model sizes and dtype.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per row (after one warm-up step).")
_ATTENTIONS = flags.DEFINE_list("attentions", ["auto"], "config.model.attention values.")
_SCAN = flags.DEFINE_list("scan_layers", ["false"], "config.model.scan_layers values.")
_REMAT = flags.DEFINE_string("remat", "", "config.model.remat; empty = the preset's.")
_OBJECTIVES = flags.DEFINE_list("objectives", ["mdm", "ar"], "Objectives to benchmark.")
_COMPILE_ONLY = flags.DEFINE_bool("compile_only", False, "Compile time and memory only.")

# name: (d_model, num_layers, num_heads, mlp_dim, seq_len, global_batch, vocab)
PRESETS = {
    "cpu": {"dtype": "float32", "remat": "none", "rows": {
        "small": (128, 4, 4, 512, 128, 16, 256),
        "medium": (256, 6, 8, 1024, 256, 8, 256)}},
    "cpu_long": {"dtype": "float32", "remat": "full", "rows": {
        "small L=4096": (128, 4, 4, 512, 4096, 8, 256)}},
    "depth": {"dtype": "float32", "remat": "full", "rows": {
        f"{n} layers": (128, n, 4, 512, 128, 8, 256) for n in (8, 16, 32)}},
    "gpu": {"dtype": "bfloat16", "remat": "none", "rows": {
        "125M": (768, 12, 12, 2048, 1024, 32, 32000),
        "350M": (1024, 24, 16, 2816, 1024, 16, 32000),
        "350M L=4096": (1024, 24, 16, 2816, 4096, 4, 32000)}},
}


def bench_row(name, shape, objective, dtype, peak, steps, *, attention, scan_layers, remat,
              compile_only):
  d_model, layers, heads, mlp, seq_len, batch_size, vocab = shape
  c = base.get_config()
  c.objective = objective
  c.model.update(d_model=d_model, num_layers=layers, num_heads=heads, mlp_dim=mlp, dtype=dtype,
                 attention=attention, scan_layers=scan_layers, remat=remat)
  c.data.seq_len = seq_len
  c.global_batch_size = batch_size
  c.diffusion.random_length_prob = 0.0
  setup = train_state.build(c, vocab_size=vocab)
  rng = np.random.default_rng(0)
  local = {"tokens": rng.integers(0, setup.model_config.vocab_size, (batch_size, seq_len), dtype=np.int32),
           "valid": np.ones((batch_size, seq_len), bool)}
  start, start_cpu = time.perf_counter(), time.process_time()
  compiled = trainer.compile_train_step(setup, local)
  compile_s, compile_cpu_s = time.perf_counter() - start, time.process_time() - start_cpu
  mem = compiled.memory_analysis()
  peak_mem = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
              - mem.alias_size_in_bytes) / 2**20 if mem is not None else float("nan")
  n = flops.param_counts(setup.model_config)["total"]
  row = (f"| {name} | {objective} | {transformer.resolve_attention(attention)} | "
         f"{scan_layers} | {n / 1e6:.1f}M | {seq_len} | {batch_size} | {compile_s:.1f} / "
         f"{compile_cpu_s:.1f} | ")
  if compile_only:
    return row + f"- | - | {peak_mem:,.0f} |"
  state = train_state.make_init_fn(setup)(jax.random.key(0))
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
  return row + (f"{tokens_per_sec:,.0f} | {100 * tokens_per_sec * fpt / peak:.1f}% | "
                f"{peak_mem:,.0f} |")


def main(argv):
  del argv
  preset = PRESETS[_PRESET.value]
  dtype = jnp.dtype(preset["dtype"])
  peak = float("nan")
  if not _COMPILE_ONLY.value:
    peak = metrics.measure_matmul_peak(dtype=dtype,
                                       n=8192 if preset["dtype"] == "bfloat16" else 2048)
    peak *= jax.device_count()
  print(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}; dtype {dtype.name}; "
        f"measured matmul peak {peak / 1e12:.2f} TFLOP/s; remat "
        f"{_REMAT.value or preset['remat']}")
  print("| model | objective | attention | scan | params | seq | batch | compile s (wall / "
        "CPU) | tokens/s | MFU | step memory (MiB) |")
  print("|---|---|---|---|---|---|---|---|---|---|---|")
  for name, shape in preset["rows"].items():
    for objective in _OBJECTIVES.value:
      for attention in _ATTENTIONS.value:
        for scan in _SCAN.value:
          print(bench_row(name, shape, objective, preset["dtype"], peak, _STEPS.value,
                          attention=attention, scan_layers=scan.lower() in ("true", "1"),
                          remat=_REMAT.value or preset["remat"],
                          compile_only=_COMPILE_ONLY.value), flush=True)


if __name__ == "__main__":
  app.run(main)
