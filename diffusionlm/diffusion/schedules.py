"""Masking schedules of the masked-diffusion forward process: pure functions of t in (0, 1].

At time t every token is masked independently with probability p(t) = 1 - alpha(t)
(MDLM, Sahoo et al. 2024, Sec. 3; MD4, Shi et al. 2024, eq. 1). Each schedule is a base
curve q(t) with q(0) = 0, q(1) = 1, floored so that a share eps of tokens is always masked:

    p(t) = (1 - eps) q(t) + eps
    linear:      q(t) = t                  (LLaDA, SMDM, MDLM)
    cosine:      q(t) = 1 - cos(pi t / 2)
    polynomial:  q(t) = t^power

Loss weight. The continuous-time negative ELBO (MD4 eq. 5; LLaDA eq. 3 with p(t) = t) is

    -log p(x) <= int_0^1 p'(t) / p(t) * E_{x_t ~ q(.|x, t)}[sum_{i masked} -log p(x_i | x_t)] dt.

With the eps floor p runs over [eps, 1] instead of [0, 1], and p'(t) / p(t) alone integrates
the masked-token count to (1 - eps) of the NLL. We normalise by p(1) - p(0) = 1 - eps:

    w(t) = p'(t) / ((p(1) - p(0)) p(t)) = q'(t) / p(t)                                  (*)

Substituting s = p(t) gives, for any function g of the mask rate and any schedule,

    E_{t ~ U(0,1)}[w(t) g(p(t))] = E_{s ~ U(eps, 1)}[g(s) / s],

so every schedule estimates the same objective (they differ only in variance), which is the
ELBO as eps -> 0, and for a model whose predictions ignore the context (where
E[sum_{i masked} -log p_i] = s * NLL) it equals the exact NLL for every eps. For the linear
schedule (*) is w(t) = 1 / p(t), LLaDA's 1/t weight with the floor.
"""
import jax
import jax.numpy as jnp
import numpy as np

SCHEDULES = ("linear", "cosine", "polynomial")


def _check(t, schedule: str, eps: float, power: float) -> jax.Array:
  """Validates the static settings and, when t is concrete, that t lies in (0, 1]."""
  if schedule not in SCHEDULES:
    raise ValueError(f"Unknown schedule {schedule!r}; valid schedules are {list(SCHEDULES)}.")
  if not 0.0 <= eps < 1.0:
    raise ValueError(f"eps={eps} must lie in [0, 1).")
  if not power > 0.0:
    raise ValueError(f"power={power} must be > 0.")
  if not isinstance(t, jax.core.Tracer):
    t_np = np.asarray(t, dtype=np.float64)
    if not np.all((t_np > 0.0) & (t_np <= 1.0)):
      raise ValueError(f"t must lie in (0, 1]; got values in [{t_np.min()}, {t_np.max()}].")
  return jnp.asarray(t, jnp.float32)


def _base_curve(t, schedule: str, power: float):
  """(q(t), q'(t)) of the unfloored schedule."""
  if schedule == "linear":
    return t, jnp.ones_like(t)
  if schedule == "cosine":
    return 1.0 - jnp.cos(0.5 * jnp.pi * t), 0.5 * jnp.pi * jnp.sin(0.5 * jnp.pi * t)
  return t**power, power * t**(power - 1.0)


def mask_prob(t, *, schedule: str, eps: float = 1e-3, power: float = 1.0) -> jax.Array:
  """p(t) = (1 - eps) q(t) + eps: the probability that a token is masked at time t."""
  t = _check(t, schedule, eps, power)
  q, _ = _base_curve(t, schedule, power)
  return (1.0 - eps) * q + eps


def mask_prob_derivative(t, *, schedule: str, eps: float = 1e-3,
                         power: float = 1.0) -> jax.Array:
  """p'(t) = (1 - eps) q'(t) = -alpha'(t)."""
  t = _check(t, schedule, eps, power)
  _, dq = _base_curve(t, schedule, power)
  return (1.0 - eps) * dq


def elbo_weight(t, *, schedule: str, eps: float = 1e-3, power: float = 1.0) -> jax.Array:
  """w(t) = p'(t) / ((p(1) - p(0)) p(t)) = q'(t) / p(t), eq. (*) above; 1/t for linear, eps=0."""
  dp = mask_prob_derivative(t, schedule=schedule, eps=eps, power=power)
  return dp / ((1.0 - eps) * mask_prob(t, schedule=schedule, eps=eps, power=power))
