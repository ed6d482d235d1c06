"""PNG plots of a data-constrained sweep: loss vs epochs, loss vs FLOPs, the fitted law.

`rows` are one dict per finished run with keys objective, N, U, epochs, D, flops, loss.
Figures are drawn on matplotlib's Agg canvas directly (no pyplot state, no display needed).
"""
import collections
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
  colors = _colors(r["U"] for r in rows)
  fig = Figure(figsize=(6.4, 4.4))
  ax = fig.add_subplot()
  for (objective, u), group in _groups(rows, ("objective", "U")).items():
    linestyle, marker = styles[objective]
    epochs = np.array([r["epochs"] for r in group], dtype=float)
    loss = np.array([r["loss"] for r in group], dtype=float)
    ax.scatter(epochs, loss, color=colors[u], marker=marker, alpha=0.3, s=12)
    unique_epochs = np.unique(epochs)
    best = [loss[epochs == e].min() for e in unique_epochs]
    ax.plot(unique_epochs, best, linestyle=linestyle, marker=marker, color=colors[u],
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
  colors = _colors(r["U"] for r in rows)
  fig = Figure(figsize=(6.4, 4.4))
  ax = fig.add_subplot()
  for (objective, u), group in _groups(rows, ("objective", "U")).items():
    linestyle, marker = styles[objective]
    flops = np.array([r["flops"] for r in group], dtype=float)
    loss = np.array([r["loss"] for r in group], dtype=float)
    order = np.argsort(flops, kind="stable")
    ax.scatter(flops, loss, color=colors[u], marker=marker, alpha=0.3, s=12)
    ax.plot(flops[order], np.minimum.accumulate(loss[order]), linestyle=linestyle,
            color=colors[u], label=f"{objective}, U={_number(u)} (envelope)")
  ax.set(xscale="log", xlabel="training FLOPs", ylabel=ylabel,
         title="Validation loss vs compute")
  ax.legend(fontsize=7)
  return _save(fig, out_path)


def plot_fit(rows: Sequence[Mapping], fits: Mapping[str, fit_lib.FitResult],
             out_path: str, *, ylabel: str = "validation loss") -> str:
  """Runs (dots) and the fitted law (lines) vs epochs, one panel per fitted objective and
  one colour per (U, N)."""
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
    ax.set(xscale="log", xlabel="epochs", ylabel=ylabel,
           title=f"{objective}: R_D*={fit.rd_star:.3g}, R_N*={fit.rn_star:.3g}{r2}")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=6)
  return _save(fig, out_path)
