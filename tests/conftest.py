"""Test setup: 8 simulated CPU devices, so every test can build a real mesh."""
import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# scipy's L-BFGS-B is 10-25x slower with multi-threaded OpenBLAS on small problems.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory):
  """One TFDS data_dir for the whole run, shared by pytest-xdist workers (builders lock it)."""
  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    root = root.parent
  path = root / "tfds_shared"
  path.mkdir(exist_ok=True)
  return str(path)
