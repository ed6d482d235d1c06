"""PNG plots of a data-constrained sweep: loss vs epochs, loss vs FLOPs, the fitted law and
critical compute C_crit(U).

`rows` are one dict per finished run with keys objective, N, U, epochs, D, flops, loss.
Figures are drawn on matplotlib's Agg canvas directly (no pyplot state, no display needed).
"""
import collections
import math
import os
from typing import Mapping, Sequence

from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import numpy as np

from diffusionlm.scaling import fit as fit_lib

_KEYS = ("objective", "N", "U", "epochs", "D", "flops", "loss")
_LINESTYLES = ("-", "--", ":", "-.")
_MARKERS = ("o", "s", "^", "D")


def _check_rows(rows: Sequence[Mapping]) -> None:
  if not rows:
    raise ValueError("rows is empty: nothing to plot")
  for i, row in enumerate(rows):
    missing = [k for k in _KEYS if k not in row]
    if missing:
      raise ValueError(f"rows[{i}] lacks keys {missing} (needs {_KEYS})")


def _groups(rows, keys) -> dict[tuple, list[Mapping]]:
  """Rows grouped by the values of `keys`, groups and rows in sorted order."""
  out = collections.defaultdict(list)
  for row in rows:
    out[tuple(row[k] for k in keys)].append(row)
  return {k: sorted(out[k], key=lambda r: (r["epochs"], r["N"])) for k in sorted(out)}


def _styles(objectives) -> dict[str, tuple[str, str]]:
  names = sorted(set(objectives))
  return {o: (_LINESTYLES[i % 4], _MARKERS[i % 4]) for i, o in enumerate(names)}


def _colors(values) -> dict:
  """A viridis colour per distinct value, in sorted order."""
  values = sorted(set(values))
  return dict(zip(values, colormaps["viridis"](np.linspace(0.0, 0.85, len(values)))))


def _series_colors(rows):
  """color_of(objective, U): a colour per U, or per objective (series) when all runs share
  one U."""
  if len({r["U"] for r in rows}) > 1:
    colors = _colors(r["U"] for r in rows)
    return lambda objective, u: colors[u]
  names = sorted({r["objective"] for r in rows})
  return lambda objective, u: f"C{names.index(objective) % 10}"


def _number(x: float) -> str:
  """Short label: whole numbers below 1e6 in full (8192), others with 3 digits (1e+08)."""
  return f"{x:.0f}" if x < 1e6 and float(x).is_integer() else f"{x:.3g}"


def _save(fig: Figure, out_path: str) -> str:
  os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
  FigureCanvasAgg(fig)
  fig.savefig(out_path, format="png", dpi=120, bbox_inches="tight")
  return out_path


def plot_loss_vs_epochs(rows: Sequence[Mapping], out_path: str, *,
                        ylabel: str = "validation loss") -> str:
  """Validation loss vs epochs, one line per (objective, U): the best loss over model sizes
  at each epoch count; every run is also drawn as a faint dot."""
  _check_rows(rows)
  styles = _styles(r["objective"] for r in rows)
  color_of = _series_colors(rows)
  fig = Figure(figsize=(6.4, 4.4))
  ax = fig.add_subplot()
  for (objective, u), group in _groups(rows, ("objective", "U")).items():
    linestyle, marker = styles[objective]
    epochs = np.array([r["epochs"] for r in group], dtype=float)
    loss = np.array([r["loss"] for r in group], dtype=float)
    ax.scatter(epochs, loss, color=color_of(objective, u), marker=marker, alpha=0.3, s=12)
    unique_epochs = np.unique(epochs)
    best = [loss[epochs == e].min() for e in unique_epochs]
    ax.plot(unique_epochs, best, linestyle=linestyle, marker=marker,
            color=color_of(objective, u),
            label=f"{objective}, U={_number(u)}")
  ax.set(xscale="log", xlabel="epochs", ylabel=ylabel,
         title="Validation loss vs epochs (best over N)")
  ax.legend(fontsize=7)
  return _save(fig, out_path)


def plot_loss_vs_flops(rows: Sequence[Mapping], out_path: str, *,
                       ylabel: str = "validation loss") -> str:
  """Validation loss vs training FLOPs per run, with the lower envelope of each
  (objective, U): the best loss reached with at most that compute on U unique tokens."""
  _check_rows(rows)
  styles = _styles(r["objective"] for r in rows)
  color_of = _series_colors(rows)
  fig = Figure(figsize=(6.4, 4.4))
  ax = fig.add_subplot()
  for (objective, u), group in _groups(rows, ("objective", "U")).items():
    linestyle, marker = styles[objective]
    flops = np.array([r["flops"] for r in group], dtype=float)
    loss = np.array([r["loss"] for r in group], dtype=float)
    order = np.argsort(flops, kind="stable")
    ax.scatter(flops, loss, color=color_of(objective, u), marker=marker, alpha=0.3, s=12)
    ax.plot(flops[order], np.minimum.accumulate(loss[order]), linestyle=linestyle,
            color=color_of(objective, u), label=f"{objective}, U={_number(u)} (envelope)")
  ax.set(xscale="log", xlabel="training FLOPs", ylabel=ylabel,
         title="Validation loss vs compute")
  ax.legend(fontsize=7)
  return _save(fig, out_path)


def _with_interval(name: str, value: float, intervals: Mapping) -> str:
  """"R_D*=15.4 [12.1, 19]": the value and, if there is one, its interval."""
  text = f"{name}={value:.3g}"
  key = {"R_D*": "rd_star", "R_N*": "rn_star"}.get(name, name)
  if key in intervals:
    lo, hi = intervals[key]
    text += f" [{lo:.3g}, {hi:.3g}]"
  return text


def plot_fit(rows: Sequence[Mapping], fits: Mapping[str, fit_lib.FitResult],
             out_path: str, *, ylabel: str = "validation loss",
             intervals: Mapping[str, Mapping[str, tuple[float, float]]] | None = None) -> str:
  """Runs (dots) and the fitted law (lines) vs epochs, one panel per fitted objective and
  one colour per (U, N). intervals: {objective: {constant: (lo, hi)}}, shown in the titles."""
  _check_rows(rows)
  objectives = [o for o in sorted(fits) if any(r["objective"] == o for r in rows)]
  if not objectives:
    raise ValueError(f"no rows for the fitted objectives {sorted(fits)}")
  fig = Figure(figsize=(5.2 * len(objectives), 4.4))
  axes = fig.subplots(1, len(objectives), squeeze=False)[0]
  for ax, objective in zip(axes, objectives):
    fit = fits[objective]
    own = [r for r in rows if r["objective"] == objective]
    groups = _groups(own, ("U", "N"))
    colors = _colors(groups)
    for (u, n), group in groups.items():
      epochs = np.array([r["epochs"] for r in group], dtype=float)
      ax.scatter(epochs, [r["loss"] for r in group], color=colors[(u, n)], s=14)
      grid = np.geomspace(epochs.min(), epochs.max(), 100)
      ax.plot(grid, fit_lib.predict(fit, n, grid * u, u), color=colors[(u, n)],
              label=f"U={_number(u)}, N={_number(n)}")
    r2 = "" if np.isnan(fit.r2) else f", R^2={fit.r2:.3f}"
    own_intervals = (intervals or {}).get(objective, {})
    title = (f"{objective}: " + ", ".join(
        _with_interval(name, getattr(fit, key), own_intervals)
        for name, key in (("alpha", "alpha"), ("beta", "beta"))) + "\n" + ", ".join(
        _with_interval(name, getattr(fit, key), own_intervals)
        for name, key in (("R_D*", "rd_star"), ("R_N*", "rn_star"))) + r2)
    ax.set(xscale="log", xlabel="epochs", ylabel=ylabel, title=title)
    ax.title.set_fontsize(9)
    ax.legend(fontsize=6)
  return _save(fig, out_path)


PRABHUDESAI_EXPONENT = 2.174  # C_crit proportional to U^2.174 (Prabhudesai et al., 2025).


def plot_critical_compute(saved: Mapping, out_path: str) -> str:
  """C_crit(U) from a fit.json written by `fit`: the value at each U of the sweep with its
  bootstrap interval, the fitted power law k U^gamma over its U grid, and a line of the
  paper's slope 2.174 through the law's middle for comparison."""
  law = saved.get("critical_compute_law", {})
  points = {float(u): c for u, c in saved.get("critical_compute", {}).items() if c is not None}
  if not points and "exponent" not in law:
    raise ValueError("the fit has no critical compute to plot (needs AR and diffusion fits "
                     "that cross)")
  fig = Figure(figsize=(6.4, 4.4))
  ax = fig.add_subplot()
  if "exponent" in law:
    grid = np.geomspace(min(law["unique_tokens"]), max(law["unique_tokens"]), 50)
    band = law.get("exponent_interval")
    band_text = f" [{band[0]:.3g}, {band[1]:.3g}]" if band and None not in band else ""
    ax.plot(grid, law["coefficient"] * grid**law["exponent"], color="C0",
            label=f"fit: {law['coefficient']:.3g} U^{law['exponent']:.3f}{band_text}")
    middle = math.sqrt(grid[0] * grid[-1])
    at_middle = law["coefficient"] * middle**law["exponent"]
    ax.plot(grid, at_middle * (grid / middle)**PRABHUDESAI_EXPONENT, color="gray",
            linestyle="--", label=f"slope {PRABHUDESAI_EXPONENT} (Prabhudesai et al.)")
  if points:
    u = np.array(sorted(points))
    c = np.array([points[x] for x in u])
    intervals = saved.get("critical_compute_intervals", {})
    lo_hi = np.array([[_json_float(v) for v in intervals.get(f"{x:g}", (np.nan, np.nan))]
                      for x in u])
    finite = np.isfinite(lo_hi).all(axis=1) & (lo_hi[:, 0] > 0)
    ax.scatter(u, c, color="C1", zorder=3, label="C_crit at the sweep's U")
    if finite.any():
      ax.errorbar(u[finite], c[finite], yerr=[c[finite] - lo_hi[finite, 0],
                                              lo_hi[finite, 1] - c[finite]],
                  fmt="none", ecolor="C1", capsize=3,
                  label=f"{saved.get('interval_level', 0.95):.0%} bootstrap interval")
  ax.set(xscale="log", yscale="log", xlabel="unique tokens U", ylabel="C_crit (FLOPs, 6ND)",
         title="Critical compute: diffusion beats AR above C_crit(U)")
  ax.legend(fontsize=7)
  return _save(fig, out_path)


def _json_float(v) -> float:
  """A fit.json number: "inf" -> inf, null -> nan."""
  return math.nan if v is None else float(v)


def noise_table(rows: Sequence[Mapping]) -> list[dict]:
  """Per (objective, model, U, epochs, seed) and noise rate r: the loss L(r) and its
  relative increase L(r) / L(0) - 1 over the same cell's clean run (nan without one)."""
  for i, row in enumerate(rows):
    missing = [k for k in ("objective", "model", "N", "U", "epochs", "noise_rate", "loss")
               if k not in row]
    if missing:
      raise ValueError(f"rows[{i}] lacks keys {missing}")
  out = []
  rows = [{"seed": 0, **r} for r in rows]
  for (objective, model, u, epochs, seed), group in _groups(
      rows, ("objective", "model", "U", "epochs", "seed")).items():
    clean = [r["loss"] for r in group if r["noise_rate"] == 0]
    for row in sorted(group, key=lambda r: r["noise_rate"]):
      out.append({"objective": objective, "model": model, "N": row["N"], "U": u,
                  "epochs": epochs, "seed": seed,
                  "noise_rate": row["noise_rate"], "loss": row["loss"],
                  "relative_increase": row["loss"] / clean[0] - 1 if clean else math.nan})
  return out


def noise_markdown(table: Sequence[Mapping], *, loss_name: str = "loss") -> str:
  """`noise_table` as a Markdown table."""
  lines = [f"| objective | model | U | epochs | seed | noise rate | {loss_name} | vs clean |",
           "|---|---|---:|---:|---:|---:|---:|---:|"]
  for r in table:
    lines.append(f"| {r['objective']} | {r['model']} | {_number(r['U'])} | {r['epochs']:g} | "
                 f"{r['seed']} | {r['noise_rate']:g} | {r['loss']:.4f} | "
                 f"{100 * r['relative_increase']:+.2f}% |")
  return "\n".join(lines) + "\n"


def plot_loss_vs_noise(rows: Sequence[Mapping], out_path: str, *,
                       ylabel: str = "validation loss") -> str:
  """Left: clean validation loss vs the share of random training sequences, one line per
  (objective, model, U, epochs). Right: its increase relative to the clean run, in %, with
  the < 1% at 20% noise that "Do we really have to filter out random noise in pre-training
  data?" (2025) reports for AR."""
  table = noise_table(rows)
  fig = Figure(figsize=(10.4, 4.2))
  left, right = fig.subplots(1, 2)
  keys = ("objective", "model", "U", "epochs", "seed")
  styles = _styles(r["objective"] for r in table)
  for key, group in _groups(table, keys).items():
    group = sorted(group, key=lambda r: r["noise_rate"])
    linestyle, marker = styles[key[0]]
    rate = 100 * np.array([r["noise_rate"] for r in group], dtype=float)
    label = f"{key[0]}, {key[1]}, U={_number(key[2])}, {key[3]:g} ep., seed {key[4]}"
    left.plot(rate, [r["loss"] for r in group], linestyle=linestyle, marker=marker, label=label)
    right.plot(rate, [100 * r["relative_increase"] for r in group], linestyle=linestyle,
               marker=marker, label=label)
  right.scatter([20], [1], marker="*", s=120, color="gray", zorder=3,
                label="paper: AR < 1% at 20%")
  right.axhline(0, color="gray", linewidth=0.5)
  left.set(xlabel="random training sequences (%)", ylabel=ylabel,
           title="Clean validation loss vs noise")
  right.set(xlabel="random training sequences (%)", ylabel="increase over clean run (%)",
            title="Relative increase")
  for ax in (left, right):
    ax.legend(fontsize=7)
  return _save(fig, out_path)
