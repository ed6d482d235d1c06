"""The README's main job: d1 (Zhao et al. 2025) in miniature, on 2 CPU cores.

  python -m diffusionlm.quickstart [--workdir=runs/d1_quickstart] [--seed=0]
      [--num_test=1000] [--extra_eval_steps=20]
      [--sft_config.FIELD=VALUE ...] [--rl_config.FIELD=VALUE ...]

Three stages, each in its own folder under --workdir, each resuming from its checkpoints
when the command is rerun:
  1. sft/  SFT from scratch on the built-in 4x4 Sudoku data (configs/sft_sudoku.py);
  2. rl/   diffu-GRPO from the SFT checkpoint (configs/rl_sudoku.py);
  3. both models decode the held-out test split greedily with the RL stage's sampler (and
     with each --extra_eval_steps number of denoising steps), and a d1-style table (SFT vs
     + diffu-GRPO) is printed and written to WORKDIR/results.md and WORKDIR/results.json.
--seed sets both stages' `seed` (initialisation, data order, rollouts); the puzzles stay
those of `data.task_seed`.
"""
from collections.abc import Sequence
import dataclasses
import json
import math
import os

from absl import app
from absl import flags
import jax
from ml_collections import config_flags
import numpy as np

from diffusionlm import cli
from diffusionlm.train import sharding

# The experiment configs: a folder beside the package (setup.py installs both), read as
# files, not imported.
_CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "configs")
_SFT_CONFIG = config_flags.DEFINE_config_file(
    "sft_config", os.path.join(_CONFIGS_DIR, "sft_sudoku.py"), "SFT stage config.",
    lock_config=True)
_RL_CONFIG = config_flags.DEFINE_config_file(
    "rl_config", os.path.join(_CONFIGS_DIR, "rl_sudoku.py"), "diffu-GRPO stage config.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs/d1_quickstart", "Folder of the three stages.")
_SEED = flags.DEFINE_integer("seed", 0, "Training seed of both stages.")
_NUM_TEST = flags.DEFINE_integer("num_test", 1000, "Test examples to evaluate; 0 = all.")
_EXTRA_EVAL_STEPS = flags.DEFINE_multi_integer(
    "extra_eval_steps", [20], "Also evaluate both models with these numbers of sampler "
    "steps (the default 20: multi-step decoding, next to the RL sampler's one step).")


@dataclasses.dataclass
class StageResult:
  label: str
  steps: int
  accuracy: float
  mean_reward: float
  num_examples: int
  correct: tuple[bool, ...] = dataclasses.field(default=(), repr=False)  # Per example.

  @property
  def standard_error(self) -> float:
    return math.sqrt(self.accuracy * (1 - self.accuracy) / self.num_examples)

  def summary(self) -> dict:
    """The fields written to results.json (without the per-example list)."""
    return {k: v for k, v in dataclasses.asdict(self).items() if k != "correct"}


def evaluate_stage(run_dir: str, label: str, *, rl_config, steps_list: Sequence[int],
                   split: str, num_examples: int, seed: int) -> list[StageResult]:
  """Accuracy of the run in `run_dir` on `split` with the RL stage's sampler settings and
  evaluation temperature (greedy by default), once per number of denoising steps in
  `steps_list`. The RL stage's own steps also write RUN_DIR/eval_<task>_<split>.json."""
  from diffusionlm import generation  # pylint: disable=g-import-not-at-top
  from diffusionlm.data import pipeline  # pylint: disable=g-import-not-at-top
  from diffusionlm.rl import setup as rl_setup  # pylint: disable=g-import-not-at-top
  from diffusionlm.train import load  # pylint: disable=g-import-not-at-top
  run = load.load_run(run_dir)
  examples = pipeline.load_task_examples(run.config.data, split)
  if num_examples:
    examples = examples[:num_examples]
  results = []
  for steps in steps_list:
    rl = rl_config.rl.copy_and_resolve_references()
    is_rl_sampler = steps == rl.steps
    rl.steps = steps
    settings = rl_setup.eval_sampler_settings(rl, mask_id=run.model_config.mask_id)
    result = generation.evaluate_task(
        run.params, run.apply_fn, run.tokenizer, examples, task=rl.task,
        mask_id=run.model_config.mask_id, causal=False, batch_size=rl.eval_batch_size,
        gen_length=rl.gen_length, key=jax.random.key(seed), sampler_kwargs=settings,
        mesh=run.setup.mesh)
    if is_rl_sampler and jax.process_index() == 0:
      generation.write_result(run_dir, result, examples, task=rl.task, split=split,
                              settings={"gen_length": rl.gen_length, **settings})
    results.append(StageResult(label, steps, result["accuracy"], result["mean_reward"],
                               result["num_examples"], tuple(result["correct"])))
  return results


def gain_points(results: list[StageResult], steps: int) -> tuple[float, float]:
  """(gain, standard error), in points: accuracy of the last stage minus the first's under
  `steps`, and the paired standard error of that difference over the same examples,
  sqrt(var(d) / n) with d = last correct - first correct per example (0 for n < 2)."""
  first, *_, last = [r for r in results if r.steps == steps]
  d = np.asarray(last.correct, float) - np.asarray(first.correct, float)
  se = float(d.std(ddof=1) / np.sqrt(d.size)) if d.size > 1 else 0.0
  return 100 * (last.accuracy - first.accuracy), 100 * se


def results_table(results: list[StageResult], *, header: str, rl_steps: int) -> str:
  """A d1-style markdown table: accuracy % (± binomial s.e.) and mean reward per stage (rows)
  and number of sampler steps (columns)."""
  steps_list = list(dict.fromkeys(r.steps for r in results))
  labels = list(dict.fromkeys(r.label for r in results))
  by_key = {(r.label, r.steps): r for r in results}
  name = lambda s: f"{s} step{'s' * (s != 1)}" + (" (RL sampler)" if s == rl_steps else "")
  lines = [header, "",
           "| model | " + " | ".join(f"{name(s)}: accuracy % | mean reward" for s in steps_list)
           + " |", "|---|" + "---|---|" * len(steps_list)]
  for label in labels:
    cells = [by_key[label, s] for s in steps_list]
    lines.append(f"| {label} | " + " | ".join(
        f"{100 * r.accuracy:.1f} ± {100 * r.standard_error:.1f} | {r.mean_reward:.3f}"
        for r in cells) + " |")
  lines.append("")
  gains = {s: gain_points(results, s) for s in steps_list}
  lines += [f"diffu-GRPO - SFT with {name(s)}: {gains[s][0]:+.1f} ± {gains[s][1]:.1f} points "
            "(paired standard error)." for s in steps_list]
  return "\n".join(lines)


def check_configs(sft_config, rl_config) -> None:
  """Both stages' configs checked before anything compiles; ValueError names the field."""
  from diffusionlm.rl import rollout, setup as rl_setup  # pylint: disable=g-import-not-at-top
  from diffusionlm.train import validation  # pylint: disable=g-import-not-at-top
  if sft_config.objective != "sft":
    raise ValueError(f"sft_config.objective={sft_config.objective!r}: the first stage is SFT.")
  sft_config, rl_config = (c.copy_and_resolve_references() for c in (sft_config, rl_config))
  sft_config.init_from = rl_config.init_from = ""  # The RL stage's is the SFT run, made later.
  validation.validate_train_config(sft_config, num_devices=jax.device_count(),
                                   process_count=jax.process_count())
  validation.validate_run_config(rl_config, num_devices=jax.device_count())
  mesh = sharding.make_mesh(rl_config.mesh)
  rl_setup.validate_rl_config(rl_config, data_parallel=sharding.data_parallel_size(mesh))
  rollout.sampler_kwargs(rl_config.rl, mask_id=0)
  if rl_config.data.dataset != sft_config.data.dataset:
    raise ValueError(f"rl_config.data.dataset={rl_config.data.dataset!r} differs from "
                     f"sft_config.data.dataset={sft_config.data.dataset!r}.")


def _say(message: str) -> None:
  if jax.process_index() == 0:
    print(message, flush=True)


class StageInterrupted(RuntimeError):
  """A stage stopped before its last step (SIGTERM): its checkpoint is saved."""


def _require_finished(stage: str, summary: dict, config) -> None:
  if summary["step"] < config.num_train_steps:
    raise StageInterrupted(
        f"The {stage} stage stopped at step {summary['step']} of {config.num_train_steps} "
        "(preempted) with its checkpoint saved; rerun the same command to resume.")


def run_pipeline(sft_config, rl_config, workdir: str, *, seed: int, num_test: int,
                 extra_eval_steps: Sequence[int] = ()) -> dict:
  """SFT -> diffu-GRPO -> evaluation of both with the RL sampler, and with each of
  `extra_eval_steps` denoising steps; returns the results as a dict."""
  from diffusionlm.rl import loop  # pylint: disable=g-import-not-at-top
  from diffusionlm.train import trainer  # pylint: disable=g-import-not-at-top
  sft_config = sft_config.copy_and_resolve_references()
  rl_config = rl_config.copy_and_resolve_references()
  sft_dir, rl_dir = os.path.join(workdir, "sft"), os.path.join(workdir, "rl")
  sft_config.seed = rl_config.seed = seed
  rl_config.init_from = sft_dir
  check_configs(sft_config, rl_config)

  _say(f"=== 1/3 SFT on {sft_config.data.dataset} -> {sft_dir}")
  _require_finished("SFT", trainer.train_and_evaluate(sft_config, sft_dir), sft_config)
  _say(f"=== 2/3 diffu-GRPO from the SFT checkpoint -> {rl_dir}")
  _require_finished("diffu-GRPO", loop.train(rl_config, rl_dir), rl_config)
  _say("=== 3/3 evaluation on the test split")
  rl = rl_config.rl
  steps_list = list(dict.fromkeys([rl.steps, *extra_eval_steps]))
  results = [result
             for run_dir, label in ((sft_dir, "SFT"), (rl_dir, "SFT + diffu-GRPO (d1)"))
             for result in evaluate_stage(run_dir, label, rl_config=rl_config,
                                          steps_list=steps_list, split="test",
                                          num_examples=num_test, seed=seed)]
  header = (f"{rl.task}, test split, {results[0].num_examples} examples; greedy decoding, "
            f"gen_length {rl.gen_length}, block_length {rl.block_length}, {rl.remasking} "
            "remasking.")
  table = results_table(results, header=header, rl_steps=rl.steps)
  gains = {s: gain_points(results, s) for s in steps_list}
  summary = {"seed": seed, "task": rl.task, "rl_steps": rl.steps,
             "results": [r.summary() for r in results],
             "gain_points": {str(s): gains[s][0] for s in steps_list},
             "gain_standard_error": {str(s): gains[s][1] for s in steps_list}}
  _say(table)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "results.md"), "w") as f:
      f.write(table + "\n")
    with open(os.path.join(workdir, "results.json"), "w") as f:
      json.dump(summary, f, indent=1)
  _say(f"Wrote {workdir}/results.md and results.json")
  return summary


def main(argv):
  cli.start(argv)
  if _NUM_TEST.value < 0:
    raise app.UsageError(f"--num_test={_NUM_TEST.value} must be >= 0.")
  extra_eval_steps = _EXTRA_EVAL_STEPS.value or []
  if any(steps < 1 for steps in extra_eval_steps):
    raise app.UsageError(f"--extra_eval_steps={extra_eval_steps} must all be >= 1.")
  try:
    run_pipeline(_SFT_CONFIG.value, _RL_CONFIG.value, _WORKDIR.value, seed=_SEED.value,
                 num_test=_NUM_TEST.value, extra_eval_steps=extra_eval_steps)
  except StageInterrupted as e:
    raise SystemExit(str(e)) from e


if __name__ == "__main__":
  cli.run(main)
