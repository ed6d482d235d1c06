"""A run directory, WORKDIR, and the helpers every run (training, RL, sweeps) shares.

WORKDIR holds config.json (the resolved config, written at start), metrics.jsonl (one JSON
object per logged step), summary.json (written when the run finishes), checkpoints/ and
tensorboard/. Files are written by process 0; every process may read them.
"""
import json
import os
import signal

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections

from diffusionlm import config_defaults

CONFIG_FILE, SUMMARY_FILE = "config.json", "summary.json"


def log(message: str) -> None:
  """To the absl log, and to stdout on process 0."""
  logging.info(message)
  if jax.process_index() == 0:
    print(message, flush=True)


def write_json(path: str, obj) -> None:
  """Writes `obj` as indented JSON with sorted keys, on process 0 only."""
  if jax.process_index() == 0:
    with open(path, "w") as f:
      json.dump(obj, f, indent=2, sort_keys=True)


def read_jsonl(path: str) -> list[dict]:
  """The JSON objects of a .jsonl file, one per non-empty line ([] if there is no file)."""
  if not os.path.exists(path):
    return []
  rows = []
  with open(path) as f:
    for line_no, line in enumerate(f, start=1):
      if line.strip():
        try:
          rows.append(json.loads(line))
        except json.JSONDecodeError as e:
          raise ValueError(f"{path}, line {line_no}: not JSON ({e.msg})") from None
  return rows


def read_config(workdir: str) -> ml_collections.ConfigDict | None:
  """The config of the run in `workdir` (None without a config.json): the saved fields over
  today's defaults, so runs saved before a field existed still load, with model.causal
  explicit (from the objective for runs saved before it existed)."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    saved = json.load(f)
  merged = config_defaults.get_config().to_dict()

  def merge(into: dict, update: dict) -> None:
    for key, value in update.items():
      if isinstance(value, dict) and isinstance(into.get(key), dict):
        merge(into[key], value)
      else:
        into[key] = value

  merge(merged, saved)
  config = ml_collections.ConfigDict(merged)
  config.model.causal = config_defaults.is_causal(config)
  return config


def check_compatible(workdir: str, config: ml_collections.ConfigDict) -> None:
  """ValueError if `workdir` holds a run of another model (any model field but
  config_defaults.MODEL_RUN_TIME_FIELDS, the vocabulary included): a resumed run must not
  silently mix parameters. `config` is resolved (model.vocab_size and causal set)."""
  previous = read_config(workdir)
  if previous is None:
    return
  changed = {k: (previous.model.get(k), v) for k, v in config.model.items()
             if k not in config_defaults.MODEL_RUN_TIME_FIELDS and previous.model.get(k) != v}
  if changed:
    raise ValueError(
        f"{workdir} holds a run with a different model "
        f"({', '.join(f'model.{k}: {a} -> {b}' for k, (a, b) in changed.items())}); "
        "use a new --workdir, or config.init_from to start from its parameters.")


def start(workdir: str, config: ml_collections.ConfigDict) -> dict:
  """Creates `workdir`, checks that it holds no run of another model and writes the
  resolved `config` to config.json; returns it as the dict that checkpoints also save."""
  os.makedirs(workdir, exist_ok=True)
  check_compatible(workdir, config)
  resolved = config.to_dict()
  write_json(os.path.join(workdir, CONFIG_FILE), resolved)
  return resolved


class Preemption:
  """SIGTERM -> stop at the next step boundary (a loop saves a checkpoint there first).

  The handler is installed on construction, so a SIGTERM during start-up is not lost, and
  `restore` reinstates the one before. With several processes JAX's coordination service
  agrees on the step instead (`reached`).
  """

  def __init__(self):
    self.requested = False
    self._previous = None
    if jax.process_count() == 1:
      self._previous = signal.signal(signal.SIGTERM, self._handler)

  def restore(self) -> None:
    """Reinstates the SIGTERM handler that was in place before."""
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def _handler(self, signum, frame):
    del signum, frame
    self.requested = True

  def reached(self, step: int) -> bool:
    """True (on every process together) if the run should stop after `step`."""
    if jax.process_count() > 1:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.requested


def raise_if_nonfinite(state, *, ckpt, unit: str, run: str, advice: str) -> None:
  """FloatingPointError if the NaN guard skipped an update (`state.first_nonfinite_step`),
  naming that `unit`, the intact last good checkpoint of `ckpt` and what to lower (`advice`)."""
  bad = int(state.first_nonfinite_step)
  if bad >= 0:
    last_good = ckpt.steps()[-1] if ckpt.steps() else None
    raise FloatingPointError(
        f"Non-finite loss or gradient at {unit} {bad}; {run} stopped. The last good "
        f"checkpoint (step {last_good}) in {ckpt.directory} is intact. Lower {advice}.")

