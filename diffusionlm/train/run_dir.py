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


def model_differences(previous: ml_collections.ConfigDict,
                      config: ml_collections.ConfigDict) -> str:
  """The model fields (but config_defaults.MODEL_RUN_TIME_FIELDS) in which `config` differs
  from `previous`, as "model.d_model: 128 -> 64, ..." ("" if none)."""
  changed = {k: (previous.model.get(k), v) for k, v in config.model.items()
             if k not in config_defaults.MODEL_RUN_TIME_FIELDS and previous.model.get(k) != v}
  return ", ".join(f"model.{k}: {a} -> {b}" for k, (a, b) in changed.items())


def check_compatible(workdir: str, config: ml_collections.ConfigDict) -> None:
  """ValueError if `workdir` holds a run of another model (any model field but
  config_defaults.MODEL_RUN_TIME_FIELDS, the vocabulary included): a resumed run must not
  silently mix parameters. `config` is resolved (model.vocab_size and causal set)."""
  previous = read_config(workdir)
  if previous is None:
    return
  changed = model_differences(previous, config)
  if changed:
    raise ValueError(
        f"{workdir} holds a run with a different model ({changed}); "
        "use a new --workdir, or config.init_from to start from its parameters.")
  lora_changed = {k: (previous.lora.get(k), v) for k, v in config.lora.items()
                  if _normal(previous.lora.get(k)) != _normal(v)}
  if lora_changed and (previous.lora.rank or config.lora.rank):  # Unused settings may change.
    raise ValueError(
        f"{workdir} holds a run with other LoRA settings ("
        + ", ".join(f"lora.{k}: {a} -> {b}" for k, (a, b) in lora_changed.items())
        + "); use a new --workdir (with config.init_from set to the run to adapt).")


def _normal(value):
  """JSON turns tuples into lists: compare them alike."""
  return list(value) if isinstance(value, (tuple, list)) else value


def check_init_from(config: ml_collections.ConfigDict) -> None:
  """ValueError naming the model fields in which config.init_from's run differs from
  `config` (resolved), before any of its parameters are read."""
  previous = read_config(config.init_from)
  if previous is None:
    raise ValueError(f"config.init_from={config.init_from!r} has no {CONFIG_FILE}: is it a "
                     "diffusionlm run directory?")
  changed = model_differences(previous, config)
  if changed:
    raise ValueError(
        f"config.init_from={config.init_from!r} holds a different model ({changed}): its "
        "parameters cannot initialise this one. Set these fields as in that run.")


def start(workdir: str, config: ml_collections.ConfigDict) -> dict:
  """Creates `workdir` and checks that it holds no run of another model; returns the
  resolved `config` as the dict that config.json and the checkpoints save (config.json is
  written by the loop once the run has started: `write_config`)."""
  os.makedirs(workdir, exist_ok=True)
  check_compatible(workdir, config)
  return config.to_dict()


def write_config(workdir: str, resolved: dict) -> None:
  write_json(os.path.join(workdir, CONFIG_FILE), resolved)


def finished_summary(workdir: str, config: ml_collections.ConfigDict) -> dict | None:
  """summary.json of a run in `workdir` that already reached config.num_train_steps (and
  still has that checkpoint), else None: rerunning a finished run has nothing to do, and
  says so."""
  path = os.path.join(workdir, SUMMARY_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    summary = json.load(f)
  step = summary.get("step", -1)
  if step < config.num_train_steps or not os.path.isdir(
      os.path.join(workdir, "checkpoints", str(step))):
    return None
  log(f"{workdir} already finished at step {step} (its {SUMMARY_FILE}); nothing to do. "
      "Raise --config.num_train_steps to train on.")
  return summary


def schedule_change(workdir: str, config: ml_collections.ConfigDict, *,
                    resumed_step: int) -> str | None:
  """A warning when a resumed run's num_train_steps differs from the one it started with:
  the learning-rate schedule spans num_train_steps, so it is stretched (or squeezed)."""
  previous = read_config(workdir)
  if previous is None or previous.num_train_steps == config.num_train_steps:
    return None
  return (f"WARNING: num_train_steps changed from {previous.num_train_steps} to "
          f"{config.num_train_steps} since this run started. The learning-rate schedule "
          f"(warmup {config.optimizer.warmup_steps}, {config.optimizer.decay} decay) now ends "
          f"at step {config.num_train_steps}: from the resumed step {resumed_step} on, the "
          "learning rate follows the new schedule, not the one the run began with.")


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
    kept = (f"The last good checkpoint (step {ckpt.steps()[-1]}) in {ckpt.directory} is "
            "intact." if ckpt.steps() else
            f"No checkpoint had been saved yet ({ckpt.directory} is empty), so the run "
            "starts from scratch when rerun.")
    raise FloatingPointError(
        f"Non-finite loss or gradient at {unit} {bad}; {run} stopped. {kept} Lower {advice}.")

