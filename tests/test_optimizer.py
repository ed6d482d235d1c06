"""config.optimizer -> optax: the schedule's shape and what one update of each optimizer is."""
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from diffusionlm.train import optimizer


def _opt(**fields):
  opt = base.get_config().optimizer
  opt.update(fields)
  return opt


def test_schedule_warms_up_linearly_then_decays_to_the_floor():
  schedule = optimizer.learning_rate_schedule(
      _opt(lr=1.0, warmup_steps=10, decay="cosine", min_lr_ratio=0.1), num_train_steps=110)
  np.testing.assert_allclose([schedule(s) for s in (0, 5, 10, 60, 110)],
                             [0.0, 0.5, 1.0, 0.55, 0.1], atol=1e-6)


def test_sgd_update_is_minus_lr_times_the_clipped_gradient_plus_weight_decay():
  params = {"w": jnp.array([1.0, -2.0]), "b": jnp.array([0.5])}
  grads = {"w": jnp.array([3.0, 0.0]), "b": jnp.array([4.0])}  # Global norm 5.
  tx, _ = optimizer.make_optimizer(
      _opt(name="sgd", lr=0.1, warmup_steps=0, decay="constant", grad_clip=1.0,
           weight_decay=0.5), num_train_steps=10)
  updates, _ = tx.update(grads, tx.init(params), params)
  for name in params:
    np.testing.assert_allclose(updates[name], -0.1 * (grads[name] / 5.0 + 0.5 * params[name]),
                               rtol=1e-6)


def test_adam_first_update_is_a_sign_step():
  """Why RL configs warm up: Adam's first update moves every parameter by ~lr."""
  params = {"w": jnp.array([1.0, 1.0, 1.0])}
  grads = {"w": jnp.array([1e-6, -3.0, 100.0])}
  tx, _ = optimizer.make_optimizer(
      _opt(lr=0.01, warmup_steps=0, decay="constant", grad_clip=0.0, weight_decay=0.0),
      num_train_steps=10)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["w"], -0.01 * jnp.sign(grads["w"]), rtol=1e-2)


def test_unknown_optimizer_is_named():
  with pytest.raises(ValueError, match="config.optimizer.name='lion'"):
    optimizer.make_optimizer(_opt(name="lion"), num_train_steps=10)
