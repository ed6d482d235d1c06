"""The README's main job: d1 (Zhao et al. 2025) in miniature, on 2 CPU cores.

  python -m diffusionlm.quickstart [--task=sudoku|countdown] [--workdir=runs/d1_quickstart]
      [--seed=0] [--num_test=1000] [--eval_steps=20 --eval_steps=1] [--d1_row]
      [--pretrain_config.FIELD=VALUE ...] [--sft_config.FIELD=VALUE ...]
      [--rl_config.FIELD=VALUE ...] [--d1_config.FIELD=VALUE ...]

Stages, each in its own folder under --workdir, each resuming from its checkpoints when the
command is rerun (a finished stage returns at once):
  1. pretrain/  masked-diffusion pretraining on the built-in 4x4 Sudoku text
                (configs/quickstart.py), so that masks anywhere, the prompt's too, are in
                distribution, as they are for LLaDA;
  2. sft/       SFT from it (configs/sft_sudoku.py:pretrained): clean prompt, masked answer;
  3. rl/        diffu-GRPO from the SFT model with multi-step rollouts and this codebase's
                default likelihood estimator (configs/rl_sudoku.py);
     rl_d1/     with --d1_row, also diffu-GRPO as d1 publishes it (configs/rl_sudoku.py:d1:
                the mean-field estimate, prompts masked at 0.15, mu = 4), same rollouts;
  4. every model decodes the held-out test split greedily with each --eval_steps number of
     denoising steps (default 20, the multi-step decoder the docs recommend, and 1), and a
     table of accuracies with each RL row's gain over SFT and its paired standard error is
     printed and written to WORKDIR/results.md and WORKDIR/results.json, with the wall time
     of every stage.
--seed sets every stage's `seed` (initialisation, data order, rollouts); the puzzles stay
those of `data.task_seed`.

--task=countdown runs the same stages on Countdown with 3 numbers (configs/quickstart.py:
countdown, sft_countdown.py:pretrained, rl_countdown.py and rl_countdown.py:d1: 20-step
rollouts over an 80-token answer, 4 tokens per pass where Sudoku's unmask 2). An explicit
--pretrain_config / --sft_config / --rl_config / --d1_config replaces the task's file;
--X_config.FIELD=VALUE overrides apply to whichever file is used.
"""
from collections.abc import Sequence
import dataclasses
import importlib.util
import json
import math
import os
import time

from absl import app
from absl import flags
import jax
import ml_collections
from ml_collections import config_flags
import numpy as np

from diffusionlm import cli
from diffusionlm.train import sharding

# The experiment configs: a folder beside the package (setup.py installs both), read as
# files, not imported.
_CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "configs")


def _config_flag(name: str, file: str, help_text: str):
  return config_flags.DEFINE_config_file(name, os.path.join(_CONFIGS_DIR, file), help_text,
                                         lock_config=True)


# Each task's config file of each stage, relative to configs/.
TASK_CONFIGS = {
    "sudoku": {"pretrain_config": "quickstart.py", "sft_config": "sft_sudoku.py:pretrained",
               "rl_config": "rl_sudoku.py", "d1_config": "rl_sudoku.py:d1"},
    "countdown": {"pretrain_config": "quickstart.py:countdown",
                  "sft_config": "sft_countdown.py:pretrained", "rl_config": "rl_countdown.py",
                  "d1_config": "rl_countdown.py:d1"},
}

_TASK = flags.DEFINE_string("task", "sudoku", f"One of {sorted(TASK_CONFIGS)}: picks every "
                            "stage's default config.")
_STAGE_HELP = {"pretrain_config": "Masked-diffusion pretraining config",
               "sft_config": "SFT stage config", "rl_config": "diffu-GRPO stage config",
               "d1_config": "diffu-GRPO as d1 publishes it (the --d1_row stage)"}
for _name, _file in TASK_CONFIGS["sudoku"].items():  # Read by `task_configs`.
  _config_flag(_name, _file, f"{_STAGE_HELP[_name]}; default: the --task's file.")
_D1_ROW = flags.DEFINE_bool("d1_row", False, "Also train and evaluate the d1 row.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/d1_quickstart", "Folder of the stages.")
_SEED = flags.DEFINE_integer("seed", 0, "Training seed of every stage.")
_NUM_TEST = flags.DEFINE_integer("num_test", 1000, "Test examples to evaluate; 0 = all.")
_EVAL_STEPS = flags.DEFINE_multi_integer(
    "eval_steps", [20, 1], "Evaluate every model with these numbers of denoising steps "
    "(greedy); the first is the table's headline column.")

SFT_LABEL = "SFT"


@dataclasses.dataclass(frozen=True)
class RLStage:
  """An RL row of the table: its folder under --workdir, its label and its config."""
  name: str
  label: str
  config: ml_collections.ConfigDict


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
  """Accuracy of the run in `run_dir` on `split` with the RL sampler's settings at the
  evaluation temperature (greedy by default), once per number of denoising steps in
  `steps_list`; the first also writes RUN_DIR/eval_<task>_<split>.json."""
  from diffusionlm import generation  # pylint: disable=g-import-not-at-top
  from diffusionlm.data import pipeline  # pylint: disable=g-import-not-at-top
  from diffusionlm.rl import setup as rl_setup  # pylint: disable=g-import-not-at-top
  from diffusionlm.train import load  # pylint: disable=g-import-not-at-top
  run = load.load_run(run_dir)
  examples = pipeline.load_task_examples(run.config.data, split)
  if num_examples:
    examples = examples[:num_examples]
  results = []
  for i, steps in enumerate(steps_list):
    rl = rl_config.rl.copy_and_resolve_references()
    rl.steps = steps
    settings = rl_setup.eval_sampler_settings(rl, mask_id=run.model_config.mask_id)
    result = generation.evaluate_task(
        run.params, run.apply_fn, run.tokenizer, examples, task=rl.task,
        mask_id=run.model_config.mask_id, causal=False, batch_size=rl.eval_batch_size,
        gen_length=rl.gen_length, key=jax.random.key(seed), sampler_kwargs=settings,
        mesh=run.setup.mesh)
    if i == 0 and jax.process_index() == 0:
      generation.write_result(run_dir, result, examples, task=rl.task, split=split,
                              settings={"gen_length": rl.gen_length, **settings})
    results.append(StageResult(label, steps, result["accuracy"], result["mean_reward"],
                               result["num_examples"], tuple(result["correct"])))
  return results


def gain_points(baseline: StageResult, other: StageResult) -> tuple[float, float]:
  """(gain, standard error), in points: other's accuracy minus baseline's on the same
  examples, and the paired standard error of that difference, sqrt(var(d) / n) with
  d = other correct - baseline correct per example (0 for n < 2)."""
  d = np.asarray(other.correct, float) - np.asarray(baseline.correct, float)
  se = float(d.std(ddof=1) / np.sqrt(d.size)) if d.size > 1 else 0.0
  return 100 * (other.accuracy - baseline.accuracy), 100 * se


def gains(results: Sequence[StageResult]) -> dict[str, dict[int, tuple[float, float]]]:
  """{label: {steps: (gain, standard error)}}: every RL row against SFT (`gain_points`)."""
  by_key = {(r.label, r.steps): r for r in results}
  out = {}
  for r in results:
    if r.label != SFT_LABEL:
      out.setdefault(r.label, {})[r.steps] = gain_points(by_key[SFT_LABEL, r.steps], r)
  return out


def results_table(results: Sequence[StageResult], *, header: str, rl_steps: int) -> str:
  """A d1-style markdown table: accuracy % (± binomial s.e.) per model (rows) and number of
  denoising steps (columns), then each RL row's gain over SFT (± paired s.e.)."""
  steps_list = list(dict.fromkeys(r.steps for r in results))
  labels = list(dict.fromkeys(r.label for r in results))
  by_key = {(r.label, r.steps): r for r in results}
  name = lambda s: f"{s} step{'s' * (s != 1)}" + (" (RL sampler)" if s == rl_steps else "")
  lines = [header, "",
           "| model | " + " | ".join(f"{name(s)}: accuracy % | mean reward" for s in steps_list)
           + " |", "|---|" + "---|---|" * len(steps_list)]
  for label in labels:
    lines.append(f"| {label} | " + " | ".join(
        f"{100 * by_key[label, s].accuracy:.1f} ± {100 * by_key[label, s].standard_error:.1f}"
        f" | {by_key[label, s].mean_reward:.3f}" for s in steps_list) + " |")
  lines.append("")
  for label, by_steps in gains(results).items():
    lines += [f"{label} - SFT with {name(s)}: {gain:+.1f} ± {se:.1f} points (paired standard "
              "error)." for s, (gain, se) in by_steps.items()]
  return "\n".join(lines)


def check_configs(pretrain_config, sft_config, rl_stages: Sequence[RLStage]) -> None:
  """Every stage's config checked before anything compiles; ValueError names the field."""
  from diffusionlm.rl import rollout, setup as rl_setup  # pylint: disable=g-import-not-at-top
  from diffusionlm.train import validation  # pylint: disable=g-import-not-at-top
  for stage, config, objective in (("pretrain", pretrain_config, "mdm"),
                                   ("sft", sft_config, "sft")):
    if config.objective != objective:
      raise ValueError(f"{stage}_config.objective={config.objective!r}: this stage is "
                       f"{objective!r}.")
    config = config.copy_and_resolve_references()
    config.init_from = ""  # The SFT stage's is the pretraining run, made later.
    validation.validate_train_config(config, num_devices=jax.device_count(),
                                     process_count=jax.process_count())
  for stage in rl_stages:
    config = stage.config.copy_and_resolve_references()
    config.init_from = ""  # The SFT run, made later.
    validation.validate_run_config(config, num_devices=jax.device_count())
    mesh = sharding.make_mesh(config.mesh)
    rl_setup.validate_rl_config(config, data_parallel=sharding.data_parallel_size(mesh))
    rollout.sampler_kwargs(config.rl, mask_id=0)
    for other, other_config in (("pretrain", pretrain_config), ("sft", sft_config)):
      if config.data.dataset != other_config.data.dataset:
        raise ValueError(f"{stage.name} config: data.dataset={config.data.dataset!r} differs "
                         f"from {other}_config.data.dataset={other_config.data.dataset!r}.")


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


def _minutes(seconds: float) -> str:
  return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


def run_pipeline(pretrain_config, sft_config, rl_config, workdir: str, *, seed: int,
                 num_test: int, eval_steps: Sequence[int] = (20, 1),
                 d1_config=None) -> dict:
  """Pretraining -> SFT -> diffu-GRPO (and, given `d1_config`, d1's diffu-GRPO) ->
  evaluation of SFT and every RL model with each of `eval_steps`; returns the results."""
  from diffusionlm.rl import loop  # pylint: disable=g-import-not-at-top
  from diffusionlm.train import trainer  # pylint: disable=g-import-not-at-top
  dirs = {name: os.path.join(workdir, name) for name in ("pretrain", "sft", "rl", "rl_d1")}
  pretrain_config, sft_config = (c.copy_and_resolve_references()
                                 for c in (pretrain_config, sft_config))
  rl_stages = [RLStage("rl", "SFT + diffu-GRPO", rl_config.copy_and_resolve_references())]
  if d1_config is not None:
    rl_stages.append(RLStage("rl_d1", "SFT + diffu-GRPO as in d1",
                             d1_config.copy_and_resolve_references()))
  for config in (pretrain_config, sft_config, *(s.config for s in rl_stages)):
    config.seed = seed
  sft_config.init_from = dirs["pretrain"]
  for stage in rl_stages:
    stage.config.init_from = dirs["sft"]
  check_configs(pretrain_config, sft_config, rl_stages)
  if not eval_steps:
    raise ValueError("eval_steps is empty: nothing to evaluate with.")

  num_stages, seconds = 3 + len(rl_stages), {}

  def timed(name: str, title: str, fn):
    _say(f"=== {len(seconds) + 1}/{num_stages} {title}")
    tick = time.perf_counter()
    out = fn()
    seconds[name] = time.perf_counter() - tick
    _say(f"=== {name} done in {_minutes(seconds[name])}")
    return out

  timed("pretrain", f"masked-diffusion pretraining -> {dirs['pretrain']}",
        lambda: _require_finished("pretraining", trainer.train_and_evaluate(
            pretrain_config, dirs["pretrain"]), pretrain_config))
  timed("sft", f"SFT from the pretrained model -> {dirs['sft']}",
        lambda: _require_finished("SFT", trainer.train_and_evaluate(sft_config, dirs["sft"]),
                                  sft_config))
  for stage in rl_stages:
    rl = stage.config.rl
    timed(stage.name, f"{stage.label} ({rl.estimator} estimator, {rl.steps}-step rollouts) "
          f"-> {dirs[stage.name]}",
          lambda stage=stage: _require_finished(
              stage.label, loop.train(stage.config, dirs[stage.name]), stage.config))

  rl = rl_stages[0].config.rl
  rows = [("sft", SFT_LABEL)] + [(s.name, s.label) for s in rl_stages]
  results = timed("evaluation", f"greedy evaluation on the test split ({eval_steps} steps)",
                  lambda: [result for name, label in rows
                           for result in evaluate_stage(
                               dirs[name], label, rl_config=rl_stages[0].config,
                               steps_list=eval_steps, split="test", num_examples=num_test,
                               seed=seed)])
  header = (f"{rl.task}, test split, {results[0].num_examples} examples; greedy decoding, "
            f"gen_length {rl.gen_length}, block_length {rl.block_length}, {rl.remasking} "
            "remasking.")
  table = results_table(results, header=header, rl_steps=rl.steps)
  table += "\n\nWall time: " + ", ".join(f"{k} {_minutes(v)}" for k, v in seconds.items())
  summary = {"seed": seed, "task": rl.task, "rl_steps": rl.steps,
             "estimators": {s.label: s.config.rl.estimator for s in rl_stages},
             "results": [r.summary() for r in results],
             "gain_points": {label: {str(s): g for s, (g, _) in by_steps.items()}
                             for label, by_steps in gains(results).items()},
             "gain_standard_error": {label: {str(s): se for s, (_, se) in by_steps.items()}
                                     for label, by_steps in gains(results).items()},
             "stage_seconds": seconds}
  _say(table)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "results.md"), "w") as f:
      f.write(table + "\n")
    with open(os.path.join(workdir, "results.json"), "w") as f:
      json.dump(summary, f, indent=1)
  _say(f"Wrote {workdir}/results.md and results.json")
  return summary


def _load_config_file(file: str, module_name: str) -> ml_collections.ConfigDict:
  """get_config(ARG) of configs/FILE.py[:ARG], as config_flags reads a config file."""
  path, _, arg = file.partition(":")
  spec = importlib.util.spec_from_file_location(module_name, os.path.join(_CONFIGS_DIR, path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg or None)


def task_configs(task: str, flag_values=flags.FLAGS) -> dict[str, ml_collections.ConfigDict]:
  """{stage flag name: config}: for each of TASK_CONFIGS' flags (pretrain_config, ...), the
  file given on the command line, else `task`'s file; either way with the flag's
  --NAME.FIELD overrides. An unknown task is a UsageError listing the tasks."""
  if task not in TASK_CONFIGS:
    raise app.UsageError(f"--task={task!r}: expected one of {sorted(TASK_CONFIGS)}.")
  configs = {}
  for name, file in TASK_CONFIGS[task].items():
    flag = flag_values[name]
    if flag.present or file == TASK_CONFIGS["sudoku"][name]:  # The flags' default files.
      configs[name] = flag.value  # Already parsed, with its overrides.
      continue
    config = _load_config_file(file, f"{name}_{task}")
    config.update_from_flattened_dict(config_flags.get_override_values(flag))
    config.lock()
    configs[name] = config
  return configs


def main(argv):
  cli.start(argv)
  configs = task_configs(_TASK.value)
  if _NUM_TEST.value < 0:
    raise app.UsageError(f"--num_test={_NUM_TEST.value} must be >= 0.")
  eval_steps = _EVAL_STEPS.value or []
  if not eval_steps or any(steps < 1 for steps in eval_steps):
    raise app.UsageError(f"--eval_steps={eval_steps} must be given and all be >= 1.")
  try:
    run_pipeline(configs["pretrain_config"], configs["sft_config"], configs["rl_config"],
                 _WORKDIR.value, seed=_SEED.value, num_test=_NUM_TEST.value,
                 eval_steps=eval_steps,
                 d1_config=configs["d1_config"] if _D1_ROW.value else None)
  except StageInterrupted as e:
    raise SystemExit(str(e)) from e


if __name__ == "__main__":
  cli.run(main)
