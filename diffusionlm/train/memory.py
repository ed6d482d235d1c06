"""Refuse a compiled program that cannot fit in device memory, before it runs.

XLA's memory analysis of a compiled step is exact about what it will allocate: arguments,
outputs and temporaries per device, minus the arguments it may reuse for outputs (donated
state). Starting a step that needs more than the device has only ends in an out-of-memory
error raised from an unrelated line, possibly hours into a queue; checking first costs
nothing.
"""
import dataclasses
import os

import jax


@dataclasses.dataclass(frozen=True)
class StepMemory:
  """Bytes per device of one compiled program (from `compiled.memory_analysis()`)."""
  arguments: int
  outputs: int
  temporaries: int
  aliased: int  # Donated arguments that the outputs reuse.

  @property
  def peak(self) -> int:
    return self.arguments + self.outputs - self.aliased + self.temporaries

  @classmethod
  def of(cls, compiled) -> "StepMemory | None":
    analysis = compiled.memory_analysis()
    if analysis is None:
      return None
    return cls(arguments=analysis.argument_size_in_bytes, outputs=analysis.output_size_in_bytes,
               temporaries=analysis.temp_size_in_bytes,
               aliased=getattr(analysis, "alias_size_in_bytes", 0))


def available_bytes(device=None) -> tuple[int, str]:
  """(bytes one device may use, where the number comes from).

  Accelerators report their limit (`memory_stats()["bytes_limit"]`). CPU devices report
  nothing; they share the host's available memory, divided among this process's devices.
  """
  device = device or jax.local_devices()[0]
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  if stats and stats.get("bytes_limit"):
    return int(stats["bytes_limit"]), f"{device.platform} device limit"
  return _host_available_bytes() // jax.local_device_count(), (
      f"host memory available / {jax.local_device_count()} local devices")


def _host_available_bytes() -> int:
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def gib(num_bytes: float) -> str:
  return f"{num_bytes / 2**30:.2f} GiB"


def check_fits(memory: StepMemory | None, *, limit_gib: float, what: str, drivers: str) -> None:
  """MemoryError naming the sizes and the config fields that drive them when `memory` does
  not fit. limit_gib > 0 overrides the device's memory (experts: a known reserve, another
  allocator); limit_gib < 0 skips the check; 0 asks the backend (`available_bytes`)."""
  if memory is None or limit_gib < 0:
    return
  if limit_gib > 0:
    limit, source = int(limit_gib * 2**30), "config.device_memory_gib"
  else:
    limit, source = available_bytes()
  if memory.peak > limit:
    raise MemoryError(
        f"The compiled {what} needs {gib(memory.peak)} per device (arguments "
        f"{gib(memory.arguments)} + outputs {gib(memory.outputs)} - donated "
        f"{gib(memory.aliased)} + temporaries {gib(memory.temporaries)}), more than the "
        f"{gib(limit)} available ({source}). Lower {drivers}; or set "
        "config.device_memory_gib to the real per-device memory (-1 skips this check).")
