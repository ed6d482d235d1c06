"""A data-constrained sweep: one config -> runs over objective x model x U x epochs.

A sweep config (see configs/scaling_tiny.py) holds a full training config `train` and the
axes of the grid (Prabhudesai et al., 2025, Sec. 3; Muennighoff et al., 2023, Sec. 4):

  objectives     ("mdm", "ar")
  models         ladder of sizes, "d<d_model>l<num_layers>"; heads = d_model // head_dim,
                 mlp_dim = mlp_ratio * d_model
  unique_tokens  U, the data budget (data.unique_tokens; the first U tokens, repeated)
  epochs         passes over U; or total_tokens D (then epochs = D / U)
  variants       optional: "NAME:field=value;field=value" settings of `train` crossed with the
                 objectives, e.g. "drop:model.dropout=0.1" (a bare "NAME" changes nothing)

Each run trains for num_train_steps = round(epochs * (U // seq_len) / global_batch_size),
so D = num_train_steps * global_batch_size * seq_len tokens, evaluates the validation split
`evals_per_run` times, and lives in ROOT/<name>, e.g. `ar-d64l2-U100k-E8`, or with a
variant `ar-drop-d64l2-U100k-E8`.

`run_locally` trains them one after another; a run with summary.json is done and skipped,
an interrupted one resumes from its checkpoint. `launch_commands` gives one shell command
per run for a cluster. `collect` turns finished runs into rows of one table (CSV).
"""
import ast
import csv
import dataclasses
import glob
import itertools
import json
import math
import os
import re
import shlex
from typing import Any, Iterable, Mapping, Sequence

from absl import logging
import ml_collections

from diffusionlm import config_defaults
from diffusionlm.train import run_dir

_MODEL_NAME = re.compile(r"d(\d+)l(\d+)")
_VARIANT_NAME = re.compile(r"[A-Za-z0-9_.]+")
_TRAIN_CONFIG_FILE = "configs/base.py"  # Launch commands override every other field.


@dataclasses.dataclass(frozen=True)
class Run:
  """One cell of the grid: its name, workdir and full training config."""
  name: str
  workdir: str
  config: ml_collections.ConfigDict


def _flat_items(values: Iterable) -> list:
  """Axis values, splitting "a,b" strings (an unquoted tuple flag arrives as one string)."""
  out = []
  for value in values:
    if isinstance(value, str):
      out.extend(v.strip() for v in value.split(",") if v.strip())
    else:
      out.append(value)
  return out


def _short(x: float) -> str:
  """Compact decimal: 100000 -> 100k, 2000000 -> 2M, 16384 -> 16384, 0.5 -> 0.5."""
  for div, suffix in ((10**9, "G"), (10**6, "M"), (10**3, "k")):
    if x >= div and x % div == 0:
      return f"{x // div:g}{suffix}"
  return f"{x:g}"


def parse_model(name: str, *, head_dim: int, mlp_ratio: float) -> dict[str, int]:
  """"d64l2" -> the config.model fields of a d_model=64, 2-layer model."""
  match = _MODEL_NAME.fullmatch(name)
  if not match:
    raise ValueError(f"sweep model {name!r}: expected d<d_model>l<num_layers>, e.g. 'd64l2'")
  d_model, num_layers = int(match[1]), int(match[2])
  if d_model % head_dim:
    raise ValueError(f"sweep model {name!r}: d_model={d_model} is not a multiple of "
                     f"head_dim={head_dim}")
  return {"d_model": d_model, "num_layers": num_layers, "num_heads": d_model // head_dim,
          "mlp_dim": int(round(mlp_ratio * d_model))}


def _flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      out.update(_flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def _set(config: ml_collections.ConfigDict, dotted: str, value) -> None:
  *parents, leaf = dotted.split(".")
  for p in parents:
    config = config[p]
  config[leaf] = value


def _literal(text: str):
  """A flag-style value: a Python literal (0.1, True, 'x') or else the text itself."""
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def parse_variants(values: Iterable, train: ml_collections.ConfigDict
                   ) -> list[tuple[str, dict[str, Any]]]:
  """"NAME:field=value;field=value" entries -> [(NAME, {field: value})]; none -> [("", {})].

  Every field must be a field of the training config `train`, and no name may look like a
  model ("d64l2") or repeat, so run names stay unambiguous.
  """
  known = _flatten(train.to_dict())
  out = []
  for entry in _flat_items(values):
    name, _, settings = entry.partition(":")
    name = name.strip()
    if not _VARIANT_NAME.fullmatch(name) or _MODEL_NAME.fullmatch(name):
      raise ValueError(f"sweep_config.variants: {entry!r} needs a name of letters, digits, "
                       "'_' or '.' that is not a model name, e.g. 'drop:model.dropout=0.1'")
    overrides = {}
    for item in filter(None, (s.strip() for s in settings.split(";"))):
      field, eq, value = item.partition("=")
      field = field.strip()
      if not eq or field not in known:
        raise ValueError(f"sweep_config.variants: {item!r} of {name!r} is not "
                         "FIELD=VALUE with FIELD a training-config field (e.g. model.dropout)")
      overrides[field] = _literal(value.strip())
    out.append((name, overrides))
  names = [n for n, _ in out]
  if len(set(names)) != len(names):
    raise ValueError(f"sweep_config.variants: names repeat in {names}")
  return out or [("", {})]


def variant_of(name: str) -> str:
  """The variant in a run name `OBJECTIVE-VARIANT-MODEL-...` ("" for `OBJECTIVE-MODEL-...`)."""
  parts = name.split("-")
  return parts[1] if len(parts) > 2 and not _MODEL_NAME.fullmatch(parts[1]) else ""


def series(row: Mapping[str, Any]) -> str:
  """The label of a run's curve: its objective, with `+variant` when it has one."""
  variant = row.get("variant") or ""
  return f"{row['objective']}+{variant}" if variant else str(row["objective"])


def _check_axes(sweep: ml_collections.ConfigDict):
  """(objectives, models, unique_tokens, epochs or None, total_tokens or None), validated."""
  objectives = _flat_items(sweep.objectives)
  models = _flat_items(sweep.models)
  unique = [int(u) for u in _flat_items(sweep.unique_tokens)]
  epochs = [float(e) for e in _flat_items(sweep.epochs)]
  totals = [int(d) for d in _flat_items(sweep.get("total_tokens", ()))]
  for field, values in (("objectives", objectives), ("models", models),
                        ("unique_tokens", unique)):
    if not values:
      raise ValueError(f"sweep_config.{field} is empty")
  bad = [o for o in objectives if o not in ("mdm", "ar")]
  if bad:
    raise ValueError(f"sweep_config.objectives: {bad} are not pretraining objectives "
                     "('mdm', 'ar')")
  if bool(epochs) == bool(totals):
    raise ValueError("give exactly one of sweep_config.epochs and sweep_config.total_tokens")
  if "source_path" in sweep and sweep.train.data.dataset == "text_files":
    corpus = sweep.source_path
    if not corpus:
      raise ValueError("--sweep_config.source_path is empty: name the sweep's text corpus, "
                       "e.g. --sweep_config.source_path=corpus.txt (a text file, a glob, or "
                       "several comma separated).")
    if not any(glob.glob(os.path.expanduser(p.strip())) for p in corpus.split(",")):
      raise ValueError(f"--sweep_config.source_path={corpus!r} matches no file.")
  for field, values in (("unique_tokens", unique), ("epochs", epochs),
                        ("total_tokens", totals)):
    if any(not v > 0 for v in values):
      raise ValueError(f"sweep_config.{field}={tuple(values)} must all be positive")
  return objectives, models, unique, epochs or None, totals or None


def expand(sweep: ml_collections.ConfigDict, root: str) -> list[Run]:
  """The runs of a sweep config, ordered by model, U, epochs (or D), then objective, so
  the cheap runs of both objectives finish first."""
  objectives, models, unique, epochs, totals = _check_axes(sweep)
  train = sweep.train
  variants = parse_variants(sweep.get("variants", ()), train)
  seq_len, batch = int(train.data.seq_len), int(train.global_batch_size)
  sizes = {m: parse_model(m, head_dim=sweep.head_dim, mlp_ratio=sweep.mlp_ratio) for m in models}
  runs = []
  for model in models:
    for u in unique:
      rows = u // seq_len
      if rows < batch:
        raise ValueError(f"sweep_config.unique_tokens={u} holds {rows} sequences of "
                         f"seq_len={seq_len}, fewer than global_batch_size={batch}")
      amounts = [("E", e, e) for e in epochs] if epochs else [
          ("D", d, d / (rows * seq_len)) for d in totals]
      for tag, amount, num_epochs in amounts:
        steps = max(1, round(num_epochs * rows / batch))
        every = max(1, math.ceil(steps / sweep.evals_per_run))
        for objective, (variant, settings) in itertools.product(objectives, variants):
          overrides = {
              "objective": objective,
              "data.unique_tokens": u,
              "num_train_steps": steps,
              "eval_every_steps": every,
              "log_every_steps": min(int(train.log_every_steps), every),
              "checkpoint_every_steps": max(1, math.ceil(steps / sweep.checkpoints_per_run)),
              "optimizer.warmup_steps": min(int(train.optimizer.warmup_steps),
                                            int(sweep.max_warmup_fraction * steps)),
              **{f"model.{k}": v for k, v in sizes[model].items()},
              **settings,
          }
          config = ml_collections.ConfigDict(train.to_dict())
          for key, value in overrides.items():
            _set(config, key, value)
          prefix = f"{objective}-{variant}" if variant else objective
          name = f"{prefix}-{model}-U{_short(u)}-{tag}{_short(amount)}"
          runs.append(Run(name, os.path.join(root, name), config))
  names = [r.name for r in runs]
  duplicates = sorted({n for n in names if names.count(n) > 1})
  if duplicates:
    raise ValueError(f"sweep config has duplicate runs: {duplicates}")
  return runs


def _differences(run: Run) -> list[str]:
  """Fields where the config.json in run.workdir differs from run.config.

  Fields the saved config lacks (added to the defaults since) are not compared, nor those
  that the run resolved when it started (model.vocab_size 0, model.causal unset).
  """
  with open(os.path.join(run.workdir, run_dir.CONFIG_FILE)) as f:
    saved = _flatten(json.load(f))
  wanted = _flatten(run.config.to_dict())
  diffs = []
  for key, value in wanted.items():
    if key not in saved or value is None or (key == "model.vocab_size" and not value):
      continue
    old = saved[key]
    if isinstance(value, tuple):
      value = list(value)
    if old != value:
      diffs.append(f"{key}: {old!r} -> {value!r}")
  return diffs


def is_finished(run: Run) -> bool:
  """True if run.workdir holds a finished run (summary.json) of exactly run.config."""
  if not os.path.exists(os.path.join(run.workdir, "summary.json")):
    return False
  diffs = _differences(run)
  if diffs:
    raise ValueError(f"{run.workdir} holds a finished run of a different config "
                     f"({'; '.join(diffs)}); use another --root or remove it")
  return True


def run_locally(runs: Sequence[Run], *, train_fn=None,
                compilation_cache_dir: str | None = None) -> list[str]:
  """Trains the unfinished runs one after another; returns the names it trained.

  Finished runs (summary.json) are skipped, so rerunning a finished sweep trains nothing;
  an interrupted run resumes from its newest checkpoint. SIGTERM stops the sweep: within a
  run the trainer saves a checkpoint and returns without a summary, between runs the next
  run is not started. `train_fn(config, workdir)` defaults to the trainer.
  `compilation_cache_dir` turns on JAX's persistent compilation cache (unless one is set
  already): runs of one model share programs, which cuts each run's start from ~50 s to
  ~10 s on a loaded 2-core CPU.
  """
  if compilation_cache_dir:
    import jax  # pylint: disable=g-import-not-at-top
    if not jax.config.jax_compilation_cache_dir:
      jax.config.update("jax_compilation_cache_dir", compilation_cache_dir)
      jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
  if train_fn is None:
    from diffusionlm.train import trainer  # pylint: disable=g-import-not-at-top
    train_fn = trainer.train_and_evaluate
  stop = run_dir.Preemption()  # Between runs; within one, the trainer's own takes over.
  trained, stopped = [], False
  try:
    for i, run in enumerate(runs):
      if is_finished(run):
        logging.info("[%d/%d] %s: finished, skipped.", i + 1, len(runs), run.name)
        continue
      if stop.requested:
        stopped = True
        break
      print(f"[{i + 1}/{len(runs)}] {run.name}: {run.config.num_train_steps} steps", flush=True)
      train_fn(run.config, run.workdir)
      trained.append(run.name)
      if not os.path.exists(os.path.join(run.workdir, "summary.json")):
        stopped = True
        break
  finally:
    stop.restore()
  if stopped:
    print("Sweep stopped before its end (SIGTERM); rerun the same command to resume.",
          flush=True)
  return trained


def _flag_value(value) -> str:
  if isinstance(value, bool):
    return "true" if value else "false"
  return shlex.quote(repr(value) if isinstance(value, (float, tuple)) else str(value))


def launch_command(run: Run, *, launcher: str = "") -> str:
  """A shell command training `run`: `python -m diffusionlm.train --config=configs/base.py
  --workdir=... --config.x=y ...` with every field that differs from configs/base.py.

  `launcher` (e.g. "launch/local_multiprocess.sh 2") replaces `python -m diffusionlm.train`
  and takes CONFIG WORKDIR [overrides] positionally, as the launch/ scripts do.
  """
  defaults = _flatten(config_defaults.get_config().to_dict())
  fields = [f"--config.{k}={_flag_value(v)}" for k, v in _flatten(run.config.to_dict()).items()
            if k not in defaults or defaults[k] != v]
  workdir = shlex.quote(run.workdir)
  head = (f"{launcher} {_TRAIN_CONFIG_FILE} {workdir}" if launcher else
          f"python -m diffusionlm.train --config={_TRAIN_CONFIG_FILE} --workdir={workdir}")
  return " ".join([head, *fields])


# ---- Collect ------------------------------------------------------------------------

FLOP_KINDS = ("six_n_with_embedding", "six_n", "exact")
COLUMNS = ("name", "objective", "variant", "model", "d_model", "num_layers", "N", "N_nonembedding",
           "U", "epochs", "D", "steps", "flops", "flops_six_n_with_embedding", "flops_six_n",
           "flops_exact", "final_bits_per_token", "best_bits_per_token", "final_nats",
           "best_nats", "num_evals", "seed", "noise_rate", "dropout", "input_mask_rate")


def read_run(workdir: str, *, flops_kind: str = "six_n_with_embedding") -> dict[str, Any]:
  """One CSV row from WORKDIR/{config,summary}.json and metrics.jsonl.

  U is the budget the pipeline really used (whole sequences: (U // seq_len) * seq_len),
  D the tokens trained on, epochs = D / U. Losses are the validation bits per token of
  metrics.jsonl (final = last eval, best = lowest) and the same in nats. `variant` comes
  from the run's name (`variant_of`); seed, noise_rate, dropout and input_mask_rate from
  its config (0 where the config predates the field).
  """
  if flops_kind not in FLOP_KINDS:
    raise ValueError(f"flops_kind must be one of {FLOP_KINDS}, got {flops_kind!r}")
  paths = {k: os.path.join(workdir, f) for k, f in
           (("config", "config.json"), ("summary", "summary.json"), ("metrics", "metrics.jsonl"))}
  for key, path in paths.items():
    if not os.path.exists(path):
      raise ValueError(f"{workdir}: no {os.path.basename(path)} (is the run finished?)")
  with open(paths["config"]) as f:
    config = json.load(f)
  with open(paths["summary"]) as f:
    summary = json.load(f)
  evals = [r["eval/bits_per_token"] for r in run_dir.read_jsonl(paths["metrics"])
           if "eval/bits_per_token" in r]
  if not evals:
    raise ValueError(f"{paths['metrics']}: no eval/bits_per_token line (eval_every_steps=0?)")
  seq_len, unique = config["data"]["seq_len"], config["data"]["unique_tokens"]
  if not unique:
    raise ValueError(f"{paths['config']}: data.unique_tokens is 0 (not a data-constrained run)")
  u = (unique // seq_len) * seq_len
  d = summary["tokens_seen"]
  per_token = summary["flops_per_token"]
  model = config["model"]
  final, best = evals[-1], min(evals)
  name = os.path.basename(os.path.normpath(workdir))
  return {
      "name": name, "objective": summary["objective"], "variant": variant_of(name),
      "model": f"d{model['d_model']}l{model['num_layers']}", "d_model": model["d_model"],
      "num_layers": model["num_layers"], "N": summary["num_params"],
      "N_nonembedding": summary["num_nonembedding_params"], "U": u, "epochs": d / u, "D": d,
      "steps": summary["step"], "flops": per_token[flops_kind] * d,
      **{f"flops_{k}": per_token[k] * d for k in FLOP_KINDS},
      "final_bits_per_token": final, "best_bits_per_token": best,
      "final_nats": final * math.log(2), "best_nats": best * math.log(2),
      "num_evals": len(evals), "seed": config["seed"],
      "noise_rate": config["data"].get("noise_rate", 0.0),
      "dropout": model.get("dropout", 0.0),
      "input_mask_rate": config["data"].get("input_mask_rate", 0.0),
  }


def collect(workdirs: Sequence[str], *, flops_kind: str = "six_n_with_embedding"
            ) -> tuple[list[dict], list[str]]:
  """(rows of the finished runs, workdirs without summary.json)."""
  rows, missing = [], []
  for workdir in workdirs:
    if os.path.exists(os.path.join(workdir, "summary.json")):
      rows.append(read_run(workdir, flops_kind=flops_kind))
    else:
      missing.append(workdir)
  return rows, missing


def find_runs(root: str) -> list[str]:
  """Workdirs directly under `root` that hold a summary.json, sorted by name."""
  if not os.path.isdir(root):
    raise ValueError(f"--root={root!r} is not a directory")
  return sorted(os.path.join(root, n) for n in os.listdir(root)
                if os.path.exists(os.path.join(root, n, "summary.json")))


def matching_rows(rows: Sequence[Mapping], table: Sequence[Mapping]) -> list[dict]:
  """The rows of `table` (an older collect CSV) with the model and U of one of `rows` and a
  name none of them has, completed with this table's columns (variant "", rates 0)."""
  cells = {(r["model"], r["U"]) for r in rows}
  names = {r["name"] for r in rows}
  defaults = {"variant": "", "seed": 0, "noise_rate": 0.0, "dropout": 0.0,
              "input_mask_rate": 0.0}
  return [{c: {**defaults, **row}.get(c, "") for c in COLUMNS} for row in table
          if (row.get("model"), row["U"]) in cells and row.get("name") not in names]


def write_csv(rows: Sequence[Mapping], path: str) -> str:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
  return path


def read_csv(path: str) -> list[dict[str, Any]]:
  """Rows of a collect CSV: numbers as int (written without a point) or float, text as str."""
  if not os.path.exists(path):
    raise ValueError(f"{path}: no such CSV (run `collect` first)")
  with open(path, newline="") as f:
    reader = csv.DictReader(f)
    fieldnames = reader.fieldnames or ()
    missing = [c for c in ("objective", "N", "U", "D", "epochs") if c not in fieldnames]
    if missing:
      raise ValueError(f"{path}: columns {missing} are missing")
    rows = []
    for line_no, raw in enumerate(reader, start=2):
      row = {}
      for key, text in raw.items():
        try:
          value = float(text)
          row[key] = int(value) if value.is_integer() and "." not in text else value
        except (TypeError, ValueError):
          row[key] = text
      for key in ("N", "U", "D", "epochs"):
        if not isinstance(row[key], (int, float)):
          raise ValueError(f"{path}, line {line_no}: {key}={row[key]!r} is not a number")
      rows.append(row)
  return rows
