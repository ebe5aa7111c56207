"""Placing params on a device mesh with JAX's own machinery (NamedSharding + GSPMD).

The mesh has a "model" axis for tensor parallelism and optionally a "data" axis (patches,
batches) and an "expert" axis (mixture-of-experts layers: experts split over it). Placement rules are data: an ordered table from param-path patterns (fnmatch over
dotted paths such as "blocks.attn.W_Q") to `PartitionSpec`s over the param's own axes; the first
matching pattern wins, and rules given by the caller are tried before `DEFAULT_RULES`. In a
spec, the name `LAYERS` stands for the leading layer axis of `blocks.*` params: it becomes the
`layer_axis` argument (e.g. "data" for an FSDP-style split of the layers) or None (whole).
An encoder-decoder's (T5) cross-attention and its encoder (params under "encoder.") split as
the decoder's self-attention and MLP do.

The forward never mentions devices: jit compiles it for whatever shardings its inputs carry.

A rule may list several specs: the first that applies in full is used. Rules that cannot apply
are relaxed, not refused: a mesh axis the mesh does not have, or one whose size does not divide
the param's dimension (e.g. 2 key/value heads over an 8-way "model" axis in a grouped-query
model), leaves that dimension whole, i.e. replicated over that axis. `param_specs` shows the
specs that result.

    mesh = jtlens.sharding.make_mesh(data=2, model=4)
    params = jtlens.shard_params(params, cfg, mesh)
"""

from __future__ import annotations

import fnmatch
import math
from typing import Mapping, Optional, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from jtlens.core.config import Config
from jtlens.core.params import param_shapes

LAYERS = "layers"

# The rules of one stack of blocks: a decoder's (its cross-attention, in an encoder-decoder,
# split like its self-attention) and, under "encoder.", an encoder-decoder's encoder.
_BLOCK_RULES: tuple[tuple[str, P], ...] = (
    # attention heads (key/value heads for grouped-query attention); `*attn`: attn and cross_attn
    ("blocks.*attn.W_[QKV]", P(LAYERS, "model", None, None)),
    ("blocks.*attn.b_[QKV]", P(LAYERS, "model", None)),
    ("blocks.*attn.W_O", P(LAYERS, "model", None, None)),
    ("blocks.attn.sinks", P(LAYERS, "model")),
    # the MLP's hidden width
    ("blocks.mlp.W_in", P(LAYERS, None, "model")),
    ("blocks.mlp.W_gate", P(LAYERS, None, "model")),
    ("blocks.mlp.b_in", P(LAYERS, "model")),
    ("blocks.mlp.W_out", P(LAYERS, "model", None)),
    # mixture of experts: experts over an "expert" mesh axis, each expert's hidden width over "model"
    ("blocks.mlp.experts.W_in", P(LAYERS, "expert", None, "model")),
    ("blocks.mlp.experts.W_gate", P(LAYERS, "expert", None, "model")),
    ("blocks.mlp.experts.W_out", P(LAYERS, "expert", "model", None)),
    ("blocks.mlp.experts.b_[gi]*", P(LAYERS, "expert", "model")),  # (b_gate, b_in)
    ("blocks.mlp.experts.b_out", P(LAYERS, "expert", None)),
    # Qwen2-MoE's shared expert: its hidden width over "model", as a dense MLP's
    ("blocks.mlp.shared_expert.W_[gi]*", P(LAYERS, None, "model")),  # (W_gate, W_in)
    ("blocks.mlp.shared_expert.W_out", P(LAYERS, "model", None)),
    # small per-layer tensors (norms, output biases): only the layer axis, if that is split
    ("blocks.*", P(LAYERS)),
)

DEFAULT_RULES: tuple[tuple[str, P], ...] = (
    # vocabulary split (GSPMD partitions the embedding gather and the unembedding matmul); a
    # vocabulary the axis does not divide (GPT-2's 50257) splits d_model instead
    ("embed.W_E", (P("model", None), P(None, "model"))),
    ("unembed.W_U", (P(None, "model"), P("model", None))),
    ("unembed.b_U", P("model")),
    *_BLOCK_RULES,
    *((f"encoder.{pattern}", spec) for pattern, spec in _BLOCK_RULES),
    ("*", P()),  # (T5's relative position bias tables, [buckets, heads], are small: whole)
)


def make_mesh(data: int = 1, model: Optional[int] = None, devices: Optional[Sequence] = None) -> Mesh:
    """A ("data", "model") mesh over `devices` (default all; global across processes).

    `model` defaults to len(devices) // data. Axes are Auto (GSPMD propagates shardings), which
    `jax.make_mesh`'s Explicit default in recent JAX is not."""
    devices = list(jax.devices() if devices is None else devices)
    model = len(devices) // data if model is None else model
    if data * model != len(devices):
        raise ValueError(f"a {data}x{model} mesh needs {data * model} devices; there are "
                         f"{len(devices)} (pass devices= or change data/model)")
    return Mesh(np.array(devices).reshape(data, model), ("data", "model"),
                axis_types=(AxisType.Auto, AxisType.Auto))


def _paths(tree, prefix=""):
    for k, v in tree.items():
        path = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict):
            yield from _paths(v, path)
        else:
            yield path, v


def _spec_for(path: str, shape: tuple, mesh: Mesh, rules, layer_axis: Optional[str]) -> P:
    for pattern, specs in rules:
        if fnmatch.fnmatchcase(path, pattern):
            break
    else:
        raise ValueError(f"no sharding rule matches param {path!r}; add a rule such as ('*', P())")
    candidates = [_resolve(spec, path, pattern, shape, mesh, layer_axis)
                  for spec in ([specs] if isinstance(specs, P) else specs)]
    return next((spec for spec, complete in candidates if complete), candidates[0][0])


def _resolve(spec: P, path: str, pattern: str, shape: tuple, mesh: Mesh, layer_axis):
    """(spec with the axes that can apply to `shape` on `mesh`, whether all of them could)."""
    spec = tuple(spec)
    if len(spec) > len(shape):
        raise ValueError(f"sharding rule {pattern!r} -> {P(*spec)} has {len(spec)} axes but param "
                         f"{path} has shape {shape}")
    out, complete = [], True
    for dim, names in zip(shape, spec + (None,) * (len(shape) - len(spec))):
        names = layer_axis if names == LAYERS else names
        names = () if names is None else (names,) if isinstance(names, str) else tuple(names)
        kept = tuple(n for n in names if n in mesh.shape)
        size = math.prod(mesh.shape[n] for n in kept)
        if not kept or dim % size:  # a dimension the axes do not divide stays whole
            complete &= not names
            out.append(None)
        else:
            complete &= len(kept) == len(names)
            out.append(kept[0] if len(kept) == 1 else kept)
    return P(*out), complete


def param_specs(params_or_shapes, mesh: Mesh, rules: Optional[Sequence] = None,
                layer_axis: Optional[str] = None) -> dict:
    """The PartitionSpec each param gets on `mesh`: a tree like the params.

    `params_or_shapes`: params, or `jtlens.param_shapes(cfg)`. `rules`: (pattern, spec) pairs
    (or a dict) tried before `DEFAULT_RULES`. `layer_axis`: mesh axis for the layer axis of
    blocks params (FSDP-style), or None."""
    rules = tuple((rules or {}).items() if isinstance(rules, Mapping) else rules or ()) + DEFAULT_RULES
    if layer_axis is not None and layer_axis not in mesh.shape:
        raise ValueError(f"layer_axis={layer_axis!r} is not an axis of the mesh {dict(mesh.shape)}")

    def walk(tree, prefix):
        out = {}
        for k, v in tree.items():
            path = f"{prefix}.{k}" if prefix else k
            if isinstance(v, dict):
                out[k] = walk(v, path)
            else:
                shape = tuple(v) if isinstance(v, tuple) else tuple(np.shape(v))
                out[k] = _spec_for(path, shape, mesh, rules, layer_axis)
        return out

    return walk(params_or_shapes, "")


def param_shardings(params_or_shapes, mesh: Mesh, rules=None, layer_axis=None) -> dict:
    """`param_specs` as NamedShardings on `mesh`."""
    return jax.tree_util.tree_map(lambda s: NamedSharding(mesh, s),
                                  param_specs(params_or_shapes, mesh, rules, layer_axis),
                                  is_leaf=lambda x: isinstance(x, P))


def shard_params(params: dict, cfg: Config, mesh: Mesh, rules=None,
                 layer_axis: Optional[str] = None) -> dict:
    """`params` placed on `mesh` by the sharding rules (see the module doc); pure, same tree.

    Host arrays go straight into their device shards (`jax.make_array_from_callback`, which also
    works when the mesh spans several processes: each process fills only its own devices);
    device arrays are resharded by `jax.device_put`."""
    want = param_shapes(cfg)
    got = {p: np.shape(v) for p, v in _paths(params)}
    expected = {p: tuple(s) for p, s in _paths(want)}
    if got != expected:
        diff = sorted(set(got.items()) ^ set(expected.items()))
        raise ValueError(f"params do not match cfg: first difference {diff[0]} (param, shape); "
                         f"shard the params of this Config")
    shardings = param_shardings(want, mesh, rules, layer_axis)
    return jax.tree_util.tree_map(place, params, shardings)


def place(array, sharding: NamedSharding) -> jax.Array:
    """One array onto `sharding`: host data through `make_array_from_callback` (each device gets
    just its slice), device data through `jax.device_put`."""
    if isinstance(array, jax.Array):
        return jax.device_put(array, sharding)
    host = np.asarray(array)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def to_host(tree):
    """Every array of `tree` gathered to host numpy (across processes too), e.g. a sharded
    `ActivationCache` or sweep result."""
    from jax.experimental import multihost_utils

    def gather(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree_util.tree_map(gather, tree)


def bytes_per_device(params: dict) -> dict:
    """{device: bytes of params it holds} over this process's devices."""
    out: dict = {}
    for leaf in jax.tree_util.tree_leaves(params):
        for shard in leaf.addressable_shards:
            out[shard.device] = out.get(shard.device, 0) + shard.data.nbytes
    return out
