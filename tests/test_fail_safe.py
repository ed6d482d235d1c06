"""Faults that must not lose a run: a dead process, unreadable checkpoints, what cannot fit."""
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {
    "data.dataset": "sudoku", "data.seq_len": 64, "data.num_examples": 256,
    "model.d_model": 32, "model.num_layers": 2, "model.num_heads": 2, "model.mlp_dim": 64,
    "global_batch_size": 8, "log_every_steps": 1, "eval_every_steps": 0,
    "optimizer.warmup_steps": 1,
}


def _flags(data_dir, **overrides):
  return [f"--config.{k}={v}" for k, v in {**TINY, "data.data_dir": data_dir, **overrides}.items()]


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  return True


def _wait_for(predicate, timeout_s: float, what: str):
  deadline = time.time() + timeout_s
  while not predicate():
    assert time.time() < deadline, f"timed out after {timeout_s} s waiting for {what}"
    time.sleep(0.05)


def test_killing_one_of_two_processes_stops_both_and_keeps_the_checkpoint(tfds_dir, tmp_path):
  workdir = str(tmp_path / "run")
  log = tmp_path / "launcher.err"
  env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": ROOT}
  with open(log, "w") as err:
    launcher = subprocess.Popen(
        ["bash", "launch/local_multiprocess.sh", "2", "configs/base.py", workdir,
         *_flags(tfds_dir, num_train_steps=100_000, checkpoint_every_steps=4)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err)
  try:
    _wait_for(lambda: len(re.findall(r"process \d is pid", log.read_text())) == 2, 60, "start")
    pids = [int(p) for p in re.findall(r"process \d is pid (\d+)", log.read_text())]
    checkpoints = os.path.join(workdir, "checkpoints")
    _wait_for(lambda: os.path.isdir(os.path.join(checkpoints, "8")), 300, "checkpoint 8")

    os.kill(pids[1], signal.SIGKILL)
    killed_at = time.time()
    _wait_for(lambda: launcher.poll() is not None and not _alive(pids[0]), 15,
              "the launcher and the surviving process to exit")
    stopped_after_s = time.time() - killed_at
  finally:
    if launcher.poll() is None:
      os.killpg(launcher.pid, signal.SIGKILL)
  assert launcher.returncode != 0
  message = log.read_text()
  assert f"process 1 (pid {pids[1]}) exited with status 137" in message, message[-2000:]
  assert stopped_after_s < 15

  step = max(int(d) for d in os.listdir(checkpoints) if d.isdigit())
  params = _read_checkpoint(os.path.join(checkpoints, str(step), "state"))["params"]
  leaves = jax.tree.leaves(params)
  assert step >= 8 and leaves and all(np.isfinite(np.asarray(x)).all() for x in leaves)


def _read_checkpoint(path: str):
  """A checkpoint's arrays read back with orbax onto one device (no model code involved)."""
  checkpointer = ocp.PyTreeCheckpointer()
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  restore_args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=device),
                              checkpointer.metadata(path).item_metadata)
  return checkpointer.restore(path, restore_args=restore_args)


def test_without_the_launcher_a_survivor_stops_by_itself(tfds_dir, tmp_path):
  """On a cluster nothing of ours kills the survivors. Each stops by itself: at once when
  its next collective with the dead process fails (cli.run: its traceback and one line, no
  wait at JAX's shutdown barrier), or, if it waits elsewhere (an orbax barrier, say), when
  the coordination service misses the dead one's heartbeats. The bound allows for both."""
  workdir = str(tmp_path / "run")
  port = 20000 + os.getpid() % 20000
  heartbeat_s = 10
  procs, logs = [], []
  for i in range(2):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT,
           "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
           "DIFFUSIONLM_COORDINATOR": f"127.0.0.1:{port}", "DIFFUSIONLM_NUM_PROCESSES": "2",
           "DIFFUSIONLM_PROCESS_ID": str(i), "DIFFUSIONLM_HEARTBEAT_TIMEOUT_S": str(heartbeat_s)}
    logs.append(tmp_path / f"process{i}.err")
    with open(logs[-1], "w") as err:
      procs.append(subprocess.Popen(
          [sys.executable, "-m", "diffusionlm.train", "--config=configs/base.py",
           f"--workdir={workdir}",
           *_flags(tfds_dir, num_train_steps=100_000, checkpoint_every_steps=4)],
          cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True))
  bound_s = 3 * heartbeat_s + 15  # The service's polling and a loaded machine's slowness.
  try:
    _wait_for(lambda: os.path.isdir(os.path.join(workdir, "checkpoints", "8")), 300,
              "checkpoint 8")
    procs[1].kill()
    _wait_for(lambda: procs[0].poll() is not None, bound_s, "the surviving process to stop")
  finally:
    for proc in procs:
      if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
  message = logs[0].read_text()
  assert procs[0].returncode != 0
  assert ("diffusionlm: process 0 of 2 stops" in message
          or "another task died" in message), message[-3000:]


# ---- Checkpoints that do not load ---------------------------------------------------------


def _config(data_dir, **overrides):
  from configs import base  # pylint: disable=g-import-not-at-top
  config = base.get_config()
  config.update_from_flattened_dict({**TINY, "data.data_dir": data_dir, "num_train_steps": 4,
                                     "checkpoint_every_steps": 2, **overrides})
  return config


def _corrupt(checkpoint_dir: str, step: int) -> None:
  """Truncates the array data of one checkpoint to 50 bytes, as a failed disk or copy would."""
  data_dir = os.path.join(checkpoint_dir, str(step), "state", "d")
  for name in os.listdir(data_dir):
    os.truncate(os.path.join(data_dir, name), 50)


def _snapshot(directory: str) -> dict:
  """Every file under `directory` with its bytes, to prove that nothing changed."""
  files = {}
  for root, _, names in os.walk(directory):
    for name in names:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        files[os.path.relpath(path, directory)] = f.read()
  return files


def test_a_run_whose_checkpoints_all_fail_stops_and_changes_nothing(tfds_dir, tmp_path):
  from diffusionlm.train import checkpoint, trainer  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / "run")
  trainer.train_and_evaluate(_config(tfds_dir), workdir)
  checkpoints = checkpoint.checkpoint_dir(workdir)
  for step in (2, 4):
    _corrupt(checkpoints, step)
  before = _snapshot(workdir)

  with pytest.raises(checkpoint.UnreadableCheckpointsError) as raised:
    trainer.train_and_evaluate(_config(tfds_dir, num_train_steps=6), workdir)
  message = str(raised.value)
  assert "step 4:" in message and "step 2:" in message and "delete" in message
  assert len(message.splitlines()) < 10 and "tensorstore_spec" not in message
  assert _snapshot(workdir) == before, "a refused start must not touch the run's files"


def test_one_unreadable_checkpoint_gives_one_warning_and_no_traceback_flood(tfds_dir, tmp_path):
  """Through the CLI, where orbax's stray reports reach the terminal (pytest would catch them)."""
  from diffusionlm.train import checkpoint, trainer  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / "run")
  trainer.train_and_evaluate(_config(tfds_dir), workdir)
  _corrupt(checkpoint.checkpoint_dir(workdir), 4)

  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT, "XLA_FLAGS": ""}
  result = subprocess.run(
      [sys.executable, "-m", "diffusionlm.train", "--config=configs/base.py",
       f"--workdir={workdir}", *_flags(tfds_dir, num_train_steps=6, checkpoint_every_steps=2)],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=True)
  warnings = [l for l in result.stderr.splitlines() if "Checkpoint step 4" in l]
  assert len(warnings) == 1 and "corrupt-4" in warnings[0] and len(warnings[0]) < 600, warnings
  assert "Event loop is closed" not in result.stderr, result.stderr[-3000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  assert os.path.isdir(os.path.join(checkpoint.checkpoint_dir(workdir), "corrupt-4"))


# ---- Prompts longer than the model's trained length ---------------------------------------


def test_prompts_that_leave_no_room_are_refused_naming_both_lengths():
  from diffusionlm import generation  # pylint: disable=g-import-not-at-top
  prompt_NxP = np.arange(1, 21, dtype=np.int32).reshape(2, 10)
  valid_NxP = np.ones((2, 10), bool)
  valid_NxP[1, :4] = False  # The second prompt has 6 tokens, left-padded.
  same = generation.fit_prompts(prompt_NxP, valid_NxP, gen_length=6, max_length=16)
  assert same[0] is prompt_NxP and same[1] is valid_NxP  # 10 + 6 fits exactly.
  with pytest.raises(ValueError, match=r"10 tokens.*gen_length=8.*18 positions.*16 the model "
                                       r"was trained on.*--truncate_prompts.*last 8 tokens"):
    generation.fit_prompts(prompt_NxP, valid_NxP, gen_length=8, max_length=16)
  with pytest.raises(ValueError, match="Shorten the prompts or gen_length.$"):
    generation.fit_prompts(prompt_NxP, valid_NxP, gen_length=16, max_length=16, truncate=True)


def test_truncation_keeps_the_last_tokens_of_each_prompt():
  from diffusionlm import generation  # pylint: disable=g-import-not-at-top
  prompt_NxP = np.arange(1, 21, dtype=np.int32).reshape(2, 10)
  valid_NxP = np.ones((2, 10), bool)
  valid_NxP[1, :4] = False
  cut_NxP, cut_valid_NxP = generation.fit_prompts(prompt_NxP, valid_NxP, gen_length=8,
                                                  max_length=16, truncate=True)
  np.testing.assert_array_equal(cut_NxP, prompt_NxP[:, -8:])
  np.testing.assert_array_equal(cut_valid_NxP.sum(1), [8, 6])  # The short prompt is whole.


def test_loading_a_run_without_checkpoints_says_so(tmp_path):
  from diffusionlm.train import checkpoint  # pylint: disable=g-import-not-at-top
  os.makedirs(tmp_path / "run" / "checkpoints")
  with pytest.raises(ValueError, match=r"--workdir=.*run.*has no checkpoint yet"):
    checkpoint.restore_params(str(tmp_path / "run"), None, source="--workdir")


# ---- Start-up refusals and the smaller mends ----------------------------------------------


def test_a_step_that_cannot_fit_is_refused_before_it_runs(tfds_dir, tmp_path):
  from diffusionlm.train import trainer  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "run"
  with pytest.raises(MemoryError, match=r"train step needs .* GiB per device .*temporaries.*"
                                        r"more than the 0.00 GiB available "
                                        r"\(config.device_memory_gib\). Lower global_batch_size "
                                        r"\(8\), data.seq_len \(64\)"):
    trainer.train_and_evaluate(_config(tfds_dir, device_memory_gib=1e-6), str(workdir))
  assert not (workdir / "config.json").exists() and not (workdir / "metrics.jsonl").exists()


def test_the_memory_check_asks_the_backend_by_default():
  from diffusionlm.train import memory  # pylint: disable=g-import-not-at-top
  available, source = memory.available_bytes()
  assert available > 2**20 and source
  small = memory.StepMemory(arguments=2**20, outputs=2**20, temporaries=2**20, aliased=2**20)
  assert small.peak == 2 * 2**20
  memory.check_fits(small, limit_gib=0.0, what="step", drivers="x")  # Fits the host.
  memory.check_fits(small, limit_gib=-1.0, what="step", drivers="x")  # Check switched off.
  with pytest.raises(MemoryError, match=r"needs 0.00 GiB per device"):
    memory.check_fits(small, limit_gib=1e-9, what="step", drivers="x")


def test_a_finished_run_reruns_without_compiling(tfds_dir, tmp_path, monkeypatch):
  from diffusionlm.train import trainer  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / "run")
  first = trainer.train_and_evaluate(_config(tfds_dir), workdir)

  def no_compile(*args, **kwargs):
    raise AssertionError("a finished run compiled its step again")

  monkeypatch.setattr(trainer, "compile_train_step", no_compile)
  again = trainer.train_and_evaluate(_config(tfds_dir), workdir)
  assert again["step"] == first["step"] == 4


def test_nan_without_any_checkpoint_says_that_none_exists(tfds_dir, tmp_path):
  from diffusionlm.train import trainer  # pylint: disable=g-import-not-at-top
  config = _config(tfds_dir, checkpoint_every_steps=100, **{
      "optimizer.lr": 1e30, "optimizer.grad_clip": 0.0, "optimizer.warmup_steps": 0})
  with pytest.raises(FloatingPointError, match=r"No checkpoint had been saved yet"):
    trainer.train_and_evaluate(config, str(tmp_path / "run"))


def test_a_deleted_checkpoints_folder_is_said_and_made_again(tmp_path, caplog):
  import shutil  # pylint: disable=g-import-not-at-top
  import grain  # pylint: disable=g-import-not-at-top
  from diffusionlm.train import checkpoint  # pylint: disable=g-import-not-at-top
  directory = tmp_path / "checkpoints"
  data = iter(grain.MapDataset.range(10).to_iter_dataset())
  ckpt = checkpoint.Checkpointer(str(directory), keep=3, async_save=False)
  state = {"w": np.arange(3.0)}
  ckpt.save(1, state, data, {})
  shutil.rmtree(directory)
  ckpt.save(2, state, data, {})
  ckpt.wait()
  assert ckpt.steps() == [2]
  assert any("was deleted while the run was going" in r.getMessage() for r in caplog.records)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0])), state)
  step, restored = ckpt.restore_latest(abstract, data)
  assert step == 2
  np.testing.assert_array_equal(restored["w"], state["w"])
  ckpt.close()
