"""Data-constrained scaling curves, one command per stage.

  python -m diffusionlm.scaling sweep   --sweep_config=configs/scaling_X.py --root=DIR
  python -m diffusionlm.scaling sweep   --sweep_config=... --root=DIR --print_commands
  python -m diffusionlm.scaling collect --root=DIR [--sweep_config=...]   -> DIR/runs.csv
  python -m diffusionlm.scaling fit     --root=DIR                        -> DIR/fit.json
  python -m diffusionlm.scaling plot    --root=DIR                        -> DIR/plots/*.png
  (fit: --num_resamples=100 --seed=0 --level=0.95 --c_crit_unique_tokens=U1,U2,...)

`sweep` trains every run of the grid one after another (finished runs are skipped, an
interrupted one resumes) or prints one launch command per run. `collect` reads each run's
summary.json and metrics.jsonl into one CSV. `fit` fits the law of Muennighoff et al. (2023)
to AR and diffusion separately and finds the critical compute C_crit(U) above which
diffusion beats AR (Prabhudesai et al., 2025). `fit` also gives bootstrap confidence intervals
(--num_resamples, --seed, --level) for every constant and for C_crit(U), and the power law
C_crit(U) = k U^gamma. `plot` draws loss vs epochs, loss vs FLOPs, the fitted law and
C_crit(U). Sweep-config fields can be overridden: --sweep_config.epochs=1,4,16.
"""
import dataclasses
import json
import math
import os

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags
import numpy as np

from diffusionlm.scaling import sweep as sweep_lib

COMMANDS = ("sweep", "collect", "fit", "plot")
LOSS_COLUMNS = ("best_bits_per_token", "final_bits_per_token", "best_nats", "final_nats")

_SWEEP = config_flags.DEFINE_config_file("sweep_config", None, "Sweep config file.")
_ROOT = flags.DEFINE_string("root", None, "Directory holding one workdir per run.")
_PRINT = flags.DEFINE_bool("print_commands", False,
                           "sweep: print one launch command per unfinished run; train nothing.")
_LAUNCHER = flags.DEFINE_string(
    "launcher", "", "sweep --print_commands: script taking CONFIG WORKDIR [overrides], e.g. "
    "'launch/local_multiprocess.sh 2'; default: python -m diffusionlm.train.")
_CSV = flags.DEFINE_string("csv", None, "The runs table; default ROOT/runs.csv.")
_MERGE_CSV = flags.DEFINE_string(
    "merge_csv", None, "collect: also take the rows of this table (e.g. "
    "docs/scaling_shakespeare_runs.csv) whose model and U match a collected run and whose "
    "name none has: baselines trained before, with the same setup.")
_FLOPS = flags.DEFINE_enum("flops", "six_n_with_embedding", sweep_lib.FLOP_KINDS,
                           "collect: the count in the `flops` column (all three are kept).")
_LOSS = flags.DEFINE_enum("loss", "best_bits_per_token", LOSS_COLUMNS,
                          "fit/plot: the validation-loss column used as L.")
_FIT_RN = flags.DEFINE_bool("fit_rn_star", True,
                            "fit: also fit R_N* (turn off when the sweep barely varies N).")
_NUM_STARTS = flags.DEFINE_integer("num_starts", 16,
                                   "fit: L-BFGS runs per stage, from the best grid points.")
_NUM_RESAMPLES = flags.DEFINE_integer(
    "num_resamples", 100, "fit: bootstrap resamples of the runs for the confidence intervals "
    "(0: no intervals).")
_SEED = flags.DEFINE_integer("seed", 0, "fit: seed of the bootstrap resampling.")
_LEVEL = flags.DEFINE_float("level", 0.95, "fit: confidence level of the intervals.")
_C_CRIT_U = flags.DEFINE_list(
    "c_crit_unique_tokens", [], "fit: the U values over which the power law C_crit(U) = k U^gamma "
    "is fitted; default 5 log-spaced values from min(U) / sqrt(10) to max(U) * sqrt(10).")
_FIT_JSON = flags.DEFINE_string("fit_json", None, "Fit output/input; default ROOT/fit.json.")
_PLOT_DIR = flags.DEFINE_string("plot_dir", None, "plot: where PNGs go; default ROOT/plots.")


def _path(flag, default_name: str) -> str:
  return flag.value or os.path.join(_ROOT.value, default_name)


def _sweep_runs():
  if _SWEEP.value is None:
    raise app.UsageError("--sweep_config is required for `sweep`")
  return sweep_lib.expand(_SWEEP.value, _ROOT.value)


def do_sweep() -> None:
  runs = _sweep_runs()
  if _PRINT.value:
    for run in runs:
      if not sweep_lib.is_finished(run):
        print(sweep_lib.launch_command(run, launcher=_LAUNCHER.value))
    return
  steps = sum(r.config.num_train_steps for r in runs)
  print(f"Sweep: {len(runs)} runs, {steps} steps in all, under {_ROOT.value}", flush=True)
  trained = sweep_lib.run_locally(
      runs, compilation_cache_dir=os.path.join(os.path.abspath(_ROOT.value), ".jax_cache"))
  finished = sum(os.path.exists(os.path.join(r.workdir, "summary.json")) for r in runs)
  print(f"Trained {len(trained)} runs; {finished} of {len(runs)} are finished.")


def do_collect() -> None:
  if _SWEEP.value is not None:
    workdirs = [run.workdir for run in sweep_lib.expand(_SWEEP.value, _ROOT.value)]
  else:
    workdirs = sweep_lib.find_runs(_ROOT.value)
  rows, missing = sweep_lib.collect(workdirs, flops_kind=_FLOPS.value)
  for workdir in missing:
    print(f"not finished, left out: {workdir}")
  if not rows:
    raise app.UsageError(f"no finished runs under {_ROOT.value}")
  if _MERGE_CSV.value:
    merged = sweep_lib.matching_rows(rows, sweep_lib.read_csv(_MERGE_CSV.value))
    print(f"{len(merged)} rows of {_MERGE_CSV.value} added")
    rows += merged
  path = sweep_lib.write_csv(rows, _path(_CSV, "runs.csv"))
  print(f"{len(rows)} runs -> {path}")


def _fit_rows(path: str):
  """The table's rows with `loss` the --loss column; `objective` is the series (e.g.
  "ar+dropout0.1"), so each variant is fitted and drawn on its own."""
  rows = sweep_lib.read_csv(path)
  if _LOSS.value not in rows[0]:
    raise ValueError(f"{path}: no column {_LOSS.value!r} for --loss")
  return [{**r, "loss": r[_LOSS.value], "objective": sweep_lib.series(r)} for r in rows]


def _json_number(x: float):
  """inf -> "inf" and nan -> null, so fit.json stays strict JSON."""
  if math.isinf(x):
    return "inf" if x > 0 else "-inf"
  return None if math.isnan(x) else x


def _law_unique_tokens(rows) -> list[float]:
  if _C_CRIT_U.value:
    return sorted(float(u) for u in _C_CRIT_U.value)
  u = [r["U"] for r in rows]
  return list(np.geomspace(min(u) / math.sqrt(10), max(u) * math.sqrt(10), 5))


def _interval_json(interval) -> list:
  return [_json_number(interval.lo), _json_number(interval.hi)]


def _bracket(interval) -> str:
  return f"[{interval.lo:.4g}, {interval.hi:.4g}]"


def _fit_objectives(rows, out) -> dict:
  """Fits each objective's runs; records constants, stages and intervals in `out`."""
  from diffusionlm.scaling import bootstrap  # pylint: disable=g-import-not-at-top
  from diffusionlm.scaling import fit as fit_lib  # pylint: disable=g-import-not-at-top
  fits, replicates = {}, {}
  for index, objective in enumerate(sorted({r["objective"] for r in rows})):
    points = [r for r in rows if r["objective"] == objective]
    try:
      runs = fit_lib.Runs.from_points(points)
      fit = fit_lib.fit_runs(runs, fit_rn_star=_FIT_RN.value, num_starts=_NUM_STARTS.value)
    except ValueError as e:
      out["errors"][objective] = str(e)
      print(f"{objective}: no fit ({e})")
      continue
    fits[objective] = fit
    out["fits"][objective] = {k: _json_number(v) if isinstance(v, float) else v
                              for k, v in vars(fit).items() if k != "stage1_runs"}
    out["stages"][objective] = {
        "stage1": [points[i].get("name", str(i)) for i in fit.stage1_runs],
        "stage1_iterations": fit.stage1_iterations, "stage1_converged": fit.stage1_converged,
        "stage2": "all runs", "stage3": "all runs"}
    line = (f"{objective:>4}: E={fit.E:.4g} A={fit.A:.4g} B={fit.B:.4g} alpha={fit.alpha:.3f} "
            f"beta={fit.beta:.3f} R_D*={fit.rd_star:.4g} R_N*={fit.rn_star:.4g} "
            f"R^2={fit.r2:.3f} (stage 1 {fit.r2_stage1:.3f} on {fit.num_points_stage1} runs, "
            f"repeated {fit.r2_repeated:.3f}; {fit.num_points} runs)")
    print(line, flush=True)
    if _NUM_RESAMPLES.value > 0:
      replicates[objective] = bootstrap.resample_fits(
          runs, fit, num_resamples=_NUM_RESAMPLES.value, seed=(_SEED.value, index))
      intervals = bootstrap.constant_intervals(replicates[objective], _LEVEL.value)
      out["intervals"][objective] = {k: _interval_json(v) for k, v in intervals.items()}
      print(f"      {_LEVEL.value:.0%} intervals: " +
            " ".join(f"{k}={_bracket(v)}" for k, v in intervals.items()), flush=True)
  return fits, replicates


def _critical_compute(rows, fits, replicates, out) -> None:
  """C_crit at each U of the table and its power law, with bootstrap intervals."""
  from diffusionlm.scaling import bootstrap  # pylint: disable=g-import-not-at-top
  from diffusionlm.scaling import fit as fit_lib  # pylint: disable=g-import-not-at-top
  unique_tokens = sorted({r["U"] for r in rows})
  for u in unique_tokens:
    try:
      c_crit = fit_lib.critical_compute(fits["ar"], fits["mdm"], u)
      out["critical_compute"][f"{u:g}"] = c_crit
      print(f"C_crit(U={u:g}) = {c_crit:.4g} FLOPs")
    except ValueError as e:
      out["critical_compute"][f"{u:g}"] = None
      out["errors"][f"critical_compute U={u:g}"] = str(e)
      print(f"C_crit(U={u:g}): undefined ({e})")
  law_u = _law_unique_tokens(rows)
  law_out = out["critical_compute_law"] = {"unique_tokens": law_u}
  try:
    law = fit_lib.critical_compute_law(fits["ar"], fits["mdm"], law_u)
    law_out.update(exponent=law.exponent, coefficient=law.coefficient, r2=law.r2)
    print(f"C_crit(U) = {law.coefficient:.4g} U^{law.exponent:.4f} (R^2 {law.r2:.4f} over U = "
          f"{', '.join(f'{u:.3g}' for u in law_u)}; Prabhudesai et al.: U^2.174)")
  except ValueError as e:
    out["errors"]["critical_compute_law"] = str(e)
    print(f"C_crit(U) law: undefined ({e})")
  if not replicates:
    return
  boot = bootstrap.critical_compute_replicates(replicates["ar"], replicates["mdm"],
                                               unique_tokens, law_u)
  intervals, undefined = boot.intervals(_LEVEL.value), boot.undefined_share()
  out["critical_compute_intervals"] = {
      f"{u:g}": _interval_json(intervals[f"{u:g}"]) for u in unique_tokens}
  out["critical_compute_undefined_share"] = {f"{u:g}": undefined[f"{u:g}"]
                                             for u in unique_tokens}
  law_out.update(exponent_interval=_interval_json(intervals["exponent"]),
                 coefficient_interval=_interval_json(intervals["coefficient"]),
                 undefined_share=undefined["law"])
  for u in unique_tokens:
    print(f"C_crit(U={u:g}) {_LEVEL.value:.0%} interval: {_bracket(intervals[f'{u:g}'])} "
          f"({undefined[f'{u:g}']:.0%} of resamples do not cross)")
  print(f"C_crit(U) exponent {_LEVEL.value:.0%} interval: {_bracket(intervals['exponent'])}, "
        f"coefficient {_bracket(intervals['coefficient'])} ({undefined['law']:.0%} of resamples "
        "do not cross somewhere on the U grid)")


def do_fit() -> None:
  csv_path = _path(_CSV, "runs.csv")
  rows = _fit_rows(csv_path)
  out = {"csv": csv_path, "loss": _LOSS.value, "fits": {}, "stages": {}, "intervals": {},
         "interval_level": _LEVEL.value, "num_resamples": _NUM_RESAMPLES.value,
         "seed": _SEED.value, "errors": {}, "critical_compute": {},
         "critical_compute_note": (
             "C = 6 N D with N counting all parameters (embeddings included); null where the "
             "fitted laws do not cross; intervals are bootstrap percentile intervals, with "
             "inf (0) where a resample's laws never (always) favour diffusion")}
  fits, replicates = _fit_objectives(rows, out)
  if "ar" in fits and "mdm" in fits:
    _critical_compute(rows, fits, replicates, out)
  path = _path(_FIT_JSON, "fit.json")
  with open(path, "w") as f:
    json.dump(out, f, indent=2, sort_keys=True)
  print(f"-> {path}")


def _from_json_number(v):
  """Inverse of `_json_number`."""
  if v is None:
    return math.nan
  return float(v) if isinstance(v, str) else v


def read_intervals(saved: dict) -> dict:
  """{objective: {constant: (lo, hi)}} from a loaded fit.json (empty without a bootstrap)."""
  return {objective: {k: tuple(_from_json_number(x) for x in v) for k, v in constants.items()}
          for objective, constants in saved.get("intervals", {}).items()}


def read_fit_json(path: str) -> dict:
  with open(path) as f:
    return json.load(f)


def read_fits(path: str) -> dict:
  """FitResults by objective from a fit.json written by `fit`."""
  from diffusionlm.scaling import fit as fit_lib  # pylint: disable=g-import-not-at-top
  fields = {f.name for f in dataclasses.fields(fit_lib.FitResult)}
  return {objective: fit_lib.FitResult(**{k: _from_json_number(v) for k, v in saved.items()
                                          if k in fields})
          for objective, saved in read_fit_json(path)["fits"].items()}


def do_plot() -> None:
  from diffusionlm.scaling import plot  # pylint: disable=g-import-not-at-top
  rows = _fit_rows(_path(_CSV, "runs.csv"))
  out_dir = _path(_PLOT_DIR, "plots")
  label = f"validation loss ({_LOSS.value.replace('_', ' ')})"
  paths = [plot.plot_loss_vs_epochs(rows, os.path.join(out_dir, "loss_vs_epochs.png"),
                                    ylabel=label),
           plot.plot_loss_vs_flops(rows, os.path.join(out_dir, "loss_vs_flops.png"),
                                   ylabel=label)]
  fit_path = _path(_FIT_JSON, "fit.json")
  if os.path.exists(fit_path):
    fits, saved = read_fits(fit_path), read_fit_json(fit_path)
    if fits:
      paths.append(plot.plot_fit(rows, fits, os.path.join(out_dir, "fit.png"), ylabel=label,
                                 intervals=read_intervals(saved)))
    if saved.get("critical_compute_law", {}).get("exponent") is not None or any(
        c is not None for c in saved.get("critical_compute", {}).values()):
      paths.append(plot.plot_critical_compute(saved, os.path.join(out_dir,
                                                                  "critical_compute.png")))
  else:
    print(f"{fit_path} not found: run `fit` first for the fitted-law plot")
  raw = [{**r, "loss": r[_LOSS.value]} for r in sweep_lib.read_csv(_path(_CSV, "runs.csv"))]
  if len({r.get("noise_rate") or 0.0 for r in raw}) > 1:  # A noise study.
    raw = [{**r, "noise_rate": r.get("noise_rate") or 0.0} for r in raw]
    paths.append(plot.plot_loss_vs_noise(raw, os.path.join(out_dir, "noise_rate.png"),
                                         ylabel=label))
    table = plot.noise_markdown(plot.noise_table(raw), loss_name=_LOSS.value)
    with open(os.path.join(out_dir, "noise_rate.md"), "w") as f:
      f.write(table)
    print(table)
    paths.append(os.path.join(out_dir, "noise_rate.md"))
  for path in paths:
    print(f"-> {path}")


def main(argv):
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise app.UsageError(f"usage: python -m diffusionlm.scaling {'|'.join(COMMANDS)} "
                         "--root=DIR [flags]")
  if not _ROOT.value:
    raise app.UsageError("--root is required")
  if not flags.FLAGS["verbosity"].present:  # Library INFO logs drown the progress bars.
    logging.set_verbosity(logging.WARNING)
  {"sweep": do_sweep, "collect": do_collect, "fit": do_fit, "plot": do_plot}[argv[1]]()


if __name__ == "__main__":
  app.run(main)
