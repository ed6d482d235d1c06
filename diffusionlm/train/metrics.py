"""Metrics: metrics.jsonl + TensorBoard writer, and model FLOPs utilisation (MFU)."""
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np


class MetricsWriter:
  """Writes `{"step": s, ...}` lines to WORKDIR/metrics.jsonl and TensorBoard (process 0)."""

  def __init__(self, workdir: str, *, resume_step: int = 0):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if not self.enabled:
      return
    _truncate_after(self.path, resume_step)
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=resume_step + 1)

  def write(self, step: int, scalars: dict) -> None:
    if not self.enabled:
      return
    row = {"step": int(step), **{k: _to_python(v) for k, v in scalars.items()}}
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")
    for k, v in row.items():
      if k != "step" and isinstance(v, (int, float)):
        self._tb.add_scalar(k, v, step)
    self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def _to_python(v):
  v = np.asarray(v)
  return v.item() if v.size == 1 else v.tolist()


def _truncate_after(path: str, step: int) -> None:
  """Drops lines logged after `step`, so a resumed run's log equals an uninterrupted one."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    rows = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
  with open(path, "w") as f:
    f.writelines(rows)


def measure_matmul_peak(*, dtype=jnp.float32, n: int = 2048, repeats: int = 5) -> float:
  """Measured FLOP/s of one device on a square matmul: the denominator of MFU.

  A measured peak (not the datasheet number) keeps MFU honest on any machine, CPU included.
  """
  device = jax.local_devices()[0]
  a = jax.device_put(jnp.ones((n, n), dtype), device)
  matmul = jax.jit(lambda x: x @ x).lower(a).compile()
  matmul(a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * n**3 / best
