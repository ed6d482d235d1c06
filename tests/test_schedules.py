"""Schedules: boundary values, derivatives, and the ELBO weight's unbiasedness (quadrature)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

from diffusionlm.diffusion import schedules

CASES = [  # (schedule, eps, power)
    ("linear", 0.0, 1.0), ("linear", 1e-3, 1.0), ("linear", 0.2, 1.0),
    ("cosine", 1e-3, 1.0), ("cosine", 0.2, 1.0),
    ("polynomial", 1e-3, 2.0), ("polynomial", 0.2, 0.5),
]
T_GRID = np.linspace(1e-4, 1.0, 101, dtype=np.float32)


def _kw(schedule, eps, power):
  return dict(schedule=schedule, eps=eps, power=power)


@pytest.mark.parametrize("schedule, eps, power", CASES)
def test_mask_prob_rises_from_eps_to_one(schedule, eps, power):
  p = np.asarray(schedules.mask_prob(T_GRID, **_kw(schedule, eps, power)))
  assert np.all(np.diff(p) > 0) and np.all((p >= eps) & (p <= 1.0))
  np.testing.assert_allclose(p[-1], 1.0, rtol=1e-6)
  np.testing.assert_allclose(schedules.mask_prob(1e-9, **_kw(schedule, eps, power)), eps,
                             atol=1e-4)


@pytest.mark.parametrize("schedule, eps, power", CASES)
def test_derivative_is_the_derivative(schedule, eps, power):
  kw = _kw(schedule, eps, power)
  autodiff = jax.vmap(jax.grad(functools.partial(schedules.mask_prob, **kw)))(T_GRID[1:])
  np.testing.assert_allclose(schedules.mask_prob_derivative(T_GRID[1:], **kw), autodiff,
                             rtol=1e-5)


def test_linear_weight_is_one_over_mask_prob():
  """LLaDA's weight: 1/p(t), and 1/t without the floor (the contract's special case)."""
  kw = dict(schedule="linear", eps=1e-3)
  np.testing.assert_allclose(schedules.elbo_weight(T_GRID, **kw),
                             1.0 / schedules.mask_prob(T_GRID, **kw), rtol=1e-6)
  np.testing.assert_allclose(schedules.elbo_weight(T_GRID, schedule="linear", eps=0.0),
                             1.0 / T_GRID, rtol=1e-6)


@pytest.mark.parametrize("schedule, eps, power", CASES)
@pytest.mark.parametrize("g_name", ["s", "s^2", "(1-s)^3 s"])
def test_weight_gives_the_same_objective_for_every_schedule(schedule, eps, power, g_name):
  """int_0^1 w(t) g(p(t)) dt = E_{s~U(eps,1)}[g(s)/s] for any g (schedules.py, eq. (*)).

  g(s) = E[sum over masked tokens of CE] at mask rate s. With g(s) = s (predictions that
  ignore the context) both sides equal 1: the loss is the exact NLL for every eps.
  """
  g = {"s": lambda s: s, "s^2": lambda s: s * s, "(1-s)^3 s": lambda s: (1 - s)**3 * s}[g_name]
  kw = _kw(schedule, eps, power)
  weighted = lambda t: float(schedules.elbo_weight(t, **kw) * g(schedules.mask_prob(t, **kw)))
  lhs, _ = integrate.quad(weighted, 0.0, 1.0, epsabs=1e-7, limit=200)
  rhs, _ = integrate.quad(lambda s: g(s) / s, eps, 1.0, epsabs=1e-9)
  np.testing.assert_allclose(lhs, rhs / (1.0 - eps), rtol=2e-5)
  if g_name == "s":
    np.testing.assert_allclose(lhs, 1.0, rtol=2e-5)


def test_traced_t_is_jittable_and_matches_eager():
  for schedule in schedules.SCHEDULES:
    kw = dict(schedule=schedule, eps=1e-3, power=3.0)
    jitted = jax.jit(functools.partial(schedules.elbo_weight, **kw))
    np.testing.assert_allclose(jitted(T_GRID), schedules.elbo_weight(T_GRID, **kw), rtol=1e-6)


@pytest.mark.parametrize("fn", [schedules.mask_prob, schedules.mask_prob_derivative,
                                schedules.elbo_weight])
def test_bad_arguments_raise(fn):
  for t in (0.0, 1.5, -0.1, np.array([0.5, 0.0]), jnp.array([0.3, 1.01])):
    with pytest.raises(ValueError, match=r"t must lie in \(0, 1\]"):
      fn(t, schedule="linear")
  with pytest.raises(ValueError, match=r"Unknown schedule 'geometric'.*'linear', 'cosine', "
                                       r"'polynomial'"):
    fn(0.5, schedule="geometric")
  with pytest.raises(ValueError, match="eps=1.0"):
    fn(0.5, schedule="linear", eps=1.0)
  with pytest.raises(ValueError, match="power=0"):
    fn(0.5, schedule="polynomial", power=0)
