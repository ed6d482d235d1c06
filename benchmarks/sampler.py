"""Sampler speed and accuracy: the plain LLaDA algorithm against its faster modes.

  python benchmarks/sampler.py --workdir=RUN [--num_examples=200 --batch_size=50
      --gen_length=.. --block_length=.. --steps=.. --threshold=.. --repeats=3]

Without --workdir, a quickstart model is trained first (configs/quickstart.py, into
--train_dir; skipped when that run has finished). On the same model and the same task
prompts, in one process, each mode generates completions for the test split:
  plain            LLaDA: `steps` passes, the linear schedule, low-confidence remasking
  threshold        commit every token of the block above --threshold (>= 1 per pass)
  cache            plain + the block-wise approximate KV cache (Fast-dLLM)
  threshold+cache  both
and reports task accuracy and mean reward (diffusionlm.evaluate), forward passes per
generated token, and tokens/s (generated positions per second of generation, the median
of --repeats timed runs, modes interleaved so machine noise hits them alike; compilation is
excluded by a warm-up run of each mode). Prints a markdown table.
"""
import os
import statistics
import subprocess
import sys

from absl import app
from absl import flags
import jax

from diffusionlm import evaluate
from diffusionlm.data import pipeline
from diffusionlm.diffusion import sampler_flags
from diffusionlm.train import load, sharding

_WORKDIR = flags.DEFINE_string("workdir", "", "A trained run; empty = train a quickstart "
                               "model into --train_dir first.")
_TRAIN_DIR = flags.DEFINE_string("train_dir", "/tmp/diffusionlm_quickstart",
                                 "Where the quickstart model is trained without --workdir.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Prepared task data; default: the run's.")
_SPLIT = flags.DEFINE_string("split", "test", "Split whose prompts are completed.")
_NUM_EXAMPLES = flags.DEFINE_integer("num_examples", 200, "Examples of the split.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 50, "Prompts per generation batch.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed runs per mode (median reported).")
sampler_flags.define_flags()
# The Sudoku response is 35 characters plus EOS; 36 positions hold it, in 3 blocks of 12.
flags.FLAGS.set_default("gen_length", 36)

MODES = {"plain": ("plain", "none"), "threshold": ("threshold", "none"),
         "cache": ("plain", "block"), "threshold+cache": ("threshold", "block")}


def train_quickstart(train_dir: str, data_dir: str | None) -> str:
  """Trains configs/quickstart.py into train_dir unless it has finished; returns it."""
  if not os.path.exists(os.path.join(train_dir, "summary.json")):
    command = [sys.executable, "-m", "diffusionlm.train", "--config=configs/quickstart.py",
               f"--workdir={train_dir}"]
    if data_dir:
      command.append(f"--config.data.data_dir={data_dir}")
    print("Training the quickstart model:", " ".join(command), flush=True)
    subprocess.run(command, check=True)
  return train_dir


def main(argv):
  del argv
  workdir = _WORKDIR.value or train_quickstart(_TRAIN_DIR.value, _DATA_DIR.value)
  config, causal, settings = sampler_flags.settings_for_run(workdir)
  if causal:
    raise app.UsageError(f"{workdir} is an AR run; this benchmark compares diffusion modes.")
  given = [name for name in ("decoding", "cache") if settings[name] is not None]
  if given:
    raise app.UsageError(f"--{given[0]} is set by each mode of the benchmark; leave it out.")
  task = config.data.dataset.split(":")[0]
  data_config = config.data.copy_and_resolve_references()
  if _DATA_DIR.value:
    data_config.data_dir = _DATA_DIR.value
  examples = pipeline.load_task_examples(data_config, _SPLIT.value)[:_NUM_EXAMPLES.value]
  run = load.load_run(workdir)
  ways = sharding.data_parallel_size(run.setup.mesh)
  batch_size = -(-_BATCH_SIZE.value // ways) * ways
  gen_length = flags.FLAGS.gen_length

  def evaluate_mode(mode, examples):
    decoding, cache = MODES[mode]
    return evaluate.evaluate_task(
        run.params, run.apply_fn, run.tokenizer, examples, task=task,
        mask_id=run.model_config.mask_id, causal=False, batch_size=batch_size,
        gen_length=gen_length, key=jax.random.key(flags.FLAGS.seed),
        sampler_kwargs=settings | {"decoding": decoding, "cache": cache}, mesh=run.setup.mesh)

  resolved = sampler_flags.resolve(gen_length=gen_length, causal=False,
                                   mask_id=run.model_config.mask_id, **settings)
  load_before = os.getloadavg()[0]
  for mode in MODES:  # Compile every program before timing any.
    evaluate_mode(mode, examples[:batch_size])
  results = {mode: [] for mode in MODES}
  for _ in range(_REPEATS.value):
    for mode in MODES:
      results[mode].append(evaluate_mode(mode, examples))
  load_after = os.getloadavg()[0]

  print(f"\nrun {workdir} ({config.objective}, {task}); {len(examples)} {_SPLIT.value} "
        f"examples, batch {batch_size}; gen_length={gen_length}, "
        f"block_length={resolved['block_length']}, steps={resolved['steps']}, "
        f"threshold={resolved['threshold']}, temperature={resolved['temperature']}, "
        f"remasking={resolved['remasking']}")
  print(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}, "
        f"{os.cpu_count()} CPU cores; load average {load_before:.1f} before, "
        f"{load_after:.1f} after; tokens/s = median of {_REPEATS.value} runs")
  print("\n| mode | accuracy | mean reward | mean length | passes / token | tokens/s | "
        "speed-up |")
  print("|---|---|---|---|---|---|---|")
  speed = {mode: statistics.median(len(examples) * gen_length / r["seconds"] for r in rs)
           for mode, rs in results.items()}
  for mode, rs in results.items():
    r = rs[0]
    print(f"| {mode} | {100 * r['accuracy']:.1f}% | {r['mean_reward']:.3f} | "
          f"{r['mean_completion_length']:.1f} | {r['passes_per_token']:.3f} | "
          f"{speed[mode]:,.0f} | {speed[mode] / speed['plain']:.2f}x |")


if __name__ == "__main__":
  app.run(main)
