"""Tolerances for comparing a sharded computation with its single-device twin.

Splitting a sum over devices reassociates it, and the rounding that follows depends on the
CPU (vector width, thread count, XLA's reduction order). An entry of a gradient can therefore
differ from its unsharded value by a few float32 ulps of the LARGEST term in its sum, which is
far above its own ulps when the entry is small. A fixed `atol` only holds on the machine that
chose it; these helpers scale it to the magnitude of the array compared.
"""
import jax
import numpy as np


def assert_close_at_scale(actual, desired, *, rel: float = 1e-4, err_msg: str = ""):
  """|actual - desired| <= rel * (|desired| + max|desired|), elementwise, for each leaf."""
  def check(a, d):
    a, d = np.asarray(a, np.float64), np.asarray(d, np.float64)
    scale = float(np.abs(d).max()) if d.size else 0.0
    np.testing.assert_allclose(a, d, rtol=rel, atol=rel * scale, err_msg=err_msg)
  jax.tree.map(check, actual, desired)
