"""Devices: multi-host start-up, the (data, fsdp, tensor) mesh and logical-axis rules.

The same code runs on 1 CPU, 8 simulated CPU devices, N localhost processes, a GPU node
and a TPU pod: only the mesh sizes in `config.mesh` change.
"""
import math
import os

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # The global batch is split over both data-parallel axes.

# Logical parameter axes (named by the model) -> mesh axes. A dimension that the mesh
# axis does not divide stays replicated (see `logical_to_sharding`).
LOGICAL_AXIS_RULES = (
    ("batch", BATCH_AXES),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("vocab", "tensor"),
    ("head_dim", None),
    ("layers", None),
)

# Environment variables that ask for a multi-process run (see README "Multi-host").
ENV_COORDINATOR = "DIFFUSIONLM_COORDINATOR"  # host:port of process 0
ENV_NUM_PROCESSES = "DIFFUSIONLM_NUM_PROCESSES"
ENV_PROCESS_ID = "DIFFUSIONLM_PROCESS_ID"
ENV_LOCAL_DEVICES = "DIFFUSIONLM_LOCAL_DEVICE_IDS"  # optional, e.g. "0,1"
ENV_AUTO = "DIFFUSIONLM_DISTRIBUTED"  # "auto": let JAX detect TPU pod / SLURM / OMPI
# Seconds without a heartbeat after which the coordination service declares a process dead
# and stops the others (JAX's default is 100), and the most the survivors wait for each
# other at exit.
ENV_HEARTBEAT_TIMEOUT = "DIFFUSIONLM_HEARTBEAT_TIMEOUT_S"
ENV_SHUTDOWN_TIMEOUT = "DIFFUSIONLM_SHUTDOWN_TIMEOUT_S"
DEFAULT_HEARTBEAT_TIMEOUT_S, DEFAULT_SHUTDOWN_TIMEOUT_S = 30, 30


def initialize_distributed() -> None:
  """Calls `jax.distributed.initialize` when the launch environment asks for it.

  Explicit: DIFFUSIONLM_COORDINATOR, DIFFUSIONLM_NUM_PROCESSES, DIFFUSIONLM_PROCESS_ID.
  Automatic: DIFFUSIONLM_DISTRIBUTED=auto, for the cluster environments JAX detects by
  itself (TPU pod VMs, SLURM, Open MPI). Otherwise the run is single-process.
  Must run before anything touches the devices. A process that dies is noticed by the
  others within DIFFUSIONLM_HEARTBEAT_TIMEOUT_S (default 30 s; sooner when a collective
  with it fails), and each of them then stops (see cli.run).
  """
  timeouts = dict(
      heartbeat_timeout_seconds=int(os.environ.get(ENV_HEARTBEAT_TIMEOUT,
                                                   DEFAULT_HEARTBEAT_TIMEOUT_S)),
      shutdown_timeout_seconds=int(os.environ.get(ENV_SHUTDOWN_TIMEOUT,
                                                  DEFAULT_SHUTDOWN_TIMEOUT_S)))
  if os.environ.get(ENV_COORDINATOR):
    missing = [v for v in (ENV_NUM_PROCESSES, ENV_PROCESS_ID) if v not in os.environ]
    if missing:
      raise ValueError(f"{ENV_COORDINATOR} is set but {', '.join(missing)} is not.")
    if jax.config.jax_platforms in (None, "", "cpu") or os.environ.get("JAX_PLATFORMS") == "cpu":
      # CPU processes need a collectives backend to talk to each other.
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    local = os.environ.get(ENV_LOCAL_DEVICES)
    jax.distributed.initialize(
        coordinator_address=os.environ[ENV_COORDINATOR],
        num_processes=int(os.environ[ENV_NUM_PROCESSES]),
        process_id=int(os.environ[ENV_PROCESS_ID]),
        local_device_ids=[int(i) for i in local.split(",")] if local else None,
        **timeouts,
    )
  elif os.environ.get(ENV_AUTO, "").lower() == "auto":
    jax.distributed.initialize(**timeouts)


def mesh_shape(mesh_config: ml_collections.ConfigDict, num_devices: int) -> tuple[int, ...]:
  """Resolves the configured axis sizes; exactly one axis may be -1 (= the rest)."""
  sizes = [int(mesh_config[a]) for a in MESH_AXES]
  for axis, size in zip(MESH_AXES, sizes):
    if size == 0 or size < -1:
      raise ValueError(f"config.mesh.{axis}={size}: use a positive size or -1.")
  if sizes.count(-1) > 1:
    raise ValueError(f"config.mesh: at most one axis may be -1, got {dict(zip(MESH_AXES, sizes))}.")
  fixed = math.prod(s for s in sizes if s != -1)
  if num_devices % fixed:
    raise ValueError(
        f"config.mesh {dict(zip(MESH_AXES, sizes))} needs a multiple of {fixed} devices, "
        f"but {num_devices} are available.")
  sizes = [num_devices // fixed if s == -1 else s for s in sizes]
  if math.prod(sizes) != num_devices:
    raise ValueError(
        f"config.mesh {dict(zip(MESH_AXES, sizes))} uses {math.prod(sizes)} devices, but "
        f"{num_devices} are available; set one axis to -1 to use them all.")
  return tuple(sizes)


def make_mesh(mesh_config: ml_collections.ConfigDict, devices=None) -> Mesh:
  """A (data, fsdp, tensor) mesh over all devices, laid out for the interconnect."""
  devices = jax.devices() if devices is None else devices
  shape = mesh_shape(mesh_config, len(devices))
  device_array = mesh_utils.create_device_mesh(shape, devices=devices, allow_split_physical_axes=True)
  return Mesh(device_array, MESH_AXES)


def data_parallel_size(mesh: Mesh) -> int:
  return math.prod(mesh.shape[a] for a in BATCH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over the data-parallel axes, the rest replicated."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def logical_to_sharding(abstract_boxed_tree, mesh: Mesh, rules=LOGICAL_AXIS_RULES):
  """Shardings for a tree of `nn.Partitioned` abstract arrays (e.g. `jax.eval_shape(init)`).

  A dimension whose size the mesh axes do not divide is left replicated rather than
  padded, so any model shape works on any mesh (e.g. the vocab+1 embedding rows).
  """
  specs = nn.get_partition_spec(abstract_boxed_tree)
  mesh_specs = nn.logical_to_mesh(specs, rules)
  shapes = nn.unbox(abstract_boxed_tree)

  def fit(spec, shape):
    if not isinstance(spec, P):
      return replicated(mesh)
    dims = []
    for size, axes in zip(shape.shape, tuple(spec) + (None,) * (len(shape.shape) - len(spec))):
      names = (axes,) if isinstance(axes, str) else tuple(axes or ())
      ways = math.prod(mesh.shape[n] for n in names)
      dims.append(axes if names and size % ways == 0 else None)
    return NamedSharding(mesh, P(*dims))

  return jax.tree.map(fit, mesh_specs, shapes, is_leaf=lambda x: isinstance(x, P) or x is None)


def abstract_params(model: nn.Module, mesh: Mesh):
  """The parameters of a token model (`model.init(key, tokens_BxL)`) as
  `jax.ShapeDtypeStruct`s carrying their shardings on `mesh`; nothing is allocated."""
  boxed = jax.eval_shape(lambda key: model.init(key, jnp.zeros((1, 1), jnp.int32))["params"],
                         jax.random.key(0))
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      nn.unbox(boxed), logical_to_sharding(boxed, mesh))


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
  """Assembles each process's rows into global arrays sharded over the batch axes."""
  sharding = batch_sharding(mesh)
  return {
      k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
      for k, v in local_batch.items()
  }


def log_mesh(mesh: Mesh) -> None:
  logging.info("Mesh %s over %d devices (%d processes): %s", dict(mesh.shape),
               mesh.devices.size, jax.process_count(), jax.devices()[0].device_kind)
