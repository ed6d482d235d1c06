"""Bootstrap confidence intervals for the fitted law and for critical compute.

Resampling (Efron's nonparametric bootstrap over runs): resample b = 1..B draws len(runs)
runs of one objective with replacement (numpy's default_rng(seed)) and refits the law on
them by the joint refinement alone (`fit.refit_from`, stage 3 of the fit) started from the
full-data fit; constants that fit left at R* = inf stay there. Starting at the full-data
solution keeps each refit in its basin and ~50x cheaper than the multi-start stages.

Intervals are percentile intervals: the level-l interval of a quantity theta is
[q_{(1-l)/2}, q_{(1+l)/2}] of its B replicate values theta_b.

C_crit(U): replicate b of AR is paired with replicate b of diffusion (the two objectives'
runs are resampled independently) and C_crit,b(U) = `critical_compute` of that pair. A pair
whose laws do not cross inside the search range counts as C_crit = +inf (diffusion never
wins) or 0 (it wins from the start), so percentiles stay defined and the share of such
pairs is reported. The law C_crit(U) = k U^gamma is fitted per pair over a grid of U, giving
intervals for gamma and k from the pairs where every C_crit on the grid is finite.
"""
import dataclasses
import math
from typing import Sequence

import numpy as np

from diffusionlm.scaling import fit as fit_lib


@dataclasses.dataclass(frozen=True)
class Interval:
  """A percentile interval [lo, hi] at confidence `level`."""
  lo: float
  hi: float
  level: float

  def __contains__(self, x: float) -> bool:
    return self.lo <= x <= self.hi


def resample_fits(runs: fit_lib.Runs, fit: fit_lib.FitResult, *, num_resamples: int,
                  seed, huber_delta: float = 1e-3) -> list[fit_lib.FitResult]:
  """The B = num_resamples refits of resampled runs (module docstring), in draw order.

  seed: anything numpy's default_rng takes (an int, or a tuple such as (seed, objective)).
  """
  if num_resamples < 1:
    raise ValueError(f"num_resamples must be positive, got {num_resamples}")
  rng = np.random.default_rng(seed)
  draws = rng.integers(0, len(runs), size=(num_resamples, len(runs)))
  return [fit_lib.refit_from(fit, runs.take(draw), huber_delta=huber_delta) for draw in draws]


def percentile_interval(values: Sequence[float], level: float) -> Interval:
  """[q_{(1-level)/2}, q_{(1+level)/2}] of `values` (infinities allowed; nan dropped)."""
  if not 0.0 < level < 1.0:
    raise ValueError(f"level must be in (0, 1), got {level}")
  values = np.asarray(values, dtype=np.float64)
  values = values[~np.isnan(values)]
  if values.size == 0:
    return Interval(math.nan, math.nan, level)
  lo, hi = np.quantile(values, [(1.0 - level) / 2.0, (1.0 + level) / 2.0],
                       method="inverted_cdf")  # An observed value: well defined with inf.
  return Interval(float(lo), float(hi), level)


def constant_intervals(replicates: Sequence[fit_lib.FitResult],
                       level: float) -> dict[str, Interval]:
  """A percentile interval for each constant of the law (E, A, B, alpha, beta, R_D*, R_N*)."""
  return {name: percentile_interval([getattr(r, name) for r in replicates], level)
          for name in fit_lib.CONSTANTS}


def critical_compute_or_limit(fit_ar: fit_lib.FitResult, fit_mdm: fit_lib.FitResult,
                              unique_tokens: float) -> float:
  """`critical_compute`, with +inf where diffusion never wins and 0 where it always does."""
  try:
    return fit_lib.critical_compute(fit_ar, fit_mdm, unique_tokens)
  except ValueError as e:
    if "never beats" in str(e):
      return math.inf
    if "already beats" in str(e):
      return 0.0
    raise


@dataclasses.dataclass(frozen=True)
class CriticalComputeBootstrap:
  """Replicates of C_crit at each U (B x len(U)) and of its power law over `law_unique_tokens`
  (exponent and coefficient, nan for pairs with a C_crit that is 0 or inf on that grid)."""
  unique_tokens: tuple[float, ...]
  c_crit_BxU: np.ndarray
  law_unique_tokens: tuple[float, ...]
  exponent_B: np.ndarray
  coefficient_B: np.ndarray

  def intervals(self, level: float) -> dict[str, Interval]:
    """Intervals keyed by f"{U:g}" for C_crit(U), and "exponent", "coefficient"."""
    out = {f"{u:g}": percentile_interval(self.c_crit_BxU[:, j], level)
           for j, u in enumerate(self.unique_tokens)}
    out["exponent"] = percentile_interval(self.exponent_B, level)
    out["coefficient"] = percentile_interval(self.coefficient_B, level)
    return out

  def undefined_share(self) -> dict[str, float]:
    """Share of pairs whose laws do not cross at each U (C_crit 0 or inf), and for the law."""
    out = {f"{u:g}": float(np.mean(~np.isfinite(self.c_crit_BxU[:, j]) |
                                   (self.c_crit_BxU[:, j] == 0)))
           for j, u in enumerate(self.unique_tokens)}
    out["law"] = float(np.mean(np.isnan(self.exponent_B)))
    return out


def critical_compute_replicates(replicates_ar: Sequence[fit_lib.FitResult],
                                replicates_mdm: Sequence[fit_lib.FitResult],
                                unique_tokens: Sequence[float],
                                law_unique_tokens: Sequence[float]) -> CriticalComputeBootstrap:
  """C_crit(U) and its power law for each pair (replicates_ar[b], replicates_mdm[b])."""
  if len(replicates_ar) != len(replicates_mdm):
    raise ValueError(f"need as many AR as diffusion replicates, got {len(replicates_ar)} and "
                     f"{len(replicates_mdm)}")
  unique_tokens, law_unique_tokens = tuple(unique_tokens), tuple(law_unique_tokens)
  grid = sorted(set(unique_tokens) | set(law_unique_tokens))
  c_crit, exponent, coefficient = [], [], []
  for ar, mdm in zip(replicates_ar, replicates_mdm):
    at = {u: critical_compute_or_limit(ar, mdm, u) for u in grid}
    c_crit.append([at[u] for u in unique_tokens])
    law_points = [at[u] for u in law_unique_tokens]
    if all(math.isfinite(c) and c > 0 for c in law_points):
      law = fit_lib.fit_power_law(law_unique_tokens, law_points)
      exponent.append(law.exponent)
      coefficient.append(law.coefficient)
    else:
      exponent.append(math.nan)
      coefficient.append(math.nan)
  return CriticalComputeBootstrap(unique_tokens, np.array(c_crit, dtype=np.float64),
                                  law_unique_tokens, np.array(exponent), np.array(coefficient))
