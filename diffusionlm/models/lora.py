"""LoRA (Hu et al. 2021) as a transform of the parameter tree: the model is never touched.

A targeted kernel W keeps its value and gains two trainable factors A and B; the model runs
on the merged tree (eq. 3 of the paper, with the alpha / r scaling of its Sec. 4.1)

  W' = W + (alpha / r) * A @ B,   A: in x r (random, scaled),  B: r x out (zeros),

so at initialisation W' = W exactly, and only A and B receive gradients.

Kernels are multi-dimensional (the Transformer's `query` is [D, heads, head_dim]); `KERNELS`
says which of a kernel's dimensions are its inputs (those the activations contract with)
and which its outputs. Dimensions before them are stacked-layer dimensions (a scanned
model's [layers, ...] kernels): every stacked matrix gets its own factors. So for a kernel
[*lead, *in, *out], A is [*lead, *in, r] and B is [*lead, r, *out], and A @ B contracts
the rank only (`merge`'s einsum).

The factors' shardings follow the kernel's: A keeps the lead and input dimensions' mesh
axes, B the lead and output dimensions', and the rank is replicated (`adapter_shardings`).

This module imports nothing of the package.
"""
import math
import string
from collections.abc import Mapping, Sequence

import flax
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

# Transformer kernel name -> (input dims, output dims), counted from the end of the shape
# after any stacked-layer dimensions (diffusionlm/models/transformer.py):
#   query / key / value [D, heads, head_dim]: in D, out (heads, head_dim)
#   out [heads, head_dim, D]: in (heads, head_dim), out D
#   gate / up [D, mlp], down [mlp, D]: one input, one output.
KERNELS = {
    "query": (1, 2), "key": (1, 2), "value": (1, 2), "out": (2, 1),
    "gate": (1, 1), "up": (1, 1), "down": (1, 1),
}
BASE_DTYPES = ("float32", "bfloat16")


def validate(lora: Mapping) -> None:
  """ValueError naming the first bad field of `config.lora` (rank 0 = off: nothing else is
  read)."""
  rank = lora["rank"]
  if not isinstance(rank, int) or rank < 0:
    raise ValueError(f"config.lora.rank={rank!r} must be an int >= 0 (0 = LoRA off).")
  if rank == 0:
    return
  if not lora["alpha"] > 0:
    raise ValueError(f"config.lora.alpha={lora['alpha']!r} must be > 0.")
  targets = tuple(lora["targets"])
  unknown = [t for t in targets if t not in KERNELS]
  if not targets or unknown:
    problem = f"unknown {unknown}" if unknown else "empty"
    raise ValueError(f"config.lora.targets={list(targets)!r}: {problem}; choose from "
                     f"{list(KERNELS)}.")
  if len(set(targets)) != len(targets):
    raise ValueError(f"config.lora.targets={list(targets)!r} names a kernel twice.")
  if lora["base_dtype"] not in BASE_DTYPES:
    raise ValueError(f"config.lora.base_dtype={lora['base_dtype']!r}: expected one of "
                     f"{BASE_DTYPES}.")


def _layout(name: str, ndim: int) -> tuple[int, int, int]:
  """(lead, in, out) numbers of dimensions of the kernel `name` with `ndim` dimensions."""
  num_in, num_out = KERNELS[name]
  lead = ndim - num_in - num_out
  if lead < 0:
    raise ValueError(f"LoRA kernel {name!r} has {ndim} dimensions; expected at least "
                     f"{num_in + num_out} ({num_in} in, {num_out} out).")
  return lead, num_in, num_out


def _targets(params, targets: Sequence[str]) -> dict:
  """{path: kernel} of the leaves of `params` whose name is in `targets`."""
  flat = flax.traverse_util.flatten_dict(params)
  found = {path: leaf for path, leaf in flat.items() if path[-1] in targets}
  if not found:
    raise ValueError(f"config.lora.targets={list(targets)!r} match no parameter of the model.")
  return found


def _factor_shapes(name: str, shape) -> tuple[tuple, tuple]:
  """Shapes of A [*lead, *in, r] and B [*lead, r, *out] without the rank."""
  lead, num_in, _ = _layout(name, len(shape))
  return tuple(shape[:lead + num_in]), (tuple(shape[:lead]), tuple(shape[lead + num_in:]))


def init_adapters(key, base_params, lora: Mapping) -> dict:
  """{path...: {"a", "b"}} for every targeted kernel of `base_params` (arrays or
  ShapeDtypeStructs), in float32: A ~ N(0, 1 / fan_in) (LeCun normal, as the kernels
  themselves), B = 0, so merge(base, init_adapters(...)) == base."""
  rank = lora["rank"]
  flat = {}
  for i, (path, kernel) in enumerate(sorted(_targets(base_params, lora["targets"]).items())):
    a_shape, (lead_shape, out_shape) = _factor_shapes(path[-1], kernel.shape)
    lead = len(lead_shape)
    fan_in = math.prod(a_shape[lead:])
    a = jax.random.normal(jax.random.fold_in(key, i), a_shape + (rank,), jnp.float32)
    flat[path] = {"a": a / math.sqrt(fan_in),
                  "b": jnp.zeros(lead_shape + (rank,) + out_shape, jnp.float32)}
  return flax.traverse_util.unflatten_dict(flat)


def scale(lora: Mapping) -> float:
  """alpha / r, the factor of A @ B."""
  return lora["alpha"] / lora["rank"]


def delta(name: str, a, b):
  """A @ B over the rank only, shaped like the kernel `name`: [*lead, *in, *out]."""
  num_in, num_out = KERNELS[name]
  letters = string.ascii_lowercase.replace("r", "")
  ins, outs = letters[:num_in], letters[num_in:num_in + num_out]
  return jnp.einsum(f"...{ins}r,...r{outs}->...{ins}{outs}", a, b)


def merge(base_params, adapters, lora: Mapping):
  """The model's parameters: W + (alpha / r) * A @ B for every adapted kernel (promoted to
  the adapters' dtype, so a bfloat16 base does not round the update away), every other
  parameter as it is."""
  flat_adapters = flax.traverse_util.flatten_dict(adapters, is_leaf=_is_factor_pair)
  flat = dict(flax.traverse_util.flatten_dict(base_params))
  s = scale(lora)
  for path, ab in flat_adapters.items():
    w = flat[path]
    update = delta(path[-1], ab["a"], ab["b"])
    flat[path] = w.astype(jnp.result_type(w, update)) + s * update
  return flax.traverse_util.unflatten_dict(flat)


def _is_factor_pair(path, x) -> bool:
  del path
  return isinstance(x, Mapping) and set(x) == {"a", "b"}


def adapter_shardings(base_shardings, base_params, lora: Mapping) -> dict:
  """Shardings of `init_adapters`' tree from the base kernels' NamedShardings: A keeps the
  lead and input dimensions' mesh axes, B the lead and output dimensions'. The rank takes the
  kernel's mesh axes the factor lost (e.g. fsdp, which splits a query kernel's input, for
  its B), where they divide it, so no factor is replicated over the data-parallel axes
  (ZeRO-style, like the kernels)."""
  flat_shardings = flax.traverse_util.flatten_dict(base_shardings)
  flat = {}
  for path, kernel in _targets(base_params, lora["targets"]).items():
    s = flat_shardings[path]
    spec = tuple(s.spec) + (None,) * (kernel.ndim - len(s.spec))
    lead, num_in, _ = _layout(path[-1], kernel.ndim)
    a_spec = spec[:lead + num_in]
    b_spec = spec[:lead] + spec[lead + num_in:]
    flat[path] = {
        "a": NamedSharding(s.mesh, P(*a_spec, _rank_axes(s.mesh, spec, a_spec, lora["rank"]))),
        "b": NamedSharding(s.mesh, P(*b_spec[:lead],
                                     _rank_axes(s.mesh, spec, b_spec, lora["rank"]),
                                     *b_spec[lead:]))}
  return flax.traverse_util.unflatten_dict(flat)


def _axis_names(entry) -> tuple:
  if entry is None:
    return ()
  return tuple(entry) if isinstance(entry, tuple) else (entry,)


def _rank_axes(mesh, kernel_spec, factor_spec, rank: int):
  """The mesh axes (size > 1) of the kernel's spec missing from the factor's, as one spec
  entry for the rank dimension; None when there are none or they do not divide the rank."""
  kept = {a for e in factor_spec for a in _axis_names(e)}
  lost = tuple(a for e in kernel_spec for a in _axis_names(e)
               if a not in kept and mesh.shape[a] > 1)
  if not lost or rank % math.prod(mesh.shape[a] for a in lost):
    return None
  return lost if len(lost) > 1 else lost[0]


def abstract_base(abstract_model_params, lora: Mapping):
  """The frozen base as ShapeDtypeStructs: the model's, in `lora.base_dtype`."""
  dtype = jnp.dtype(lora["base_dtype"])
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, dtype, sharding=a.sharding),
                      abstract_model_params)


def abstract_adapters(abstract_base_params, lora: Mapping):
  """`init_adapters`' tree as ShapeDtypeStructs with `adapter_shardings`; nothing is
  allocated."""
  shapes = jax.eval_shape(lambda: init_adapters(jax.random.key(0), abstract_base_params, lora))
  shardings = adapter_shardings(jax.tree.map(lambda a: a.sharding, abstract_base_params),
                                abstract_base_params, lora)
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      shapes, shardings)
