"""Peak temporary memory and step time of the LM head, chunked (StreamBP) vs unchunked.

  python benchmarks/memory.py                                  # every row, compile only
  python benchmarks/memory.py --time --time_max_seq_len=1024   # also time the short rows
  python benchmarks/memory.py --time --dtype=bfloat16          # accelerator: time every row
  python benchmarks/memory.py --time --dtype=bfloat16 --param_dtype=bfloat16 --steps=train \
      --seq_lens=4096 --d_model=4096 --num_layers=32 --mlp_dim=12288   # LLaDA-8B's shape

Two steps of a small-width Transformer at LLaDA's vocabulary (126464), where the LM head's
batch x length x vocab float32 logits dominate the memory:
  train  value_and_grad of mdm_loss w.r.t. the parameters (diffusionlm/diffusion/losses.py)
  rl     forward + backward of the summed target log-probs of a completion (the last 3/4
         of the sequence; the first 1/4 is a prompt with 15% of its tokens masked and the
         completion fully masked, as in d1's diffu-GRPO log-probs)
each compiled with `logits_chunk_size=0` ("unchunked": all positions' logits at once) and
with `--chunk_size` ("chunked"). Memory is `compiled.memory_analysis().temp_size_in_bytes`
(XLA's buffer assignment: no step has to run). Blocks use remat="full", as long-sequence
training would, so the rest of the network keeps one layer's activations.
Step time (with --time) is the median of --steps runs after a warm-up, both modes
interleaved in the same process; "n/a" where not timed. Ratios are unchunked / chunked
memory and chunked / unchunked time. Prints a markdown table.
"""
import statistics
import time

from absl import app
from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffusionlm.diffusion import losses
from diffusionlm.models import transformer

_SEQ_LENS = flags.DEFINE_list("seq_lens", ["1024", "2048", "4096", "8192"], "Sequence lengths.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 1, "Sequences per step.")
_CHUNK_SIZE = flags.DEFINE_integer("chunk_size", 512, "logits_chunk_size of the chunked rows.")
_VOCAB = flags.DEFINE_integer("vocab_size", 126464, "Vocabulary (LLaDA-8B's by default).")
_D_MODEL = flags.DEFINE_integer("d_model", 256, "Model width.")
_NUM_LAYERS = flags.DEFINE_integer("num_layers", 2, "Transformer blocks.")
_NUM_HEADS = flags.DEFINE_integer("num_heads", 0, "Attention heads; 0 = d_model / 128.")
_MLP_DIM = flags.DEFINE_integer("mlp_dim", 0, "SwiGLU width; 0 = 4 d_model.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
_PARAM_DTYPE = flags.DEFINE_enum("param_dtype", "float32", ["float32", "bfloat16"],
                                 "Parameter dtype.")
_STEPS = flags.DEFINE_list("steps", ["train", "rl"], "Which steps: train, rl.")
_TIME = flags.DEFINE_bool("time", False, "Also run and time the steps.")
_TIME_MAX_SEQ_LEN = flags.DEFINE_integer("time_max_seq_len", 0,
                                         "Time only rows up to this length; 0 = all.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed runs per row (median reported).")

MODES = {"unchunked": 0, "chunked": None}  # None = --chunk_size.


def model_config(chunk_size: int) -> transformer.TransformerConfig:
  d = _D_MODEL.value
  return transformer.TransformerConfig(
      vocab_size=_VOCAB.value, d_model=d, num_layers=_NUM_LAYERS.value,
      num_heads=_NUM_HEADS.value or max(d // 128, 1), num_kv_heads=0,
      mlp_dim=_MLP_DIM.value or 4 * d, rope_theta=10000.0, norm_eps=1e-5, tie_embeddings=False,
      causal=False, dtype=_DTYPE.value, param_dtype=_PARAM_DTYPE.value, remat="full",
      logits_chunk_size=chunk_size)


def make_step(kind: str, config: transformer.TransformerConfig):
  """step(params, tokens_BxL, key) -> (value, grads) for the `train` or `rl` benchmark."""
  model = transformer.Transformer(config)
  apply_fn = lambda p, tokens_BxL, **kw: model.apply({"params": p}, tokens_BxL, **kw)
  mask_id = config.mask_id

  def train(params, tokens_BxL, key):
    return jax.value_and_grad(lambda p: losses.mdm_loss(p, apply_fn, tokens_BxL, key,
                                                         mask_id=mask_id)[0])(params)

  def rl(params, tokens_BxL, key):
    prompt_len = tokens_BxL.shape[1] // 4
    prompt_BxP, completion_BxC = tokens_BxL[:, :prompt_len], tokens_BxL[:, prompt_len:]
    p_B = jnp.full(tokens_BxL.shape[:1], 0.15)
    noisy_prompt_BxP, _ = losses.forward_mask(key, prompt_BxP, p_B, mask_id=mask_id)
    inputs_BxL = jnp.concatenate([noisy_prompt_BxP, jnp.full_like(completion_BxC, mask_id)], 1)
    return jax.value_and_grad(lambda p: losses.target_logprobs(
        p, apply_fn, inputs_BxL, completion_BxC).sum())(params)

  return jax.jit({"train": train, "rl": rl}[kind])


def measure(kind: str, seq_len: int, chunk_size: int, timed: bool):
  """(temp MiB, compiled step or None) of one row; the step is only kept when timed."""
  config = model_config(chunk_size)
  dummy = jnp.zeros((1, seq_len), jnp.int32)
  params = nn.unbox(jax.eval_shape(transformer.Transformer(config).init, jax.random.key(0),
                                   dummy)["params"])
  tokens = jax.ShapeDtypeStruct((_BATCH_SIZE.value, seq_len), jnp.int32)
  key = jax.eval_shape(lambda: jax.random.key(0))
  compiled = make_step(kind, config).lower(params, tokens, key).compile()
  temp_mib = compiled.memory_analysis().temp_size_in_bytes / 2**20
  return temp_mib, (compiled if timed else None)


def time_steps(compiled_by_mode, seq_len: int):
  """Median seconds per step of each compiled step, runs interleaved across modes."""
  config = model_config(0)
  params = jax.jit(lambda k: nn.unbox(transformer.Transformer(config).init(
      k, jnp.zeros((1, seq_len), jnp.int32))["params"]))(jax.random.key(0))
  tokens = jnp.asarray(np.random.default_rng(0).integers(
      0, config.vocab_size, (_BATCH_SIZE.value, seq_len)), jnp.int32)
  key = jax.random.key(1)
  times = {mode: [] for mode in compiled_by_mode}
  for repeat in range(_REPEATS.value + 1):  # The first run of each is a warm-up.
    for mode, compiled in compiled_by_mode.items():
      start = time.perf_counter()
      jax.block_until_ready(compiled(params, tokens, key))
      if repeat:
        times[mode].append(time.perf_counter() - start)
  return {mode: statistics.median(t) for mode, t in times.items()}


def main(argv):
  del argv
  chunk = _CHUNK_SIZE.value
  c = model_config(chunk)
  print(f"device: {jax.devices()[0].device_kind}; batch {_BATCH_SIZE.value}; vocab "
        f"{c.vocab_size}; d_model {c.d_model}; {c.num_layers} layers; {c.num_heads} heads; "
        f"mlp {c.mlp_dim}; dtype {c.dtype}; params {c.param_dtype}; chunk {chunk}", flush=True)
  rows = ["| step | seq_len | mode | temp memory (MiB) | ratio | step time (ms) | time ratio |",
          "|---|---|---|---|---|---|---|"]
  for kind in _STEPS.value:
    for seq_len in map(int, _SEQ_LENS.value):
      timed = _TIME.value and (_TIME_MAX_SEQ_LEN.value == 0
                               or seq_len <= _TIME_MAX_SEQ_LEN.value)
      memory, compiled = {}, {}
      for mode, size in MODES.items():
        memory[mode], compiled[mode] = measure(kind, seq_len, chunk if size is None else size,
                                               timed)
      seconds = time_steps(compiled, seq_len) if timed else {}
      for mode in MODES:
        ms = f"{1e3 * seconds[mode]:,.1f}" if timed else "n/a"
        t_ratio = f"{seconds[mode] / seconds['unchunked']:.2f}" if timed else "n/a"
        rows.append(f"| {kind} | {seq_len} | {mode} | {memory[mode]:,.0f} | "
                    f"{memory['unchunked'] / memory[mode]:.2f} | {ms} | {t_ratio} |")
        print(rows[-1], flush=True)
  print("\n".join(rows))


if __name__ == "__main__":
  app.run(main)
