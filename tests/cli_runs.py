"""Run a project command as a user would: `python -m MODULE ARGS` on the CPU."""
import os
import subprocess
import sys


def run_module(module: str, *args: str, timeout: int = 300) -> tuple[int, str]:
  """(exit code, stderr + stdout) of `python -m module args` with JAX_PLATFORMS=cpu."""
  result = subprocess.run([sys.executable, "-m", module, *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  return result.returncode, result.stderr + result.stdout
