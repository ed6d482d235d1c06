"""The data-constrained scaling law of Muennighoff et al. (2023), its fit, and critical compute.

The law (Muennighoff et al., 2023, Sec. 3; fitted per objective by Prabhudesai et al., 2025,
Sec. 3.3):

    L(N, D, U) = E + A / N'^alpha + B / D'^beta
    U_D = min(U, D)                             unique tokens actually seen
    R_D = D / U_D - 1                           repetitions beyond the first epoch
    D'  = U_D + U_D R_D* (1 - exp(-R_D / R_D*)) effective data
    U_N = min(N, N_opt(U_D))                    "unique" parameters
    R_N = N / U_N - 1                           excess parameters, in units of U_N
    N'  = U_N + U_N R_N* (1 - exp(-R_N / R_N*)) effective parameters

N_opt(D) = (alpha A / (beta B))^(1/alpha) D^(beta/alpha) is the model size the single-epoch
(Chinchilla) part of the law finds compute-optimal for D tokens: it minimises
A / N^alpha + B / D^beta at fixed N D (the same D_to_N as Muennighoff et al.'s reference
code). R* = inf switches a decay off: D' = D, N' = N.

Fit. Positive constants are parametrised by their logs, theta = (e, a, b, alpha, beta,
log R_D*, log R_N*) with E = exp(e), A = exp(a), B = exp(b) (as Hoffmann et al., 2022,
Sec. 3.3). Every stage minimises the same objective, the Huber loss (delta = 1e-3) of the
log residuals over its runs i,

    sum_i Huber_delta(log L(N_i, D_i, U_i; theta) - log L_i),
    log L = logsumexp(e, a - alpha log N', b - beta log D'),

in three stages:
- Stage 1, E, A, B, alpha, beta on single-epoch runs (D <= 1.01 U, allowing for whole-batch
  rounding) that are not over-parametrised, where D' = D and N' = N exactly. Which runs
  those are depends on the constants (N <= N_opt(U_D)), so the set is iterated: S_0 is every
  single-epoch run; theta_k is fitted on S_k (L-BFGS-B, analytic gradient, from the
  `num_starts` best points of Hoffmann et al.'s grid); S_{k+1} = {single-epoch i :
  N_i <= N_opt(U_D,i; theta_k)}; until S_{k+1} = S_k (or a set repeats, or
  `_MAX_STAGE1_ITERATIONS`). A set too small to identify the five constants (fewer than 5
  runs, or fewer than 2 distinct N or D) is not taken: the last identifiable set stays.
- Stage 2, with those fixed, R_D* (and R_N* unless disabled) on all runs, with U_N from the
  stage-1 N_opt (L-BFGS-B from a grid of R* in [1, 1e4]). Without repeated runs it is
  skipped and both stay at inf (not identifiable); R_N* also stays at inf when no run has
  N > U_N or with `fit_rn_star=False` (use that when the sweep barely varies N).
- Stage 3, the joint refinement: every fitted constant at once on all runs, from the stage-2
  solution, with U_N = min(N, N_opt(U_D; theta)) following theta (scipy's least_squares,
  trust-region reflective, loss="huber" with f_scale = delta: the same objective).
  Stages 1-2 only find the basin; stage 3 makes the fit exact on the law's own noise-free
  data, over-parametrised single-epoch runs included (N' of such a run depends on R_N*).

R* is bounded to [1e-2, 1e8] (1e8: no decay detectable) and alpha, beta to >= 1e-3 in
stage 3 (N_opt needs them positive).
"""
import dataclasses
import itertools
import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from scipy import optimize

_FIELDS = ("N", "D", "U", "loss")
# Initial grids: stage 1 is Hoffmann et al.'s grid; stage 2 spans R* from 1 to 10^4.
_STAGE1_GRID = (np.arange(-1.0, 1.01, 0.5), np.arange(0.0, 26.0, 5.0), np.arange(0.0, 26.0, 5.0),
                np.arange(0.0, 2.01, 0.5), np.arange(0.0, 2.01, 0.5))
_R_STAR_GRID = np.log([1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1e3, 2e3, 5e3, 1e4])
_LOG_R_STAR_BOUNDS = (math.log(1e-2), math.log(1e8))
_MIN_EXPONENT = 1e-3  # Stage-3 lower bound on alpha and beta.
_SINGLE_EPOCH_TOL = 1e-2  # D <= 1.01 U counts as one epoch (whole-batch rounding of D).
_MAX_STAGE1_ITERATIONS = 10


@dataclasses.dataclass(frozen=True)
class FitResult:
  """Fitted constants of the law (R* = inf: no decay) and the quality of the fit.

  r2: final law on all points; r2_stage1: stage-1 law on the stage-1 points;
  r2_repeated: final law on the runs with more than one epoch (nan if there are none).
  R^2 is on the loss itself, not its log. stage1_runs: indices (into the fitted points) of
  the runs stage 1 used; stages 2 and 3 use all runs. stage1_iterations: stage-1 fits done;
  stage1_converged: whether the run set reached a fixed point (see the module docstring).
  """
  E: float
  A: float
  B: float
  alpha: float
  beta: float
  rd_star: float = math.inf
  rn_star: float = math.inf
  r2: float = math.nan
  r2_stage1: float = math.nan
  r2_repeated: float = math.nan
  num_points: int = 0
  num_points_stage1: int = 0
  stage1_runs: tuple[int, ...] = ()
  stage1_iterations: int = 0
  stage1_converged: bool = True


CONSTANTS = ("E", "A", "B", "alpha", "beta", "rd_star", "rn_star")  # FitResult's law fields.


@dataclasses.dataclass(frozen=True)
class Runs:
  """One objective's runs as columns: N (parameters), D (training tokens), U (unique
  tokens) and loss."""
  n: np.ndarray
  d: np.ndarray
  u: np.ndarray
  loss: np.ndarray

  @classmethod
  def from_points(cls, points: Sequence[Any]) -> "Runs":
    """Reads N, D, U, loss from mappings or attribute records, checking each value."""
    columns = {k: [] for k in _FIELDS}
    for i, point in enumerate(points):
      for key in _FIELDS:
        value = point.get(key) if isinstance(point, Mapping) else getattr(point, key, None)
        if value is None:
          raise ValueError(f"point {i} has no field {key!r} (needs {_FIELDS})")
        value = float(value)
        if not (math.isfinite(value) and value > 0):
          raise ValueError(f"point {i}: {key} must be a positive finite number, got {value}")
        columns[key].append(value)
    return cls(*(np.asarray(columns[k], dtype=np.float64) for k in _FIELDS))

  def __len__(self) -> int:
    return self.loss.size

  def take(self, indices) -> "Runs":
    return Runs(self.n[indices], self.d[indices], self.u[indices], self.loss[indices])

  @property
  def single_epoch(self) -> np.ndarray:
    return self.d <= self.u * (1.0 + _SINGLE_EPOCH_TOL)


def _theta(fit: FitResult) -> np.ndarray:
  """theta = (e, a, b, alpha, beta, log R_D*, log R_N*); E = 0 (an underflowed e) is -inf."""
  with np.errstate(divide="ignore"):
    return np.concatenate([np.log([fit.E, fit.A, fit.B]), [fit.alpha, fit.beta],
                           np.log([fit.rd_star, fit.rn_star])])


def _constants(theta) -> dict[str, float]:
  """FitResult's law fields from theta = (e, a, b, alpha, beta, log R_D*, log R_N*)."""
  e, a, b, alpha, beta, log_rd, log_rn = (float(v) for v in theta)
  return dict(E=math.exp(e), A=math.exp(a), B=math.exp(b), alpha=alpha, beta=beta,
              rd_star=math.exp(log_rd), rn_star=math.exp(log_rn))


def _log_unique_params(theta, log_u):
  """log N_opt(U) = ((log(alpha A) - log(beta B)) + beta log U) / alpha."""
  e, a, b, alpha, beta = theta[:5]
  return (math.log(alpha) + a - math.log(beta) - b + beta * log_u) / alpha


def unique_params(fit: FitResult, unique_tokens):
  """N_opt(U): the single-epoch compute-optimal model size for U tokens (U_N before the min)."""
  return np.exp(_log_unique_params(_theta(fit), np.log(unique_tokens)))


def _log_saturated(repeats, log_r_star: float):
  """log(1 + R* (1 - exp(-R / R*))) and its derivative in log R* (log(1 + R) and 0 at inf)."""
  if math.isinf(log_r_star):
    return np.log1p(repeats), np.zeros_like(repeats)
  r_star = math.exp(log_r_star)
  with np.errstate(over="ignore", invalid="ignore"):  # R = inf (see `_repeats`): gain R*.
    x = repeats / r_star
    gain = -r_star * np.expm1(-x)
    d_gain = r_star * (-np.expm1(-x) - np.where(np.isinf(x), 0.0, x * np.exp(-x)))
  return np.log1p(gain), d_gain / (1.0 + gain)  # d gain / d log R* above.


def _repeats(runs: Runs, theta):
  """(log U_N, R_N, log U_D, R_D) of the law; theta None means U_N = N (stage 1)."""
  u_d = np.minimum(runs.u, runs.d)
  r_d = np.maximum(runs.d / u_d - 1.0, 0.0)
  log_n = np.log(runs.n)
  log_u_n = log_n if theta is None else np.minimum(log_n, _log_unique_params(theta, np.log(u_d)))
  with np.errstate(over="ignore"):  # R_N = inf for an absurd trial N_opt: L stays finite.
    r_n = np.maximum(np.expm1(log_n - log_u_n), 0.0)
  return log_u_n, r_n, np.log(u_d), r_d


def _effective_logs(data, log_rd: float, log_rn: float):
  """(log N', log D', d log N' / d log R_N*, d log D' / d log R_D*) from `_repeats` data."""
  log_u_n, r_n, log_u_d, r_d = data
  sat_n, dsat_n = _log_saturated(r_n, log_rn)
  sat_d, dsat_d = _log_saturated(r_d, log_rd)
  return log_u_n + sat_n, log_u_d + sat_d, dsat_n, dsat_d


def _log_law(e, a, b, alpha, beta, log_n, log_d):
  """log L = logsumexp(e, a - alpha log N', b - beta log D') and the three softmax weights.

  Broadcasts, so a column of constants evaluates a whole grid of starts at once.
  """
  t1, t2 = a - alpha * log_n, b - beta * log_d
  top = np.maximum(np.maximum(e, t1), t2)
  w0, w1, w2 = np.exp(e - top), np.exp(t1 - top), np.exp(t2 - top)
  total = w0 + w1 + w2
  return top + np.log(total), (w0 / total, w1 / total, w2 / total)


def _log_predict(theta, data):
  """log L at theta = (e, a, b, alpha, beta, log R_D*, log R_N*) for `_repeats` data."""
  log_n, log_d, _, _ = _effective_logs(data, theta[5], theta[6])
  return _log_law(*theta[:5], log_n, log_d)[0]


def _huber(residual, delta):
  abs_res = np.abs(residual)
  return np.where(abs_res <= delta, 0.5 * residual**2, delta * (abs_res - 0.5 * delta))


def _huber_objective(theta, data, log_loss, delta):
  """sum_i Huber_delta(log L_fit_i - log L_i) / delta and its gradient in
  theta = (e, a, b, alpha, beta, log R_D*, log R_N*), U_N held fixed in `data`."""
  e, a, b, alpha, beta, log_rd, log_rn = theta
  log_n, log_d, dsat_n, dsat_d = _effective_logs(data, log_rd, log_rn)
  log_fit, (w0, w1, w2) = _log_law(e, a, b, alpha, beta, log_n, log_d)
  residual = log_fit - log_loss
  slope = np.clip(residual, -delta, delta)  # d Huber / d residual.
  s1, s2 = slope * w1, slope * w2
  grad = np.array([slope @ w0, s1.sum(), s2.sum(), -(s1 @ log_n), -(s2 @ log_d),
                   -beta * (s2 @ dsat_d), -alpha * (s1 @ dsat_n)])
  return _huber(residual, delta).sum() / delta, grad / delta


def _grid_values(thetas_Gx7, data, log_loss, delta):
  """The objective at many thetas, vectorised over those sharing (log R_D*, log R_N*)."""
  values_G = np.empty(len(thetas_Gx7))
  for r_stars in np.unique(thetas_Gx7[:, 5:], axis=0):
    rows = np.all(thetas_Gx7[:, 5:] == r_stars, axis=1)
    log_n, log_d, _, _ = _effective_logs(data, *r_stars)
    constants = (thetas_Gx7[rows, k, None] for k in range(5))
    log_fit = _log_law(*constants, log_n, log_d)[0]
    values_G[rows] = _huber(log_fit - log_loss, delta).sum(axis=1) / delta
  return values_G


def _multistart(theta0, free, grid, data, log_loss, *, delta, num_starts, bounds):
  """L-BFGS-B over theta[free] from the `num_starts` best grid points; the best result."""
  starts_GxF = np.array(list(itertools.product(*grid)))
  thetas_Gx7 = np.tile(np.asarray(theta0, dtype=np.float64), (len(starts_GxF), 1))
  thetas_Gx7[:, free] = starts_GxF
  if num_starts is not None and num_starts < len(starts_GxF):
    best_first = np.argsort(_grid_values(thetas_Gx7, data, log_loss, delta), kind="stable")
    thetas_Gx7 = thetas_Gx7[best_first[:num_starts]]

  best_value, best_theta = math.inf, None
  for theta in thetas_Gx7:

    def objective(x, theta=theta):
      theta[free] = x
      value, grad = _huber_objective(theta, data, log_loss, delta)
      return value, grad[free]

    res = optimize.minimize(objective, theta[free], jac=True, method="L-BFGS-B",
                            bounds=bounds, options={"ftol": 1e-12, "gtol": 1e-8})
    if np.isfinite(res.fun) and res.fun < best_value:
      best_value, best_theta = res.fun, theta.copy()
      best_theta[free] = res.x
  if best_theta is None:
    raise ValueError("fit failed: the objective is not finite from any start; check that the "
                     "losses are in a consistent unit")
  return best_theta


def _r2(predicted, observed) -> float:
  if observed.size == 0:
    return math.nan
  ss_tot = np.sum((observed - observed.mean())**2)
  return float(1.0 - np.sum((observed - predicted)**2) / ss_tot) if ss_tot > 0 else math.nan


def _identifiability_problem(runs: Runs) -> str | None:
  """Why stage 1 cannot identify E, A, B, alpha, beta from `runs`, or None."""
  if len(runs) < 5:
    return "needs at least 5 runs to fit E, A, B, alpha, beta"
  if len(np.unique(runs.n)) < 2 or len(np.unique(runs.d)) < 2:
    return "needs at least two model sizes N and two token counts D to identify alpha and beta"
  return None


def _fit_stage1(runs: Runs, *, delta, num_starts):
  """Stage 1 (module docstring): theta with R* = inf and the set of runs it was fitted on."""
  single = np.flatnonzero(runs.single_epoch)
  problem = _identifiability_problem(runs.take(single))
  if problem:
    raise ValueError(f"points: stage 1 {problem}; got {single.size} runs with at most one "
                     "epoch (D <= U)")
  chosen, seen, theta, iterations = single, [], None, 0
  while True:
    stage1 = runs.take(chosen)
    theta = _multistart([0.0] * 5 + [math.inf] * 2, np.arange(5), _STAGE1_GRID,
                        _repeats(stage1, None), np.log(stage1.loss), delta=delta,
                        num_starts=num_starts, bounds=None)
    iterations += 1
    seen.append(chosen)
    if theta[3] <= 0 or theta[4] <= 0:  # N_opt is undefined: keep this set.
      return theta, chosen, iterations, False
    log_u_d = np.log(np.minimum(runs.u[single], runs.d[single]))
    nxt = single[np.log(runs.n[single]) <= _log_unique_params(theta, log_u_d)]
    if np.array_equal(nxt, chosen):
      return theta, chosen, iterations, True
    if (any(np.array_equal(nxt, s) for s in seen) or iterations >= _MAX_STAGE1_ITERATIONS
        or _identifiability_problem(runs.take(nxt))):
      return theta, chosen, iterations, False
    chosen = nxt


def _refine_jointly(theta, free, runs: Runs, *, delta, tol=1e-12):
  """Stage 3: theta[free] by least squares with the Huber loss on all runs, U_N following
  theta (module docstring)."""
  theta = np.asarray(theta, dtype=np.float64).copy()
  lower = np.array([-np.inf, -np.inf, -np.inf, _MIN_EXPONENT, _MIN_EXPONENT,
                    _LOG_R_STAR_BOUNDS[0], _LOG_R_STAR_BOUNDS[0]])[free]
  upper = np.array([np.inf] * 5 + [_LOG_R_STAR_BOUNDS[1]] * 2)[free]
  width = np.where(np.isfinite(upper - lower), upper - lower, 1.0)
  x0 = np.clip(theta[free], lower + 1e-9 * width, upper - 1e-9 * width)
  log_loss = np.log(runs.loss)

  def residual(x):
    trial = theta.copy()
    trial[free] = x
    return _log_predict(trial, _repeats(runs, trial)) - log_loss

  if not np.all(np.isfinite(residual(x0))):
    raise ValueError("fit failed: the law is not finite at the stage-2 solution")
  res = optimize.least_squares(residual, x0, jac="2-point", bounds=(lower, upper),
                               loss="huber", f_scale=delta, x_scale="jac", ftol=tol, xtol=tol,
                               gtol=tol, max_nfev=500 * len(free))
  theta[free] = res.x
  return theta


def _free_constants(theta) -> np.ndarray:
  """Indices of theta that are fitted: E, A, B, alpha, beta and every finite R*."""
  return np.array([k for k in range(7) if k < 5 or math.isfinite(theta[k])])


def _result(theta, runs: Runs, **quality) -> FitResult:
  """FitResult of theta on `runs`, with R^2 on all and on the repeated runs."""
  predicted = np.exp(_log_predict(theta, _repeats(runs, theta)))
  repeated = ~runs.single_epoch
  return FitResult(**_constants(theta), r2=_r2(predicted, runs.loss),
                   r2_repeated=_r2(predicted[repeated], runs.loss[repeated]),
                   num_points=len(runs), **quality)


def fit_runs(runs: Runs, *, fit_rn_star: bool = True, huber_delta: float = 1e-3,
             num_starts: int | None = 16) -> FitResult:
  """`fit_data_constrained` on a `Runs` table."""
  theta, chosen, iterations, converged = _fit_stage1(runs, delta=huber_delta,
                                                     num_starts=num_starts)
  stage1 = runs.take(chosen)
  r2_stage1 = _r2(np.exp(_log_predict(theta, _repeats(stage1, None))), stage1.loss)

  # Stage 2: the decay constants on all runs, with U_N from the stage-1 law.
  data = _repeats(runs, theta)
  free = [5] if np.any(data[3] > 0) else []
  if fit_rn_star and np.any(data[1] > 0) and free:
    free.append(6)
  if free:
    theta = _multistart(theta, np.array(free), [_R_STAR_GRID] * len(free), data,
                        np.log(runs.loss), delta=huber_delta, num_starts=num_starts,
                        bounds=[_LOG_R_STAR_BOUNDS] * len(free))
  theta = _refine_jointly(theta, _free_constants(theta), runs, delta=huber_delta)
  return _result(theta, runs, r2_stage1=r2_stage1, num_points_stage1=int(chosen.size),
                 stage1_runs=tuple(int(i) for i in chosen), stage1_iterations=iterations,
                 stage1_converged=converged)


def fit_data_constrained(points: Sequence[Any], *, fit_rn_star: bool = True,
                         huber_delta: float = 1e-3, num_starts: int | None = 16) -> FitResult:
  """Fits the law in three stages (see the module docstring) to one objective's runs.

  points: records (mappings or objects) with N (parameters), D (total training tokens),
  U (unique tokens) and loss (validation loss; any fixed unit). num_starts: L-BFGS runs per
  stage-1 and stage-2 fit, started from the grid points with the lowest objective (None:
  every grid point).
  """
  return fit_runs(Runs.from_points(points), fit_rn_star=fit_rn_star, huber_delta=huber_delta,
                  num_starts=num_starts)


def refit_from(fit: FitResult, runs: Runs, *, huber_delta: float = 1e-3,
               tol: float = 1e-8) -> FitResult:
  """Stage 3 alone on `runs`, started from `fit`: the constants `fit` has fitted (its
  finite R*) refined jointly, to relative tolerance `tol` (least_squares' ftol, xtol and
  gtol; 1e-8 is far below any bootstrap spread). The bootstrap's refit of each resample."""
  theta = _refine_jointly(_theta(fit), _free_constants(_theta(fit)), runs, delta=huber_delta,
                          tol=tol)
  return _result(theta, runs)


def predict(fit: FitResult, n, d, u):
  """L(N, D, U) of the fitted law; broadcasts over numpy arrays."""
  theta = _theta(fit)
  return np.exp(_log_predict(theta, _repeats(_broadcast_runs(n, d, u), theta)))


def _broadcast_runs(n, d, u) -> Runs:
  n, d, u = np.broadcast_arrays(*(np.asarray(x, dtype=np.float64) for x in (n, d, u)))
  return Runs(n, d, u, np.ones_like(n))


def effective_params_and_data(fit: FitResult, n, d, u):
  """(N', D') of the law: parameters and tokens discounted for excess and repetition."""
  theta = _theta(fit)
  log_n, log_d, _, _ = _effective_logs(_repeats(_broadcast_runs(n, d, u), theta), theta[5],
                                       theta[6])
  return np.exp(log_n), np.exp(log_d)
def _six_n(n):
  return 6.0 * n


_INV_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


def _optimal_log_params(fit: FitResult, log_computes, unique_tokens: float, flops_per_token_fn,
                        *, grid_size: int = 512, golden_steps: int = 40):
  """argmin over log N of L(N, C / f(N), U) for each C, vectorised over C.

  A `grid_size`-point grid on log N in [0, log C] (N with C / f(N) < 1 token excluded), then
  `golden_steps` golden-section steps between the grid neighbours of the best point
  (the bracket shrinks to 0.618^40 ~ 4e-9 of two grid steps; the loss error is its square).
  """
  log_c = np.atleast_1d(np.asarray(log_computes, dtype=np.float64))[:, None]

  def loss_at(log_n):
    n = np.exp(log_n)
    tokens = np.exp(log_c) / flops_per_token_fn(n)
    return np.where(tokens >= 1.0, predict(fit, n, tokens, unique_tokens), np.inf)

  log_n_grid = np.linspace(0.0, 1.0, grid_size)[None, :] * log_c
  best = np.argmin(loss_at(log_n_grid), axis=1)[:, None]
  lo = np.take_along_axis(log_n_grid, np.maximum(best - 1, 0), axis=1)
  hi = np.take_along_axis(log_n_grid, np.minimum(best + 1, grid_size - 1), axis=1)
  x1, x2 = hi - _INV_GOLDEN * (hi - lo), lo + _INV_GOLDEN * (hi - lo)
  f1, f2 = loss_at(x1), loss_at(x2)
  for _ in range(golden_steps):  # One new point per step: the other interior one is kept.
    left = f1 <= f2  # The minimum is in [lo, x2]; else in [x1, hi].
    lo, hi = np.where(left, lo, x1), np.where(left, x2, hi)
    kept_x, kept_f = np.where(left, x1, x2), np.where(left, f1, f2)
    new_x = np.where(left, hi - _INV_GOLDEN * (hi - lo), lo + _INV_GOLDEN * (hi - lo))
    new_f = loss_at(new_x)
    x1, f1 = np.where(left, new_x, kept_x), np.where(left, new_f, kept_f)
    x2, f2 = np.where(left, kept_x, new_x), np.where(left, kept_f, new_f)
  left = f1 <= f2
  return np.where(left, x1, x2)[:, 0], np.where(left, f1, f2)[:, 0]


def optimal_loss(fit: FitResult, compute: float, unique_tokens: float, *,
                 flops_per_token_fn: Callable = _six_n) -> tuple[float, float, float]:
  """(loss, N, D): the best loss the law reaches with C = flops_per_token_fn(N) D.

  Minimises L(N, C / f(N), U) over log N: a 512-point grid on [1, C], then golden-section
  search between the grid neighbours of the best point. D < U means less than one epoch.
  `flops_per_token_fn` must accept numpy arrays and use the fit's convention for N.
  """
  if not (compute > 0 and unique_tokens > 0):
    raise ValueError(f"compute and unique_tokens must be positive, got {compute}, "
                     f"{unique_tokens}")
  log_n, loss = _optimal_log_params(fit, math.log(compute), unique_tokens, flops_per_token_fn)
  n = math.exp(log_n[0])
  return float(loss[0]), n, compute / float(flops_per_token_fn(n))


def critical_compute(fit_ar: FitResult, fit_mdm: FitResult, unique_tokens: float, *,
                     flops_per_token_fn: Callable = _six_n,
                     compute_range: tuple[float, float] | None = None,
                     points_per_decade: int = 10) -> float:
  """C_crit(U): the smallest compute above which diffusion's optimal loss beats AR's.

  Both fits are evaluated at their compute-optimal (N, D) for each C (`optimal_loss`), as in
  Prabhudesai et al. (2025, Sec. 3.3). The gap L_mdm*(C) - L_ar*(C) is scanned on a
  log-spaced grid over `compute_range` (default 1e-3 U^2 to 1e9 U^2); the last sign change
  from AR-better to diffusion-better is then solved with Brent's method. Raises ValueError
  when diffusion never wins inside the range, or already wins at its lower end.
  """
  if compute_range is None:
    compute_range = (1e-3 * unique_tokens**2, 1e9 * unique_tokens**2)
  lo, hi = (math.log(c) for c in compute_range)
  if not hi > lo:
    raise ValueError(f"compute_range must be increasing, got {compute_range}")

  def gap(log_c):
    mdm, ar = (_optimal_log_params(f, log_c, unique_tokens, flops_per_token_fn)[1]
               for f in (fit_mdm, fit_ar))
    return mdm - ar

  grid = np.linspace(lo, hi, max(2, int(points_per_decade * (hi - lo) / math.log(10)) + 1))
  gaps = gap(grid)
  if gaps[-1] >= 0:
    raise ValueError(f"diffusion never beats AR up to compute {compute_range[1]:.3g} "
                     f"for U={unique_tokens:.3g}; raise compute_range")
  ar_better = np.nonzero(gaps >= 0)[0]
  if ar_better.size == 0:
    raise ValueError(f"diffusion already beats AR at compute {compute_range[0]:.3g} "
                     f"for U={unique_tokens:.3g}; lower compute_range")
  i = int(ar_better[-1])
  return math.exp(optimize.brentq(lambda x: float(gap(x)[0]), grid[i], grid[i + 1],
                                  xtol=1e-12, rtol=1e-12))


@dataclasses.dataclass(frozen=True)
class PowerLaw:
  """y = coefficient * x^exponent; r2 of the straight-line fit in log-log space."""
  coefficient: float
  exponent: float
  r2: float

  def __call__(self, x):
    return self.coefficient * np.asarray(x, dtype=np.float64)**self.exponent


def fit_power_law(x: Sequence[float], y: Sequence[float]) -> PowerLaw:
  """Least-squares line through (log x, log y), e.g. C_crit(U) = k U^gamma (the paper's form)."""
  x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
  if x.shape != y.shape or x.ndim != 1 or x.size < 2:
    raise ValueError(f"x and y must be 1-D of the same length >= 2, got shapes {x.shape}, "
                     f"{y.shape}")
  if np.any(x <= 0) or np.any(y <= 0):
    raise ValueError("x and y must be positive to fit a power law")
  exponent, log_k = np.polyfit(np.log(x), np.log(y), 1)
  return PowerLaw(float(math.exp(log_k)), float(exponent),
                  _r2(log_k + exponent * np.log(x), np.log(y)))


def critical_compute_law(fit_ar: FitResult, fit_mdm: FitResult,
                         unique_tokens: Sequence[float], **critical_compute_kwargs) -> PowerLaw:
  """C_crit(U) = k U^gamma fitted (`fit_power_law`) to `critical_compute` at each U.

  Prabhudesai et al. (2025) report gamma = 2.174. When both laws share E, alpha and beta,
  C = c U^(1 + beta/alpha) leaves (U / C)^alpha proportional to U^-beta, so both optimal
  losses are E + U^-beta h(c) and the crossing c is the same for every U: gamma is exactly
  1 + beta / alpha.
  """
  unique_tokens = np.asarray(unique_tokens, dtype=np.float64)
  if unique_tokens.ndim != 1 or len(np.unique(unique_tokens)) < 2:
    raise ValueError(f"unique_tokens: need at least two distinct U values, got {unique_tokens}")
  crit = [critical_compute(fit_ar, fit_mdm, float(u), **critical_compute_kwargs)
          for u in unique_tokens]
  return fit_power_law(unique_tokens, crit)
