"""End to end through the CLI: kill -9 + restart == uninterrupted; 2 processes == 1 process."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _flags(data_dir, **overrides):
  settings = {
      "data.dataset": "sudoku", "data.data_dir": data_dir, "data.seq_len": 64,
      "data.num_examples": 256, "model.d_model": 32, "model.num_layers": 2,
      "model.num_heads": 2, "model.mlp_dim": 64, "global_batch_size": 8,
      "log_every_steps": 1, "eval_every_steps": 0, "optimizer.warmup_steps": 1,
  }
  settings.update(overrides)
  return [f"--config.{k}={v}" for k, v in settings.items()]


def _env(devices):
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = ROOT
  return env


def _train_cmd(workdir, flags):
  return [sys.executable, "-m", "diffusionlm.train", "--config=configs/base.py",
          f"--workdir={workdir}", *flags]


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return [(r["step"], r["train/loss"], r["train/grad_norm"]) for r in rows if "train/loss" in r]


def _final_params(workdir):
  """Raw arrays of the final checkpoint, read back with orbax (no model code involved)."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  directory = os.path.join(workdir, "checkpoints")
  step = max(int(d) for d in os.listdir(directory) if d.isdigit())
  tree = ocp.PyTreeCheckpointer().restore(os.path.join(directory, str(step), "state"))
  return step, tree["params"]


@pytest.fixture
def data_dir(tfds_dir):
  return tfds_dir


def test_kill9_then_resume_is_bitwise_identical(data_dir, tmp_path):
  steps = 60
  flags = _flags(data_dir, num_train_steps=steps, checkpoint_every_steps=5)
  reference = str(tmp_path / "reference")
  subprocess.run(_train_cmd(reference, flags), cwd=ROOT, env=_env(1), check=True, capture_output=True)

  interrupted = str(tmp_path / "interrupted")
  proc = subprocess.Popen(_train_cmd(interrupted, flags), cwd=ROOT, env=_env(1),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  marker = os.path.join(interrupted, "checkpoints", "10")
  deadline = time.time() + 300
  while not os.path.isdir(marker) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.01)
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  assert not os.path.exists(os.path.join(interrupted, "summary.json")), (
      "the run finished before it could be killed; the test would prove nothing")
  killed_at = max(step for step, *_ in _losses(interrupted))
  assert killed_at < steps

  subprocess.run(_train_cmd(interrupted, flags), cwd=ROOT, env=_env(1), check=True, capture_output=True)
  assert _losses(interrupted) == _losses(reference)  # bitwise: exact float equality
  step_a, params_a = _final_params(interrupted)
  step_b, params_b = _final_params(reference)
  assert step_a == step_b == steps
  import jax  # pylint: disable=g-import-not-at-top
  jax.tree.map(np.testing.assert_array_equal, params_a, params_b)


def test_two_processes_match_one_process(data_dir, tmp_path):
  flags = _flags(data_dir, num_train_steps=4, checkpoint_every_steps=2)
  single = str(tmp_path / "single")
  subprocess.run(_train_cmd(single, flags), cwd=ROOT, env=_env(4), check=True, capture_output=True)

  multi = str(tmp_path / "multi")
  env = _env(2)
  env["DEVICES_PER_PROCESS"] = "2"
  env["PYTHON"] = sys.executable
  result = subprocess.run(["bash", "launch/local_multiprocess.sh", "2", "configs/base.py", multi, *flags],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  one, two = _losses(single), _losses(multi)
  assert [s for s, *_ in one] == [s for s, *_ in two] == [1, 2, 3, 4]
  np.testing.assert_allclose([l for _, l, _ in two], [l for _, l, _ in one], rtol=1e-5)
  np.testing.assert_allclose([g for *_, g in two], [g for *_, g in one], rtol=1e-4)
