"""The staged fit is exact on the law's own data, its bootstrap intervals cover the truth at
their nominal rate, and C_crit(U) follows its closed-form power law."""
import dataclasses
import os

# scipy's optimizers call OpenBLAS on tiny matrices; threads only contend on a loaded machine.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

from diffusionlm.scaling import bootstrap  # pylint: disable=wrong-import-position
from diffusionlm.scaling import fit as fit_lib  # pylint: disable=wrong-import-position

# Muennighoff et al.'s (2023) published constants; a Chinchilla-like law with diffusion's
# slow repetition decay; and one with beta > alpha (N_opt grows faster than U).
MUENNIGHOFF = fit_lib.FitResult(E=1.87, A=521.0, B=1488.0, alpha=0.353, beta=0.353,
                                rd_star=15.4, rn_star=5.3)
CHINCHILLA_MDM = fit_lib.FitResult(E=1.8, A=400.0, B=400.0, alpha=0.34, beta=0.28,
                                   rd_star=500.0, rn_star=20.0)
STEEP_DATA = fit_lib.FitResult(E=2.5, A=800.0, B=3000.0, alpha=0.3, beta=0.4, rd_star=40.0,
                               rn_star=3.0)


def _paper_grid(law, unique_tokens=(1e8, 4e8, 1.5e9)):
  """(N, D, U) as in the issue: single-epoch runs below N_opt at 1e9-1e11 tokens, and
  1e7-3e8-parameter models repeated 1-59 times on each U, the epoch-1 runs of models above
  N_opt(U) included (single-epoch but over-parametrised)."""
  runs = [(n, d, d) for n in np.logspace(7, 10, 7) for d in np.logspace(9, 11, 5)
          if n <= fit_lib.unique_params(law, d)]
  runs += [(n, u * e, u) for n in (1e7, 3e7, 1e8, 3e8) for u in unique_tokens
           for e in (1, 2, 4, 8, 16, 30, 59)]
  return tuple(np.array(x) for x in zip(*runs))


@pytest.mark.parametrize("law, unique_tokens", [
    (MUENNIGHOFF, (1e8, 4e8, 1.5e9)), (CHINCHILLA_MDM, (1e8, 4e8, 1.5e9)),
    (STEEP_DATA, (1e7, 1e8, 1e9))])
def test_noise_free_fit_is_exact_with_over_parametrised_single_epoch_runs(law, unique_tokens):
  n, d, u = _paper_grid(law, unique_tokens)
  runs = fit_lib.Runs(n, d, u, fit_lib.predict(law, n, d, u))
  single = np.flatnonzero(runs.single_epoch)
  below = single[n[single] <= fit_lib.unique_params(law, np.minimum(u, d)[single])]
  assert below.size < single.size  # The grid has over-parametrised single-epoch runs.
  got = fit_lib.fit_runs(runs, num_starts=8)
  # 1e-3 is the bar; the optimiser's own tolerance is ~1e-10.
  for name in fit_lib.CONSTANTS:
    assert getattr(got, name) == pytest.approx(getattr(law, name), rel=1e-3), name
  assert got.r2 == pytest.approx(1.0, abs=1e-9)
  # Stage 1 ends on exactly the single-epoch runs at or below the true N_opt(U).
  assert got.stage1_runs == tuple(below) and got.stage1_converged


def _noisy_runs(law, seed, noise=0.01):
  """A small grid (37 runs, 11 of them single-epoch and 3 of those over-parametrised) with
  log-normal noise of `noise` on the loss."""
  runs = [(n, d, d) for n in np.logspace(7, 9, 4) for d in np.logspace(9, 11, 4)
          if n <= fit_lib.unique_params(law, d)]
  runs += [(n, u * e, u) for n in (1e7, 1e8, 3e8) for u in (1e8, 1e9) for e in (1, 4, 16, 59)]
  n, d, u = (np.array(x) for x in zip(*runs))
  rng = np.random.default_rng(seed)
  return fit_lib.Runs(n, d, u, fit_lib.predict(law, n, d, u) *
                      np.exp(noise * rng.standard_normal(n.size)))


def test_bootstrap_intervals_cover_the_truth_at_their_nominal_rate():
  # 20 noisy data sets x 7 constants, 30 resamples each; coverage pooled over all 140.
  # Measured: 0.95 (90% intervals) and 0.51 (50%) here; 0.89/0.47 and 0.76/0.51 on two other
  # sets of 16 seeds. A data set's 7 constants tend to miss together, so the spread is that
  # of ~20 trials (sd ~0.07 at 0.9, ~0.11 at 0.5): the bounds are ~3 sd from those rates. A
  # broken interval fails: zero width covers nothing, 3x too narrow covers ~0.4 at 90%, and
  # too wide (or the wrong quantiles) pushes the 50% intervals to ~0.9.
  covered = {0.9: [], 0.5: []}
  for seed in range(20):
    runs = _noisy_runs(MUENNIGHOFF, seed)
    point = fit_lib.fit_runs(runs, num_starts=4)
    replicates = bootstrap.resample_fits(runs, point, num_resamples=30, seed=seed)
    for level, hits in covered.items():
      intervals = bootstrap.constant_intervals(replicates, level)
      hits += [getattr(MUENNIGHOFF, k) in intervals[k] for k in fit_lib.CONSTANTS]
  rate = {level: np.mean(hits) for level, hits in covered.items()}
  assert rate[0.9] >= 0.65, rate
  assert 0.2 <= rate[0.5] <= 0.8, rate


def test_bootstrap_is_seeded_and_checks_its_input():
  runs = _noisy_runs(MUENNIGHOFF, seed=0)
  point = fit_lib.fit_runs(runs, num_starts=4)
  first, again = (bootstrap.resample_fits(runs, point, num_resamples=3, seed=(7, 1))
                  for _ in range(2))
  assert first == again
  other = bootstrap.resample_fits(runs, point, num_resamples=3, seed=(7, 2))
  assert first != other
  with pytest.raises(ValueError, match="num_resamples must be positive"):
    bootstrap.resample_fits(runs, point, num_resamples=0, seed=0)
  with pytest.raises(ValueError, match="level must be in"):
    bootstrap.percentile_interval([1.0, 2.0], 1.0)


def test_percentile_interval_is_the_quantiles_and_allows_infinity():
  values = np.arange(1.0, 101.0)  # 1..100: the 5% and 95% points are 5 and 95.
  interval = bootstrap.percentile_interval(values, 0.9)
  assert (interval.lo, interval.hi) == (5.0, 95.0)
  interval = bootstrap.percentile_interval(np.r_[values[:90], [np.inf] * 10], 0.9)
  assert interval.lo == 5.0 and interval.hi == np.inf


# Pairs that share E, alpha and beta: C_crit(U) = k U^(1 + beta / alpha) exactly.
PAIRS = [(MUENNIGHOFF, dataclasses.replace(MUENNIGHOFF, A=600.0, B=1700.0, rd_star=500.0)),
         (dataclasses.replace(CHINCHILLA_MDM, rd_star=15.0, rn_star=5.0),
          dataclasses.replace(CHINCHILLA_MDM, A=500.0, B=450.0))]


@pytest.mark.parametrize("ar, mdm", PAIRS)
def test_critical_compute_exponent_is_its_closed_form(ar, mdm):
  law = fit_lib.critical_compute_law(ar, mdm, [1e7, 1e8, 1e9, 1e10])
  # C_crit is solved to ~1e-12 in log C, so the exponent is exact to far below 1e-6.
  assert law.exponent == pytest.approx(1.0 + ar.beta / ar.alpha, rel=1e-6)
  assert law.r2 == pytest.approx(1.0, abs=1e-9)
  u = 3e8  # Off the fitted grid, the law predicts C_crit itself.
  assert law(u) == pytest.approx(fit_lib.critical_compute(ar, mdm, u), rel=1e-6)
  with pytest.raises(ValueError, match="at least two distinct U"):
    fit_lib.critical_compute_law(ar, mdm, [1e8, 1e8])


def test_critical_compute_bootstrap_pairs_replicates():
  ar, mdm = PAIRS[0]
  # Replicates of the true laws with known C_crit: intervals are their quantiles, and a pair
  # that never crosses (diffusion = AR) counts as inf, leaving its law undefined.
  boot = bootstrap.critical_compute_replicates([ar, ar, ar], [mdm, ar, mdm], [1e8], [1e8, 1e9])
  want = fit_lib.critical_compute(ar, mdm, 1e8)
  np.testing.assert_allclose(boot.c_crit_BxU[:, 0], [want, np.inf, want], rtol=1e-12)
  assert boot.undefined_share() == {"1e+08": pytest.approx(1 / 3), "law": pytest.approx(1 / 3)}
  assert boot.exponent_B[0] == pytest.approx(2.0, rel=1e-6) and np.isnan(boot.exponent_B[1])
  with pytest.raises(ValueError, match="as many AR as diffusion"):
    bootstrap.critical_compute_replicates([ar], [], [1e8], [1e8, 1e9])
