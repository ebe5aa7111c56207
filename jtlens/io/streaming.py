"""Streaming a Hugging Face checkpoint onto a device mesh, one layer at a time.

The family converters build each layer's params from that layer's tensors (`per_layer(l)`).
Here each layer is checked, processed (`weights.process` acts on one layer alone), cast, and
written into its slot of a layer-stacked array that already lives sharded on the mesh: the
layer goes to the devices with `jax.make_array_from_callback` (each device receives only its
slice; with several processes, each fills only its own devices) and into the stacked array
by a jitted update that donates the old buffer. The host holds the tensors of one layer (or
one embedding matrix) at a time, besides the device shards themselves.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from tqdm.auto import tqdm

from jtlens.core import weights
from jtlens.core.config import Config
from jtlens.core.params import check_shapes, param_shapes
from jtlens.core.progress import shown
from jtlens.io.sharding import param_shardings, place


class LayerStreamer:
    """`stack(n_layers, per_layer)` for `conversions.TensorReader`: params["blocks"] as sharded
    device arrays, processed by the weight-processing steps `steps`.

    Args:
      cfg: the Config the converted params run under before processing.
      steps: `weights.process` flags to apply (all False for none).
      dtype: the dtype the params are stored in.
    """

    def __init__(self, cfg: Config, steps: dict, mesh: Mesh, rules=None, layer_axis=None,
                 dtype: str = "float32", progress: bool = True):
        self.cfg, self.steps, self.dtype, self.progress = cfg, steps, jnp.dtype(dtype), progress
        self.raw = param_shapes(cfg)["blocks"]
        processed = weights.processed_config(cfg, **steps)
        self.shardings = param_shardings({"blocks": param_shapes(processed)["blocks"]}, mesh,
                                         rules, layer_axis)["blocks"]

    def __call__(self, n_layers: int, per_layer: Callable[[int], dict]) -> dict:
        one_layer = jax.tree_util.tree_map(lambda s: s[1:], self.raw,
                                           is_leaf=lambda x: isinstance(x, tuple))
        stacked = None
        for l in tqdm(range(n_layers), desc="placing layers", disable=not shown(self.progress)):
            layer = check_shapes(per_layer(l), one_layer, prefix=f"blocks[{l}]")
            layer = weights.process({"blocks": jax.tree_util.tree_map(lambda a: a[None], layer)},
                                    self.cfg, **self.steps)["blocks"]
            if stacked is None:
                stacked = jax.tree_util.tree_map(lambda a, s: _zeros((n_layers,) + a.shape[1:],
                                                                      self.dtype, s),
                                                 layer, self.shardings)
            stacked = jax.tree_util.tree_map(
                lambda buf, a, s: _set_layer(buf, place(np.asarray(a[0], self.dtype), _drop_first(s)),
                                             jnp.int32(l), sharding=s),
                stacked, layer, self.shardings)
        return stacked


def _drop_first(sharding: NamedSharding) -> NamedSharding:
    """The sharding of one layer of a layer-stacked array."""
    return NamedSharding(sharding.mesh, P(*tuple(sharding.spec)[1:]))


@functools.partial(jax.jit, static_argnames=("shape", "dtype", "sharding"))
def _zeros_jit(*, shape, dtype, sharding):
    return jax.lax.with_sharding_constraint(jnp.zeros(shape, dtype), sharding)


def _zeros(shape, dtype, sharding):
    return _zeros_jit(shape=tuple(shape), dtype=dtype, sharding=sharding)


@functools.partial(jax.jit, donate_argnums=0, static_argnames=("sharding",))
def _set_layer(stacked, layer, l, *, sharding):
    # donating `stacked` lets XLA write the layer in place: no second copy of the blocks
    out = jax.lax.dynamic_update_index_in_dim(stacked, layer.astype(stacked.dtype), l, 0)
    return jax.lax.with_sharding_constraint(out, sharding)
