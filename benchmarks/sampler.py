"""Sampler speed and accuracy: the plain LLaDA algorithm against its faster modes.

  python benchmarks/sampler.py --workdir=RUN [--num_examples=200 --batch_size=50
      --gen_length=39 --block_length=13 --steps=39 --thresholds=0.9,0.99 --repeats=3]

Without --workdir, a quickstart model is trained first (configs/quickstart.py, into
--train_dir; skipped when that run has finished). On the same model and the same task
prompts, in one process, each mode generates completions for the test split:
  plain              LLaDA: `steps` passes, the linear schedule, low-confidence remasking
  cache              plain + the block-wise approximate KV cache (Fast-dLLM's DualCache)
  threshold T        commit every token of the block above confidence T (>= 1 per pass)
  threshold T+cache  both; one pair of rows per T in --thresholds
and reports task accuracy and mean reward (diffusionlm.generation), forward passes per
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

from diffusionlm import cli, generation, sampler_flags
from diffusionlm.data import pipeline
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
_THRESHOLDS = flags.DEFINE_list("thresholds", ["0.9", "0.99"], "Confidence thresholds of the "
                                "threshold modes, one pair of rows each.")
sampler_flags.define_flags()
# A 4x4 Sudoku prompt is 25 characters; 39 more fill the quickstart's seq_len of 64 (the
# 35-character response, EOS, and the EOS padding an SFT model learnt), in 3 blocks of 13.
flags.FLAGS.set_default("gen_length", 39)

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def modes(thresholds: list[float]) -> dict[str, dict]:
  """Row name -> the sampler settings that select the mode."""
  rows = {"plain": {"decoding": "plain", "cache": "none"},
          "cache": {"decoding": "plain", "cache": "block"}}
  for t in thresholds:
    rows[f"threshold {t}"] = {"decoding": "threshold", "cache": "none", "threshold": t}
    rows[f"threshold {t} + cache"] = {"decoding": "threshold", "cache": "block", "threshold": t}
  return rows


def train_quickstart(train_dir: str, data_dir: str | None) -> str:
  """Trains configs/quickstart.py into train_dir unless it has finished; returns it."""
  if not os.path.exists(os.path.join(train_dir, "summary.json")):
    command = [sys.executable, "-m", "diffusionlm.train", "--config=configs/quickstart.py",
               f"--workdir={os.path.abspath(train_dir)}"]
    if data_dir:
      command.append(f"--config.data.data_dir={data_dir}")
    print("Training the quickstart model:", " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=_ROOT)
  return train_dir


def main(argv):
  cli.start(argv)
  workdir = _WORKDIR.value or train_quickstart(_TRAIN_DIR.value, _DATA_DIR.value)
  settings = sampler_flags.flag_settings()
  try:
    config, causal = sampler_flags.settings_for_run(
        workdir, gen_length=flags.FLAGS.gen_length, settings=settings)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  if causal:
    raise app.UsageError(f"{workdir} is an AR run; this benchmark compares diffusion modes.")
  given = [name for name in ("decoding", "cache", "threshold") if settings[name] is not None]
  if given:
    raise app.UsageError(f"--{given[0]} is set by each mode of the benchmark (see "
                         "--thresholds); leave it out.")
  try:
    mode_settings = modes([float(t) for t in _THRESHOLDS.value])
    for mode in mode_settings.values():
      sampler_flags.settings_for_run(workdir, gen_length=flags.FLAGS.gen_length,
                                     settings=settings | mode)
  except ValueError as e:
    raise app.UsageError(f"--thresholds={','.join(_THRESHOLDS.value)}: {e}") from e
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
    return generation.evaluate_task(
        run.params, run.apply_fn, run.tokenizer, examples, task=task,
        mask_id=run.model_config.mask_id, causal=False, batch_size=batch_size,
        gen_length=gen_length, key=jax.random.key(flags.FLAGS.seed),
        sampler_kwargs=settings | mode_settings[mode], mesh=run.setup.mesh)

  resolved = generation.resolve_sampler_settings(gen_length=gen_length, causal=False,
                                                 mask_id=run.model_config.mask_id, **settings)
  load_before = os.getloadavg()[0]
  for mode in mode_settings:  # Compile every program before timing any.
    evaluate_mode(mode, examples[:batch_size])
  results = {mode: [] for mode in mode_settings}
  for _ in range(_REPEATS.value):
    for mode in mode_settings:
      results[mode].append(evaluate_mode(mode, examples))
  load_after = os.getloadavg()[0]

  print(f"\nrun {workdir} ({config.objective}, {task}); {len(examples)} {_SPLIT.value} "
        f"examples, batch {batch_size}; gen_length={gen_length}, "
        f"block_length={resolved['block_length']}, steps={resolved['steps']}, "
        f"temperature={resolved['temperature']}, remasking={resolved['remasking']}, "
        f"cfg_scale={resolved['cfg_scale']}")
  print(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}, "
        f"{os.cpu_count()} CPU cores; load average {load_before:.1f} before, "
        f"{load_after:.1f} after; tokens/s = median of {_REPEATS.value} runs")
  print("\n| mode | accuracy | vs plain | mean reward | mean length | passes / token | "
        "tokens/s | speed-up |")
  print("|---|---|---|---|---|---|---|---|")
  speed = {mode: statistics.median(len(examples) * gen_length / r["seconds"] for r in rs)
           for mode, rs in results.items()}
  for mode, rs in results.items():
    r = rs[0]
    points = 100 * (r["accuracy"] - results["plain"][0]["accuracy"])
    print(f"| {mode} | {100 * r['accuracy']:.1f}% | {points:+.1f} | {r['mean_reward']:.3f} | "
          f"{r['mean_completion_length']:.1f} | {r['passes_per_token']:.3f} | "
          f"{speed[mode]:,.0f} | {speed[mode] / speed['plain']:.2f}x |")


if __name__ == "__main__":
  app.run(main)
