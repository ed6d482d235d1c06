"""The README's main job, `python -m diffusionlm.quickstart`, on a tiny model: pretraining ->
SFT -> diffu-GRPO (and d1's) -> evaluation table, resumable, every config checked first."""
import json
import os
import subprocess
import sys

from absl import app
from absl import flags
from ml_collections import config_flags
import pytest

from configs import quickstart as quickstart_config
from configs import rl_countdown, rl_sudoku, sft_countdown, sft_sudoku
from diffusionlm import quickstart

NUM_TEST = 8
RL_LABEL, D1_LABEL = "SFT + diffu-GRPO", "SFT + diffu-GRPO as in d1"
SHARED = {"data.num_examples": 64, "model.d_model": 32, "model.num_layers": 1,
          "model.num_heads": 2, "model.mlp_dim": 64, "log_every_steps": 1}
RL_TINY = {"num_train_steps": 2, "checkpoint_every_steps": 2, "rl.num_prompts_per_step": 4,
           "rl.num_generations": 2, "rl.num_iterations": 2, "rl.gen_length": 40,
           "rl.block_length": 40, "rl.steps": 4, "rl.eval_every_steps": 0,
           "rl.eval_batch_size": 8}


def tiny_configs(data_dir, **rl_overrides):
  """(pretrain, sft, rl, d1) configs of a pipeline that runs in seconds."""
  shared = {**SHARED, "data.data_dir": data_dir}
  train = {"num_train_steps": 3, "global_batch_size": 8, "eval_every_steps": 0,
           "checkpoint_every_steps": 3}
  pretrain = quickstart_config.get_config()
  pretrain.update_from_flattened_dict({**shared, **train})
  sft = sft_sudoku.get_config("pretrained")
  sft.update_from_flattened_dict({**shared, **train})
  rl = rl_sudoku.get_config()
  rl.update_from_flattened_dict({**shared, **RL_TINY, **rl_overrides})
  d1 = rl_sudoku.get_config("d1")  # Its own mu (d1's > 1 updates per rollout).
  d1.update_from_flattened_dict({**shared, **{k: v for k, v in RL_TINY.items()
                                              if k != "rl.num_iterations"}})
  return pretrain, sft, rl, d1


def _run(tfds_dir, workdir, **rl_overrides):
  pretrain, sft, rl, d1 = tiny_configs(tfds_dir, **rl_overrides)
  return quickstart.run_pipeline(pretrain, sft, rl, workdir, seed=3, num_test=NUM_TEST,
                                 eval_steps=[4, 2], d1_config=d1)


@pytest.fixture(scope="module")
def pipeline_run(tfds_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("quickstart") / "run")
  return workdir, _run(tfds_dir, workdir)


def _read_json(path):
  with open(path) as f:
    return json.load(f)


def test_pipeline_trains_every_stage_and_tabulates_their_test_scores(pipeline_run):
  workdir, summary = pipeline_run
  sft_config = _read_json(os.path.join(workdir, "sft", "config.json"))
  assert sft_config["init_from"] == os.path.join(workdir, "pretrain")
  assert sft_config["objective"] == "sft"
  for name in ("rl", "rl_d1"):
    rl_config = _read_json(os.path.join(workdir, name, "config.json"))
    assert rl_config["init_from"] == os.path.join(workdir, "sft")
    assert rl_config["seed"] == 3 == sft_config["seed"]
    assert _read_json(os.path.join(workdir, name, "summary.json"))["step"] == 2
  d1 = _read_json(os.path.join(workdir, "rl_d1", "config.json"))["rl"]
  assert (d1["estimator"], d1["p_mask_prompt"], d1["num_iterations"]) == ("mean_field", 0.15, 4)
  assert summary["estimators"] == {RL_LABEL: rl_sudoku.get_config().rl.estimator,
                                   D1_LABEL: "mean_field"}

  assert {k: v for k, v in summary.items() if k != "stage_seconds"} == {
      k: v for k, v in _read_json(os.path.join(workdir, "results.json")).items()
      if k != "stage_seconds"}
  assert set(summary["stage_seconds"]) == {"pretrain", "sft", "rl", "rl_d1", "evaluation"}
  results = {(r["label"], r["steps"]): r for r in summary["results"]}
  assert sorted(results) == sorted((label, steps) for steps in (4, 2)
                                   for label in ("SFT", RL_LABEL, D1_LABEL))
  for label, name in (("SFT", "sft"), (RL_LABEL, "rl"), (D1_LABEL, "rl_d1")):
    evaluated = _read_json(os.path.join(workdir, name, "eval_sudoku_test.json"))
    assert evaluated["settings"]["steps"] == 4  # The first (headline) column is saved.
    stage = results[label, 4]
    assert stage["num_examples"] == evaluated["num_examples"] == NUM_TEST
    assert stage["accuracy"] == pytest.approx(
        sum(e["correct"] for e in evaluated["examples"]) / NUM_TEST)
    assert stage["mean_reward"] == pytest.approx(evaluated["mean_reward"])
  with open(os.path.join(workdir, "results.md")) as f:
    table = f.read()
  for label in (RL_LABEL, D1_LABEL):
    for steps in (4, 2):
      gain = 100 * (results[label, steps]["accuracy"] - results["SFT", steps]["accuracy"])
      assert summary["gain_points"][label][str(steps)] == pytest.approx(gain)
      se = summary["gain_standard_error"][label][str(steps)]
      assert f"{label} - SFT with {steps} steps" in table
      assert f"{gain:+.1f} ± {se:.1f} points" in table
  assert all(f"| {label} |" in table for label in ("SFT", RL_LABEL, D1_LABEL))
  assert "4 steps (RL sampler)" in table and "Wall time: pretrain" in table


def test_gain_has_the_paired_standard_error_of_the_per_example_differences():
  def stage(label, correct):
    return quickstart.StageResult(label, 1, sum(correct) / len(correct), 0.0, len(correct),
                                  tuple(correct))
  # d = rl - sft per example: [0, 1, 0, -1, 1]; mean 0.2, sample variance 0.7.
  sft, rl = stage("SFT", [1, 0, 0, 1, 0]), stage("RL", [1, 1, 0, 0, 1])
  gain, se = quickstart.gain_points(sft, rl)
  assert gain == pytest.approx(20.0)
  assert se == pytest.approx(100 * (0.7 / 5) ** 0.5)
  assert quickstart.gains([sft, rl]) == {"RL": {1: (gain, se)}}
  # The same accuracies with every change in one direction: a smaller paired error.
  _, se_one_way = quickstart.gain_points(sft, stage("RL", [1, 1, 0, 1, 0]))
  assert se_one_way < se
  assert "correct" not in sft.summary()


def test_rerun_resumes_every_stage_and_reproduces_the_table(pipeline_run, tfds_dir):
  workdir, summary = pipeline_run
  names = ("pretrain", "sft", "rl", "rl_d1")
  metrics = {name: os.path.join(workdir, name, "metrics.jsonl") for name in names}
  before = {name: open(path).read() for name, path in metrics.items()}
  again = _run(tfds_dir, workdir)
  drop_time = lambda s: {k: v for k, v in s.items() if k != "stage_seconds"}
  assert drop_time(again) == drop_time(summary)
  assert {name: open(path).read() for name, path in metrics.items()} == before


@pytest.mark.parametrize("overrides, message", [
    ({"rl.num_generations": 1}, "config.rl.num_generations=1"),
    ({"rl.remasking": "sideways"}, "remasking"),
    ({"rl.estimator": "exact"}, "config.rl.estimator='exact'"),
    ({"data.dataset": "countdown", "rl.task": "countdown"}, "data.dataset='countdown' differs"),
])
def test_bad_configs_fail_before_anything_trains(tfds_dir, tmp_path, overrides, message):
  pretrain, sft, rl, _ = tiny_configs(tfds_dir, **overrides)
  with pytest.raises(ValueError, match=message):
    quickstart.run_pipeline(pretrain, sft, rl, str(tmp_path / "run"), seed=0,
                            num_test=NUM_TEST)
  assert not os.path.exists(tmp_path / "run" / "pretrain")


def test_a_preempted_stage_stops_the_pipeline(tfds_dir, tmp_path, monkeypatch):
  """SIGTERM makes the trainer save and return early; the next stage must not start."""
  from diffusionlm.train import trainer  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(trainer, "train_and_evaluate", lambda config, workdir: {"step": 1})
  pretrain, sft, rl, _ = tiny_configs(tfds_dir)
  with pytest.raises(quickstart.StageInterrupted,
                     match="pretraining stage stopped at step 1 of 3"):
    quickstart.run_pipeline(pretrain, sft, rl, str(tmp_path / "run"), seed=0,
                            num_test=NUM_TEST)
  assert not os.path.exists(tmp_path / "run" / "sft")


def test_cli_rejects_bad_flags_before_anything_runs(tmp_path):
  workdir = tmp_path / "run"
  out = subprocess.run(
      [sys.executable, "-m", "diffusionlm.quickstart", f"--workdir={workdir}",
       "--eval_steps=0"], capture_output=True, text=True, timeout=300,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert out.returncode != 0
  assert "--eval_steps=[0] must be given and all be >= 1" in out.stderr
  assert not workdir.exists()


def _flag_values(argv):
  """The quickstart's four stage flags (sudoku defaults) parsed from `argv`."""
  flag_values = flags.FlagValues()
  for name, file in quickstart.TASK_CONFIGS["sudoku"].items():
    config_flags.DEFINE_config_file(name, os.path.join(quickstart._CONFIGS_DIR, file),  # pylint: disable=protected-access
                                    flag_values=flag_values, sys_argv=argv)
  flag_values(argv)
  return flag_values


def test_task_flag_picks_each_stages_countdown_config_and_keeps_overrides():
  argv = ["quickstart", "--rl_config.num_train_steps=7", "--d1_config.rl.num_iterations=3"]
  picked = {name: config.to_dict() for name, config in
            quickstart.task_configs("countdown", _flag_values(argv)).items()}
  rl, d1 = rl_countdown.get_config(), rl_countdown.get_config("d1")
  rl.num_train_steps, d1.rl.num_iterations = 7, 3
  assert picked == {"pretrain_config": quickstart_config.get_config("countdown").to_dict(),
                    "sft_config": sft_countdown.get_config("pretrained").to_dict(),
                    "rl_config": rl.to_dict(), "d1_config": d1.to_dict()}
  assert {c["data"]["dataset"] for c in picked.values()} == {"countdown"}
  # The default task keeps the sudoku files.
  sudoku_rl = quickstart.task_configs("sudoku", _flag_values(argv))["rl_config"]
  assert sudoku_rl.rl.task == "sudoku" and sudoku_rl.num_train_steps == 7


def test_an_explicit_stage_config_wins_over_the_tasks():
  argv = ["quickstart", "--sft_config=" + os.path.join(quickstart._CONFIGS_DIR,  # pylint: disable=protected-access
                                                       "sft_sudoku.py"),
          "--sft_config.num_train_steps=5"]
  configs = quickstart.task_configs("countdown", _flag_values(argv))
  expected = sft_sudoku.get_config()  # From scratch, not countdown's :pretrained.
  expected.num_train_steps = 5
  assert configs["sft_config"].to_dict() == expected.to_dict()
  assert configs["rl_config"].to_dict() == rl_countdown.get_config().to_dict()


def test_an_unknown_task_is_an_error_that_lists_the_tasks():
  with pytest.raises(app.UsageError, match=r"--task='chess': expected one of "
                     r"\['countdown', 'sudoku'\]"):
    quickstart.task_configs("chess", _flag_values(["quickstart"]))


def test_countdown_configs_fit_the_task_and_pass_the_pipelines_checks(tfds_dir):
  from diffusionlm import tasks  # pylint: disable=g-import-not-at-top
  from diffusionlm.tasks import countdown  # pylint: disable=g-import-not-at-top
  shared = {"data.data_dir": tfds_dir, "data.num_examples": 64}
  pretrain = quickstart_config.get_config("countdown")
  sft = sft_countdown.get_config("pretrained")
  stages = [quickstart.RLStage(name, name, rl_countdown.get_config(arg))
            for name, arg in (("rl", None), ("rl_d1", "d1"), ("one_step", "one_step"))]
  for config in (pretrain, sft, *(s.config for s in stages)):
    config.update_from_flattened_dict(shared)
  quickstart.check_configs(pretrain, sft, stages)
  rl = stages[0].config.rl
  assert (rl.task, rl.estimator, stages[1].config.rl.estimator) == (
      "countdown", "trajectory", "mean_field")
  assert 1 < rl.steps < rl.gen_length  # Multi-step decoding.
  # The longest response + EOS fits the answer, and prompt + response + EOS a training row.
  task = tasks.for_dataset("countdown")
  examples = countdown.generate(0, 2000)
  assert max(len(task.response(ex)) for ex in examples) + 1 <= rl.gen_length
  assert max(len(task.text(ex)) for ex in examples) + 1 <= sft.data.seq_len
