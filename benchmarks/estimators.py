"""Cost of the diffu-GRPO likelihood estimators (diffusionlm/rl/estimators.py).

  python benchmarks/estimators.py                          # tiny CPU shapes
  python benchmarks/estimators.py --d_model=1024 --num_layers=16 --batch=32 \
      --prompt_len=256 --gen_length=256 --steps=128        # accelerator shapes
  python benchmarks/estimators.py --memory_only --d_model=2048 --num_layers=18 \
      --vocab=32000 --batch=8 --prompt_len=256 --gen_length=256 --steps=128 \
      --dtype=bfloat16                                     # a 1B model: compile, no run

For every estimator, compiles the real programs of one RL step, grpo.make_logps_step (old and
reference log-probs of mu = 1 view) and grpo.make_update_step (one optax update), on the
Transformer of the given shape, and prints seconds per call and the compiled memory
(argument + output + temp - aliased bytes, from `compiled.memory_analysis()`). The
trajectory rows use a random commit order with gen_length / steps tokens per pass.
"""
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from configs import base
from diffusionlm.rl import estimators, grpo, logprobs
from diffusionlm.train import train_state

_BATCH = flags.DEFINE_integer("batch", 8, "Rollout rows (one micro-batch).")
_PROMPT = flags.DEFINE_integer("prompt_len", 16, "Prompt tokens.")
_GEN = flags.DEFINE_integer("gen_length", 32, "Completion tokens.")
_STEPS = flags.DEFINE_integer("steps", 16, "Sampler passes (decoding='plain').")
_GROUPS = flags.DEFINE_list("trajectory_groups", ["1", "4"], "trajectory_group values.")
_SAMPLES = flags.DEFINE_list("elbo_samples", ["2", "8"], "elbo_samples values (elbo and spg "
                             "rows).")
_D_MODEL = flags.DEFINE_integer("d_model", 64, "Model width.")
_LAYERS = flags.DEFINE_integer("num_layers", 2, "Transformer blocks.")
_VOCAB = flags.DEFINE_integer("vocab", 128, "Vocabulary size.")
_DTYPE = flags.DEFINE_string("dtype", "float32", "Compute dtype.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls per program (after one warm-up).")
_MEMORY_ONLY = flags.DEFINE_bool("memory_only", False, "Compile on abstract shapes and print "
                                 "the compiled memory only (no parameters are allocated).")


def _memory_mib(compiled) -> float:
  mem = compiled.memory_analysis()
  if mem is None:
    return float("nan")
  return (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
          - mem.alias_size_in_bytes) / 2**20


def _timed(fn, args, repeats, *, carry_state=False):
  """Seconds per call; with carry_state the first output replaces the first argument."""
  out = fn(*args)
  jax.block_until_ready(out)
  start = time.perf_counter()
  for _ in range(repeats):
    if carry_state:
      args = (out[0],) + args[1:]
    out = fn(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / repeats


def main(argv):
  del argv
  B, P, C, steps = _BATCH.value, _PROMPT.value, _GEN.value, _STEPS.value
  if C % steps:
    raise ValueError(f"--gen_length={C} must be a multiple of --steps={steps}.")
  c = base.get_config()
  heads = max(1, _D_MODEL.value // 64)
  c.model.update(d_model=_D_MODEL.value, num_layers=_LAYERS.value, num_heads=heads,
                 mlp_dim=4 * _D_MODEL.value, dtype=_DTYPE.value)
  c.data.seq_len, c.global_batch_size = P + C, B
  c.optimizer.warmup_steps = 0
  setup = train_state.build(c, vocab_size=_VOCAB.value)
  state = (setup.abstract_state if _MEMORY_ONLY.value
           else train_state.make_init_fn(setup)(jax.random.key(0)))
  rng = np.random.default_rng(0)
  completion = rng.integers(0, _VOCAB.value, (1, B, C)).astype(np.int32)
  commit = np.stack([rng.permutation(C) // (C // steps) for _ in range(B)])[None]
  batch = {"prompt": rng.integers(0, _VOCAB.value, (1, B, P)).astype(np.int32),
           "prompt_valid": np.ones((1, B, P), bool), "completion": completion,
           "completion_mask": np.asarray(logprobs.completion_mask(completion[0], eos_id=-1))[None],
           "commit_step": commit.astype(np.int32),
           "advantages": rng.normal(size=(1, B)).astype(np.float32)}
  batch = jax.device_put(batch, grpo.micro_batch_sharding(setup.mesh))
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  key = jax.random.key(1)
  rows = [("mean_field", {"estimator": "mean_field"})]
  rows += [(f"trajectory s={s}", {"estimator": "trajectory", "trajectory_group": int(s)})
           for s in _GROUPS.value]
  rows += [(f"{name} {k} masks", {"estimator": name, "elbo_samples": int(k)})
           for name in ("elbo", "spg") for k in _SAMPLES.value]
  print(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}; batch {B}, prompt "
        f"{P}, completion {C}, {steps} passes; d_model {_D_MODEL.value}, {_LAYERS.value} "
        f"layers, vocab {_VOCAB.value}, {num_params / 1e6:.0f}M parameters, {_DTYPE.value}")
  print("| estimator | forwards | logps s/call | logps MiB | update s/call | update MiB |")
  print("|---|---|---|---|---|---|")
  for name, fields in rows:
    rl = {"decoding": "plain", "steps": steps, "gen_length": C, **fields}
    estimator = estimators.from_config(rl)
    forwards = {"mean_field": 1, "trajectory": steps // rl.get("trajectory_group", 1),
                "elbo": rl.get("elbo_samples", 2),
                "spg": rl.get("elbo_samples", 2)}[fields["estimator"]]
    kw = dict(p_mask_prompt=0.15, eos_id=-1, estimator=estimator)
    logps = grpo.make_logps_step(setup, setup.apply_fn, num_iterations=1, with_ref=True, **kw)
    logps_args = (state.params, state.params, batch, key)
    logps_compiled = logps.lower(*logps_args).compile()
    update = grpo.make_update_step(setup, setup.apply_fn, beta=0.04, clip_eps=0.2, **kw)
    if _MEMORY_ONLY.value:
      views = jax.eval_shape(logps, *logps_args)
      update_batch = {**batch, **{k: jax.ShapeDtypeStruct(v.shape[1:], v.dtype,
                                                          sharding=batch["completion"].sharding)
                                  for k, v in views.items()}}
      update_compiled = update.lower(state, update_batch, key, jnp.int32(0)).compile()
      print(f"| {name} | {forwards} | - | {_memory_mib(logps_compiled):.1f} | - | "
            f"{_memory_mib(update_compiled):.1f} |", flush=True)
      continue
    views = logps_compiled(*logps_args)
    update_batch = {**batch, **{k: v[0] for k, v in views.items()}}
    fresh = jax.tree.map(jnp.copy, state)  # The update donates its state.
    update_args = (fresh, update_batch, key, jnp.int32(0))
    update_compiled = update.lower(*update_args).compile()
    logps_s = _timed(logps_compiled, logps_args, _REPEATS.value)
    update_s = _timed(update_compiled, update_args, _REPEATS.value, carry_state=True)
    print(f"| {name} | {forwards} | {logps_s:.4f} | {_memory_mib(logps_compiled):.1f} | "
          f"{update_s:.4f} | {_memory_mib(update_compiled):.1f} |", flush=True)


if __name__ == "__main__":
  app.run(main)
