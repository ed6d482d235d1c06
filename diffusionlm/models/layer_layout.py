"""The two layouts of a model's layers, and the conversion between them.

Unrolled (`scan_layers=False`): one subtree per block, `{"block_0": p_0, ..., "block_{n-1}":
p_{n-1}}`. Scanned (`scan_layers=True`): one subtree `{"blocks": p}` whose leaves stack the
blocks' leaves along a new leading axis (logical axis `layers`), as nn.scan stores them.

The conversion works on any tree that holds parameter-shaped subtrees: parameters, Adam's
moments inside an optax state, LoRA adapters, an RL state's reference parameters. Leaves may
be arrays or `jax.ShapeDtypeStruct`s with a NamedSharding (the `layers` axis is never
sharded), so a checkpoint's abstract target can be converted before anything is read.
"""
from collections.abc import Mapping

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from diffusionlm.models.transformer import LAYERS

UNROLLED, SCANNED = "unrolled", "scanned"


def block_name(i: int) -> str:
  return f"block_{i}"


def _is_layered(x) -> bool:
  return isinstance(x, Mapping) and (LAYERS in x or block_name(0) in x)


def layout_of(tree) -> str | None:
  """SCANNED or UNROLLED by the first layered subtree of `tree`; None if it holds none."""
  found = [x for x in jax.tree.leaves(tree, is_leaf=_is_layered) if _is_layered(x)]
  if not found:
    return None
  return SCANNED if LAYERS in found[0] else UNROLLED


def _stack(leaves):
  first = leaves[0]
  if isinstance(first, jax.ShapeDtypeStruct):
    sharding = first.sharding
    if isinstance(sharding, NamedSharding):
      sharding = NamedSharding(sharding.mesh, P(None, *sharding.spec))
    return jax.ShapeDtypeStruct((len(leaves),) + tuple(first.shape), first.dtype,
                                sharding=sharding)
  return jnp.stack(leaves)


def _layer(x, i: int):
  if isinstance(x, jax.ShapeDtypeStruct):
    sharding = x.sharding
    if isinstance(sharding, NamedSharding):
      sharding = NamedSharding(sharding.mesh, P(*tuple(sharding.spec)[1:]))
    return jax.ShapeDtypeStruct(tuple(x.shape[1:]), x.dtype, sharding=sharding)
  return x[i]


def _stack_blocks(subtree: Mapping) -> dict:
  blocks = sorted((k for k in subtree if k.startswith("block_")), key=lambda k: int(k[6:]))
  if blocks != [block_name(i) for i in range(len(blocks))]:
    raise ValueError(f"Unrolled layers must be block_0 ... block_{{n-1}}, got {blocks}.")
  rest = {k: v for k, v in subtree.items() if k not in blocks}
  return rest | {LAYERS: jax.tree.map(lambda *ls: _stack(ls), *(subtree[k] for k in blocks))}


def _unstack_blocks(subtree: Mapping) -> dict:
  num_layers = jax.tree.leaves(subtree[LAYERS])[0].shape[0]
  rest = {k: v for k, v in subtree.items() if k != LAYERS}
  return rest | {block_name(i): jax.tree.map(lambda a, i=i: _layer(a, i), subtree[LAYERS])
                 for i in range(num_layers)}


def to_layout(tree, layout: str):
  """`tree` with every layered subtree in `layout` (SCANNED or UNROLLED); the rest as is."""
  if layout not in (SCANNED, UNROLLED):
    raise ValueError(f"layout must be {SCANNED!r} or {UNROLLED!r}, got {layout!r}.")

  def convert(x):
    if not _is_layered(x):
      return x
    if layout == SCANNED and LAYERS not in x:
      return _stack_blocks(x)
    if layout == UNROLLED and LAYERS in x:
      return _unstack_blocks(x)
    return x

  return jax.tree.map(convert, tree, is_leaf=_is_layered)


def model_layout(scan_layers: bool) -> str:
  return SCANNED if scan_layers else UNROLLED
