"""The README's main job, `python -m diffusionlm.quickstart`, on a tiny model: SFT -> diffu-GRPO
-> evaluation table, resumable, with both configs checked before anything trains."""
import json
import os
import subprocess
import sys

import pytest

from configs import rl_sudoku, sft_sudoku
from diffusionlm import quickstart

NUM_TEST = 8


def tiny_configs(data_dir, **rl_overrides):
  shared = {"data.data_dir": data_dir, "data.num_examples": 64, "model.d_model": 32,
            "model.num_layers": 1, "model.num_heads": 2, "model.mlp_dim": 64,
            "log_every_steps": 1}
  sft = sft_sudoku.get_config()
  sft.update_from_flattened_dict({**shared, "num_train_steps": 3, "global_batch_size": 8,
                                  "eval_every_steps": 0, "checkpoint_every_steps": 3})
  rl = rl_sudoku.get_config()
  rl.update_from_flattened_dict({
      **shared, "num_train_steps": 2, "checkpoint_every_steps": 2, "global_batch_size": 8,
      "rl.num_prompts_per_step": 4, "rl.num_generations": 2, "rl.num_iterations": 2,
      "rl.gen_length": 40, "rl.block_length": 40, "rl.steps": 4, "rl.eval_every_steps": 0,
      "rl.eval_batch_size": 8, **rl_overrides})
  return sft, rl


@pytest.fixture(scope="module")
def pipeline_run(tfds_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("quickstart") / "run")
  sft, rl = tiny_configs(tfds_dir)
  summary = quickstart.run_pipeline(sft, rl, workdir, seed=3, num_test=NUM_TEST,
                                   extra_eval_steps=[2])
  return workdir, summary


def _read_json(path):
  with open(path) as f:
    return json.load(f)


def test_pipeline_trains_both_stages_and_tabulates_their_test_scores(pipeline_run):
  workdir, summary = pipeline_run
  rl_config = _read_json(os.path.join(workdir, "rl", "config.json"))
  assert rl_config["init_from"] == os.path.join(workdir, "sft")
  assert rl_config["seed"] == 3 == _read_json(os.path.join(workdir, "sft", "config.json"))["seed"]
  assert _read_json(os.path.join(workdir, "rl", "summary.json"))["step"] == 2

  assert summary == _read_json(os.path.join(workdir, "results.json"))
  results = {(r["label"], r["steps"]): r for r in summary["results"]}
  assert sorted(results) == sorted((label, steps) for steps in (4, 2)
                                   for label in ("SFT", "SFT + diffu-GRPO (d1)"))
  for label, name in (("SFT", "sft"), ("SFT + diffu-GRPO (d1)", "rl")):
    evaluated = _read_json(os.path.join(workdir, name, "eval_sudoku_test.json"))
    assert evaluated["settings"]["steps"] == 4  # The RL sampler's evaluation is saved.
    stage = results[label, 4]
    assert stage["num_examples"] == evaluated["num_examples"] == NUM_TEST
    assert stage["accuracy"] == pytest.approx(
        sum(e["correct"] for e in evaluated["examples"]) / NUM_TEST)
    assert stage["mean_reward"] == pytest.approx(evaluated["mean_reward"])
  with open(os.path.join(workdir, "results.md")) as f:
    table = f.read()
  for steps in (4, 2):
    gain = 100 * (results["SFT + diffu-GRPO (d1)", steps]["accuracy"]
                  - results["SFT", steps]["accuracy"])
    assert summary["gain_points"][str(steps)] == pytest.approx(gain)
    se = summary["gain_standard_error"][str(steps)]
    assert f"{gain:+.1f} ± {se:.1f} points" in table
  assert "| SFT |" in table and "| SFT + diffu-GRPO (d1) |" in table
  assert "4 steps (RL sampler)" in table


def test_gain_has_the_paired_standard_error_of_the_per_example_differences():
  def stage(label, correct):
    return quickstart.StageResult(label, 1, sum(correct) / len(correct), 0.0, len(correct),
                                  tuple(correct))
  # d = rl - sft per example: [0, 1, 0, -1, 1]; mean 0.2, sample variance 0.7.
  results = [stage("SFT", [1, 0, 0, 1, 0]), stage("RL", [1, 1, 0, 0, 1])]
  gain, se = quickstart.gain_points(results, 1)
  assert gain == pytest.approx(20.0)
  assert se == pytest.approx(100 * (0.7 / 5) ** 0.5)
  # The same accuracies with every change in one direction: a smaller paired error.
  _, se_one_way = quickstart.gain_points(
      [stage("SFT", [1, 0, 0, 1, 0]), stage("RL", [1, 1, 0, 1, 0])], 1)
  assert se_one_way < se
  assert "correct" not in results[0].summary()


def test_rerun_resumes_both_stages_and_reproduces_the_table(pipeline_run, tfds_dir):
  workdir, summary = pipeline_run
  metrics = {name: os.path.join(workdir, name, "metrics.jsonl") for name in ("sft", "rl")}
  before = {name: open(path).read() for name, path in metrics.items()}
  sft, rl = tiny_configs(tfds_dir)
  again = quickstart.run_pipeline(sft, rl, workdir, seed=3, num_test=NUM_TEST,
                                 extra_eval_steps=[2])
  assert again == summary
  assert {name: open(path).read() for name, path in metrics.items()} == before


@pytest.mark.parametrize("overrides, message", [
    ({"rl.num_generations": 1}, "config.rl.num_generations=1"),
    ({"rl.remasking": "sideways"}, "remasking"),
    ({"data.dataset": "countdown", "rl.task": "countdown"}, "rl_config.data.dataset"),
])
def test_bad_configs_fail_before_anything_trains(tfds_dir, tmp_path, overrides, message):
  sft, rl = tiny_configs(tfds_dir, **overrides)
  with pytest.raises(ValueError, match=message):
    quickstart.run_pipeline(sft, rl, str(tmp_path / "run"), seed=0, num_test=NUM_TEST)
  assert not os.path.exists(tmp_path / "run" / "sft")


def test_a_preempted_stage_stops_the_pipeline(tfds_dir, tmp_path, monkeypatch):
  """SIGTERM makes the trainer save and return early; the next stage must not start."""
  from diffusionlm.train import trainer  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(trainer, "train_and_evaluate", lambda config, workdir: {"step": 1})
  sft, rl = tiny_configs(tfds_dir)
  with pytest.raises(quickstart.StageInterrupted, match="SFT stage stopped at step 1 of 3"):
    quickstart.run_pipeline(sft, rl, str(tmp_path / "run"), seed=0, num_test=NUM_TEST)
  assert not os.path.exists(tmp_path / "run" / "rl")


def test_cli_rejects_bad_flags_before_anything_runs(tmp_path):
  workdir = tmp_path / "run"
  out = subprocess.run(
      [sys.executable, "-m", "diffusionlm.quickstart", f"--workdir={workdir}",
       "--extra_eval_steps=0"], capture_output=True, text=True, timeout=300,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert out.returncode != 0
  assert "--extra_eval_steps=[0] must all be >= 1" in out.stderr
  assert not workdir.exists()
